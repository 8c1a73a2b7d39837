"""A generator as a TensorFlow Serving model: SavedModel signatures, warmup requests, versions.

Layout written by `write_servable` (what `tensorflow_model_server --model_base_path=E/<model_name>`
and the tensorflow/serving docker image expect):

  E/<model_name>/<version>/
    saved_model.pb
    variables/variables.{index,data-*}
    assets.extra/tf_serving_warmup_requests   TFRecord of PredictionLog (SavedModel warmup)
    assets.extra/slt_metadata.json            latent_dim, image shape, signatures, user metadata

Signatures:
  serving_default  z float32 [N, latent_dim]  -> images float32 [N, H, W, C] in [-1, 1]
  generate_uint8   seeds int64 [N]            -> images uint8 [N, H, W, C] (slt_tf.images.to_uint8)
  generate_png     seeds int64 [N]            -> images_bytes string [N] (one PNG per image;
                   TF Serving's REST API returns outputs named *_bytes as {"b64": ...})

The seeds signatures draw z with `slt_tf.sampling.latents(seeds, latent_dim, stream=0)`, so a
client sends a few integers instead of float tensors (TF Serving #1991) and gets the same images
from any server or from the SavedModel loaded locally.
"""

import json
import os
import re

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from slt_tf import errors
from slt_tf import images as images_lib
from slt_tf import sampling
from slt_tf import workdir as workdir_lib

SERVING_DEFAULT = "serving_default"
GENERATE_UINT8 = "generate_uint8"
GENERATE_PNG = "generate_png"
SIGNATURES = (SERVING_DEFAULT, GENERATE_UINT8, GENERATE_PNG)
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "slt_metadata.json"
ASSETS_EXTRA = "assets.extra"
# TF Serving reads at most this many warmup records (saved_model_warmup_util).
MAX_WARMUP_RECORDS = 1000
# Default largest batch (seeds or z rows) one request may ask for, for images of at most 32x32
# (fewer for larger images: `default_max_batch_size`); checked in the graph, so TF Serving
# enforces it too (INVALID_ARGUMENT, HTTP 400). Clients split larger requests.
MAX_BATCH_SIZE = 256


def default_max_batch_size(height: int, width: int) -> int:
  """256 up to 32x32 images, then fewer in proportion to the pixels (64 at 64x64): the serving
  process stays under 2 GB for the largest paper generator (docs/serving.md, "Limits")."""
  return max(1, min(MAX_BATCH_SIZE, MAX_BATCH_SIZE * 32 * 32 // (height * width)))
_MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def encode_png_batch(images_uint8: tf.Tensor) -> tf.Tensor:
  """uint8 [N, H, W, C] -> string [N], one PNG per image."""
  return tf.map_fn(tf.io.encode_png, images_uint8,
                   fn_output_signature=tf.TensorSpec([], tf.string))


class _ServableGenerator(tf.Module):
  """The exported object: the generator (its variables stay variables) and three signatures."""

  def __init__(self, generator: keras.Model, latent_dim: int, max_batch_size: int):
    super().__init__(name="slt_servable")
    self.generator = generator
    # Tracked explicitly so the checkpoint holds every variable the functions capture.
    self.generator_variables = list(generator.variables)
    self.latent_dim = latent_dim
    self.max_batch_size = max_batch_size

    @tf.function(input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="z")])
    def serving_default(z):
      return {"images": self._images(self._limited(z, "z rows"))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seeds")])
    def generate_uint8(seeds):
      seeds = self._limited(seeds, "seeds")
      return {"images": images_lib.to_uint8(self._images(self._latents(seeds)))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seeds")])
    def generate_png(seeds):
      seeds = self._limited(seeds, "seeds")
      images = images_lib.to_uint8(self._images(self._latents(seeds)))
      return {"images_bytes": encode_png_batch(images)}

    self.serving_default = serving_default
    self.generate_uint8 = generate_uint8
    self.generate_png = generate_png

  def _limited(self, batch, what: str):
    """`batch`, after an in-graph check (INVALID_ARGUMENT) that it has <= max_batch_size rows."""
    check = tf.debugging.assert_less_equal(
        tf.shape(batch, out_type=tf.int64)[0], tf.constant(self.max_batch_size, tf.int64),
        message=f"at most {self.max_batch_size} {what} per request are allowed "
        "(max_batch_size of this model); split the request")
    with tf.control_dependencies([check]):
      return tf.identity(batch)

  def _latents(self, seeds):
    return sampling.latents(seeds, self.latent_dim, stream=0)  # (N, latent_dim)

  def _images(self, z):
    return tf.cast(self.generator(z, training=False), tf.float32)  # (N, H, W, C)

  def signatures(self) -> dict:
    return {SERVING_DEFAULT: self.serving_default, GENERATE_UINT8: self.generate_uint8,
            GENERATE_PNG: self.generate_png}


def _check_arguments(latent_dim, model_name, version, num_warmup_records, metadata,
                     max_batch_size=None):
  if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
      or not 1 <= max_batch_size <= 65536):
    raise errors.SltError(f"max_batch_size must be an integer in [1, 65536], got "
                          f"{max_batch_size!r}")
  if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
    raise errors.SltError(f"latent_dim must be a positive integer, got {latent_dim!r}")
  if not isinstance(model_name, str) or not _MODEL_NAME_PATTERN.match(model_name):
    raise errors.SltError(
        f"model_name {model_name!r} is not allowed; use letters, digits, '_', '-', '.' "
        "(no '/' or ':', not starting with '.' or '-')")
  if isinstance(version, bool) or not isinstance(version, int) or version < 0:
    raise errors.SltError(
        f"version must be a non-negative integer (TF Serving version dir), got {version!r}")
  if (isinstance(num_warmup_records, bool) or not isinstance(num_warmup_records, int)
      or not 0 <= num_warmup_records <= MAX_WARMUP_RECORDS):
    raise errors.SltError(f"num_warmup_records must be an integer in [0, {MAX_WARMUP_RECORDS}]"
                          f" (TF Serving's limit), got {num_warmup_records!r}")
  try:
    json.dumps(metadata)
  except (TypeError, ValueError) as e:
    raise errors.SltError(f"metadata must be JSON-serialisable: {e}") from e


def _one_line(text: str, limit: int = 300) -> str:
  """Collapses a (Keras, multi-line, coloured) error message to one line."""
  text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
  return text if len(text) <= limit else text[:limit] + "..."


def _image_shape(generator: keras.Model, latent_dim: int) -> tuple[int, int, int]:
  """Runs the generator once on zeros and checks it returns float images [N, H, W, C]."""
  try:
    images = generator(tf.zeros([1, latent_dim], tf.float32), training=False)
  except Exception as e:
    raise errors.SltError(f"the generator does not accept z of shape [N, {latent_dim}] "
                          f"(latent_dim={latent_dim}): {type(e).__name__}: "
                          f"{_one_line(str(e))}") from e
  images = tf.convert_to_tensor(images)
  if images.shape.rank != 4 or not images.dtype.is_floating:
    raise errors.SltError(f"the generator must return float images [N, H, W, C], got "
                          f"{images.dtype.name} {images.shape.as_list()}")
  height, width, channels = images.shape[1:]
  if channels not in (1, 2, 3, 4):
    raise errors.SltError(
        f"images must have 1 to 4 channels to be encoded as PNG, got {channels}")
  return int(height), int(width), int(channels)


def warmup_records(model_name: str, latent_dim: int, num_records: int) -> list[bytes]:
  """Serialized PredictionLog records: TF Serving replays them at load time.

  Record 0 is a `serving_default` request with a small z batch; further records cycle through
  `generate_uint8` and `generate_png` (seeds) and `serving_default`, so every signature's
  function is traced before the first user request.
  See https://www.tensorflow.org/tfx/serving/saved_model_warmup.
  """
  records = []
  for index in range(num_records):
    signature = SIGNATURES[index % len(SIGNATURES)]
    seeds = np.arange(2 * index, 2 * index + 2, dtype=np.int64)
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    if signature == SERVING_DEFAULT:
      z = sampling.latents(seeds, latent_dim, stream=0).numpy()  # (2, latent_dim)
      request.inputs["z"].CopyFrom(tf.make_tensor_proto(z, dtype=tf.float32))
    else:
      request.inputs["seeds"].CopyFrom(tf.make_tensor_proto(seeds, dtype=tf.int64))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    records.append(log.SerializeToString())
  return records


def write_servable(generator: keras.Model, *, latent_dim: int, export_base: str,
                   model_name: str = "slt", version: int = 1, num_warmup_records: int = 3,
                   metadata: dict | None = None, max_batch_size: int | None = None) -> str:
  """Writes `generator` as version `version` of TF Serving model `model_name`.

  The SavedModel is written to a temporary sibling directory (a name TF Serving ignores, since
  version directories are numbers) and renamed into place, so a server polling the base path
  never loads a half-written version.

  Args:
    generator: maps z float32 [N, latent_dim] to images float32 [N, H, W, C] in [-1, 1]; called
      with training=False. Its variables are saved as variables.
    latent_dim: length of z.
    export_base: base directory E; the model goes to E/<model_name>/<version>/.
    model_name: TF Serving model name (also the REST path /v1/models/<model_name>).
    version: version directory number; an existing version is never overwritten.
    num_warmup_records: PredictionLog records in assets.extra/tf_serving_warmup_requests.
    metadata: JSON-serialisable extras stored in assets.extra/slt_metadata.json.
    max_batch_size: the most seeds (or z rows) one request may ask for, checked in the graph
      (INVALID_ARGUMENT over gRPC, HTTP 400 over REST, in TF Serving too); None:
      `default_max_batch_size` of the image size.

  Returns:
    The version directory E/<model_name>/<version>.

  Raises:
    SltError: bad arguments, a generator that does not return images, or an existing version.
  """
  _check_arguments(latent_dim, model_name, version, num_warmup_records, metadata,
                   max_batch_size)
  if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
    raise errors.SltError(f"export_dir {export_base} is a file; pass a directory (created if "
                          "missing)")
  model_base_path = os.path.join(export_base, model_name)
  version_dir = os.path.join(model_base_path, str(version))
  if tf.io.gfile.exists(version_dir):
    raise errors.SltError(f"version {version} of model {model_name!r} already exists at "
                          f"{version_dir}; pass a new version number (existing versions are "
                          "never overwritten)")
  image_shape = _image_shape(generator, latent_dim)
  if max_batch_size is None:
    max_batch_size = default_max_batch_size(image_shape[0], image_shape[1])
  servable = _ServableGenerator(generator, latent_dim, max_batch_size)

  created = [d for d in (export_base, model_base_path) if not tf.io.gfile.exists(d)]
  try:
    tf.io.gfile.makedirs(model_base_path)
  except (OSError, tf.errors.OpError) as e:
    raise errors.SltError(f"cannot create {model_base_path} ("
                          f"{_one_line(getattr(e, 'message', None) or str(e))}); pass an "
                          "--export_dir you can write to") from None
  done = False
  try:
    with workdir_lib.atomic_path(version_dir, overwrite=False) as temp_dir:
      tf.saved_model.save(servable, temp_dir, signatures=servable.signatures())
      assets_extra = os.path.join(temp_dir, ASSETS_EXTRA)
      tf.io.gfile.makedirs(assets_extra)
      with tf.io.TFRecordWriter(os.path.join(assets_extra, WARMUP_FILE)) as writer:
        for record in warmup_records(model_name, latent_dim, num_warmup_records):
          writer.write(record)
      description = {
          "model_name": model_name,
          "version": version,
          "latent_dim": latent_dim,
          "image_shape": list(image_shape),
          "max_batch_size": max_batch_size,
          "signatures": {
              SERVING_DEFAULT: {"inputs": {"z": ["float32", [None, latent_dim]]},
                                "outputs": {"images": ["float32", [None, *image_shape]]}},
              GENERATE_UINT8: {"inputs": {"seeds": ["int64", [None]]},
                               "outputs": {"images": ["uint8", [None, *image_shape]]}},
              GENERATE_PNG: {"inputs": {"seeds": ["int64", [None]]},
                             "outputs": {"images_bytes": ["string", [None]]}},
          },
          "latents": "slt_tf.sampling.latents(seeds, latent_dim, stream=0)",
          "metadata": metadata if metadata is not None else {},
      }
      with tf.io.gfile.GFile(os.path.join(assets_extra, METADATA_FILE), "w") as f:
        f.write(json.dumps(description, indent=2, sort_keys=True) + "\n")
      if tf.io.gfile.exists(version_dir):  # Someone else wrote it meanwhile.
        raise errors.SltError(f"version {version} of model {model_name!r} appeared at "
                              f"{version_dir} during the export; pass a new version number")
    if not tf.io.gfile.exists(os.path.join(version_dir, "saved_model.pb")):
      raise errors.SltError(f"the filesystem of {export_base} renamed {version_dir} without its "
                            "files (ram:// moves no directory contents); export to a local or "
                            "gs:// directory")
    done = True
  except (OSError, tf.errors.OpError) as e:  # Disk full, permissions: one line.
    raise errors.SltError(f"cannot write the SavedModel to {version_dir} ("
                          f"{_one_line(getattr(e, 'message', None) or str(e))})") from None
  finally:
    for directory in reversed(created if not done else []):  # Nothing left behind.
      if tf.io.gfile.isdir(directory) and not tf.io.gfile.listdir(directory):
        tf.io.gfile.rmtree(directory)
  logging.info("Wrote TF Serving model %r version %d (images %s) to %s", model_name, version,
               image_shape, version_dir)
  return version_dir


def resolve_version_dir(path: str, version: int | None = None) -> str:
  """Resolves a SavedModel directory: `path` itself, or a version under a model base path.

  Args:
    path: a SavedModel directory (holds saved_model.pb) or a TF Serving model base path
      (holds numbered version directories).
    version: with a base path, this version; None picks the highest, as TF Serving does.

  Raises:
    SltError: no SavedModel there, or the version does not exist.
  """
  if version is None and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  if not tf.io.gfile.isdir(path):
    raise errors.SltError(f"no SavedModel directory at {path}")
  versions = sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(path)
                    if name.rstrip("/").isdigit()
                    and tf.io.gfile.exists(os.path.join(path, name.rstrip("/"), "saved_model.pb")))
  if not versions:
    raise errors.SltError(f"{path} holds neither saved_model.pb nor numbered version "
                          "directories with one (TF Serving layout <base>/<version>/)")
  if version is None:
    version = versions[-1]
  elif version not in versions:
    raise errors.SltError(f"version {version} not found under {path}; available: {versions}")
  return os.path.join(path, str(version))


def read_metadata(saved_model_dir: str) -> dict:
  """Reads assets.extra/slt_metadata.json of a version directory written by write_servable."""
  path = os.path.join(saved_model_dir, ASSETS_EXTRA, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    raise errors.SltError(f"{path} not found; was this SavedModel written by write_servable?")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
