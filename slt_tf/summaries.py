"""TensorBoard writing shared by training and evaluation: one writer per log directory and
process (one events file per run, not one per callback or evaluation), the resolved config as
text and hyperparameters through the HParams plugin."""

from __future__ import annotations

import json
import threading

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from slt_tf import workdir as workdir_lib

_WRITERS: dict[str, tf.summary.SummaryWriter] = {}
_LOCK = threading.Lock()


def writer(log_dir: str) -> tf.summary.SummaryWriter:
  """The process's writer of `log_dir` (created on first use, or again if the directory was
  removed since)."""
  key = workdir_lib.absolute(log_dir)
  with _LOCK:
    existing = _WRITERS.get(key)
    if existing is None or not tf.io.gfile.isdir(log_dir):
      if existing is not None:
        existing.close()
      existing = _WRITERS[key] = tf.summary.create_file_writer(log_dir)
    return existing


def flatten(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
  """{"a.b": value} with HParams-compatible values (lists and tuples as their JSON text)."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(value, (bool, int, float, str)):
      flat[f"{prefix}{key}"] = value
    else:
      flat[f"{prefix}{key}"] = json.dumps(value)
  return flat


def write_config(log_dir: str, config: dict, step: int, trial_id: str | None = None) -> None:
  """The resolved config as text `config` (JSON) and as HParams (one session per run)."""
  summary_writer = writer(log_dir)
  with summary_writer.as_default(step=step):
    text = json.dumps(config, indent=2, sort_keys=True)
    tf.summary.text("config", "\n".join("    " + line for line in text.splitlines()))
    hparams_api.hparams(flatten(config), trial_id=trial_id)
  summary_writer.flush()
