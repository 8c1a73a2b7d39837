"""Gem-Miner's score regulariser and its annealing (Sreenivasan et al., NeurIPS 2022).

The masking side lives in slt_tf/masking.py (`Threshold`: scores in [0, 1], mask = s >= 0.5,
straight-through gradient, scores clipped to [0, 1] after each update). This module owns the
other half: the sparsity is not a fixed top-k but comes from an L2 penalty on the scores,

    loss + lambda * sum over score tensors of ||s||^2,

which pulls every score towards 0; a score stays at or above 0.5 (its weight kept) only where
the loss gradient holds it up. lambda starts at `regularization` and is annealed every
`anneal_every` steps towards the target kept fraction: multiplied by `anneal_factor` while more
than the target is kept, divided by it while less is kept. The kept fraction the run ends with
is whatever it reaches: it is reported (W/ticket.slt's counts, the run summary), never forced.
"""

from __future__ import annotations

from typing import Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import masking


def validate(regularization: float, anneal_every: int, anneal_factor: float,
             score_init: str = "unit_uniform") -> None:
  """The gem_miner.* config values (and the score init); one-line SltError naming what is
  allowed."""
  if score_init != "unit_uniform":
    raise errors.SltError("method=gem_miner needs generator.score_init=unit_uniform (its scores "
                          f"live in [0, 1]), got {score_init!r}")
  if not (isinstance(regularization, (int, float)) and regularization > 0
          and np.isfinite(regularization)):
    raise errors.SltError(f"gem_miner.regularization must be a positive number, got "
                          f"{regularization!r}")
  if isinstance(anneal_every, bool) or not isinstance(anneal_every, int) or anneal_every < 1:
    raise errors.SltError(f"gem_miner.anneal_every must be an integer >= 1, got {anneal_every!r}")
  if not (isinstance(anneal_factor, (int, float)) and 1.0 <= anneal_factor <= 100.0):
    raise errors.SltError(f"gem_miner.anneal_factor must be a number in [1, 100] (1: lambda "
                          f"stays constant), got {anneal_factor!r}")


def kept_fraction(scores: Sequence) -> float:
  """Fraction of all given scores at or above the threshold (the weights the mask keeps)."""
  kept = sum(int(np.count_nonzero(np.asarray(s) >= masking.GEM_MINER_THRESHOLD)) for s in scores)
  total = sum(int(np.prod(s.shape)) for s in scores)
  return kept / total


def l2_penalty(scores: Sequence, strength) -> tf.Tensor:
  """strength * sum_i ||s_i||^2 (float32 scalar)."""
  total = tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(s))) for s in scores])
  return tf.cast(strength, total.dtype) * total


def l2_penalty_gradient(scores: Sequence, strength: float) -> list[np.ndarray]:
  """d l2_penalty / d s_i = 2 * strength * s_i, in closed form (tests compare it to autodiff)."""
  return [2.0 * np.float32(strength) * np.asarray(s, np.float32) for s in scores]


class ScoreRegularizer(keras.layers.Layer):
  """The annealed L2 penalty; its current lambda is a variable, so checkpoints resume it."""

  def __init__(self, regularization: float, *, target_keep_fraction: float,
               anneal_factor: float, **kwargs):
    super().__init__(name=kwargs.pop("name", "gem_miner_regularizer"), **kwargs)
    masking.validate_keep_fraction(target_keep_fraction)
    self.target_keep_fraction = float(target_keep_fraction)
    self.anneal_factor = float(anneal_factor)
    self.strength = self.add_weight(
        name="strength", shape=(), trainable=False, aggregation="only_first_replica",
        initializer=keras.initializers.Constant(float(regularization)))

  def penalty(self, scores: Sequence) -> tf.Tensor:
    return l2_penalty(scores, tf.convert_to_tensor(self.strength))

  def anneal(self, kept: float) -> float:
    """One annealing step given the kept fraction now; returns the new lambda."""
    strength = float(self.strength.numpy())
    if kept > self.target_keep_fraction:
      strength *= self.anneal_factor
    elif kept < self.target_keep_fraction:
      strength /= self.anneal_factor
    self.strength.assign(strength)
    return strength


def score_variables(generator) -> list:
  """Every score tensor of a generator's scored layers (kernel and, if masked, bias scores)."""
  scores = []
  for layer in generator.scored_layers():
    scores += [v for v in (layer.kernel_scores, layer.bias_scores) if v is not None]
  return scores


class AnnealRegularization(keras.callbacks.Callback):
  """Every `every_steps`: reads the kept fraction and anneals the regulariser's lambda.

  Placed before the checkpoint callback, so a checkpoint of step N holds lambda after N.
  """

  def __init__(self, regularizer: ScoreRegularizer, every_steps: int):
    super().__init__()
    self.regularizer = regularizer
    self.every_steps = every_steps

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if step % self.every_steps:
      return
    kept = kept_fraction(score_variables(self.model.generator))
    strength = self.regularizer.anneal(kept)
    logging.log_every_n(logging.INFO, "gem_miner step %d: kept fraction %.4f (target %.4f), "
                        "lambda now %.3g", 10, step, kept,
                        self.regularizer.target_keep_fraction, strength)
