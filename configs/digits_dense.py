"""The dense GFMN baseline of configs/digits.py: the same generator, loss and step budget, with
the kernels trained (no mask).

Command:
  python -m bin.find_ticket --config=configs/digits_dense.py --workdir=runs/digits_dense
The learning rate is the best of 3e-4, 1e-3 and 3e-3 (cosine decay) with this loss (both loss
networks twice), generator (`native_size=8`) and 600 steps on the validation split: FID 15.6 /
14.1 at seeds 0 / 2, against 18.9 / 15.1 at 3e-3 and 19.7 / 20.4 at 3e-4 (with the loss
networks once, 3e-3 was best: 17.9 / 16.1, 1e-3: 17.1 / 18.4, 1e-2: 18.8 at seed 0);
docs/results.md ("Digits", "Fifth round", "Sixth round").
"""

from slt_tf import config_schema

digits = config_schema.load_sibling(__file__, "digits")


def get_config():
  config = digits.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 1e-3
  return config
