"""`python -m bin.export_saved_model`: runs slt_tf/cli/export_saved_model.py (installed as `slt-export-saved-model`)."""

from slt_tf.cli import export_saved_model

if __name__ == "__main__":
  export_saved_model.run()
