"""Sample images from a served generator: TF Serving over REST or gRPC, or a local SavedModel.

Clients send integer seeds and get uint8 images (or PNG bytes) back, never float tensors as JSON
(TF Serving #1991). All three paths give the same images for the same seeds, because z is drawn
inside the SavedModel with `slt_tf.sampling.latents(seeds, latent_dim, stream=0)`.
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

REST_DEFAULT_SIGNATURE = servable.GENERATE_PNG
GRPC_DEFAULT_SIGNATURE = servable.GENERATE_UINT8
SEED_SIGNATURES = (servable.GENERATE_UINT8, servable.GENERATE_PNG)
# gRPC clients refuse responses over 4 MB by default (TF Serving #1382); TF Serving itself
# sends up to 2 GB.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


def _check_seeds(seeds) -> np.ndarray:
  """Seeds as int64 [N], N >= 1."""
  array = np.asarray(seeds)
  if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
    raise errors.SltError(f"seeds must be a non-empty 1-D array of integers, got "
                          f"{array.dtype.name} with shape {list(array.shape)}")
  return array.astype(np.int64)


def _check_signature(signature: str) -> None:
  if signature not in SEED_SIGNATURES:
    raise errors.SltError(f"signature {signature!r} cannot be sampled with seeds; use one of "
                          f"{list(SEED_SIGNATURES)} (serving_default takes z)")


def _decode_pngs(pngs) -> np.ndarray:
  """PNG bytes [N] -> uint8 [N, H, W, C]."""
  return np.stack([tf.io.decode_png(data).numpy() for data in pngs])


def _images_from_output(name: str, value: np.ndarray, num: int) -> np.ndarray:
  """A signature output ("images" uint8 or "images_bytes" PNGs) -> uint8 [num, H, W, C]."""
  images = _decode_pngs(value) if name.endswith("_bytes") else np.asarray(value)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != num:
    raise errors.SltError(f"the server answered {name!r} as {images.dtype.name} "
                          f"{list(images.shape)}, expected uint8 images [{num}, H, W, C]")
  return images


# ----------------------------------------------------------------------------------- local


def generate_local(saved_model_dir: str, *, seeds: np.ndarray | None = None,
                   z: np.ndarray | None = None, signature: str | None = None,
                   version: int | None = None) -> np.ndarray:
  """Generates images with a SavedModel loaded in this process (no server).

  Args:
    saved_model_dir: a version directory E/<model>/<version>, or the model base path E/<model>
      (then `version`, or the highest one).
    seeds: int [N]; uses `signature` (default generate_uint8).
    z: float32 [N, latent_dim] instead of seeds; uses serving_default and quantises to uint8
      like generate_uint8.
    signature: with seeds, generate_uint8 or generate_png.
    version: with a model base path, the version to load.

  Returns:
    uint8 [N, H, W, C].
  """
  if (seeds is None) == (z is None):
    raise errors.SltError("pass exactly one of seeds or z")
  path = servable.resolve_version_dir(saved_model_dir, version)
  model = tf.saved_model.load(path)
  if z is not None:
    z = np.asarray(z, dtype=np.float32)
    expected = model.signatures[servable.SERVING_DEFAULT].structured_input_signature[1]["z"]
    if not expected.shape.is_compatible_with(z.shape):
      raise errors.SltError(f"z must have shape [N, {expected.shape[1]}], got {list(z.shape)}")
    images = model.signatures[servable.SERVING_DEFAULT](z=tf.constant(z))["images"]
    return images_lib.to_uint8(images).numpy()
  seeds = _check_seeds(seeds)
  signature = signature or servable.GENERATE_UINT8
  _check_signature(signature)
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
  return _images_from_output(name, value.numpy(), len(seeds))


# ------------------------------------------------------------------------------------ REST


def _rest_url(server_url: str, model_name: str, version: int | None) -> str:
  if not server_url.startswith(("http://", "https://")):
    raise errors.SltError(f"server URL must start with http:// or https://, got {server_url!r}")
  url = f"{server_url.rstrip('/')}/v1/models/{model_name}"
  return url + (f"/versions/{version}" if version is not None else "")


def _server_error_text(body: bytes) -> str:
  """The "error" field of a TF Serving error answer, on one line."""
  text = body.decode("utf-8", errors="replace")
  try:
    text = json.loads(text).get("error", text)
  except (ValueError, AttributeError):
    pass
  return " ".join(str(text).split())[:500]


def predict_rest(server_url: str, model_name: str, body: dict, *, version: int | None = None,
                 timeout: float = 30) -> dict:
  """POSTs a TF Serving REST predict request and returns the decoded JSON answer.

  Args:
    server_url: e.g. http://localhost:8501.
    model_name: model name on the server.
    body: {"signature_name": ..., "instances": [...]} or {..., "inputs": ...}.
    version: a specific version, else the server's latest.
    timeout: seconds.

  Raises:
    SltError: unreachable server, unknown model (404), any other non-200 answer (with the
      server's error text), or an answer that is not JSON.
  """
  url = _rest_url(server_url, model_name, version) + ":predict"
  request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                   headers={"Content-Type": "application/json"})
  signature = body.get("signature_name") or servable.SERVING_DEFAULT
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
    reason = getattr(e, "reason", e)
    raise errors.SltError(f"cannot reach TF Serving REST server at {server_url}: "
                          f"{reason}") from None
  try:
    return json.loads(data)
  except ValueError:
    raise errors.SltError(f"{server_url} answered with something that is not JSON: "
                          f"{data[:80]!r}") from None


def generate_rest(server_url: str, model_name: str, *, seeds: np.ndarray,
                  signature: str = REST_DEFAULT_SIGNATURE, version: int | None = None,
                  timeout: float = 30) -> np.ndarray:
  """Generates images through TF Serving's REST API.

  Sends the seeds in the columnar format, {"signature_name": ..., "inputs": {"seeds": [...]}}.
  The default signature generate_png answers one base64 PNG per image ({"b64": ...}, TF
  Serving's convention for outputs named *_bytes), much less JSON than nested uint8 lists.

  Returns:
    uint8 [N, H, W, C].
  """
  seeds = _check_seeds(seeds)
  _check_signature(signature)
  answer = predict_rest(server_url, model_name,
                        {"signature_name": signature, "inputs": {"seeds": seeds.tolist()}},
                        version=version, timeout=timeout)
  outputs = answer.get("outputs") if isinstance(answer, dict) else None
  if outputs is None:
    raise errors.SltError(f"{server_url} answered without 'outputs': {str(answer)[:80]}")
  name = "images_bytes" if signature == servable.GENERATE_PNG else "images"
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
  return _images_from_output(name, value, len(seeds))


def rest_model_status(server_url: str, model_name: str, *, timeout: float = 10) -> dict:
  """GET /v1/models/<name>: TF Serving's model version status."""
  url = _rest_url(server_url, model_name, None)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
      return json.loads(answer.read())
  except urllib.error.HTTPError as e:
    raise errors.SltError(f"model {model_name!r} status from {server_url}: HTTP {e.code}: "
                          f"{_server_error_text(e.read())}") from None
  except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
    raise errors.SltError(f"cannot reach TF Serving REST server at {server_url}: "
                          f"{getattr(e, 'reason', e)}") from None


# ------------------------------------------------------------------------------------ gRPC


def predict_grpc(address: str, model_name: str, inputs: dict, *,
                 signature: str = servable.SERVING_DEFAULT, version: int | None = None,
                 timeout: float = 30,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict:
  """Sends a TF Serving gRPC Predict request; returns {output name: ndarray}.

  Args:
    address: HOST:PORT of the gRPC port (TF Serving's default is 8500).
    model_name: model name on the server.
    inputs: {input name: ndarray}, sent as TensorProto with the array's dtype.
    signature: signature name.
    version: a specific version, else the server's latest.
    timeout: seconds.
    max_message_bytes: largest response accepted (gRPC's default is 4 MB).

  Raises:
    SltError: unreachable server, unknown model or signature, a rejected request (with the
      server's message), a response over max_message_bytes, a timeout.
  """
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
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
        message = (f"the response from {address} is larger than max_message_bytes="
                   f"{max_message_bytes}; raise it or request fewer images ({details})")
      elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"no answer from {address} within {timeout} s"
      elif "signature" in details.lower() and "not found" in details.lower():
        message = (f"model {model_name!r} on {address} has no signature {signature!r} "
                   f"({code.name}: {details})")
      else:
        message = (f"{address} rejected the request for model {model_name!r} signature "
                   f"{signature!r}: {code.name}: {details}")
      raise errors.SltError(message) from None
  return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def generate_grpc(address: str, model_name: str, *, seeds: np.ndarray,
                  signature: str = GRPC_DEFAULT_SIGNATURE, version: int | None = None,
                  timeout: float = 30,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> np.ndarray:
  """Generates images through TF Serving's gRPC PredictionService.

  The channel accepts responses up to `max_message_bytes` (gRPC's client default of 4 MB is
  about 340 images of 64x64x3 uint8; TF Serving #1382).

  Returns:
    uint8 [N, H, W, C].
  """
  seeds = _check_seeds(seeds)
  _check_signature(signature)
  outputs = predict_grpc(address, model_name, {"seeds": seeds}, signature=signature,
                         version=version, timeout=timeout, max_message_bytes=max_message_bytes)
  name = "images_bytes" if signature == servable.GENERATE_PNG else "images"
  if name not in outputs:
    raise errors.SltError(f"{address} answered outputs {sorted(outputs)}, expected {name!r}")
  return _images_from_output(name, outputs[name], len(seeds))


# -------------------------------------------------------------------------------- dispatch


INT64_MAX = 2**63 - 1


def seed_range(first_seed: int, num: int) -> np.ndarray:
  """int64 [num]: first_seed .. first_seed + num - 1 (never wrapping around int64)."""
  if num < 1:
    raise errors.SltError(f"the number of images must be at least 1, got {num}")
  if first_seed < 0 or first_seed + num - 1 > INT64_MAX:
    raise errors.SltError(f"seeds must lie in [0, {INT64_MAX}] (int64): --seed must be in "
                          f"[0, {INT64_MAX - num + 1}] for --num={num}, got {first_seed}")
  return np.arange(first_seed, first_seed + num, dtype=np.int64)


def generate(*, seeds: np.ndarray, server: str | None = None, grpc_address: str | None = None,
             saved_model: str | None = None, model_name: str = "slt",
             signature: str | None = None, version: int | None = None,
             timeout: float = 30, max_batch_size: int | None = None) -> np.ndarray:
  """Generates images from exactly one source: REST `server`, `grpc_address` or `saved_model`.

  Requests hold at most `max_batch_size` seeds (default servable.MAX_BATCH_SIZE, and the
  model's own limit when its answer names a lower one).

  `signature` None picks each transport's default (REST generate_png, gRPC and local
  generate_uint8); all give the same uint8 images [N, H, W, C].
  """
  sources = {"server": server, "grpc": grpc_address, "saved_model": saved_model}
  given = [name for name, value in sources.items() if value]
  if len(given) != 1:
    raise errors.SltError("give exactly one source: --server=http://HOST:8501, "
                          "--grpc=HOST:8500 or --saved_model=PATH"
                          + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
  seeds = _check_seeds(seeds)
  arguments = dict(server=server, grpc_address=grpc_address, saved_model=saved_model,
                   model_name=model_name, signature=signature, version=version, timeout=timeout)
  chunk = max_batch_size or servable.MAX_BATCH_SIZE
  if len(seeds) > chunk:  # A served model takes at most max_batch_size seeds at once.
    return np.concatenate([generate(seeds=seeds[i:i + chunk], max_batch_size=chunk, **arguments)
                           for i in range(0, len(seeds), chunk)])
  try:
    return _generate_one(seeds=seeds, **arguments)
  except errors.SltError as e:  # The model's own limit is lower: split by it.
    limit = re.search(r"at most (\d+) seeds per request", str(e))
    if limit is None or int(limit.group(1)) >= len(seeds):
      raise
    return generate(seeds=seeds, max_batch_size=int(limit.group(1)), **arguments)


def _generate_one(*, seeds: np.ndarray, server: str | None, grpc_address: str | None,
                  saved_model: str | None, model_name: str, signature: str | None,
                  version: int | None, timeout: float) -> np.ndarray:
  """One request to the one source `generate` checked."""
  if server:
    logging.info("Sampling %d images over REST from %s model %r", len(seeds), server, model_name)
    return generate_rest(server, model_name, seeds=seeds,
                         signature=signature or REST_DEFAULT_SIGNATURE, version=version,
                         timeout=timeout)
  if grpc_address:
    logging.info("Sampling %d images over gRPC from %s model %r", len(seeds), grpc_address,
                 model_name)
    return generate_grpc(grpc_address, model_name, seeds=seeds,
                         signature=signature or GRPC_DEFAULT_SIGNATURE, version=version,
                         timeout=timeout)
  logging.info("Sampling %d images from the SavedModel %s", len(seeds), saved_model)
  return generate_local(saved_model, seeds=seeds, signature=signature, version=version)


# ---------------------------------------------------------------------------------- output


def save_npz(images: np.ndarray, path: str, *, seeds: np.ndarray | None = None) -> None:
  """Writes images (and the seeds that made them) to a compressed .npz."""
  arrays = {"images": np.asarray(images)}
  if seeds is not None:
    arrays["seeds"] = np.asarray(seeds)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  np.savez_compressed(path, **arrays)


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
  grids), .npz -> arrays (and seeds)."""
  check_output_path(path)
  if path.endswith(".png"):
    images_lib.save_grid_png(path, images_uint8)
  else:
    save_npz(images_uint8, path, seeds=seeds)
