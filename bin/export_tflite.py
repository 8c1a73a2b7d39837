"""`python -m bin.export_tflite`: runs slt_tf/cli/export_tflite.py (installed as `slt-export-tflite`)."""

from slt_tf.cli import export_tflite

if __name__ == "__main__":
  export_tflite.run()
