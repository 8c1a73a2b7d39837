"""Keras callbacks of the ticket search: finite-loss guard, checkpoints, preemption,
TensorBoard, samples."""

from __future__ import annotations

import math
import signal
import threading

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import images
from slt_tf import summaries
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib


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


EMA_METHODS = ("edge_popup", "global_edge_popup", "dense")  # Tickets by top-k, or dense.


def validate_ema_momentum(momentum, method: str) -> None:
  """ema_momentum: 0 (off) or a float in (0, 1), for the methods whose variables it averages."""
  if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
      0 <= momentum < 1):
    raise errors.SltError(f"ema_momentum must be 0 (off) or a number in (0, 1), got {momentum!r}")
  if momentum and method not in EMA_METHODS:
    raise errors.SltError(f"ema_momentum is for method {', '.join(EMA_METHODS)}; method "
                          f"{method} sets its own masks: use ema_momentum=0")


class FinalMovingAverage(keras.callbacks.Callback):
  """With the optimiser's EMA on (config.ema_momentum): after the last step, the trained
  variables (scores; dense: kernels) take their moving averages, so the last checkpoint, the
  final samples and the ticket hold them. Placed before the checkpoint and sample callbacks.

  Keras's fit() does the same once training ends; doing it at the last step instead keeps it
  inside the step the checkpoint saves, also in the multi-worker loop (distribution.run_steps).
  A run stopped before the last step (preemption, NaN) checkpoints the trained values.
  """

  def __init__(self, num_steps: int):
    super().__init__()
    self.num_steps = num_steps

  def on_train_batch_end(self, batch, logs=None):
    optimizer = self.model.optimizer
    if optimizer.use_ema and current_step(self.model) == self.num_steps:
      optimizer.finalize_variable_values(self.model.generator.trainable_variables)
      logging.info("Step %d: the trained variables now hold their moving averages "
                   "(ema_momentum %g).", self.num_steps, optimizer.ema_momentum)


class Preempted(errors.SltError):
  """The run received SIGTERM or SIGINT; a checkpoint of the step it stopped at was saved.

  `exit_code`: 130 for Ctrl-C (SIGINT), as shells report it; 1 for SIGTERM (docs/scaling.md).
  """

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.exit_code = 130 if signum == signal.SIGINT else 1


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # Both: checkpoint this step, then stop.


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
  """On SIGTERM or SIGINT (Ctrl-C): finishes the running step, saves a checkpoint of it and
  stops training (no KeyboardInterrupt is raised inside TF ops).

  `stop_requested` is set by the signal handler (installed for the duration of training, in
  the main thread); multi-worker loops OR it across workers so all stop at the same step.
  After training, `preempted_step` is the step saved, or None.
  """

  def __init__(self, manager: tf.train.CheckpointManager):
    super().__init__()
    self.manager = manager
    self.stop_requested = False
    self.preempted_step = None
    self.signum = None
    self._previous_handlers = {}

  def _request_stop(self, signum, frame):
    del frame
    if self.signum is None:
      self.signum = signum
    logging.warning("Received %s: saving a checkpoint after this step, then stopping.",
                    signal.Signals(signum).name)
    self.stop_requested = True

  def on_train_begin(self, logs=None):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous_handlers[signum] = signal.signal(signum, self._request_stop)

  def on_train_batch_end(self, batch, logs=None):
    if self.stop_requested and self.preempted_step is None:
      save_checkpoint(self.model, self.manager)
      self.preempted_step = current_step(self.model)
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers = {}

  def raise_if_preempted(self) -> None:
    if self.preempted_step is not None:
      signum = self.signum or signal.SIGTERM
      raise Preempted(f"preempted ({signal.Signals(signum).name}) at step {self.preempted_step}; "
                      f"checkpoint {self.manager.latest_checkpoint} saved; rerun the same "
                      "command with the same --workdir to resume", signum)


class TensorBoardScalars(keras.callbacks.Callback):
  """Every `every_steps`: the losses (averaged since the last log), and per scored layer the
  fraction of its mask that changed since the last log. Resets the loss averages.

  At the start of training, `config` (the run's resolved config, if given) as text `config`
  and as HParams of trial `trial_id`, so the runs of a sweep compare side by side
  (`tensorboard --logdir=BASE_DIR`).
  """

  def __init__(self, log_dir: str, every_steps: int, config: dict | None = None,
               trial_id: str | None = None):
    super().__init__()
    self.log_dir = log_dir
    self.writer = summaries.writer(log_dir)
    self.every_steps = every_steps
    self.config = config
    self.trial_id = trial_id
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
    if self.config is not None:
      summaries.write_config(self.log_dir, self.config, current_step(self.model),
                             trial_id=self.trial_id)

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


def write_sample_grid(generator: keras.Model, z: tf.Tensor, path: str,
                      upscale: int = 1) -> np.ndarray:
  """Generates from fixed latents (inference-mode batch norm), writes a PNG grid and returns
  it (uint8 [H, W, C], upscaled)."""
  grid = images.grid(images.to_uint8(generator(z, training=False)).numpy())
  images.save_png(path, grid, upscale=upscale)
  return grid.repeat(upscale, axis=0).repeat(upscale, axis=1) if upscale > 1 else grid


class SampleGrids(keras.callbacks.Callback):
  """Writes W/samples/step_<N>.png every `every_steps` from the same fixed latents, and the
  same grid as the TensorBoard image `samples` into `log_dir` (default: W/tensorboard/train)."""

  def __init__(self, workdir: str, z: tf.Tensor, every_steps: int, upscale: int = 1,
               log_dir: str | None = None):
    super().__init__()
    self.workdir = workdir
    self.z = z
    self.every_steps = every_steps
    self.upscale = upscale
    self.log_dir = log_dir or workdir_lib.tensorboard_dir(workdir, "train")

  def on_train_batch_end(self, batch, logs=None):
    step = current_step(self.model)
    if step % self.every_steps == 0:
      grid = write_sample_grid(self.model.generator, self.z,
                               workdir_lib.sample_path(self.workdir, step),
                               self.upscale)
      writer = summaries.writer(self.log_dir)
      with writer.as_default(step=step):
        tf.summary.image("samples", grid[np.newaxis])
      writer.flush()
