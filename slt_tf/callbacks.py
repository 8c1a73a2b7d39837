"""Keras callbacks of the ticket search: finite-loss guard, checkpoints, preemption,
TensorBoard, samples."""

from __future__ import annotations

import math
import os
import signal
import threading

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import images
from slt_tf import ticket as ticket_lib


def current_step(model: keras.Model) -> int:
  return int(model.optimizer.iterations.numpy())


NON_FINITE = "non_finite"  # The step output flagging NaN/Inf in updated variables (model.py).


class NonFiniteError(errors.SltError):
  """The loss or a trained variable became NaN or Inf."""


class StopOnNonFinite(keras.callbacks.Callback):
  """Stops the run when the loss or an updated variable is NaN/Inf, naming the step.

  The model's step reports `model.NON_FINITE` (exact: checked on the updated variables, not on
  NaN propagating through the network). Placed first among the callbacks, so the checkpoint
  callback never saves that step.
  """

  def __init__(self, manager: tf.train.CheckpointManager):
    super().__init__()
    self.manager = manager

  def on_train_batch_end(self, batch, logs=None):
    logs = dict(logs or {})
    what = None
    if float(logs.pop(NON_FINITE, 0.0)) != 0.0:
      what = "a trained variable became NaN or Inf"
    for name, value in logs.items():
      if what is None and not math.isfinite(float(value)):
        what = f"{name} became {float(value)}"
    if what is not None:
      raise NonFiniteError(
          f"{what} at step {current_step(self.model)}; stopped. The last good checkpoint is "
          f"kept: {self.manager.latest_checkpoint or 'none was written'}")


class Preempted(errors.SltError):
  """The run received SIGTERM; a checkpoint of the step it stopped at was saved."""


def save_checkpoint(model: keras.Model, manager: tf.train.CheckpointManager) -> None:
  """Saves the current step (once) if every trained variable is finite.

  tf.train.CheckpointManager writes the variables to `ckpt-N_temp/`, merges them into
  `ckpt-N.index` / `ckpt-N.data-*`, and only then atomically rewrites the `checkpoint` state
  file that names the latest checkpoint; a crash before that leaves the previous one latest.
  """
  step = current_step(model)
  if manager.latest_checkpoint and manager.latest_checkpoint.endswith(f"-{step}"):
    return
  for variable in model.generator.trainable_variables:
    if not np.all(np.isfinite(np.asarray(variable))):
      raise NonFiniteError(f"{variable.path} holds NaN or Inf at step {step}; stopped, the "
                           f"last good checkpoint is kept: {manager.latest_checkpoint}")
  manager.save(checkpoint_number=step)
  logging.info("Saved checkpoint for step %d.", step)


class PeriodicCheckpoint(keras.callbacks.Callback):
  """Saves through a tf.train.CheckpointManager every `every_steps` steps and at the end."""

  def __init__(self, manager: tf.train.CheckpointManager, every_steps: int):
    super().__init__()
    self.manager = manager
    self.every_steps = every_steps

  def save(self) -> None:
    save_checkpoint(self.model, self.manager)

  def on_train_batch_end(self, batch, logs=None):
    if current_step(self.model) % self.every_steps == 0:
      self.save()

  def on_train_end(self, logs=None):
    self.save()


class PreemptionCheckpoint(keras.callbacks.Callback):
  """On SIGTERM: finishes the running step, saves a checkpoint of it and stops training.

  `stop_requested` is set by the signal handler (installed for the duration of training, in
  the main thread); multi-worker loops OR it across workers so all stop at the same step.
  After training, `preempted_step` is the step saved, or None.
  """

  def __init__(self, manager: tf.train.CheckpointManager):
    super().__init__()
    self.manager = manager
    self.stop_requested = False
    self.preempted_step = None
    self._previous_handler = None

  def _request_stop(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint after this step, then stopping.",
                    signum)
    self.stop_requested = True

  def on_train_begin(self, logs=None):
    if threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._request_stop)

  def on_train_batch_end(self, batch, logs=None):
    if self.stop_requested and self.preempted_step is None:
      save_checkpoint(self.model, self.manager)
      self.preempted_step = current_step(self.model)
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def raise_if_preempted(self) -> None:
    if self.preempted_step is not None:
      raise Preempted(f"preempted (SIGTERM) at step {self.preempted_step}; checkpoint "
                      f"{self.manager.latest_checkpoint} saved; rerun the same command with the "
                      "same --workdir to resume")


class TensorBoardScalars(keras.callbacks.Callback):
  """Every `every_steps`: the losses (averaged since the last log), and per scored layer the
  fraction of its mask that changed since the last log. Resets the loss averages."""

  def __init__(self, log_dir: str, every_steps: int):
    super().__init__()
    self.writer = tf.summary.create_file_writer(log_dir)
    self.every_steps = every_steps
    self.previous_masks = None
    self.reset_pending = False

  def on_train_batch_begin(self, batch, logs=None):
    if self.reset_pending:  # Reset here, not at the log step, so fit's final logs stay real.
      for metric in self.model.metrics:
        metric.reset_state()
      self.reset_pending = False

  def on_train_begin(self, logs=None):
    if self.model.generator.mask_rule is not None:
      self.previous_masks = ticket_lib.current_masks(self.model.generator)

  def on_train_batch_end(self, batch, logs=None):
    step = current_step(self.model)
    if step % self.every_steps:
      return
    logs = {k: v for k, v in (logs or {}).items() if k != NON_FINITE}
    with self.writer.as_default(step=step):
      for name, value in logs.items():
        tf.summary.scalar(f"train/{name}", float(value))
      if self.previous_masks is not None:
        masks = ticket_lib.current_masks(self.model.generator)
        changed = {key: float(np.mean(masks[key] != self.previous_masks[key])) for key in masks}
        for key, fraction in changed.items():
          tf.summary.scalar(f"mask_changed/{key}", fraction)
        tf.summary.scalar("mask_changed/all", float(
            sum(np.sum(masks[k] != self.previous_masks[k]) for k in masks)
            / sum(m.size for m in masks.values())))
        self.previous_masks = masks
    self.writer.flush()
    logging.info("step %d: %s", step, ", ".join(f"{k}={float(v):.5g}" for k, v in logs.items()))
    self.reset_pending = True


def write_sample_grid(generator: keras.Model, z: tf.Tensor, path: str, upscale: int = 1) -> None:
  """Generates from fixed latents (inference-mode batch norm) and writes a PNG grid."""
  images.save_grid_png(path, images.to_uint8(generator(z, training=False)).numpy(), upscale)


class SampleGrids(keras.callbacks.Callback):
  """Writes `samples/step_<N>.png` every `every_steps` from the same fixed latents."""

  def __init__(self, directory: str, z: tf.Tensor, every_steps: int, upscale: int = 1):
    super().__init__()
    self.directory = directory
    self.z = z
    self.every_steps = every_steps
    self.upscale = upscale

  def on_train_batch_end(self, batch, logs=None):
    step = current_step(self.model)
    if step % self.every_steps == 0:
      write_sample_grid(self.model.generator, self.z,
                        os.path.join(self.directory, f"step_{step:07d}.png"), self.upscale)
