"""The offline default: a ticket keeping 10% of a random DCGAN generator, on embedded digits.

Command:
  python -m bin.find_ticket --config=configs/digits.py --workdir=runs/digits
Data: the 1,797 handwritten digits scikit-learn ships (TFDS builder `digits`), 16x16 grey;
features: a small CNN trained on the digits training split on first use (cached).
Expected: recognisable digits in runs/digits/samples/final.png; see README for time and
numbers measured on a 2-core CPU.
"""

from slt_tf import config_schema as default


def get_config():
  config = default.get_config()
  config.num_steps = 1500
  config.batch_size = 64
  config.learning_rate = 3e-3
  config.loss.ama_learning_rate = 1e-3
  config.checkpoint_every_steps = 250
  config.sample_every_steps = 250
  return config
