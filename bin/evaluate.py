"""`python -m bin.evaluate`: runs slt_tf/cli/evaluate.py (installed as `slt-evaluate`)."""

from slt_tf.cli import evaluate

if __name__ == "__main__":
  evaluate.run()
