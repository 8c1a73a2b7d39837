"""Choosing the tf.distribute strategy (the only place that knows about devices)."""

from __future__ import annotations

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


def make_strategy(kind: str = "auto", cpu_replicas: int = 0) -> tf.distribute.Strategy:
  """Returns the strategy for `kind`.

  auto / mirrored: MirroredStrategy over all local GPUs, else over the CPU (over
  `cpu_replicas` logical CPUs when > 1). one_device: the first GPU or the CPU.
  multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.
  """
  if kind not in STRATEGIES:
    raise errors.SltError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGIES)}")
  if kind == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  if kind == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if gpus:
    return tf.distribute.MirroredStrategy()
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  if cpu_replicas > 1:
    if len(cpus) < cpu_replicas:
      raise errors.SltError(f"{cpu_replicas} CPU replicas asked, {len(cpus)} logical CPUs exist")
    return tf.distribute.MirroredStrategy(cpus[:cpu_replicas])
  return tf.distribute.MirroredStrategy(cpus[:1])
