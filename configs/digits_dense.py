"""The dense GFMN baseline of configs/digits.py: the same generator, loss and step budget, with
the kernels trained (no mask).

Command:
  python -m bin.find_ticket --config=configs/digits_dense.py --workdir=runs/digits_dense
The learning rate is the best of 3e-3, 1e-2 and 3e-2 (cosine decay) on the validation split:
FID 25.8, 23.4 and 166.7 (diverged); docs/results.md ("Digits").
"""

from slt_tf import config_schema

digits = config_schema.load_sibling(__file__, "digits")


def get_config():
  config = digits.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 1e-2
  return config
