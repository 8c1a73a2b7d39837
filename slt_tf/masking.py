"""Scores to binary masks: per-layer and global top-k, with a straight-through gradient.

Edge-popup (Ramanujan et al., CVPR 2020, Alg. 1): the forward pass keeps the weights whose
|score| is among the k largest and multiplies the rest by zero; the backward pass treats the
mask as the identity of |score|, so dL/ds = sign(s) * dL/dm.

Gem-Miner (Sreenivasan et al., NeurIPS 2022): scores live in [0, 1], the mask keeps the weights
whose score is at least 0.5, and the gradient reaches the scores unchanged (straight-through);
the sparsity comes from a regulariser on the scores (slt_tf/gem_miner.py), not from a top-k.

`keep_fraction` is always the fraction of weights KEPT (0.1 keeps 10%); for Gem-Miner it is
the target the regulariser's annealing aims at, not a count the mask enforces.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Sequence

import tensorflow as tf

from slt_tf import errors

METHODS = ("edge_popup", "global_edge_popup", "dense", "gem_miner", "imp")
# Methods whose generator trains its kernels (no scores, no mask rule): the dense baseline and
# iterative magnitude pruning, whose masks live outside the generator (slt_tf/imp.py).
WEIGHT_TRAINING_METHODS = ("dense", "imp")
GEM_MINER_THRESHOLD = 0.5


def num_kept(num_weights: int, keep_fraction: float) -> int:
  """k = round(keep_fraction * n), at least 1 and at most n."""
  return min(num_weights, max(1, int(round(keep_fraction * num_weights))))


def validate_keep_fraction(keep_fraction: float) -> None:
  if not 0.0 < keep_fraction <= 1.0:
    raise errors.SltError(
        f"keep_fraction must be in (0, 1] (fraction of weights KEPT), got {keep_fraction}")


def kth_largest(magnitudes: tf.Tensor, k: int) -> tf.Tensor:
  """The k-th largest entry of a flat non-negative float32 vector, exactly.

  Radix select on the IEEE-754 bits (for non-negative floats their order as int32 is the
  order of the values): three histogram passes over 11 + 10 + 10 bits, each narrowing the
  prefix of the answer; after a pass only the entries that share the prefix so far are kept,
  so the later passes see a small fraction of the vector. About 8x faster than
  `tf.math.top_k` with a large k on CPU.
  """
  bits = tf.bitcast(magnitudes, tf.int32)  # (N,), sign bit is 0
  prefix = tf.constant(0, tf.int32)
  remaining = tf.constant(k, tf.int32)  # rank of the answer among entries matching prefix
  for shift, width in ((20, 11), (10, 10), (0, 10)):
    num_buckets = 1 << width
    bucket = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, shift), num_buckets - 1)
    histogram = tf.math.bincount(bucket, minlength=num_buckets, maxlength=num_buckets)
    at_or_above = tf.cumsum(histogram, reverse=True)  # entries in bucket >= b
    chosen = tf.reduce_max(tf.where(at_or_above >= remaining, tf.range(num_buckets), -1))
    remaining -= at_or_above[chosen] - histogram[chosen]
    prefix = tf.bitwise.bitwise_or(tf.bitwise.left_shift(prefix, width), chosen)
    if shift:  # The entries whose bits so far equal the prefix: the answer is among them.
      bits = tf.boolean_mask(bits, tf.equal(bucket, chosen))
  return tf.bitcast(prefix, tf.float32)


def _hard_top_k(magnitudes: tf.Tensor, k: int) -> tf.Tensor:
  """Exactly k ones at the k largest entries of a flat vector (ties broken by index)."""
  threshold = kth_largest(magnitudes, k)
  at_least = magnitudes >= threshold

  def break_ties():
    above = magnitudes > threshold
    tied = tf.equal(magnitudes, threshold)
    missing = k - tf.reduce_sum(tf.cast(above, tf.int32))
    return tf.logical_or(above, tf.logical_and(tied, tf.cumsum(tf.cast(tied, tf.int32)) <= missing))

  keep = tf.cond(tf.equal(tf.reduce_sum(tf.cast(at_least, tf.int32)), k),
                 lambda: at_least, break_ties)
  return tf.cast(keep, magnitudes.dtype)


def straight_through_top_k(scores: Sequence[tf.Tensor], k: int) -> list[tf.Tensor]:
  """Binary masks keeping the k largest |score| over all the given tensors together.

  Args:
    scores: score tensors (any shapes); one tensor gives a per-layer top-k.
    k: number of ones over all tensors.

  Returns:
    Float masks with the shapes of `scores`; gradient w.r.t. each score is sign(s) * dL/dm.
  """
  scores = [tf.convert_to_tensor(s) for s in scores]

  @tf.custom_gradient
  def _masks(*tensors):
    flat = tf.concat([tf.reshape(tf.abs(t), [-1]) for t in tensors], axis=0)
    hard = _hard_top_k(flat, k)
    sizes = [int(math.prod(t.shape)) for t in tensors]
    masks = [tf.reshape(m, t.shape) for m, t in zip(tf.split(hard, sizes), tensors)]

    def grad(*upstream):
      return [g * tf.sign(t) for g, t in zip(upstream, tensors)]

    return masks, grad

  return list(_masks(*scores))


class TopK:
  """Per-layer edge-popup: each tensor keeps its own top keep_fraction of |scores|."""

  name = "edge_popup"

  def __init__(self, keep_fraction: float):
    validate_keep_fraction(keep_fraction)
    self.keep_fraction = float(keep_fraction)

  def __call__(self, scores: tf.Tensor) -> tf.Tensor:
    k = num_kept(int(math.prod(scores.shape)), self.keep_fraction)
    return straight_through_top_k([scores], k)[0]

  def get_config(self) -> dict:
    return {"name": self.name, "keep_fraction": self.keep_fraction}


class GlobalTopK:
  """Global edge-popup: one threshold on |scores| across every registered score tensor.

  Layers call the rule with their own scores. Inside `rule.shared_step()` (the generator's
  forward pass) the masks of all registered tensors are computed once, together; outside it
  each call computes them all again, which is correct but slower. The shared masks are kept
  per thread: MirroredStrategy traces each replica in its own thread, and a replica must use
  the masks computed from its own copy of the scores (else its gradients are lost).
  """

  name = "global_edge_popup"

  def __init__(self, keep_fraction: float):
    validate_keep_fraction(keep_fraction)
    self.keep_fraction = float(keep_fraction)
    self._scores: list = []
    self._local = threading.local()  # .cache: this thread's masks inside shared_step()

  def register(self, score_variable) -> None:
    self._scores.append(score_variable)

  def _all_masks(self) -> dict:
    tensors = [tf.convert_to_tensor(v) for v in self._scores]
    total = sum(int(math.prod(t.shape)) for t in tensors)
    masks = straight_through_top_k(tensors, num_kept(total, self.keep_fraction))
    return {id(v): m for v, m in zip(self._scores, masks)}

  @contextlib.contextmanager
  def shared_step(self):
    self._local.cache = self._all_masks()
    try:
      yield
    finally:
      self._local.cache = None

  def __call__(self, scores) -> tf.Tensor:
    cache = getattr(self._local, "cache", None)
    masks = cache if cache is not None else self._all_masks()
    for variable in self._scores:
      if variable is scores:
        return masks[id(variable)]
    raise ValueError("GlobalTopK was called with a score tensor it does not know; "
                     "register the layer's scores first.")

  def get_config(self) -> dict:
    return {"name": self.name, "keep_fraction": self.keep_fraction}


def straight_through_threshold(scores: tf.Tensor, threshold: float) -> tf.Tensor:
  """Float mask `scores >= threshold`; the gradient w.r.t. the scores is dL/dm unchanged."""

  @tf.custom_gradient
  def _mask(tensor):
    def grad(upstream):
      return upstream
    return tf.cast(tensor >= threshold, tensor.dtype), grad

  return _mask(tf.convert_to_tensor(scores))


def clip_to_unit_interval(scores):
  """Projection of scores onto [0, 1] after each optimiser step (a Keras variable constraint)."""
  return tf.clip_by_value(scores, 0.0, 1.0)


class Threshold:
  """Gem-Miner: keep the weights whose score (in [0, 1]) is at least 0.5.

  `keep_fraction` is the target of the regulariser's annealing (slt_tf/gem_miner.py); the mask
  itself keeps however many scores are above the threshold. `score_constraint` keeps the scores
  in [0, 1]: the layers hand it to Keras, whose optimiser applies it after every update.
  """

  name = "gem_miner"
  threshold = GEM_MINER_THRESHOLD

  def __init__(self, keep_fraction: float):
    validate_keep_fraction(keep_fraction)
    self.keep_fraction = float(keep_fraction)
    self.score_constraint = clip_to_unit_interval

  def __call__(self, scores) -> tf.Tensor:
    return straight_through_threshold(scores, self.threshold)

  def get_config(self) -> dict:
    return {"name": self.name, "keep_fraction": self.keep_fraction}


def validate_method(method: str) -> None:
  """SltError naming METHODS unless `method` is one of them."""
  if method not in METHODS:
    raise errors.SltError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def make_rule(method: str, keep_fraction: float):
  """The masking rule for a config's `method`; None for `dense` and `imp` (kernels trained,
  no scores: IMP's masks are applied to the kernels by slt_tf/imp.py)."""
  validate_method(method)
  if method == "edge_popup":
    return TopK(keep_fraction)
  if method == "global_edge_popup":
    return GlobalTopK(keep_fraction)
  if method == "gem_miner":
    return Threshold(keep_fraction)
  return None  # WEIGHT_TRAINING_METHODS.
