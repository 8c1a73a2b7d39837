"""Step time on 1 and 2 replicas at the same global batch, and the cost of global moments.

  python -m bench.scaling [--config=configs/test.py --rounds=5 --steps_per_round=10]

The CPU is split into two logical devices; the same config is built under a 1-replica and a
2-replica MirroredStrategy and their steps (`strategy.run(train_step)`, as `fit()` runs them)
alternate round by round, so machine noise hits both alike. Then, on 2 replicas, it times
`losses.global_batch_moments` (two cross-replica all-reduces) against the same two-pass
moments of each replica's own slice (no reduction): their difference is what the global-batch
semantics cost per step. Finally `tf.config.experimental.enable_op_determinism()` is turned on
and the 1-replica step is timed again (fresh model). Medians of wall and process CPU time.
"""

import statistics
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf import distribution
from slt_tf import losses
from slt_tf import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/test.py", "Config to time.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating measurement rounds.")
_STEPS = flags.DEFINE_integer("steps_per_round", 10, "Steps per replica count per round.")
_CALLS = flags.DEFINE_integer("moment_calls", 200, "Moment computations per round.")


def _strategies():
  return {r: distribution.logical_cpu_strategy(r) for r in (1, 2)}


def _real_moments(config, channels):
  dim = train.feature_network(config, channels).feature_dim
  return np.zeros(dim, np.float32), np.ones(dim, np.float32)


def make_steps(config, strategy, channels):
  """A function running n training steps of `config` under `strategy`; returns (wall, cpu)."""
  search = train.build_model(config, strategy, channels, *_real_moments(config, channels))
  batch = config.batch_size
  dataset = tf.data.Dataset.range(10**9).batch(batch, drop_remainder=True)
  iterator = iter(strategy.experimental_distribute_dataset(dataset))

  @tf.function
  def step():
    logs = strategy.run(search.train_step, args=(next(iterator),))
    return strategy.experimental_local_results(logs["loss"])[0]

  def run(num_steps):
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_steps):
      loss = step()
    float(loss)  # Waits for the last step.
    return (time.perf_counter() - wall) / num_steps, (time.process_time() - cpu) / num_steps

  run(3)  # Trace and warm up.
  return run


def make_moments(strategy, batch, dim, reduce_across_replicas):
  """n calls of global (all-reduced) or per-replica (local) batch moments; returns (wall, cpu)."""
  rng = np.random.default_rng(0)
  halves = np.split(rng.standard_normal((batch, dim)).astype(np.float32),
                    strategy.num_replicas_in_sync)
  features = strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(halves[context.replica_id_in_sync_group]))

  def local_moments(x):  # The same two passes, without the all-reduces.
    mean = tf.reduce_mean(x, axis=0)
    return mean, tf.reduce_mean(tf.square(x - mean), axis=0)

  moments = (lambda x: losses.global_batch_moments(x)[:2]) if reduce_across_replicas \
      else local_moments

  @tf.function
  def calls(n):
    total = tf.zeros([dim])
    for _ in tf.range(n):
      mean, variance = strategy.run(moments, args=(features,))
      total += strategy.experimental_local_results(mean)[0] + \
          strategy.experimental_local_results(variance)[0]
    return total

  def run(n):
    wall, cpu = time.perf_counter(), time.process_time()
    calls(tf.constant(n)).numpy()
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n

  run(2)
  return run


def _median(samples):
  return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main(argv):
  del argv
  config = _CONFIG.value
  config.features.weights = "none"
  channels = 1 if config.dataset.name == "digits" else 3
  strategies = _strategies()
  steps = {r: make_steps(config, s, channels) for r, s in strategies.items()}
  samples = {1: [], 2: []}
  for _ in range(_ROUNDS.value):
    for replicas, run in steps.items():
      samples[replicas].append(run(_STEPS.value))
  (wall_1, cpu_1), (wall_2, cpu_2) = _median(samples[1]), _median(samples[2])
  print(f"config: generator={config.generator.name} image_size={config.dataset.image_size} "
        f"features={config.features.name} global batch={config.batch_size}")
  print(f"step, 1 replica : {1e3 * wall_1:8.2f} ms wall {1e3 * cpu_1:8.2f} ms cpu")
  print(f"step, 2 replicas: {1e3 * wall_2:8.2f} ms wall {1e3 * cpu_2:8.2f} ms cpu")
  print(f"2 / 1 replicas  : {wall_2 / wall_1:8.3f} wall     {cpu_2 / cpu_1:8.3f} cpu")

  dim = train.feature_network(config, channels).feature_dim
  moments = {reduce: make_moments(strategies[2], config.batch_size, dim, reduce)
             for reduce in (True, False)}
  moment_samples = {True: [], False: []}
  for _ in range(_ROUNDS.value):
    for reduce, run in moments.items():
      moment_samples[reduce].append(run(_CALLS.value))
  (global_wall, _), (local_wall, _) = _median(moment_samples[True]), _median(moment_samples[False])
  overhead = global_wall - local_wall
  print(f"moments on 2 replicas, [{config.batch_size // 2}, {dim}] each: global (all-reduced) "
        f"{1e6 * global_wall:.1f} us, local {1e6 * local_wall:.1f} us; reduction overhead "
        f"{1e6 * overhead:.1f} us = {100 * overhead / wall_2:.2f}% of a 2-replica step")

  tf.config.experimental.enable_op_determinism()
  deterministic = make_steps(config, strategies[1], channels)  # Built and traced after.
  pairs = [(deterministic(_STEPS.value), steps[1](_STEPS.value)) for _ in range(_ROUNDS.value)]
  on, off = _median([p[0] for p in pairs]), _median([p[1] for p in pairs])
  print(f"1 replica, op determinism on: {1e3 * on[0]:.2f} ms wall {1e3 * on[1]:.2f} ms cpu; "
        f"model traced before enabling it: {1e3 * off[0]:.2f} ms wall {1e3 * off[1]:.2f} ms cpu")

if __name__ == "__main__":
  distribution.split_cpu(2)
  app.run(main)
