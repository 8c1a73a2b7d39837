"""The run directory of a search: its layout, config, generator spec and latest checkpoint, and
the one way slt_tf writes a file atomically.

Layout of a run directory W (`slt_tf.train` writes it; evaluation, inspection, the sweep,
`generator.init_checkpoint` and export read it through this module):
  config.json                  the resolved config (a rerun with a different one is refused)
  generator.json               the resolved generator spec, channels included, written when a run
                               starts: export rebuilds the generator without the dataset
  checkpoints/ckpt-<step>.*    tf.train.CheckpointManager (a rerun resumes from the latest)
  tensorboard/train/           losses, mask changes, sample grids, the config as text and HParams
  tensorboard/eval/            the periodic and final evaluations' metrics
  samples/step_<N>.png, final.png
  ticket.slt                   the ticket (ticket methods)
  imp_masks.npz, imp_rounds.json   method=imp: final masks, kept fraction of each round
  metrics.json                 bin/evaluate (metrics_untrained.json, metrics_<split>.json)
  train_seconds.json           bin/sweep: wall seconds spent training the run
  .lock                        the bin/find_ticket process using W (slt_tf.workdir_lock)

Every read and write goes through `tf.io.gfile`, so W may live on any filesystem TensorFlow
knows (local disk, GCS, `ram://`). Readers never see a half-written file: a file is written
under a temporary name next to its destination and then renamed over it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, NamedTuple, Union
import uuid

import ml_collections
import tensorflow as tf

from slt_tf import checkpoints
from slt_tf import errors
from slt_tf import generators

CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
TICKET_FILE = "ticket.slt"
IMP_MASKS_FILE = "imp_masks.npz"
IMP_ROUNDS_FILE = "imp_rounds.json"
METRICS_FILE = "metrics.json"
UNTRAINED_METRICS_FILE = "metrics_untrained.json"
TRAIN_SECONDS_FILE = "train_seconds.json"
LOCK_FILE = ".lock"


# ----------------------------------------------------------------------------------- paths


def is_local(path: str) -> bool:
  """False for paths of another filesystem scheme (gs://, ram://, ...)."""
  return "://" not in path


def absolute(path: str) -> str:
  """`os.path.abspath` of a local path; a path of another filesystem as it is."""
  return os.path.abspath(path) if is_local(path) else path


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def tensorboard_dir(workdir: str, kind: str) -> str:
  """W/tensorboard/<kind>: "train" (training) or "eval" (evaluations)."""
  return os.path.join(workdir, TENSORBOARD_DIR, kind)


def samples_dir(workdir: str) -> str:
  return os.path.join(workdir, SAMPLES_DIR)


def sample_path(workdir: str, step: int | None = None) -> str:
  """W/samples/step_<step>.png, or W/samples/final.png (step None)."""
  name = "final.png" if step is None else f"step_{step:07d}.png"
  return os.path.join(samples_dir(workdir), name)


def ticket_path(workdir: str) -> str:
  return os.path.join(workdir, TICKET_FILE)


def metrics_path(workdir: str, *, untrained: bool = False, split: str = "test") -> str:
  """W/metrics.json (test split), W/metrics_untrained.json; other splits add `_<split>`."""
  name = UNTRAINED_METRICS_FILE if untrained else METRICS_FILE
  if split != "test":
    name = name.replace(".json", f"_{split}.json")
  return os.path.join(workdir, name)


# ----------------------------------------------------------------------------------- files


def _temporary_name(path: str) -> str:
  head, tail = os.path.split(path)
  return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", overwrite: bool = True) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` when the block succeeds.

  For writers that take a file or directory name (Keras `save_weights`, `np.savez`,
  `tf.saved_model.save`): `suffix` is appended to the temporary name where the writer insists
  on an extension (e.g. ".weights.h5"). On an exception the temporary file (or directory) is
  removed and `path` is left untouched. `overwrite=False`: an existing `path` makes the rename
  fail (tf.errors.AlreadyExistsError) instead of being replaced.
  """
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  temporary = _temporary_name(path) + suffix
  try:
    yield temporary
    tf.io.gfile.rename(temporary, path, overwrite=overwrite)
  except BaseException:
    if tf.io.gfile.isdir(temporary):
      tf.io.gfile.rmtree(temporary)
    elif tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise


def atomic_write(path: str, data: Union[bytes, str]) -> None:
  """Writes `data` (bytes, or text as UTF-8) to `path` atomically, through tf.io.gfile."""
  with atomic_path(path) as temporary:
    with tf.io.gfile.GFile(temporary, "wb" if isinstance(data, bytes) else "w") as f:
      f.write(data)


def write_json(path: str, values: Any) -> None:
  """`values` as indented JSON (keys sorted), written atomically."""
  atomic_write(path, json.dumps(values, indent=2, sort_keys=True))


def read_json(path: str) -> Any:
  """The JSON value in `path`, or None when the file does not exist (ValueError if broken)."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


# ---------------------------------------------------------------------------------- config


def read_config(workdir: str, *, required: bool = True,
                advice: str = "pass the --workdir of a bin/find_ticket run"
                ) -> ml_collections.ConfigDict | None:
  """The run's resolved config from W/config.json (None if absent and not `required`).

  Raises:
    SltError: in one line ending in `advice`: the file is missing (when `required`), not JSON,
      or not a JSON object.
  """
  path = config_path(workdir)
  try:
    values = read_json(path)
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError.
    raise errors.SltError(f"{path} is not valid JSON ({type(e).__name__}); {advice}") from None
  if values is None:
    if not required:
      return None
    raise errors.SltError(f"{path} does not exist: {workdir} is not a run directory of "
                          f"bin/find_ticket; {advice}")
  if not isinstance(values, dict):
    raise errors.SltError(f"{path} holds a JSON {type(values).__name__}, not a slt_tf config "
                          f"object; {advice}")
  return ml_collections.ConfigDict(values)


def write_config(workdir: str, config: dict) -> None:
  write_json(config_path(workdir), config)


def spec_from_config(config: ml_collections.ConfigDict, channels: int
                     ) -> generators.GeneratorSpec:
  """The generator spec a config resolves to, for images of `channels` channels."""
  g = config.generator
  return generators.GeneratorSpec(
      name=g.name, image_size=config.dataset.image_size, channels=channels,
      latent_dim=g.latent_dim, filters=tuple(g.filters), method=config.method,
      keep_fraction=config.keep_fraction, weight_init=g.weight_init, score_init=g.score_init,
      scale_fan=g.scale_fan, mask_bias=g.mask_bias, seed=config.seed,
      # Absent from configs written before it existed: the spec's default.
      native_size=g.get("native_size", generators.GeneratorSpec.native_size))


def write_generator_spec(workdir: str, spec: generators.GeneratorSpec) -> None:
  write_json(os.path.join(workdir, GENERATOR_FILE), spec.to_dict())


def _stored_spec(path: str) -> generators.GeneratorSpec | None:
  try:
    values = read_json(path)
    if values is None:
      return None
    spec = generators.GeneratorSpec.from_dict(values)
    spec.resolved_filters()
    return spec
  except (ValueError, TypeError, AttributeError, RecursionError, errors.SltError) as e:
    raise errors.SltError(f"{path} is not a generator spec ({type(e).__name__}); the workdir is "
                          "damaged: rerun bin/find_ticket on it to rewrite it") from None


def generator_spec(workdir: str, fallback_channels: Callable[[str], int] | None = None
                   ) -> generators.GeneratorSpec:
  """The run's generator spec: W/generator.json, checked against W/config.json.

  A workdir written before generator.json existed falls back to W/config.json with
  `fallback_channels(dataset name)`: evaluation passes `data.num_channels` (it loads the
  dataset anyway), export the channels of the run's ticket; without one it is an error asking
  to rerun bin/find_ticket, which writes the file.

  Raises:
    SltError: a missing or broken config.json or generator.json, or the two disagree.
  """
  config = read_config(workdir, advice="pass the --workdir of a run, or --ticket=PATH of a "
                       "ticket file")
  if not isinstance(config.get("generator"), ml_collections.ConfigDict):
    raise errors.SltError(f"{config_path(workdir)} is not a bin/find_ticket config (a JSON "
                          "object with a 'generator' object); pass the --workdir of a run")
  stored = _stored_spec(os.path.join(workdir, GENERATOR_FILE))
  if stored is not None:
    channels = stored.channels
  elif fallback_channels is not None:
    channels = fallback_channels(config.dataset.name)
  else:
    raise errors.SltError(f"{workdir} has no {GENERATOR_FILE} (older slt_tf wrote none): rerun "
                          "bin/find_ticket with the same --workdir and config to write it (a "
                          "finished run trains nothing more)")
  try:
    expected = spec_from_config(config, channels)
  except (AttributeError, KeyError, TypeError) as e:
    raise errors.SltError(f"{config_path(workdir)} lacks generator key {e}; pass the --workdir "
                          "of a bin/find_ticket run") from None
  if stored is not None and stored.to_dict() != expected.to_dict():
    raise errors.SltError(f"{os.path.join(workdir, GENERATOR_FILE)} holds generator "
                          f"{stored.to_dict()} but {CONFIG_FILE} describes {expected.to_dict()}; "
                          "the workdir is inconsistent: use a new --workdir")
  return expected


# ------------------------------------------------------------------------------ checkpoints


class Checkpoint(NamedTuple):
  path: str  # The prefix .../ckpt-<step>.
  step: int


def latest_in(directory: str) -> Checkpoint | None:
  """The latest checkpoint of a checkpoint directory (None: none whose files exist)."""
  path = tf.train.latest_checkpoint(directory)
  return None if path is None else Checkpoint(path, checkpoints.checkpoint_step(path))


def latest_checkpoint(workdir: str) -> Checkpoint | None:
  """The latest checkpoint in W/checkpoints (None: none whose files exist)."""
  return latest_in(checkpoint_dir(workdir))


def restore_generator(workdir: str, spec: generators.GeneratorSpec, *,
                      advice: str = "train first with bin/find_ticket"
                      ) -> tuple[generators.Generator, Checkpoint]:
  """The generator of `spec` (e.g. `generator_spec(workdir)`) with every variable read from
  the latest checkpoint in W/checkpoints, and that checkpoint.

  Raises:
    SltError: no checkpoint (the message ends in `advice`), or one that is corrupt or of
      another generator.
  """
  checkpoint = latest_checkpoint(workdir)
  if checkpoint is None:
    raise errors.SltError(f"no checkpoint in {checkpoint_dir(workdir)} (missing, or its files "
                          f"are gone); {advice}")
  return checkpoints.restore_generator(spec, checkpoint.path), checkpoint
