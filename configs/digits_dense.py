"""The dense GFMN baseline of configs/digits.py: the same generator, loss and step budget, with
the kernels trained (no mask).

Command:
  python -m bin.find_ticket --config=configs/digits_dense.py --workdir=runs/digits_dense
The learning rate is the best of 1e-3, 3e-3 and 1e-2 (cosine decay) with this loss, generator
(`native_size=8`) and 600 steps on the validation split: FID 17.9 / 16.1 at seeds 0 / 2, against
17.1 / 18.4 at 1e-3 and 18.8 (seed 0) at 1e-2; 300 steps did no better (16.8 / 21.9);
docs/results.md ("Digits", "Fifth round").
"""

from slt_tf import config_schema

digits = config_schema.load_sibling(__file__, "digits")


def get_config():
  config = digits.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 3e-3
  return config
