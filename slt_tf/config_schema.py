"""Every config key slt_tf knows, with its default (configs/*.py start from this one), and
loading config files by path.

Keys that a config file or `--config.<key>=...` sets but this file does not define are
rejected: a typo never silently falls back to a default. Config files import this module (not
a top-level `configs` package), so they load by path from any directory once slt_tf is
installed.
"""

from __future__ import annotations

import os
import runpy
import types

import ml_collections

from slt_tf import errors


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                    # frozen weights, scores, latents: all derive from it
  config.num_steps = 2000
  config.batch_size = 64             # GLOBAL batch (split over replicas)
  config.method = "edge_popup"       # edge_popup | global_edge_popup | dense | gem_miner | imp
  config.keep_fraction = 0.1         # fraction of weights KEPT (0.1 keeps 10%)
  config.learning_rate = 5e-5        # Adam on the scores (dense: on the kernels)
  config.beta_1 = 0.5
  config.beta_2 = 0.999
  config.lr_schedule = "constant"    # constant | cosine (decay over the whole run)
  config.ema_momentum = 0.0          # 0 = off; m in (0, 1): the run ends on the exponential
  # moving average (momentum m) of the trained variables: scores (dense: kernels), Keras's
  # optimizer EMA, so the ticket is the top-k of the averaged scores (docs/method.md)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "digits"     # any TFDS image dataset, or the embedded `digits`
  config.dataset.data_dir = ""       # TFDS data_dir ("" = TFDS default)
  config.dataset.source_dir = ""     # local source files ("" = the dataset's default; for
  # fashion_mnist the IDX files of Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist)
  config.dataset.image_size = 16

  config.generator = ml_collections.ConfigDict()
  config.generator.name = "dcgan"    # resnet32 | resnet64 | sngan32 | sngan64 | dcgan
  config.generator.latent_dim = 128
  config.generator.filters = ()      # () = the architecture's default widths
  config.generator.weight_init = "signed_kaiming_constant"  # | kaiming_normal | normal_002
  # | uniform_01. With global_edge_popup prefer uniform_01: kaiming_uniform's bound
  # 1/sqrt(fan_in) makes wide-fan-in layers start (almost) fully masked under one threshold.
  config.generator.score_init = "kaiming_uniform"
  config.generator.scale_fan = False  # kaiming_normal with fan_in scaled by keep_fraction
  config.generator.mask_bias = False
  config.generator.native_size = 0  # 0 = off; N: images averaged to NxN before tanh, then
  # resized bilinearly to image_size, as the data pipeline resizes a dataset stored at NxN;
  # with `filters` listed only up to NxN (one count fewer per halving) the layers stop there
  config.generator.init_checkpoint = ""  # "" = frozen weights from the seed; a method=dense
  # run's workdir or .../ckpt-N: its trained weights (slt_tf/init_checkpoint.py)

  config.features = ml_collections.ConfigDict()
  config.features.name = "digits_cnn"  # inception_v3 | vgg19 | digits_cnn | digits_cnn_deep
  # | fashion_cnn | fashion_inception, or several joined by "+" (features concatenated);
  # digits_cnn#K / digits_cnn_deep#K (K >= 1): another copy, trained from seed + 1000 K
  config.features.weights = "default"  # default (imagenet / trained digits net) | none | PATH
  config.features.cache_dir = ""       # "" = ~/.cache/slt_tf

  # method=imp: iterative magnitude pruning with weight rewinding (slt_tf/imp.py). Trains
  # num_steps dense, then `rounds` times: prune to keep_fraction ** (r / rounds), rewind the kept
  # weights to step rewind_step, train num_steps - rewind_step more steps.
  config.imp = ml_collections.ConfigDict()
  config.imp.rounds = 3
  config.imp.rewind_step = 20        # < num_steps
  config.imp.scope = "layer"         # layer (k per layer) | global (one threshold)

  # method=gem_miner (slt_tf/gem_miner.py): scores in [0, 1] (needs generator.score_init =
  # unit_uniform), mask = scores >= 0.5, loss + lambda * ||scores||^2: while more than
  # keep_fraction is kept, lambda is on and grows from `regularization` by anneal_factor every
  # anneal_every steps; at or below keep_fraction it is 0. The kept fraction reached is reported.
  config.gem_miner = ml_collections.ConfigDict()
  config.gem_miner.regularization = 1e-5
  config.gem_miner.anneal_every = 10
  config.gem_miner.anneal_factor = 1.5

  config.loss = ml_collections.ConfigDict()
  config.loss.ama_learning_rate = 1e-5

  config.checkpoint_every_steps = 500
  config.log_every_steps = 50
  config.sample_every_steps = 500
  config.num_sample_images = 64

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 0          # 0 = only when bin/evaluate is run
  config.eval.num_samples = 10000
  config.eval.network = ""             # "" = inception_v3 (digits: digits_eval_cnn,
  # fashion_mnist: fashion_eval_cnn); fid_inception = the 2015 FID graph of published FIDs
  # (needs eval.weights=PATH; inception_v3's FIDs are not comparable to published ones)
  config.eval.split = "test"           # test (reported numbers) | validation (tuning)
  config.eval.weights = "default"      # default | none (random) | PATH (a local file)
  return config


def load_file(path: str) -> ml_collections.ConfigDict:
  """Runs the config file at `path` (e.g. configs/digits.py) and returns its get_config()."""
  if not os.path.isfile(path):
    raise errors.SltError(f"config file {path} does not exist; pass a Python file that defines "
                          "get_config(), e.g. configs/digits.py")
  namespace = runpy.run_path(path)
  if "get_config" not in namespace:
    raise errors.SltError(f"config file {path} defines no get_config(); see configs/digits.py")
  return namespace["get_config"]()


def load_sibling(file: str, name: str) -> types.SimpleNamespace:
  """The config file `name`.py in the directory of `file`, loaded by path (for configs that
  extend another one: configs/ is not an installed package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py")
  return types.SimpleNamespace(**runpy.run_path(path))
