"""Sample images from a served generator: TensorFlow Serving over REST or gRPC, or a local
SavedModel. What `bin/generate_samples` calls: `seed_range`, `generate`, `save_images`.

Clients send integer seeds and get uint8 images (or PNG bytes) back, never float tensors as JSON
(TF Serving #1991). All three sources give the same images for the same seeds, because z is
drawn inside the SavedModel with `slt_tf.sampling.latents(seeds, latent_dim, stream=0)`.
"""

import base64
import json
import os
import re
import socket
import urllib.error
import urllib.request

from absl import logging
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from slt_tf.export import servable
from slt_tf import errors
from slt_tf import images as images_lib

SEED_SIGNATURES = (servable.GENERATE_UINT8, servable.GENERATE_PNG)
# Each source's signature when none is given: REST answers base64 PNGs (little JSON).
_DEFAULT_SIGNATURE = {"server": servable.GENERATE_PNG, "grpc": servable.GENERATE_UINT8,
                      "saved_model": servable.GENERATE_UINT8}
# gRPC clients refuse answers over 4 MB by default (TF Serving #1382); TF Serving itself sends
# up to 2 GB.
MAX_MESSAGE_BYTES = 1 << 30
INT64_MAX = 2**63 - 1


def seed_range(first_seed: int, num_samples: int) -> np.ndarray:
  """int64 [num_samples]: first_seed .. first_seed + num_samples - 1 (never wrapping around)."""
  if num_samples < 1:
    raise errors.SltError(f"the number of images must be at least 1, got {num_samples}")
  if first_seed < 0 or first_seed + num_samples - 1 > INT64_MAX:
    raise errors.SltError(f"seeds must lie in [0, {INT64_MAX}] (int64): --seed must be in "
                          f"[0, {INT64_MAX - num_samples + 1}] for --num_samples={num_samples}, "
                          f"got {first_seed}")
  return np.arange(first_seed, first_seed + num_samples, dtype=np.int64)


def generate(*, seeds, server: str | None = None, grpc_address: str | None = None,
             saved_model: str | None = None, model_name: str = "slt",
             signature: str | None = None, version: int | None = None, timeout: float = 30,
             max_batch_size: int | None = None) -> np.ndarray:
  """Generates images for `seeds` from exactly one source.

  Args:
    seeds: int [N].
    server: a TF Serving REST address, e.g. http://localhost:8501.
    grpc_address: a TF Serving gRPC address HOST:PORT, e.g. localhost:8500.
    saved_model: a version directory E/<model>/<version>, or the model base path E/<model>
      (then `version`, or the highest one), loaded in this process.
    model_name: the model's name on the server.
    signature: generate_uint8 or generate_png; None picks the source's default (REST
      generate_png, gRPC and local generate_uint8). All give the same images.
    version: a specific version, else the latest.
    timeout: seconds to wait for a server.
    max_batch_size: seeds per request (default servable.MAX_BATCH_SIZE; the model's own limit
      when its answer names a lower one).

  Returns:
    uint8 [N, H, W, C].

  Raises:
    SltError: bad seeds or signature, no source or several, an unreachable server, an unknown
      model, version or signature, a refused request (each with the server's message).
  """
  sources = {"server": server, "grpc": grpc_address, "saved_model": saved_model}
  given = [name for name, value in sources.items() if value]
  if len(given) != 1:
    raise errors.SltError("give exactly one source: --server=http://HOST:8501, "
                          "--grpc=HOST:8500 or --saved_model=PATH"
                          + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
  seeds = _check_seeds(seeds)
  signature = signature or _DEFAULT_SIGNATURE[given[0]]
  if signature not in SEED_SIGNATURES:
    raise errors.SltError(f"signature {signature!r} cannot be sampled with seeds; use one of "
                          f"{list(SEED_SIGNATURES)} (serving_default takes z)")
  arguments = dict(server=server, grpc_address=grpc_address, saved_model=saved_model,
                   model_name=model_name, signature=signature, version=version, timeout=timeout)
  chunk = max_batch_size or servable.MAX_BATCH_SIZE
  if len(seeds) > chunk:  # A served model takes at most max_batch_size seeds at once.
    return np.concatenate([generate(seeds=seeds[i:i + chunk], max_batch_size=chunk, **arguments)
                           for i in range(0, len(seeds), chunk)])
  try:
    if server:
      logging.info("Sampling %d images over REST from %s model %r", len(seeds), server,
                   model_name)
      return _generate_rest(server, model_name, seeds, signature, version, timeout)
    if grpc_address:
      logging.info("Sampling %d images over gRPC from %s model %r", len(seeds), grpc_address,
                   model_name)
      return _generate_grpc(grpc_address, model_name, seeds, signature, version, timeout)
    logging.info("Sampling %d images from the SavedModel %s", len(seeds), saved_model)
    return _generate_local(saved_model, seeds, signature, version)
  except errors.SltError as e:  # The model's own limit is lower: split by it.
    limit = re.search(r"at most (\d+) seeds per request", str(e))
    if limit is None or int(limit.group(1)) >= len(seeds):
      raise
    return generate(seeds=seeds, max_batch_size=int(limit.group(1)), **arguments)


def _check_seeds(seeds) -> np.ndarray:
  """Seeds as int64 [N], N >= 1."""
  array = np.asarray(seeds)
  if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
    raise errors.SltError(f"seeds must be a non-empty 1-D array of integers, got "
                          f"{array.dtype.name} with shape {list(array.shape)}")
  return array.astype(np.int64)


def _images(name: str, value, num: int) -> np.ndarray:
  """A signature's output ("images" uint8, or "images_bytes" PNGs) as uint8 [num, H, W, C]."""
  if name.endswith("_bytes"):
    value = np.stack([tf.io.decode_png(data).numpy() for data in value])
  images = np.asarray(value)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != num:
    raise errors.SltError(f"the server answered {name!r} as {images.dtype.name} "
                          f"{list(images.shape)}, expected uint8 images [{num}, H, W, C]")
  return images


def _output_name(signature: str) -> str:
  return "images_bytes" if signature == servable.GENERATE_PNG else "images"


def _generate_local(saved_model_dir: str, seeds: np.ndarray, signature: str,
                    version: int | None) -> np.ndarray:
  path = servable.resolve_version_dir(saved_model_dir, version)
  model = tf.saved_model.load(path)
  if signature not in model.signatures:
    raise errors.SltError(f"{path} has no signature {signature!r}; it has "
                          f"{sorted(model.signatures)}")
  try:
    (name, value), = model.signatures[signature](seeds=tf.constant(seeds)).items()
  except tf.errors.InvalidArgumentError as e:  # E.g. more seeds than max_batch_size.
    message = re.search(r"at most \d+ .*? per request[^]]*", e.message)
    raise errors.SltError(f"{path} refused the request: "
                          f"{message.group(0) if message else ' '.join(e.message.split())[:300]}"
                          ) from None
  return _images(name, value.numpy(), len(seeds))


# ------------------------------------------------------------------------------------ REST


def _server_error_text(body: bytes) -> str:
  """The "error" field of a TF Serving error answer, on one line."""
  text = body.decode("utf-8", errors="replace")
  try:
    text = json.loads(text).get("error", text)
  except (ValueError, AttributeError):
    pass
  return " ".join(str(text).split())[:500]


def _generate_rest(server_url: str, model_name: str, seeds: np.ndarray, signature: str,
                   version: int | None, timeout: float) -> np.ndarray:
  """One TF Serving REST predict request, in the columnar format:
  {"signature_name": ..., "inputs": {"seeds": [...]}}. generate_png answers one base64 PNG per
  image ({"b64": ...}, TF Serving's convention for outputs named *_bytes)."""
  if not server_url.startswith(("http://", "https://")):
    raise errors.SltError(f"server URL must start with http:// or https://, got {server_url!r}")
  url = f"{server_url.rstrip('/')}/v1/models/{model_name}"
  url += (f"/versions/{version}" if version is not None else "") + ":predict"
  body = {"signature_name": signature, "inputs": {"seeds": seeds.tolist()}}
  request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as answer:
      data = answer.read()
  except urllib.error.HTTPError as e:
    text = _server_error_text(e.read())
    if e.code == 404:
      raise errors.SltError(f"model {model_name!r}"
                            + (f" version {version}" if version is not None else "")
                            + f" not found on {server_url} (HTTP 404: {text})") from None
    if "signature" in text.lower() and "not found" in text.lower():
      raise errors.SltError(f"model {model_name!r} on {server_url} has no signature "
                            f"{signature!r} (HTTP {e.code}: {text})") from None
    raise errors.SltError(f"{server_url} answered HTTP {e.code} for model {model_name!r} "
                          f"signature {signature!r}: {text}") from None
  except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
    raise errors.SltError(f"cannot reach TF Serving REST server at {server_url}: "
                          f"{getattr(e, 'reason', e)}") from None
  try:
    answer = json.loads(data)
  except ValueError:
    raise errors.SltError(f"{server_url} answered with something that is not JSON: "
                          f"{data[:80]!r}") from None
  outputs = answer.get("outputs") if isinstance(answer, dict) else None
  if outputs is None:
    raise errors.SltError(f"{server_url} answered without 'outputs': {str(answer)[:80]}")
  name = _output_name(signature)
  if isinstance(outputs, dict):  # Several outputs come back by name.
    if name not in outputs:
      raise errors.SltError(f"{server_url} answered outputs {sorted(outputs)}, expected {name!r}")
    outputs = outputs[name]
  if name.endswith("_bytes"):
    try:
      value = [base64.b64decode(item["b64"]) for item in outputs]
    except (TypeError, KeyError, ValueError) as e:
      raise errors.SltError(f"{server_url} answered {name!r} without base64 objects "
                            f"{{'b64': ...}}: {e}") from None
  else:
    value = np.asarray(outputs)
    if value.dtype.kind in "iu" and value.size and (value.min() < 0 or value.max() > 255):
      raise errors.SltError(f"{server_url} answered {name!r} with values outside uint8")
    value = value.astype(np.uint8) if value.dtype.kind in "iu" else value
  return _images(name, value, len(seeds))


# ------------------------------------------------------------------------------------ gRPC


def _generate_grpc(address: str, model_name: str, seeds: np.ndarray, signature: str,
                   version: int | None, timeout: float) -> np.ndarray:
  """One TF Serving gRPC Predict request; the channel accepts answers up to MAX_MESSAGE_BYTES
  (gRPC's default of 4 MB is about 340 images of 64x64x3 uint8)."""
  max_message_bytes = MAX_MESSAGE_BYTES
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  request.inputs["seeds"].CopyFrom(tf.make_tensor_proto(seeds))
  options = [("grpc.max_receive_message_length", max_message_bytes),
             ("grpc.max_send_message_length", max_message_bytes)]
  with grpc.insecure_channel(address, options=options) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
      code, details = e.code(), " ".join(str(e.details()).split())[:500]
      if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach TF Serving gRPC server at {address}: {details}"
      elif code == grpc.StatusCode.NOT_FOUND:
        message = (f"model {model_name!r}"
                   + (f" version {version}" if version is not None else "")
                   + f" not found on {address} (NOT_FOUND: {details})")
      elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        message = (f"the answer from {address} is larger than max_message_bytes="
                   f"{max_message_bytes}; request fewer images ({details})")
      elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"no answer from {address} within {timeout} s"
      elif "signature" in details.lower() and "not found" in details.lower():
        message = (f"model {model_name!r} on {address} has no signature {signature!r} "
                   f"({code.name}: {details})")
      else:
        message = (f"{address} rejected the request for model {model_name!r} signature "
                   f"{signature!r}: {code.name}: {details}")
      raise errors.SltError(message) from None
  name = _output_name(signature)
  if name not in response.outputs:
    raise errors.SltError(f"{address} answered outputs {sorted(response.outputs)}, expected "
                          f"{name!r}")
  return _images(name, tf.make_ndarray(response.outputs[name]), len(seeds))


# ---------------------------------------------------------------------------------- output


def check_output_path(path: str, *, existing_directory: bool = False) -> None:
  """Output paths end in .png (grid) or .npz (arrays); with `existing_directory`, they also
  name a file in a directory that exists (checked before any image is generated)."""
  if not path.endswith((".png", ".npz")):
    raise errors.SltError(f"output {path!r} must end in .png (grid) or .npz (arrays)")
  if not existing_directory:
    return
  directory = os.path.dirname(path) or "."
  if not os.path.isdir(directory):
    raise errors.SltError(f"output {path!r}: directory {directory} does not exist; create it "
                          "first or write elsewhere")
  if os.path.isdir(path):
    raise errors.SltError(f"output {path!r} is a directory; pass a file name ending in .png "
                          "or .npz")


def save_images(images_uint8: np.ndarray, path: str, *, seeds: np.ndarray | None = None) -> None:
  """Saves by extension: .png -> one grid (`slt_tf.images.grid`, like the training sample
  grids), .npz -> the arrays `images` (and `seeds`)."""
  check_output_path(path)
  if path.endswith(".png"):
    images_lib.save_grid_png(path, images_uint8)
    return
  arrays = {"images": np.asarray(images_uint8)}
  if seeds is not None:
    arrays["seeds"] = np.asarray(seeds)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, **arrays)
