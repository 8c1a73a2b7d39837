"""The dense GFMN baseline of configs/digits.py: the same generator, loss and step budget, with
the kernels trained (no mask).

Command:
  python -m bin.find_ticket --config=configs/digits_dense.py --workdir=runs/digits_dense
The learning rate is the better of 3e-3 and 1e-2 (cosine decay) with this loss on the validation
split, seeds 0 and 2: FID 22.0 / 25.0 against 24.5 / 42.2 (with `digits_cnn_deep` alone, 3e-2
diverged); docs/results.md ("Digits").
"""

from slt_tf import config_schema

digits = config_schema.load_sibling(__file__, "digits")


def get_config():
  config = digits.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 3e-3
  return config
