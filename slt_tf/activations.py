"""Images to activations: generated and real images streamed through an evaluation network.

Images are only seen batch by batch: `generated_activations` and `real_activations` keep the
activations (`slt_tf.metrics` scores them) and drop the images. Generated images are quantised
to uint8 and back before the evaluation network sees them, so they go through the same
256-level quantisation as the stored real images. Real activations are cached on disk
(`slt_tf.array_cache`).

`eval_network` everywhere is an object with
  `__call__(images float32 [B, H, W, C] in [-1, 1]) -> (embedding [B, E], logits [B, K] or None)`,
  `.name`, `.fingerprint` (a string that changes whenever its outputs could change) and
  `.embedding_dim` (see `slt_tf.features.build_eval_network`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import array_cache
from slt_tf import images as images_lib
from slt_tf.errors import SltError

# Rows the accumulator starts with when the number of samples is not known in advance.
_INITIAL_CAPACITY = 1024


class EvalNetwork(Protocol):
  """What the functions here need from an evaluation network."""

  name: str
  fingerprint: str
  embedding_dim: int

  def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    ...


def dequantize(images_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1 (inverse of `images.to_uint8`)."""
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
    accumulator.add(*eval_network(dequantize(images_lib.to_uint8(images))))
    del images
    if progress_bar is not None:
      progress_bar.update(start + size)
  _log_speed("Generated activations", num_samples, time.perf_counter() - start_time)
  return accumulator.result()


def image_batches(images_dataset: tf.data.Dataset) -> tf.data.Dataset:
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
  batches = image_batches(images_dataset)
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


def real_activations(images_dataset: tf.data.Dataset, eval_network: EvalNetwork, *,
                     num_samples: int | None, cache_dir: str | None, key_parts: dict[str, Any],
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Activations of real images, cached on disk.

  The cache file is `cache_dir/real_activations_<sha256>.npz` (`slt_tf.array_cache`), keyed by
  `key_parts`, the eval network's name and fingerprint and `num_samples`: reused only when the
  key stored inside it equals the current one, otherwise recomputed and replaced.

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
  parts = dict(key_parts, eval_network_name=eval_network.name,
               eval_network_fingerprint=eval_network.fingerprint, num_samples=num_samples)
  cache = None
  if cache_dir is not None:
    cache = array_cache.cache_file(cache_dir, "real_activations_", parts)
    cached = cache.load()
    if cached is not None:
      logging.info("Real activations loaded from %s.", cache.path)
      return cached["embeddings"], cached.get("logits")
  embeddings, logits = _compute_real_activations(images_dataset, eval_network, num_samples,
                                                 progress)
  if cache is not None:
    cache.save({"embeddings": embeddings} if logits is None else
               {"embeddings": embeddings, "logits": logits})
    logging.info("Real activations cached in %s.", cache.path)
  return embeddings, logits
