"""`python -m bin.generate_samples`: runs slt_tf/cli/generate_samples.py (installed as `slt-generate-samples`)."""

from slt_tf.cli import generate_samples

if __name__ == "__main__":
  generate_samples.run()
