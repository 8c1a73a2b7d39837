"""The Python API: what the binaries do, as functions (also `slt_tf.<name>`).

  import slt_tf
  config = slt_tf.load_config("configs/test.py", {"features.weights": "none"})
  summary = slt_tf.find_ticket(config, "/tmp/run")            # search (or resume)
  generator = slt_tf.load_generator(summary["ticket"])        # a plain Keras generator
  images = slt_tf.generate(generator, seeds=range(16))        # uint8 [16, H, W, C]
  metrics = slt_tf.evaluate("/tmp/run", num_samples=256)      # FID, KID, PRDC ...
  slt_tf.export_saved_model("/tmp/run", "/tmp/export")        # TF Serving layout
  slt_tf.export_tflite("/tmp/run", "/tmp/g.tflite", quantize="dynamic")
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import keras
import ml_collections
import numpy as np
import tensorflow as tf

import slt_tf
from slt_tf import config_schema
from slt_tf import errors


def _check_backend() -> None:
  problem = slt_tf.keras_backend_error()
  if problem is not None or keras.backend.backend() != "tensorflow":
    raise errors.SltError(problem or f"slt_tf needs the TensorFlow backend of Keras, but Keras "
                          f"runs on {keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow")


def load_config(path: str, overrides: Mapping[str, Any] | None = None
                ) -> ml_collections.ConfigDict:
  """A config file (e.g. configs/digits.py) with `{"a.b": value}` overrides applied, like
  `--config=PATH --config.a.b=value`. An unknown key raises SltError."""
  config = config_schema.load_file(path)
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    try:
      for parent in parents:
        node = node[parent]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError) as e:
      raise errors.SltError(f"unknown config key {key}; the known keys and their defaults are "
                            "in slt_tf/config_schema.py") from e
    except (TypeError, ValueError) as e:
      raise errors.SltError(f"bad value {value!r} for config key {key}: {e}") from e
  return config


def find_ticket(config: ml_collections.ConfigDict | str, workdir: str, *,
                strategy: tf.distribute.Strategy | None = None) -> dict:
  """Searches (or resumes) a ticket as bin/find_ticket does; `config` is a ConfigDict or the
  path of a config file. Returns the run summary (step, ticket path, sizes, SHA-256)."""
  _check_backend()
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  if isinstance(config, str):
    config = load_config(config)
  return train.train_and_evaluate(config, workdir, strategy=strategy)


def load_generator(source: str) -> keras.Model:
  """The baked Keras generator (masks in plain kernels) of a ticket file, or of a workdir's
  latest checkpoint (tickets or method=dense). Call it as generator(z, training=False)."""
  _check_backend()
  from slt_tf.export import bake  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(source):
    return bake.from_workdir(source)[0]
  return bake.from_ticket_file(source)[0]


def generate(generator: keras.Model, seeds: Iterable[int]) -> np.ndarray:
  """uint8 images [N, H, W, C] for integer seeds: the same images as the SavedModel's
  `generate_uint8` signature and bin/generate_samples for these seeds."""
  from slt_tf import images  # pylint: disable=g-import-not-at-top
  from slt_tf import sampling  # pylint: disable=g-import-not-at-top
  seeds = tf.constant(list(seeds), tf.int64)
  z = sampling.latents(seeds, int(generator.spec.latent_dim), stream=0)
  return images.to_uint8(generator(z, training=False)).numpy()


def evaluate(workdir: str, *, num_samples: int | None = None, batch_size: int = 250,
             cache_dir: str | None = None) -> dict:
  """bin/evaluate: FID, KID, IS, PRDC of the workdir's latest checkpoint on held-out data;
  writes W/metrics.json and TensorBoard scalars. Returns the metrics."""
  _check_backend()
  from slt_tf import workdir_evaluation  # pylint: disable=g-import-not-at-top
  return workdir_evaluation.evaluate_workdir(workdir, num_samples=num_samples,
                                             batch_size=batch_size, cache_dir=cache_dir)


def _source(source: str) -> dict:
  return ({"workdir": source} if tf.io.gfile.isdir(source)
          else {"ticket_path": source})


def export_saved_model(source: str, export_dir: str, *, model_name: str = "slt",
                       version: int = 1) -> str:
  """bin/export_saved_model: the TF Serving model of a workdir or ticket file at
  export_dir/<model_name>/<version>/; returns that directory."""
  _check_backend()
  from slt_tf.export import bake  # pylint: disable=g-import-not-at-top
  return bake.export(export_base=export_dir, model_name=model_name, version=version,
                     **_source(source))


def export_tflite(source: str, out_path: str, *, quantize: str = "none",
                  sparsity: bool = False) -> dict:
  """bin/export_tflite: a .tflite file of a workdir or ticket file; returns its metadata."""
  _check_backend()
  from slt_tf.export import tflite  # pylint: disable=g-import-not-at-top
  return tflite.export(out_path, quantize=quantize, sparsity=sparsity, **_source(source))
