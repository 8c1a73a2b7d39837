"""`python -m bin.sweep`: runs slt_tf/cli/sweep.py (installed as `slt-sweep`)."""

from slt_tf.cli import sweep

if __name__ == "__main__":
  sweep.run()
