"""Gem-Miner's score regulariser and its annealing (Sreenivasan et al., NeurIPS 2022).

The masking side lives in slt_tf/masking.py (`Threshold`: scores in [0, 1], mask = s >= 0.5,
straight-through gradient, scores clipped to [0, 1] after each update). This module owns the
other half: the sparsity is not a fixed top-k but comes from an L2 penalty on the scores,

    loss + lambda * sum over score tensors of ||s||^2,

which pulls every score towards 0; a score stays at or above 0.5 (its weight kept) only where
the loss gradient holds it up. Annealing (checked after every step): while more than the target
fraction is kept, the penalty is on and its level, starting at `regularization`, is multiplied
by `anneal_factor` every `anneal_every` steps; while the target or less is kept, the penalty is
off (lambda = 0, the level is kept for when it comes back on), so the scores answer to the loss
alone. A first version that divided lambda by the factor below the target overshot badly on the
digits default (0.9% kept for a 10% target: Adam's momentum carries the scores on down for the
steps that dividing lambda back takes). The kept fraction the run ends with is whatever it
reaches: it is reported (W/ticket.slt's counts, the run summary), never forced.
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
  """The annealed L2 penalty; lambda (`strength`) and its annealed `level` are variables, so
  checkpoints resume them."""

  def __init__(self, regularization: float, *, target_keep_fraction: float,
               anneal_factor: float, **kwargs):
    super().__init__(name=kwargs.pop("name", "gem_miner_regularizer"), **kwargs)
    masking.validate_keep_fraction(target_keep_fraction)
    self.target_keep_fraction = float(target_keep_fraction)
    self.anneal_factor = float(anneal_factor)
    state = dict(shape=(), trainable=False, aggregation="only_first_replica",
                 initializer=keras.initializers.Constant(float(regularization)))
    self.strength = self.add_weight(name="strength", **state)  # lambda in the loss now
    self.level = self.add_weight(name="level", **state)  # lambda while the penalty is on

  def penalty(self, scores: Sequence) -> tf.Tensor:
    return l2_penalty(scores, tf.convert_to_tensor(self.strength))

  def anneal(self, kept: float, grow: bool) -> float:
    """Given the kept fraction now: the penalty on (level, multiplied by the factor if `grow`)
    above the target, off at or below it. Returns the new lambda."""
    level = float(self.level.numpy())
    if kept > self.target_keep_fraction:
      level *= self.anneal_factor if grow else 1.0
      strength = level
    else:
      strength = 0.0
    self.level.assign(level)
    self.strength.assign(strength)
    return strength


def score_variables(generator) -> list:
  """Every score tensor of a generator's scored layers (kernel and, if masked, bias scores)."""
  scores = []
  for layer in generator.scored_layers():
    scores += [v for v in (layer.kernel_scores, layer.bias_scores) if v is not None]
  return scores


class AnnealRegularization(keras.callbacks.Callback):
  """After every step: reads the kept fraction and anneals the regulariser's lambda (its level
  grows every `every_steps` steps while above the target).

  Placed before the checkpoint callback, so a checkpoint of step N holds lambda after N.
  """

  def __init__(self, regularizer: ScoreRegularizer, every_steps: int):
    super().__init__()
    self.regularizer = regularizer
    self.every_steps = every_steps

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    kept = kept_fraction(score_variables(self.model.generator))
    strength = self.regularizer.anneal(kept, grow=step % self.every_steps == 0)
    if step % (10 * self.every_steps) == 0:
      logging.info("gem_miner step %d: kept fraction %.4f (target %.4f), lambda now %.3g", step,
                   kept, self.regularizer.target_keep_fraction, strength)
