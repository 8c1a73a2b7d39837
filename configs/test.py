"""A tiny config for tests and smoke runs (seconds on a CPU).

Command:
  python -m bin.find_ticket --config=configs/test.py --workdir=/tmp/slt_test
"""

from slt_tf import config_schema as default


def get_config():
  config = default.get_config()
  config.num_steps = 40
  config.batch_size = 16
  config.learning_rate = 1e-2
  config.loss.ama_learning_rate = 1e-3
  config.dataset.image_size = 8
  config.generator.latent_dim = 16
  config.generator.filters = (32, 16)
  config.checkpoint_every_steps = 10
  config.log_every_steps = 10
  config.sample_every_steps = 20
  config.num_sample_images = 16
  config.eval.num_samples = 256
  return config
