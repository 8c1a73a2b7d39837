"""Ticket-search step time / dense step time, same generator and batch, measured side by side.

  python -m bench.step_time [--generator=resnet32 --batch_size=64 --rounds=7]

Both models are built in one process; every round runs a few dense steps then a few ticket
steps, so machine noise hits both alike; the ratios of the medians of wall time and of process
CPU time are printed (CPU time is the steadier one on a shared machine). Target: at most 1.10
(aim 1.05).
"""

import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf import features
from slt_tf import generators
from slt_tf import model as model_lib
from slt_tf import train
from slt_tf import workdir as workdir_lib

_GENERATOR = flags.DEFINE_string("generator", "resnet32", "Generator name.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image size.")
_FEATURES = flags.DEFINE_string("features", "digits_cnn", "Feature network (random weights).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch.")
_KEEP = flags.DEFINE_float("keep_fraction", 0.1, "Fraction of weights kept.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Alternating measurement rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 5, "Steps per model per round.")


def make_step(method: str, network):
  config = train.default_config.get_config()
  config.method = method
  config.keep_fraction = _KEEP.value
  config.generator.name = _GENERATOR.value
  config.dataset.image_size = _IMAGE_SIZE.value
  channels = 1 if _FEATURES.value == "digits_cnn" else 3
  spec = workdir_lib.spec_from_config(config, channels)
  generator = generators.build(spec)
  dim = network.feature_dim
  search = model_lib.TicketSearch(generator, network, np.zeros(dim, np.float32),
                                  np.ones(dim, np.float32), latent_seed=0)
  search.compile(optimizer=train._optimizer(config))  # pylint: disable=protected-access
  step = tf.function(search.train_step)
  counter = iter(range(10**9))

  def run(num_steps):
    for _ in range(num_steps):
      start = next(counter) * _BATCH.value
      logs = step(tf.range(start, start + _BATCH.value, dtype=tf.int64))
    float(logs["loss"])  # wait for the last step

  num_weights = sum(int(np.prod(l.kernel.shape)) for l in generator.weight_layers())
  return run, num_weights


def main(argv):
  del argv
  channels = 1 if _FEATURES.value == "digits_cnn" else 3
  network = features.build_feature_network(_FEATURES.value, image_size=_IMAGE_SIZE.value,
                                           channels=channels, weights=None)
  runs = {}
  for method in ("dense", "edge_popup"):
    runs[method], num_weights = make_step(method, network)
    runs[method](2)  # trace and warm up
  wall = {method: [] for method in runs}
  cpu = {method: [] for method in runs}
  for _ in range(_ROUNDS.value):
    for method, run in runs.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      run(_STEPS.value)
      wall[method].append((time.perf_counter() - start) / _STEPS.value)
      cpu[method].append((time.process_time() - start_cpu) / _STEPS.value)
  dense, ticket = (statistics.median(wall[m]) for m in ("dense", "edge_popup"))
  dense_cpu, ticket_cpu = (statistics.median(cpu[m]) for m in ("dense", "edge_popup"))
  print(f"generator {_GENERATOR.value} ({num_weights:,} weights), {_FEATURES.value} features, "
        f"batch {_BATCH.value}, keep {_KEEP.value}, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
  print(f"dense step   {dense * 1000:8.1f} ms wall, {dense_cpu * 1000:8.1f} ms CPU "
        f"(medians of {_ROUNDS.value} rounds x {_STEPS.value} steps)")
  print(f"ticket step  {ticket * 1000:8.1f} ms wall, {ticket_cpu * 1000:8.1f} ms CPU")
  print(f"ratio ticket/dense: wall {ticket / dense:.3f}, CPU {ticket_cpu / dense_cpu:.3f}  "
        "(target <= 1.10, aim 1.05)")


if __name__ == "__main__":
  app.run(main)
