"""`python -m bin.train_classifiers`: runs slt_tf/cli/train_classifiers.py."""

from slt_tf.cli import train_classifiers

if __name__ == "__main__":
  train_classifiers.run()
