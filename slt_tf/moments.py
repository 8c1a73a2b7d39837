"""Per-feature mean and variance of real images, streamed in float64 and cached on disk.

The GFMN moment-matching loss (dos Santos et al., ICCV 2019, Sec. 3) compares the per-feature
mean and variance of a frozen network's features on generated images with the same statistics
over the whole real training set. The real statistics are computed once per (dataset, network)
and cached (`slt_tf.array_cache`); the cache key always contains the network's weight
fingerprint, so a stale file is never reused for different weights.
"""

from typing import Any

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import array_cache
from slt_tf import errors
from slt_tf import features


class RunningMoments:
  """Streaming per-feature mean and population variance, mergeable across shards.

  Keeps (count, mean, M2) with M2 = sum of squared deviations from the mean, in float64.
  Batches and shards are combined with the parallel update of Chan, Golub and LeVeque
  ("Updating formulae and a pairwise algorithm for computing sample variances", 1979):

      n = n_a + n_b,  delta = mean_b - mean_a,
      mean = mean_a + delta * n_b / n,
      M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.

  Each batch's own (mean, M2) is computed with the two-pass formula, so large offsets do not
  cancel catastrophically as in the one-pass E[x^2] - E[x]^2.
  """

  def __init__(self, dim: int):
    if dim < 1:
      raise errors.SltError(f"RunningMoments needs a feature dimension >= 1; got {dim}.")
    self.dim = int(dim)
    self.count = 0
    self._mean = np.zeros([self.dim], np.float64)
    self._m2 = np.zeros([self.dim], np.float64)

  def update(self, batch: np.ndarray) -> None:
    """Adds a batch of feature vectors, shape [B, dim] (any B >= 0)."""
    batch = np.asarray(batch, dtype=np.float64)
    if batch.ndim != 2 or batch.shape[1] != self.dim:
      raise errors.SltError(
          f"RunningMoments.update expects a [batch, {self.dim}] array; got shape {batch.shape}.")
    if batch.shape[0] == 0:
      return
    batch_mean = batch.mean(axis=0)
    batch_m2 = np.square(batch - batch_mean).sum(axis=0)
    self._combine(batch.shape[0], batch_mean, batch_m2)

  def merge(self, other: "RunningMoments") -> None:
    """Adds the statistics of another accumulator (e.g. another shard) to this one."""
    if other.dim != self.dim:
      raise errors.SltError(
          f"Cannot merge RunningMoments of dimension {other.dim} into dimension {self.dim}.")
    if other.count:
      self._combine(other.count, other._mean, other._m2)  # pylint: disable=protected-access

  def _combine(self, count_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
    count_a = self.count
    total = count_a + count_b
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (count_b / total)
    self._m2 = self._m2 + m2_b + np.square(delta) * (count_a * count_b / total)
    self.count = total

  def _check_not_empty(self) -> None:
    if self.count == 0:
      raise errors.SltError("RunningMoments has seen no examples; mean and variance are undefined.")

  @property
  def mean(self) -> np.ndarray:
    """float64 [dim]: per-feature mean."""
    self._check_not_empty()
    return self._mean.copy()

  @property
  def variance(self) -> np.ndarray:
    """float64 [dim]: per-feature population variance (ddof=0)."""
    self._check_not_empty()
    return self._m2 / self.count


def _full_key_parts(network: features.FeatureNetwork, key_parts: dict[str, Any]) -> dict[str, Any]:
  """Adds the network's name and fingerprint to the caller's key parts."""
  parts = dict(key_parts)
  for name, value in (("feature_network", network.name),
                      ("feature_network_fingerprint", network.fingerprint)):
    if name in parts and parts[name] != value:
      raise errors.SltError(
          f"key_parts[{name!r}] = {parts[name]!r} disagrees with the network's {value!r}; "
          "leave it out, real_feature_moments adds it.")
    parts[name] = value
  return parts


def _load_cache(cache: array_cache.CacheFile, feature_dim: int):
  """Returns (mean, variance) from a valid cache file, or None if it must be recomputed."""
  stored = cache.load()
  if stored is None:
    return None
  mean, variance, count = stored.get("mean"), stored.get("variance"), stored.get("count")
  if (mean is None or variance is None or count is None or mean.shape != (feature_dim,) or
      variance.shape != (feature_dim,) or int(count) < 1):
    logging.warning("Moments cache %s does not hold a mean and variance of %d features; "
                    "recomputing.", cache.path, feature_dim)
    return None
  logging.info("Loaded real feature moments of %d examples from %s.", int(count), cache.path)
  return mean, variance


def real_feature_moments(network: features.FeatureNetwork, images: tf.data.Dataset, *,
                         cache_dir: str | None, key_parts: dict[str, Any],
                         progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature mean and variance of `network` features over a whole dataset, cached.

  These are mu_r and var_r of the GFMN loss (docs/method.md, "The moment-matching loss").

  Args:
    network: the frozen feature network.
    images: batches of float32 [B, H, W, C] images in [-1, 1], or (images, labels) tuples.
      Iterated once, in full (do not pass a repeating dataset).
    cache_dir: directory of `moments-<sha256>.npz` files (`slt_tf.array_cache`); None disables
      caching.
    key_parts: JSON values identifying the data (dataset, split, image_size, data_dir, ...).
      The network's name and fingerprint are always added.
    progress: show a keras Progbar during the pass.

  Returns:
    (mean, variance): float32 [feature_dim] each; population variance (ddof=0).
  """
  parts = _full_key_parts(network, key_parts)
  cache = None
  if cache_dir is not None:
    cache = array_cache.cache_file(cache_dir, "moments-", parts)
    cached = _load_cache(cache, network.feature_dim)
    if cached is not None:
      return cached[0].astype(np.float32), cached[1].astype(np.float32)

  cardinality = int(images.cardinality())
  if cardinality == tf.data.INFINITE_CARDINALITY:
    raise errors.SltError("real_feature_moments needs a finite dataset; got a repeating one.")
  bar = keras.utils.Progbar(cardinality if cardinality >= 0 else None, unit_name="batch",
                            stateful_metrics=["examples"]) if progress else None
  compute_features = tf.function(network.__call__, reduce_retracing=True)
  moments = RunningMoments(network.feature_dim)
  step = 0
  for step, element in enumerate(images, start=1):
    batch = element[0] if isinstance(element, (tuple, list)) else element
    moments.update(compute_features(batch).numpy())
    if bar is not None:
      bar.update(step, values=[("examples", moments.count)], finalize=False)
  if bar is not None:
    bar.update(step, values=[("examples", moments.count)], finalize=True)
  if moments.count == 0:
    raise errors.SltError("real_feature_moments got an empty dataset; expected at least one image.")
  logging.info("Real feature moments: %d examples, %d features (%s).", moments.count,
               network.feature_dim, network.name)
  if cache is not None:
    cache.save({"mean": moments.mean, "variance": moments.variance,
                "count": np.int64(moments.count)})
    logging.info("Saved real feature moments of %d examples to %s.", moments.count, cache.path)
  return moments.mean.astype(np.float32), moments.variance.astype(np.float32)
