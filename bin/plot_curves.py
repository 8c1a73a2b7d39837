"""`python -m bin.plot_curves`: runs slt_tf/cli/plot_curves.py."""

from slt_tf.cli import plot_curves

if __name__ == "__main__":
  plot_curves.run()
