"""Sample-quality metrics: FID, KID, Inception score, precision/recall/density/coverage.

The metrics work on activations of an evaluation network (e.g. Inception pool3 embeddings
and logits), never on images. Images are only seen batch by batch, by
`generated_activations` and `real_activations`, which keep the activations and drop the
images. Generated images are quantised to uint8 and back before the evaluation network sees
them, so they go through the same 256-level quantisation as the stored real images.

`eval_network` everywhere is an object with
  `__call__(images float32 [B, H, W, C] in [-1, 1]) -> (embedding [B, E], logits [B, K] or None)`,
  `.name`, `.fingerprint` (a string that changes whenever its outputs could change) and
  `.embedding_dim` (see `slt_tf.features.build_eval_network`).
"""

import hashlib
import io
import json
import math
import os
import resource
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import classifiers
from slt_tf import data
from slt_tf import features
from slt_tf import images as images_lib
from slt_tf import sampling
from slt_tf import summaries
from slt_tf import tfgan_compat
from slt_tf.errors import SltError

# Rows of a pairwise-distance block are chosen so that one float64 block is about this big.
_DISTANCE_BLOCK_BYTES = 128 * 2**20
# Rows the accumulator starts with when the number of samples is not known in advance.
_INITIAL_CAPACITY = 1024


class EvalNetwork(Protocol):
  """What the functions here need from an evaluation network."""

  name: str
  fingerprint: str
  embedding_dim: int

  def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    ...


def _check_features(name: str, features: Any, min_rows: int = 2) -> np.ndarray:
  """Returns `features` as an array after checking it is a finite [N >= min_rows, D] matrix."""
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] < min_rows or features.shape[1] < 1:
    raise SltError(f"{name} must be a matrix [num_samples >= {min_rows}, dim >= 1], "
                   f"got shape {features.shape}.")
  if not np.issubdtype(features.dtype, np.floating):
    features = features.astype(np.float64)
  if not np.all(np.isfinite(features)):
    raise SltError(f"{name} contains nan or inf values; activations must be finite.")
  return features


def _check_pair(real: Any, fake: Any, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
  real = _check_features("real activations", real, min_rows)
  fake = _check_features("fake activations", fake, min_rows)
  if real.shape[1] != fake.shape[1]:
    raise SltError(f"real and fake activations must have the same dimension, got "
                   f"{real.shape[1]} and {fake.shape[1]}.")
  return real, fake


def fid(real_activations: np.ndarray, fake_activations: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two activation sets, via TF-GAN.

  FID = |mu_r - mu_f|^2 + Tr(C_r + C_f - 2 (C_r C_f)^(1/2)) (Heusel et al. 2017, eq. 6),
  with unbiased sample covariances, computed in float64.

  Args:
    real_activations: [N_r, D].
    fake_activations: [N_f, D].

  Returns:
    The FID (lower is better).
  """
  real, fake = _check_pair(real_activations, fake_activations)
  distance = tfgan_compat.frechet_classifier_distance_from_activations(
      tf.constant(real, tf.float64), tf.constant(fake, tf.float64))
  return float(distance)


def kid(real_activations: np.ndarray, fake_activations: np.ndarray,
        max_block_size: int = 1024) -> tuple[float, float]:
  """Kernel Inception distance (Binkowski et al. 2018) and its standard error, via TF-GAN.

  The unbiased MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
  averaged over blocks (TF-GAN's block estimator, Zaremba et al. 2013): both sets are cut,
  in their given order, into ceil(max(N_r, N_f) / max_block_size) blocks of nearly equal
  size, so the sets should be in random order. Computed in float64.

  Args:
    real_activations: [N_r, D].
    fake_activations: [N_f, D].
    max_block_size: largest block; the default 1024 is TF-GAN's.

  Returns:
    (kid, standard error of the block mean). The standard error is nan with one block.
  """
  real, fake = _check_pair(real_activations, fake_activations)
  if max_block_size < 2:
    raise SltError(f"max_block_size must be an integer >= 2, got {max_block_size}.")
  num_blocks = math.ceil(max(len(real), len(fake)) / max_block_size)
  if min(len(real), len(fake)) < 2 * num_blocks:
    raise SltError(f"KID needs at least 2 samples per block: {num_blocks} blocks of at most "
                   f"{max_block_size}, got {len(real)} real and {len(fake)} fake samples.")
  mean, std = tfgan_compat.kernel_classifier_distance_and_std_from_activations(
      tf.constant(real, tf.float64), tf.constant(fake, tf.float64),
      max_block_size=max_block_size)
  return float(mean), float(std)


def inception_score(logits: np.ndarray, num_splits: int = 10) -> float:
  """Inception score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), via TF-GAN.

  Like the original implementation, the samples are cut into `num_splits` contiguous parts
  (sizes differing by at most one, `np.array_split`), p(y) is the mean prediction within a
  part, and the score is the mean of the per-part scores. TF-GAN's
  `classifier_score_from_logits` scores one part (float64 inside); `num_splits=1` is exactly
  TF-GAN's value on all samples. More splits give a lower score on the same samples, so
  compare scores only at the same number of splits and samples.

  Args:
    logits: [N, K] classifier logits of generated images.
    num_splits: number of parts, 1 <= num_splits <= N.

  Returns:
    The mean score over the parts (between 1 and K; higher is better).
  """
  logits = _check_features("logits", logits, min_rows=1)
  if not 1 <= num_splits <= len(logits):
    raise SltError(f"num_splits must be between 1 and the number of samples "
                   f"({len(logits)}), got {num_splits}.")
  scores = [float(tfgan_compat.classifier_score_from_logits(tf.constant(part, tf.float64)))
            for part in np.array_split(logits, num_splits)]
  return float(np.mean(scores))


def _distance_row_blocks(rows: np.ndarray, columns: np.ndarray, center: np.ndarray,
                         block_rows: int | None) -> Iterator[tuple[slice, np.ndarray]]:
  """Yields (row slice, squared Euclidean distances [rows in slice, N_columns]) in float64.

  Only `columns` (centered, float64) and one block are held at a time. Centering both sets
  at the same point leaves distances unchanged and keeps the expansion
  |x|^2 + |y|^2 - 2 x.y accurate.
  """
  columns = np.subtract(columns, center, dtype=np.float64)       # (N_c, D)
  column_norms = np.einsum("ij,ij->i", columns, columns)           # (N_c,)
  if block_rows is None:
    block_rows = max(1, _DISTANCE_BLOCK_BYTES // (8 * len(columns)))
  for start in range(0, len(rows), block_rows):
    block = slice(start, min(start + block_rows, len(rows)))
    row_chunk = np.subtract(rows[block], center, dtype=np.float64)  # (B, D)
    squared = row_chunk @ columns.T                                # (B, N_c)
    squared *= -2.0
    squared += np.einsum("ij,ij->i", row_chunk, row_chunk)[:, None]
    squared += column_norms[None, :]
    np.maximum(squared, 0.0, out=squared)
    yield block, squared


def _squared_knn_radii(features: np.ndarray, nearest_k: int, center: np.ndarray,
                       block_rows: int | None) -> np.ndarray:
  """Squared distance of each sample to its k-th nearest neighbour in the same set.

  As in Naeem et al.'s code, this is the (k+1)-th smallest distance of a row, the sample
  itself (distance 0) being the first.
  """
  radii = np.empty(len(features), np.float64)
  for block, squared in _distance_row_blocks(features, features, center, block_rows):
    radii[block] = np.partition(squared, nearest_k, axis=1)[:, nearest_k]
  return radii


def prdc(real_features: np.ndarray, fake_features: np.ndarray, nearest_k: int = 5, *,
         block_rows: int | None = None) -> dict[str, float]:
  """Precision, recall, density and coverage (Naeem et al. 2020, eqs. 1-4; Kynkaanniemi 2019).

  With B(x, r) the open ball around x and NND_k(x) the distance from x to its k-th nearest
  neighbour within its own set (real X_i, fake Y_j):
    precision = mean_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]
    recall    = mean_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]
    density   = 1/k mean_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
    coverage  = mean_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]
  Euclidean distances in float64, same conventions as the authors' `prdc` package.

  Memory: the distance matrices are never held whole. They are computed in blocks of
  `block_rows` rows (default: about 128 MiB of float64 per block), so besides the inputs
  the peak is one float64 copy of one set plus a few blocks: O((N + block_rows) * D +
  block_rows * N), not O(N^2). Time is O(N^2 D) (three matrix products).

  Args:
    real_features: [N_r, D], N_r > nearest_k.
    fake_features: [N_f, D], N_f > nearest_k.
    nearest_k: k of the k-nearest-neighbour balls (the paper uses 5).
    block_rows: rows per distance block; None picks it from the memory budget.

  Returns:
    {"precision", "recall", "density", "coverage"} as floats. Precision, recall and coverage
    are in [0, 1]; density can exceed 1.
  """
  if nearest_k < 1:
    raise SltError(f"nearest_k must be an integer >= 1, got {nearest_k}.")
  if block_rows is not None and block_rows < 1:
    raise SltError(f"block_rows must be None or an integer >= 1, got {block_rows}.")
  real, fake = _check_pair(real_features, fake_features, min_rows=nearest_k + 1)
  center = real.mean(axis=0, dtype=np.float64)
  real_radii = _squared_knn_radii(real, nearest_k, center, block_rows)  # (N_r,)
  fake_radii = _squared_knn_radii(fake, nearest_k, center, block_rows)  # (N_f,)

  fake_in_some_real_ball = np.zeros(len(fake), bool)
  real_balls_per_fake = np.zeros(len(fake), np.int64)
  real_in_some_fake_ball = np.empty(len(real), bool)
  real_ball_holds_a_fake = np.empty(len(real), bool)
  for block, squared in _distance_row_blocks(real, fake, center, block_rows):
    # squared: (B real, N_f fake).
    inside_real_balls = squared < real_radii[block, None]
    fake_in_some_real_ball |= inside_real_balls.any(axis=0)
    real_balls_per_fake += inside_real_balls.sum(axis=0)
    real_ball_holds_a_fake[block] = inside_real_balls.any(axis=1)
    real_in_some_fake_ball[block] = (squared < fake_radii[None, :]).any(axis=1)
  return {
      "precision": float(fake_in_some_real_ball.mean()),
      "recall": float(real_in_some_fake_ball.mean()),
      "density": float(real_balls_per_fake.mean() / nearest_k),
      "coverage": float(real_ball_holds_a_fake.mean()),
  }


def quantize_to_uint8(images: tf.Tensor) -> tf.Tensor:
  """[-1, 1] float images -> uint8 as real images are stored: clip(round((x + 1) * 127.5)).

  `tf.round` rounds halves to even; values outside [-1, 1] are clipped to 0 or 255. The one
  implementation is `slt_tf.images.to_uint8`.
  """
  return images_lib.to_uint8(images)


def dequantize(images_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1 (the inverse of quantize_to_uint8)."""
  images_uint8 = tf.convert_to_tensor(images_uint8)
  if images_uint8.dtype != tf.uint8:
    raise SltError(f"dequantize takes uint8 images, got {images_uint8.dtype.name}.")
  return tf.cast(images_uint8, tf.float32) / 127.5 - 1.0


class ActivationAccumulator:
  """Collects embeddings (and logits) batch by batch into preallocated float32 arrays.

  The arrays are allocated at the first batch, with `capacity` rows; with capacity None
  they start small and double when full. Images are never held.
  """

  def __init__(self, capacity: int | None):
    if capacity is not None and capacity < 1:
      raise SltError(f"capacity must be None or an integer >= 1, got {capacity}.")
    self._capacity = capacity
    self._embeddings: np.ndarray | None = None
    self._logits: np.ndarray | None = None
    self._has_logits: bool | None = None
    self.num_samples = 0

  def _grow_to(self, rows: int) -> None:
    self._embeddings = np.resize(self._embeddings, (rows, self._embeddings.shape[1]))
    if self._logits is not None:
      self._logits = np.resize(self._logits, (rows, self._logits.shape[1]))

  def add(self, embedding: Any, logits: Any = None) -> None:
    """Appends one batch: embedding [B, E] and logits [B, K] (or None, then always None)."""
    embedding = np.asarray(embedding, np.float32)
    logits = None if logits is None else np.asarray(logits, np.float32)
    batch = embedding.shape[0] if embedding.ndim == 2 else -1
    if batch < 0 or (logits is not None and (logits.ndim != 2 or len(logits) != batch)):
      raise SltError(f"eval network outputs must be embedding [B, E] and logits [B, K] or None, "
                     f"got {embedding.shape} and {None if logits is None else logits.shape}.")
    if self._embeddings is None:
      rows = self._capacity or max(_INITIAL_CAPACITY, batch)
      self._embeddings = np.empty((rows, embedding.shape[1]), np.float32)
      self._has_logits = logits is not None
      if logits is not None:
        self._logits = np.empty((rows, logits.shape[1]), np.float32)
    if (logits is not None) != self._has_logits:
      raise SltError("the eval network returned logits for some batches and None for others.")
    if (embedding.shape[1] != self._embeddings.shape[1] or
        (logits is not None and logits.shape[1] != self._logits.shape[1])):
      raise SltError("the eval network's output dimensions changed between batches.")
    end = self.num_samples + batch
    if end > len(self._embeddings):
      if self._capacity is not None:
        raise SltError(f"more than the {self._capacity} expected samples were added.")
      self._grow_to(max(end, 2 * len(self._embeddings)))
    self._embeddings[self.num_samples:end] = embedding
    if logits is not None:
      self._logits[self.num_samples:end] = logits
    self.num_samples = end

  def result(self) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (embeddings [N, E], logits [N, K] or None) of all samples added."""
    if self._embeddings is None:
      raise SltError("no activations were collected (zero samples).")
    if self._capacity is not None and self.num_samples != self._capacity:
      raise SltError(f"expected {self._capacity} samples, got {self.num_samples}.")
    if self.num_samples != len(self._embeddings):
      self._grow_to(self.num_samples)
    return self._embeddings, self._logits


def _log_speed(what: str, num_samples: int, seconds: float) -> None:
  logging.info("%s: %d samples in %.1f s (%.1f samples/s).", what, num_samples, seconds,
               num_samples / max(seconds, 1e-9))


def generated_activations(generate_batch: Callable[[int, int], tf.Tensor],
                          eval_network: EvalNetwork, *, num_samples: int, batch_size: int,
                          progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Activations of `num_samples` generated images, generated and embedded batch by batch.

  Args:
    generate_batch: `generate_batch(start_index, size)` returns float32 images
      [size, H, W, C] in [-1, 1] for global sample indices start_index .. start_index+size-1.
    eval_network: see the module docstring.
    num_samples: total number of images.
    batch_size: images per batch (the last batch may be smaller).
    progress: show a keras progress bar.

  Returns:
    (embeddings float32 [num_samples, E], logits float32 [num_samples, K] or None).
  """
  if num_samples < 1 or batch_size < 1:
    raise SltError(f"num_samples and batch_size must be integers >= 1, got {num_samples} "
                   f"and {batch_size}.")
  accumulator = ActivationAccumulator(num_samples)
  progress_bar = keras.utils.Progbar(num_samples, unit_name="sample") if progress else None
  start_time = time.perf_counter()
  for start in range(0, num_samples, batch_size):
    size = min(batch_size, num_samples - start)
    images = tf.convert_to_tensor(generate_batch(start, size))
    if images.shape.rank != 4 or images.shape[0] != size:
      raise SltError(f"generate_batch({start}, {size}) must return images [{size}, H, W, C], "
                     f"got shape {images.shape}.")
    accumulator.add(*eval_network(dequantize(quantize_to_uint8(images))))
    del images
    if progress_bar is not None:
      progress_bar.update(start + size)
  _log_speed("Generated activations", num_samples, time.perf_counter() - start_time)
  return accumulator.result()


def _image_batches(images_dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Maps dataset elements (images, (images, ...), or {"image": images}) to [-1, 1] batches."""
  spec = images_dataset.element_spec
  if isinstance(spec, dict):
    if "image" not in spec:
      raise SltError(f"a dict dataset must have an 'image' key, got keys {sorted(spec)}.")
    images_dataset, spec = images_dataset.map(lambda x: x["image"]), spec["image"]
  elif isinstance(spec, tuple):
    images_dataset, spec = images_dataset.map(lambda *x: x[0]), spec[0]
  if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
    raise SltError(f"the real-image dataset must yield batches [B, H, W, C], got {spec}.")
  if spec.dtype == tf.uint8:
    return images_dataset.map(dequantize)
  if spec.dtype.is_floating:
    return images_dataset.map(lambda x: tf.cast(x, tf.float32))
  raise SltError(f"real images must be uint8 or float in [-1, 1], got {spec.dtype.name}.")


def _compute_real_activations(images_dataset: tf.data.Dataset, eval_network: EvalNetwork,
                              num_samples: int | None,
                              progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
  batches = _image_batches(images_dataset)
  accumulator = ActivationAccumulator(num_samples)
  progress_bar = keras.utils.Progbar(num_samples, unit_name="sample") if progress else None
  start_time = time.perf_counter()
  for images in batches:
    if num_samples is not None:
      images = images[:num_samples - accumulator.num_samples]
    accumulator.add(*eval_network(images))
    del images
    if progress_bar is not None:
      progress_bar.update(accumulator.num_samples)
    if accumulator.num_samples == num_samples:
      break
  if num_samples is not None and accumulator.num_samples < num_samples:
    raise SltError(f"the real-image dataset has only {accumulator.num_samples} images, "
                   f"num_samples={num_samples} requested.")
  _log_speed("Real activations", accumulator.num_samples, time.perf_counter() - start_time)
  return accumulator.result()


def _cache_key(key_parts: dict, eval_network: EvalNetwork,
               num_samples: int | None) -> tuple[str, str]:
  """Returns (canonical JSON of everything the activations depend on, its sha256)."""
  parts = dict(key_parts, eval_network_name=eval_network.name,
               eval_network_fingerprint=eval_network.fingerprint, num_samples=num_samples)
  try:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
  except TypeError as error:
    raise SltError(f"key_parts must be JSON-serialisable (str, int, float, bool, None, "
                   f"lists, dicts): {error}") from error
  return canonical, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _read_cache(path: str, canonical_key: str) -> tuple[np.ndarray, np.ndarray | None] | None:
  """Returns the cached activations if `path` exists and was stored under the same key."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      with np.load(io.BytesIO(f.read()), allow_pickle=False) as stored:
        stored_key = str(stored["key"])
        embeddings = stored["embeddings"]
        logits = stored["logits"] if "logits" in stored else None
  except (OSError, ValueError, KeyError) as error:
    raise SltError(f"the activation cache {path} is unreadable ({error}); delete it.") from error
  if stored_key != canonical_key:
    logging.warning("Activation cache %s was stored for %s, not %s: recomputing.", path,
                    stored_key, canonical_key)
    return None
  return embeddings, logits


def _write_cache(path: str, canonical_key: str, embeddings: np.ndarray,
                 logits: np.ndarray | None) -> None:
  """Writes the npz to a temporary name, then renames it (atomic on local disks)."""
  buffer = io.BytesIO()
  arrays = {"key": np.array(canonical_key), "embeddings": embeddings}
  if logits is not None:
    arrays["logits"] = logits
  np.savez(buffer, **arrays)
  temporary = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(temporary, path, overwrite=True)


def real_activations(images_dataset: tf.data.Dataset, eval_network: EvalNetwork, *,
                     num_samples: int | None, cache_dir: str | None, key_parts: dict,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Activations of real images, cached on disk.

  The cache file is `cache_dir/real_activations_<sha256>.npz` (no pickle), where the hash is
  over `key_parts`, the eval network's name and fingerprint and `num_samples`. A file is
  reused only when the key stored inside it equals the current one; otherwise the
  activations are recomputed and the file replaced.

  Args:
    images_dataset: batches [B, H, W, C], uint8 or float in [-1, 1]; elements may also be
      tuples (images first) or dicts with an "image" key. Its order decides which images are
      used, so it must be deterministic for the cache to be meaningful.
    eval_network: see the module docstring.
    num_samples: how many images to use (the first ones); None for the whole dataset.
    cache_dir: directory of the cache (created if missing); None disables the cache.
    key_parts: JSON-serialisable description of the images, e.g. dataset name, split,
      resolution, preprocessing.
    progress: show a keras progress bar.

  Returns:
    (embeddings float32 [N, E], logits float32 [N, K] or None).
  """
  if num_samples is not None and num_samples < 1:
    raise SltError(f"num_samples must be None or an integer >= 1, got {num_samples}.")
  canonical_key, digest = _cache_key(key_parts, eval_network, num_samples)
  path = None
  if cache_dir is not None:
    path = os.path.join(cache_dir, f"real_activations_{digest}.npz")
    cached = _read_cache(path, canonical_key)
    if cached is not None:
      logging.info("Real activations loaded from %s.", path)
      return cached
  embeddings, logits = _compute_real_activations(images_dataset, eval_network, num_samples,
                                                 progress)
  if path is not None:
    tf.io.gfile.makedirs(cache_dir)
    _write_cache(path, canonical_key, embeddings, logits)
    logging.info("Real activations cached in %s.", path)
  return embeddings, logits


def compute_metrics(real_emb: np.ndarray, real_logits: np.ndarray | None,
                    fake_emb: np.ndarray, fake_logits: np.ndarray | None, *,
                    nearest_k: int = 5, inception_splits: int = 10) -> dict[str, float | None]:
  """All metrics of generated against real activations.

  Args:
    real_emb: [N_r, E] real embeddings.
    real_logits: [N_r, K] or None; only checked against fake_logits (the Inception score is
      a property of the generated samples alone).
    fake_emb: [N_f, E] generated embeddings.
    fake_logits: [N_f, K] or None.
    nearest_k: k of precision/recall/density/coverage.
    inception_splits: splits of the Inception score (at most N_f).

  Returns:
    {"fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
    "coverage"}. inception_score is None without logits; kid_std is None when KID used a
    single block (fewer than 1025 samples).
  """
  if (real_logits is not None and fake_logits is not None and
      np.shape(real_logits)[1:] != np.shape(fake_logits)[1:]):
    raise SltError(f"real and fake logits must have the same number of classes, got "
                   f"{np.shape(real_logits)} and {np.shape(fake_logits)}.")
  kid_mean, kid_std = kid(real_emb, fake_emb)
  metrics = {
      "fid": fid(real_emb, fake_emb),
      "kid": kid_mean,
      "kid_std": None if math.isnan(kid_std) else kid_std,
      "inception_score": (None if fake_logits is None else
                          inception_score(fake_logits, inception_splits)),
  }
  metrics.update(prdc(real_emb, fake_emb, nearest_k))
  return metrics


# ------------------------------------------------------------ Evaluating a generator.

# Latent stream of the evaluation samples: sample i uses latent `sampling.latents([i], stream)`.
# Training draws from stream `config.seed` and the sample grids from stream 0, so this one is
# disjoint from both, and every run (any seed, dense or ticket) is scored on the same latents.
EVAL_LATENT_STREAM = 1_000_003
# Real held-out images used at most (docs/method.md: FID against 10,000 held-out real images).
MAX_REAL_EXAMPLES = 10_000
METRIC_NAMES = ("fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
                "coverage")


def peak_memory_mb() -> float:
  """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Evaluator:
  """Scores generators against fixed real activations on fixed evaluation latents.

  Build it once (it holds the eval network and the real activations), call it on any
  generator mapping latents [B, latent_dim] to images in [-1, 1].
  """

  def __init__(self, eval_network: EvalNetwork, real_embeddings: np.ndarray,
               real_logits: np.ndarray | None, *, num_samples: int, batch_size: int,
               info: Mapping[str, Any] | None = None):
    if num_samples < 2 or batch_size < 1:
      raise SltError(f"num_samples must be an integer >= 2 and batch_size >= 1, got "
                     f"{num_samples} and {batch_size}.")
    self.eval_network = eval_network
    self.real_embeddings = real_embeddings
    self.real_logits = real_logits
    self.num_samples = num_samples
    self.batch_size = batch_size
    self.info = dict(info or {})

  def __call__(self, generator: keras.Model, *, progress: bool = False) -> dict[str, Any]:
    """Metrics of `generator` (inference mode: batch-norm moving statistics).

    Returns:
      The `compute_metrics` values plus num_samples, num_real, eval_network,
      eval_network_fingerprint, samples_per_second (generation + embedding),
      peak_memory_mb and the evaluator's `info` (dataset, split, ...).
    """
    latent_dim = int(generator.spec.latent_dim)

    @tf.function
    def generate(indices):  # (B,) int64 -> (B, H, W, C)
      return generator(sampling.latents(indices, latent_dim, EVAL_LATENT_STREAM),
                       training=False)

    def generate_batch(start: int, size: int) -> tf.Tensor:
      return generate(tf.range(start, start + size, dtype=tf.int64))

    start_time = time.perf_counter()
    fake_embeddings, fake_logits = generated_activations(
        generate_batch, self.eval_network, num_samples=self.num_samples,
        batch_size=self.batch_size, progress=progress)
    seconds = time.perf_counter() - start_time
    if not np.all(np.isfinite(fake_embeddings)):
      raise SltError("the generator's images give nan or inf activations; the generator "
                     "outputs non-finite values.")
    result: dict[str, Any] = dict(self.info)
    result.update(compute_metrics(self.real_embeddings, self.real_logits, fake_embeddings,
                                  fake_logits))
    result.update(
        num_samples=self.num_samples, num_real=int(len(self.real_embeddings)),
        eval_network=self.eval_network.name,
        eval_network_fingerprint=self.eval_network.fingerprint,
        samples_per_second=self.num_samples / max(seconds, 1e-9),
        peak_memory_mb=peak_memory_mb())
    return result


_DEFAULT_EVAL_NETWORKS = {data.DIGITS: "digits_eval_cnn", data.FASHION_MNIST: "fashion_eval_cnn"}


def real_reference_metrics(evaluator: Evaluator, images_dataset: tf.data.Dataset,
                           num_samples: int) -> dict[str, Any]:
  """The metrics of `num_samples` REAL images (e.g. training images) against the evaluator's
  real set: what a perfect generator reaches with that many samples. Images are quantised to
  uint8 like generated ones."""
  quantised = _image_batches(images_dataset).map(lambda x: dequantize(quantize_to_uint8(x)))
  embeddings, logits = _compute_real_activations(quantised, evaluator.eval_network, num_samples,
                                                 progress=False)
  result: dict[str, Any] = dict(evaluator.info)
  result.update(compute_metrics(evaluator.real_embeddings, evaluator.real_logits, embeddings,
                                logits))
  result.update(num_samples=num_samples, num_real=int(len(evaluator.real_embeddings)),
                eval_network=evaluator.eval_network.name)
  return result


def default_eval_network(dataset_name: str) -> str:
  """The eval network when the config leaves it empty: the dataset's own classifier where it
  has one (digits, fashion_mnist), else Inception."""
  return _DEFAULT_EVAL_NETWORKS.get(dataset_name, "inception_v3")


def build_evaluator(*, dataset_name: str, image_size: int, data_dir: str | None = None,
                    eval_network: str = "", weights: str | None = "default",
                    cache_dir: str | None = None, num_samples: int, batch_size: int = 250,
                    progress: bool = False, split: str = "test",
                    source_dir: str = "") -> Evaluator:
  """An Evaluator on the held-out (or validation) split of `dataset_name`.

  Args:
    dataset_name: 'digits' or a TFDS name.
    image_size: side of the generated (and real) images.
    data_dir: TFDS data directory (None: the TFDS default).
    eval_network: one of features.EVAL_NETWORKS, or "" for `default_eval_network`.
    weights: eval network weights, as in `features.build_eval_network`.
    cache_dir: cache of the digits eval network and the real activations
      (None: features.DEFAULT_CACHE_DIR).
    num_samples: generated samples per evaluation.
    batch_size: images per generator / eval network call.
    progress: show progress bars.
    split: "test" (`data.held_out_split`: reported numbers) or "validation"
      (`data.validation_split`: where hyperparameters are chosen).
    source_dir: local source files of the dataset (`data.prepare`).

  Returns:
    The Evaluator; its `info` holds dataset, split, image_size.
  """
  eval_network = eval_network or default_eval_network(dataset_name)
  cache_dir = os.path.expanduser(cache_dir or features.DEFAULT_CACHE_DIR)
  split = data.evaluation_split(dataset_name, split)
  data.prepare(dataset_name, data_dir, source_dir)
  if eval_network in classifiers.RECIPES and weights == "default":
    classifiers.prepare(eval_network, image_size, cache_dir=cache_dir, data_dir=data_dir)
  channels = data.num_channels(dataset_name)
  network = features.build_eval_network(eval_network, image_size=image_size, channels=channels,
                                        weights=weights, cache_dir=cache_dir, data_dir=data_dir)
  images = data.load_images(dataset_name, split, image_size=image_size, batch_size=batch_size,
                            data_dir=data_dir)
  images = images.unbatch().take(MAX_REAL_EXAMPLES).batch(batch_size)
  key_parts = {"dataset": dataset_name, "split": split, "image_size": image_size,
               "data_dir": os.path.abspath(data_dir) if data_dir else "",
               "max_examples": MAX_REAL_EXAMPLES}
  real_embeddings, real_logits = real_activations(
      images, network, num_samples=None, cache_dir=cache_dir, key_parts=key_parts,
      progress=progress)
  return Evaluator(network, real_embeddings, real_logits, num_samples=num_samples,
                   batch_size=batch_size,
                   info={"dataset": dataset_name, "split": split, "image_size": image_size})


def evaluator_from_config(config: Any, *, num_samples: int | None = None,
                          batch_size: int = 250, cache_dir: str | None = None,
                          progress: bool = False, split: str | None = None) -> Evaluator:
  """`build_evaluator` with the arguments a run's config gives (ConfigDict or its JSON dict).

  Reads dataset.{name, image_size, data_dir}, eval.{network, weights, num_samples} and
  features.cache_dir ("" means the default cache); `num_samples`, `cache_dir` and `split`
  (default eval.split) override.
  """
  dataset, eval_config = config["dataset"], config["eval"]
  weights = eval_config["weights"]
  return build_evaluator(
      dataset_name=dataset["name"], image_size=int(dataset["image_size"]),
      data_dir=dataset["data_dir"] or None, eval_network=eval_config["network"],
      weights=None if weights == "none" else weights,
      cache_dir=cache_dir or config["features"]["cache_dir"] or None,
      num_samples=int(num_samples or eval_config["num_samples"]), batch_size=batch_size,
      progress=progress, split=split or eval_config.get("split", "test"),
      source_dir=dataset.get("source_dir", ""))


def write_scalars(log_dir: str, step: int, metrics: Mapping[str, Any]) -> None:
  """Writes the numeric metrics as TensorBoard scalars `eval/<name>` at `step`."""
  writer = summaries.writer(log_dir)  # One events file per run and process.
  with writer.as_default(step=step):
    for name in METRIC_NAMES + ("samples_per_second",):
      value = metrics.get(name)
      if value is not None:
        tf.summary.scalar(f"eval/{name}", float(value))
  writer.flush()


class PeriodicEvaluation(keras.callbacks.Callback):
  """Evaluates `model.generator` every `every_steps` steps and at the end of training.

  Scalars go to TensorBoard (`log_dir`, usually W/tensorboard/eval). The curve is for
  watching a run; the number to report is the final one from `bin/evaluate` (docs/method.md:
  never select checkpoints on the reported split).
  """

  def __init__(self, evaluator: Evaluator, log_dir: str, every_steps: int):
    super().__init__()
    if every_steps < 1:
      raise SltError(f"every_steps must be an integer >= 1, got {every_steps}.")
    self.evaluator = evaluator
    self.log_dir = log_dir
    self.every_steps = every_steps
    self.last_step: int | None = None

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def evaluate(self) -> None:
    step = self._step()
    if step == self.last_step:
      return
    metrics = self.evaluator(self.model.generator)
    write_scalars(self.log_dir, step, metrics)
    self.last_step = step
    logging.info("step %d eval: fid=%.4g kid=%.4g precision=%.3f recall=%.3f (%.0f samples/s)",
                 step, metrics["fid"], metrics["kid"], metrics["precision"], metrics["recall"],
                 metrics["samples_per_second"])

  def on_train_batch_end(self, batch, logs=None):
    if self._step() % self.every_steps == 0:
      self.evaluate()

  def on_train_end(self, logs=None):
    self.evaluate()
