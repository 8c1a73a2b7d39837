"""Reading a generator back from a bin/find_ticket training checkpoint (one implementation for
export, evaluation and inspection)."""

from __future__ import annotations

import gc
import logging as std_logging
import os
import re
import time

import tensorflow as tf

from slt_tf import errors
from slt_tf import generators


def _one_line(error: BaseException) -> str:
  text = str(error).strip()
  return " ".join(text.splitlines()[0].split()) if text else type(error).__name__


def restore_generator(spec: generators.GeneratorSpec, checkpoint_path: str
                      ) -> generators.Generator:
  """The generator of `spec` with every variable read from a training checkpoint.

  Raises:
    SltError: a corrupt checkpoint, or one of another generator (a variable missing or of
      another shape). TF's warnings about the values left unrestored are dropped then: the
      error says what went wrong, on one line.
  """
  tf_logger = std_logging.getLogger("tensorflow")
  level = tf_logger.level
  tf_logger.setLevel(std_logging.ERROR)
  try:
    generator = generators.build(spec)
    try:
      status = tf.train.Checkpoint(generator=generator).restore(checkpoint_path)
      status.expect_partial()  # The model's and optimiser's variables are not needed.
      status.assert_existing_objects_matched()
      return generator
    except Exception as e:  # pylint: disable=broad-except  # TF raises many types; reported.
      reason = f"{type(e).__name__}: {_one_line(e)}"
    # The failed restore's bookkeeping warns when collected: collect it while quiet.
    del generator
    gc.collect()
  finally:
    tf_logger.setLevel(level)
  raise errors.SltError(f"cannot restore the generator from checkpoint {checkpoint_path} "
                        f"({reason}); it is corrupt or from another generator")


# ----------------------------------------------------------------------- training resume

RESUME_FLAG = "--resume_from"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")


def checkpoint_step(path: str) -> int:
  """N of a `.../ckpt-N` prefix (bin/find_ticket numbers checkpoints by step)."""
  match = _CHECKPOINT_NAME.match(os.path.basename(path))
  if not match:
    raise errors.SltError(f"{path} is not a checkpoint name of the form ckpt-N")
  return int(match.group(1))


def _numbered(directory: str) -> list[int]:
  """Steps of the checkpoints whose files are in `directory` (any of their files), newest first."""
  if not tf.io.gfile.isdir(directory):
    return []
  steps = set()
  for name in tf.io.gfile.listdir(directory):
    match = re.match(r"^ckpt-(\d+)(?:\.index|\.data-.*|_temp.*)$", name.rstrip("/"))
    if match:
      steps.add(int(match.group(1)))
  return sorted(steps, reverse=True)


def usable(prefix: str) -> bool:
  """True if the checkpoint's index and every tensor of its data can be read."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
    return True
  except Exception:  # pylint: disable=broad-except  # TF raises many types: all mean unusable.
    return False


def _state_paths(directory: str) -> tuple[str | None, list[str]]:
  """(latest, all) checkpoint prefixes named by the `checkpoint` state file, or (None, [])."""
  try:
    state = tf.train.get_checkpoint_state(directory)
  except Exception:  # pylint: disable=broad-except  # A damaged state file: treated as absent.
    state = None
  if state is None or not state.model_checkpoint_path:
    return None, []
  def absolute(path):
    return path if os.path.isabs(path) else os.path.join(directory, path)
  return (absolute(state.model_checkpoint_path),
          [absolute(p) for p in state.all_model_checkpoint_paths])


def resume_point(directory: str, resume_from: str | None, num_steps: int, *,
                 adopt: bool) -> str | None:
  """The checkpoint a run resumes from (None: a fresh start), checked before anything is built.

  Never silently starts over: when `directory` holds any checkpoint file but its latest
  checkpoint is missing or unreadable, raises SltError naming the newest usable checkpoint and
  `--resume_from=ckpt-N`. With `resume_from`, the newer checkpoints (of an abandoned branch)
  are moved to `directory/superseded-<time>/` when `adopt` (the chief), so that no file this
  run did not write is overwritten, and the state file is rewritten to end at ckpt-N.

  Raises:
    SltError: as above; an unusable `resume_from`; a checkpoint past `num_steps`.
  """
  steps = _numbered(directory)
  latest, listed = _state_paths(directory)
  if resume_from:
    step = checkpoint_step(resume_from.rstrip("/"))
    path = os.path.join(directory, f"ckpt-{step}")
    if not usable(path):
      good = [s for s in steps if usable(os.path.join(directory, f"ckpt-{s}"))]
      raise errors.SltError(
          f"{RESUME_FLAG}={os.path.basename(path)}: no usable checkpoint of that name in "
          f"{directory}; usable: " + (", ".join(f"ckpt-{s}" for s in good) or "none"))
    if adopt:
      _set_aside_newer(directory, step, [p for p in listed if checkpoint_step(p) <= step])
    return _checked_steps(path, num_steps)
  if not steps and latest is None:
    return None
  if latest is not None and usable(latest):
    return _checked_steps(latest, num_steps)
  why = ("its checkpoint state file is missing or damaged" if latest is None else
         f"its latest checkpoint {os.path.basename(latest)} is missing or unreadable")
  for step in steps:
    if usable(os.path.join(directory, f"ckpt-{step}")):
      raise errors.SltError(
          f"{directory}: {why}; not starting over (that would overwrite the older checkpoints): "
          f"resume from the newest usable one with {RESUME_FLAG}=ckpt-{step}, or use a new "
          "--workdir")
  raise errors.SltError(f"{directory}: {why} and no checkpoint there is usable; use a new "
                        "--workdir (or move the checkpoints directory away)")


def _checked_steps(path: str, num_steps: int) -> str:
  step = checkpoint_step(path)
  if step > num_steps:
    raise errors.SltError(
        f"the workdir holds step {step} ({os.path.basename(path)}) but num_steps={num_steps}; "
        f"num_steps can only grow on resume (use >= {step}), or use a new --workdir")
  return path


def _set_aside_newer(directory: str, step: int, kept: list[str]) -> None:
  newer = [s for s in _numbered(directory) if s > step]
  if newer:
    target = os.path.join(directory, f"superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    tf.io.gfile.makedirs(target)
    for name in tf.io.gfile.listdir(directory):
      match = re.match(r"^ckpt-(\d+)[._]", name)
      if match and int(match.group(1)) in newer:
        tf.io.gfile.rename(os.path.join(directory, name.rstrip("/")),
                           os.path.join(target, name.rstrip("/")))
    std_logging.getLogger("absl").warning(
        "Resuming from ckpt-%d: moved the newer checkpoints %s to %s.", step,
        ", ".join(f"ckpt-{s}" for s in newer), target)
  latest = os.path.join(directory, f"ckpt-{step}")
  tf.compat.v1.train.update_checkpoint_state(
      directory, latest, all_model_checkpoint_paths=sorted(
          set(kept) | {latest}, key=checkpoint_step))


class CheckpointManager(tf.train.CheckpointManager):
  """tf.train.CheckpointManager whose failed save (disk full, permissions) is one line."""

  def save(self, *args, **kwargs):
    try:
      return super().save(*args, **kwargs)
    except (OSError, tf.errors.OpError) as e:
      reason = _one_line(getattr(e, "message", None) or e)
      previous = self.latest_checkpoint
      raise errors.SltError(
          f"cannot write a checkpoint to {self.directory} ({reason}); free space or fix "
          "permissions there, then rerun the same command to resume from "
          + (os.path.basename(previous) if previous else "the start")) from None
