"""The dense GFMN baseline of configs/digits.py: the same generator, loss and step budget, with
the kernels trained (no mask).

Command:
  python -m bin.find_ticket --config=configs/digits_dense.py --workdir=runs/digits_dense
The learning rate is the best of 3e-4, 1e-3 and 3e-3 (cosine decay) on the validation split
with this loss, generator (layers stopping at 8x8) and 1,600 steps: 3e-3, FID 12.99 +- 0.19
over seeds 0-3, against 14.08 +- 0.68 at 1e-3 and 17.26 at 3e-4 (seed 0); docs/results.md
("Eighth round"). With the earlier 600-step 16x16 generator 1e-3 was best ("Sixth round").
It inherits the default's averaging (`ema_momentum=0.99`, here of the kernels): validation
12.64 +- 0.46 against 12.99 +- 0.19 without, better at three seeds of four ("Ninth round").
"""

from slt_tf import config_schema

digits = config_schema.load_sibling(__file__, "digits")


def get_config():
  config = digits.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 3e-3
  return config
