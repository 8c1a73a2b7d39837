"""Iterative magnitude pruning with weight rewinding (IMP): the weak-ticket baseline.

Frankle & Carbin (ICLR 2019) with rewinding (Frankle et al., ICML 2020). Unlike a strong
ticket, the weights ARE trained, so the result is a sparse trained generator: a checkpoint
whose kernels hold exact zeros, plus its masks. It is the baseline the paper argues against;
its cost is the point, so the number of weight updates is reported.

One run of `total_steps` optimiser steps, in `rounds + 1` training runs:
  round 0      steps 0 .. num_steps: dense training (every mask is all ones); the state at step
               `rewind_step` is recorded.
  round r >= 1 at the end of round r-1: keep the `keep_fraction ** (r / rounds)` largest
               magnitudes among the weights still kept (per layer, or over all layers with
               scope=global; exactly k, ties broken by index), rewind kernels (times the new
               mask), biases, batch-norm statistics and the loss's moving averages to their
               recorded values, then train `num_steps - rewind_step` more steps.
After the last round the kept fraction is `keep_fraction`. The masks are applied to the kernels
after every step (pruned weights are exact zeros in every forward pass and in every checkpoint);
the optimiser's state carries over from round to round. The step counter runs on across rounds,
so checkpoints, resume and TensorBoard use one global step; the masks, the recorded state and
the round count are part of the checkpoint (`PruningState`).
"""

from __future__ import annotations

import dataclasses
import io
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import masking
from slt_tf import workdir as workdir_lib

SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When IMP prunes and how much it keeps."""
  num_steps: int       # steps of the dense round; each later round trains num_steps - rewind_step
  rounds: int          # pruning rounds
  rewind_step: int     # step whose state the kept weights go back to
  keep_fraction: float  # fraction of the weights kept after the last round
  scope: str = "layer"  # layer: k per layer; global: one magnitude threshold over all layers

  def __post_init__(self):
    validate(self.num_steps, self.rounds, self.rewind_step, self.keep_fraction, self.scope)

  @property
  def steps_per_retraining(self) -> int:
    return self.num_steps - self.rewind_step

  @property
  def total_steps(self) -> int:
    """Optimiser steps (weight updates) of the whole run."""
    return self.num_steps + self.rounds * self.steps_per_retraining

  def check_lr_schedule(self, lr_schedule: str) -> None:
    if lr_schedule != "constant":
      raise errors.SltError("method=imp needs lr_schedule=constant (its rounds restart from "
                            f"imp.rewind_step; a decay over the whole run does not fit them), got "
                            f"{lr_schedule!r}")

  def boundaries(self) -> list[int]:
    """The global steps after which round 1, 2, ... starts (prune + rewind happen there)."""
    return [self.num_steps + r * self.steps_per_retraining for r in range(self.rounds)]

  def keep_fractions(self) -> list[float]:
    """Fraction kept during rounds 0..rounds (geometric: the same share pruned each round)."""
    return [self.keep_fraction ** (r / self.rounds) for r in range(self.rounds + 1)]


def validate(num_steps: int, rounds: int, rewind_step: int, keep_fraction: float,
             scope: str) -> None:
  """The imp.* config values; one-line SltError naming what is allowed."""
  for key, value, low in (("imp.rounds", rounds, 1), ("imp.rewind_step", rewind_step, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise errors.SltError(f"{key} must be an integer >= {low}, got {value!r}")
  if rewind_step >= num_steps:
    raise errors.SltError(f"imp.rewind_step must be below num_steps ({num_steps}), got "
                          f"{rewind_step}")
  if scope not in SCOPES:
    raise errors.SltError(f"unknown imp.scope {scope!r}; choose layer or global")
  masking.validate_keep_fraction(keep_fraction)


# ---------------------------------------------------------------------------- pruning (NumPy)


def _keep_largest(magnitudes: np.ndarray, k: int) -> np.ndarray:
  """Bool mask of the k largest entries of a flat vector; ties broken by index."""
  keep = np.zeros(magnitudes.size, bool)
  keep[np.argsort(-magnitudes, kind="stable")[:k]] = True
  return keep


def magnitude_masks(kernels: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                    keep_fraction: float, scope: str) -> dict[str, np.ndarray]:
  """Masks keeping the largest |kernel| among the weights `masks` still keep.

  Args:
    kernels: {layer: kernel}, float32.
    masks: {layer: bool mask of the same shape}, the weights kept so far.
    keep_fraction: fraction of ALL weights (of each layer, or of all layers) to keep:
      k = masking.num_kept(size, keep_fraction).
    scope: "layer" (k per layer) or "global" (one k over all layers, in `kernels`' order).

  Returns:
    {layer: bool mask}; each new mask is a subset of the old one.
  """
  if scope not in SCOPES:
    raise errors.SltError(f"unknown imp.scope {scope!r}; choose layer or global")
  # Pruned weights rank below every kept one (magnitudes are >= 0).
  ranked = {name: np.where(masks[name].reshape(-1), np.abs(kernel.astype(np.float64)).reshape(-1),
                           -1.0) for name, kernel in kernels.items()}
  if scope == "layer":
    return {name: _keep_largest(values, masking.num_kept(values.size, keep_fraction)
                                ).reshape(kernels[name].shape)
            for name, values in ranked.items()}
  flat = np.concatenate(list(ranked.values()))
  keep = _keep_largest(flat, masking.num_kept(flat.size, keep_fraction))
  sizes = np.cumsum([v.size for v in ranked.values()])[:-1]
  return {name: part.reshape(kernels[name].shape)
          for name, part in zip(ranked, np.split(keep, sizes))}


# ------------------------------------------------------------------------- state and callback


class _Untracked:
  """Holds the generator's variables without making them children of the state's checkpoint
  node (they are checkpointed with the generator)."""

  def __init__(self, kernels: dict, rewound: list):
    self.kernels = kernels
    self.rewound = rewound


class PruningState(tf.Module):
  """IMP's checkpointed state: per-kernel masks, the recorded (rewind) values, the round.

  Args:
    kernels: {layer name: kernel variable} of the generator (trained, dense layers).
    rewound: every other variable that goes back to its recorded value (biases, batch-norm
      statistics, the loss's moving averages), in a stable order.
  Create it inside the strategy's scope, like the model.
  """

  def __init__(self, kernels: dict, rewound: list):
    super().__init__(name="imp")
    self._refs = _Untracked(dict(kernels), list(rewound))  # The model's own variables.
    self.masks = {name: tf.Variable(tf.ones_like(v), trainable=False, name=f"{name}_mask")
                  for name, v in kernels.items()}
    self.recorded = [tf.Variable(tf.zeros_like(v), trainable=False, name="recorded")
                     for v in list(kernels.values()) + list(rewound)]
    self.has_recording = tf.Variable(False, trainable=False, name="has_recording")
    self.round = tf.Variable(0, trainable=False, dtype=tf.int64, name="round")

  def numpy_masks(self) -> dict[str, np.ndarray]:
    return {name: np.asarray(m.numpy()) != 0 for name, m in self.masks.items()}

  def apply_masks(self) -> None:
    """kernel <- kernel * mask for every kernel (pruned weights become exact zeros)."""
    for name, kernel in self._refs.kernels.items():
      kernel.assign(kernel * self.masks[name])

  def record(self) -> None:
    """Stores the current values that a rewind goes back to."""
    sources = list(self._refs.kernels.values()) + self._refs.rewound
    for target, source in zip(self.recorded, sources):
      target.assign(source)
    self.has_recording.assign(True)

  def prune_and_rewind(self, keep_fraction: float, scope: str) -> dict[str, np.ndarray]:
    """Keeps the largest magnitudes (slt_tf.imp.magnitude_masks), then rewinds; returns masks."""
    if not bool(self.has_recording.numpy()):
      raise errors.SltError("IMP has no recorded state to rewind to (imp.rewind_step was never "
                            "reached); this workdir's checkpoint is inconsistent: use a new one")
    kernels = {name: np.asarray(v.numpy()) for name, v in self._refs.kernels.items()}
    masks = magnitude_masks(kernels, self.numpy_masks(), keep_fraction, scope)
    for name, mask in masks.items():
      self.masks[name].assign(mask.astype(np.float32))
    variables = list(self._refs.kernels.values()) + self._refs.rewound
    for variable, value in zip(variables, self.recorded):
      variable.assign(value)
    self.apply_masks()
    self.round.assign_add(1)
    return masks


class IterativePruning(keras.callbacks.Callback):
  """Drives a `Schedule` inside one `fit()`: masks after every step, records at the rewind
  step, prunes and rewinds at each round boundary. Place it before the checkpoint callback."""

  def __init__(self, state: PruningState, schedule: Schedule, log_path: str | None = None):
    super().__init__()
    self.state = state
    self.schedule = schedule
    self.log_path = log_path

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def on_train_begin(self, logs=None):
    if self._step() == self.schedule.rewind_step and not bool(self.state.has_recording.numpy()):
      self.state.record()

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    self.state.apply_masks()
    if step == self.schedule.rewind_step and int(self.state.round.numpy()) == 0:
      self.state.record()
    boundaries = self.schedule.boundaries()
    if step in boundaries:
      next_round = boundaries.index(step) + 1
      keep = self.schedule.keep_fractions()[next_round]
      masks = self.state.prune_and_rewind(keep, self.schedule.scope)
      kept = sum(int(m.sum()) for m in masks.values())
      total = sum(m.size for m in masks.values())
      logging.info("IMP round %d starts after step %d: kept %d of %d kernel weights (%.4f), "
                   "rewound to step %d.", next_round, step, kept, total, kept / total,
                   self.schedule.rewind_step)
      self._log_round(next_round, step, kept, total)

  def _log_round(self, round_index: int, step: int, kept: int, total: int) -> None:
    if self.log_path is None:
      return
    rounds = [r for r in workdir_lib.read_json(self.log_path) or [] if r["round"] < round_index]
    rounds.append({"round": round_index, "after_step": step, "num_kept": kept,
                   "num_weights": total, "kept_fraction": kept / total})
    workdir_lib.write_json(self.log_path, rounds)


def save_masks(state: PruningState, directory: str) -> tuple[str, int, int]:
  """Writes W/imp_masks.npz (bool per layer kernel); returns (path, num_kept, num_weights)."""
  masks = state.numpy_masks()
  path = os.path.join(directory, workdir_lib.IMP_MASKS_FILE)
  buffer = io.BytesIO()  # np.savez seeks back into its output; GFile may not.
  np.savez_compressed(buffer, **masks)
  workdir_lib.atomic_write(path, buffer.getvalue())
  return (path, sum(int(m.sum()) for m in masks.values()),
          sum(m.size for m in masks.values()))


def load_masks(path: str) -> dict[str, np.ndarray]:
  with tf.io.gfile.GFile(path, "rb") as f:
    blob = f.read()
  with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
    return {name: arrays[name].astype(bool) for name in arrays.files}


def make_state(generator, ama_layers) -> PruningState:
  """The state of a dense-layer generator (method=imp) and the model's AMA layers."""
  kernels = {layer.name: layer.kernel for layer in generator.weight_layers()}
  rewound = [layer.bias for layer in generator.weight_layers() if layer.bias is not None]
  for layer in generator.batch_norm_layers():
    rewound += [layer.moving_mean, layer.moving_variance]
  for layer in ama_layers:
    rewound += list(layer.variables)
  return PruningState(kernels, rewound)


def attach(search, strategy: tf.distribute.Strategy, schedule: Schedule, log_dir: str
           ) -> tuple[PruningState, IterativePruning]:
  """The state (created in the strategy's scope; checkpoint it) and the callback of a
  method=imp TicketSearch; the callback logs each round to log_dir/imp_rounds.json."""
  with strategy.scope():
    state = make_state(search.generator, [search.ama_mean, search.ama_variance])
  return state, IterativePruning(state, schedule,
                                 os.path.join(log_dir, workdir_lib.IMP_ROUNDS_FILE))
