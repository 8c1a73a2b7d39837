"""Choosing the tf.distribute strategy (the only place that knows about devices and workers).

Global semantics, whatever the strategy:
  * `batch_size` is the GLOBAL batch; step s uses the global sample indices s*B .. s*B+B-1,
    split into consecutive slices, one per replica, and z = sampling.latents(index, seed), so the
    latents of a step do not depend on the number of replicas or on restarts.
  * The feature moments of the loss are those of the global batch (losses.global_batch_moments
    all-reduces sums); scores and gradients are all-reduced by the optimiser.
  * Real feature statistics are computed once, by the chief, and broadcast (`broadcast_from_chief`)
    so every replica holds bit-identical ones (see docs/scaling.md for why not sharded).

Multi-worker runs (MultiWorkerMirroredStrategy from TF_CONFIG) train with `run_steps`, a
`strategy.run` loop around the model's own `train_step`, because Keras 3.15 `fit()` fails there
(keras-team/keras#20585: it reduces the `(x, y)` batch, and scalar step outputs fail
`reduce(..., axis=0)`). The loop drives the same Keras callbacks as `fit()`.
"""

from __future__ import annotations

import functools
import json
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import errors

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def split_cpu(num_replicas: int) -> None:
  """Splits the CPU into `num_replicas` logical devices (call before any TF op runs)."""
  if num_replicas <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_replicas)
  except RuntimeError as e:
    logical = len(tf.config.list_logical_devices("CPU"))
    if logical != num_replicas:
      raise errors.SltError(f"cannot split the CPU into {num_replicas} devices after TensorFlow "
                            f"started ({logical} already): set it first") from e


@functools.lru_cache(maxsize=None)
def logical_cpu_strategy(num_replicas: int) -> tf.distribute.MirroredStrategy:
  """A MirroredStrategy over the first `num_replicas` logical CPUs, one per process and count.

  Several MirroredStrategy objects over the same devices in one process reuse collective
  instance keys, and their all-reduces can then collide ("Shape mismatch in the collective
  instance"); tests and benchmarks that need several runs share this one.
  """
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  if len(cpus) < num_replicas:
    raise errors.SltError(f"{num_replicas} CPU replicas asked, {len(cpus)} logical CPUs exist; "
                          "split the CPU first (split_cpu)")
  return tf.distribute.MirroredStrategy(cpus[:num_replicas])


def _tf_config_workers() -> int:
  """Number of chief + worker tasks TF_CONFIG names (0 when it is unset)."""
  text = os.environ.get("TF_CONFIG", "")
  if not text:
    return 0
  try:
    cluster = json.loads(text).get("cluster", {})
  except (json.JSONDecodeError, AttributeError) as e:
    raise errors.SltError(f"TF_CONFIG is not a JSON object with a 'cluster' ({e}); see "
                          "docs/scaling.md for an example") from e
  return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def make_strategy(kind: str = "auto", cpu_replicas: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy for `kind`.

  auto: multi_worker when TF_CONFIG names a cluster of several tasks, else mirrored; on a
  machine with no GPU and no --cpu_replicas, TF's default (single-device) strategy, which does
  the same computation as a one-device MirroredStrategy without its per-step overhead
  (measured on the digits default: 142 vs 300 ms per step on 2 CPU cores).
  mirrored: MirroredStrategy over all local GPUs, else over the CPU (over `cpu_replicas`
  logical CPUs when > 1). one_device: the first GPU or the CPU.
  multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG (collectives chosen by TF: NCCL on
  GPUs, RING on CPUs).
  """
  if kind not in STRATEGIES:
    raise errors.SltError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGIES)}")
  if kind == "auto" and _tf_config_workers() > 1:
    kind = "multi_worker"
  if kind == "multi_worker":
    if not _tf_config_workers():
      raise errors.SltError("--strategy=multi_worker needs TF_CONFIG naming the cluster and this "
                            "task; see docs/scaling.md for an example")
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  if kind == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if gpus:
    return tf.distribute.MirroredStrategy()
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  if kind == "auto" and cpu_replicas <= 1:
    return tf.distribute.get_strategy()
  return logical_cpu_strategy(max(1, cpu_replicas))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True for the one task that writes checkpoints, summaries, samples and the ticket."""
  return bool(strategy.extended.should_checkpoint)


def broadcast_from_chief(strategy: tf.distribute.Strategy,
                         arrays: list[np.ndarray]) -> list[np.ndarray]:
  """Every worker gets the chief's `arrays` bit for bit (others pass arrays of the same shapes).

  An all-reduce SUM in which only replica 0 (the chief's first device) contributes its values
  and every other replica zeros: x + 0 == x exactly.
  """
  if not is_multi_worker(strategy):
    return [np.asarray(a) for a in arrays]
  chief = is_chief(strategy)

  def contribution(context):
    if context.replica_id_in_sync_group == 0 and not chief:
      raise errors.SltError("replica 0 is not on the chief task; put the chief (or worker 0) "
                            "first in TF_CONFIG")
    first = context.replica_id_in_sync_group == 0
    return [tf.constant(a) if first else tf.zeros(np.shape(a), tf.as_dtype(np.asarray(a).dtype))
            for a in arrays]

  per_replica = strategy.experimental_distribute_values_from_function(contribution)
  return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
          for value in per_replica]


def replica_sample_indices(start_step: int, num_steps: int, batch_size: int):
  """dataset_fn of `distribute_datasets_from_function`: this worker's slices of each global
  batch, one element per local replica in replica order (the MultiDeviceIterator hands
  consecutive elements to consecutive local replicas)."""

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica = context.get_per_replica_batch_size(batch_size)
    local_replicas = (context.num_replicas_in_sync // context.num_input_pipelines)
    first_replica = context.input_pipeline_id * local_replicas

    def slices(step):  # int64 [] -> local_replicas elements of int64 [per_replica]
      offsets = step * batch_size + (first_replica + tf.range(local_replicas, dtype=tf.int64)
                                     ) * per_replica
      return tf.data.Dataset.from_tensor_slices(
          offsets[:, None] + tf.range(per_replica, dtype=tf.int64)[None, :])

    return tf.data.Dataset.range(start_step, num_steps).flat_map(slices).prefetch(2)

  return dataset_fn


def run_steps(model: keras.Model, strategy: tf.distribute.Strategy, callbacks: list,
              start_step: int, num_steps: int, batch_size: int) -> None:
  """Trains steps start_step+1 .. num_steps with `strategy.run(model.train_step)`.

  The `fit()` of multi-worker runs: the same train_step (the maths lives only there), the same
  global sample indices, the same callbacks (on_train_begin / batch_begin / batch_end / end,
  `model.stop_training` honoured). Callbacks with a `stop_requested` attribute (preemption)
  are synchronised: the flags of all workers are summed every step, so every worker stops, and
  saves, at the same step.
  """
  if batch_size % strategy.num_replicas_in_sync:
    raise errors.SltError(f"batch_size {batch_size} is not divisible by the "
                          f"{strategy.num_replicas_in_sync} replicas")
  dataset = strategy.distribute_datasets_from_function(
      replica_sample_indices(start_step, num_steps, batch_size))
  stoppers = [c for c in callbacks if hasattr(c, "stop_requested")]

  def replica_step(sample_indices, stop_flag):
    logs = model.train_step(sample_indices)
    # ReduceOp has no MAX: a sum of 0/1 flags is > 0 when any worker asks to stop.
    # (tf.identity places the flag on this replica's device: all_reduce needs one.)
    agreed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                            tf.identity(stop_flag))
    return logs, agreed

  @tf.function
  def step(iterator, stop_flag):
    logs, agreed = strategy.run(replica_step, args=(next(iterator), stop_flag))
    # Every replica holds the same values (global moments): take this worker's first.
    first = lambda value: strategy.experimental_local_results(value)[0]
    return tf.nest.map_structure(first, logs), first(agreed)

  callback_list = keras.callbacks.CallbackList(callbacks, model=model)
  model.stop_training = False
  callback_list.on_train_begin()
  iterator = iter(dataset)
  logs = {}
  for batch in range(num_steps - start_step):
    callback_list.on_train_batch_begin(batch)
    local_flag = tf.constant(int(any(c.stop_requested for c in stoppers)), tf.int32)
    step_logs, agreed = step(iterator, local_flag)
    logs = {name: float(value) for name, value in step_logs.items()}
    for stopper in stoppers:
      stopper.stop_requested = bool(agreed.numpy() > 0)
    callback_list.on_train_batch_end(batch, logs)
    if model.stop_training:
      break
  callback_list.on_train_end(logs)
  logging.info("Multi-worker loop ended after step %d.", int(model.optimizer.iterations.numpy()))
