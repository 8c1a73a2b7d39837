"""The dense GFMN baseline of configs/fashion_mnist.py: the same generator, loss and budget,
with the kernels trained (no mask). The learning rate is the best of those tried on the
validation split (docs/results.md).

  python -m bin.find_ticket --config=configs/fashion_mnist_dense.py --workdir=runs/fashion_dense
"""

from slt_tf import config_schema

fashion_mnist = config_schema.load_sibling(__file__, "fashion_mnist")


def get_config():
  config = fashion_mnist.get_config()
  config.method = "dense"
  config.generator.scale_fan = False  # Scaling for the pruned fan-in means nothing when dense.
  config.learning_rate = 3e-3
  return config
