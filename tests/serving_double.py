"""A test double of TensorFlow Serving: the tests' stand-in for `tensorflow_model_server`.

Not part of slt_tf and not for serving users: users serve exports with TensorFlow Serving
(docs/serving.md). The client tests run against this double everywhere and also against
`tensorflow_model_server` where it is on PATH, so the double must answer as TF Serving does for
what the tests ask. It serves one model name from a TF Serving model base path (numbered version
directories), like `tensorflow_model_server --model_name=M --model_base_path=E/M`, on 127.0.0.1:

- gRPC `tensorflow.serving.PredictionService/Predict` (TensorProto inputs and outputs; answers
  up to 2 GB, as TF Serving sends).
- REST (https://www.tensorflow.org/tfx/serving/api_rest): `GET /v1/models/<name>[/versions/<v>]`
  (model status) and `POST /v1/models/<name>[/versions/<v>]:predict` with row ("instances") or
  columnar ("inputs") requests, answering {"predictions": ...} or {"outputs": ...}; string
  outputs whose name ends in `_bytes` come back as {"b64": ...}; errors as {"error": "..."}.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND (HTTP 404); a wrongly
shaped or typed input is INVALID_ARGUMENT (HTTP 400); an unknown signature is
FAILED_PRECONDITION over gRPC and INVALID_ARGUMENT over REST (HTTP 400). A failed request never
stops the server.
"""

import base64
from concurrent import futures
import http.server
import json
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from slt_tf.export import servable

_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict")
_STATUS_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?")
_MAX_MESSAGE_BYTES = 2**31 - 1
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
                grpc.StatusCode.NOT_FOUND: 404}


class ServingError(Exception):
  """A request failed with a gRPC status code (an HTTP status over REST)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


def _invalid(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _Model:
  """One loaded version and the dtype/shape contract of each signature."""

  def __init__(self, name: str, path: str):
    self.name = name
    self.version = int(os.path.basename(path))
    self.signatures = dict(tf.saved_model.load(path).signatures)

  def input_specs(self, signature_name: str, *, rest: bool) -> tuple[str, dict]:
    """(signature name, {input name: TensorSpec}); an unknown name fails as TF Serving's does."""
    name = signature_name or servable.SERVING_DEFAULT
    if name not in self.signatures:
      if rest:
        raise _invalid(f'Serving signature name: "{name}" not found in signature def')
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{name}" not found.')
    return name, dict(self.signatures[name].structured_input_signature[1])

  def predict(self, signature_name: str, inputs: dict, *, rest: bool = False) -> tuple[str, dict]:
    """Runs a signature on numpy inputs; returns (signature name, {output name: ndarray})."""
    signature_name, specs = self.input_specs(signature_name, rest=rest)
    if set(inputs) != set(specs):
      raise _invalid(f"signature {signature_name!r} takes inputs {sorted(specs)}, got "
                     f"{sorted(inputs)}")
    arguments = {}
    for name, spec in specs.items():
      value = inputs[name]
      if value.dtype != spec.dtype.as_numpy_dtype:
        raise _invalid(f"input {name!r} must be {spec.dtype.name}, got "
                       f"{tf.as_dtype(value.dtype).name}")
      if not spec.shape.is_compatible_with(value.shape):
        raise _invalid(f"input {name!r} must have shape {spec.shape}, got {list(value.shape)}")
      arguments[name] = tf.constant(value, dtype=spec.dtype)
    try:
      outputs = self.signatures[signature_name](**arguments)
    except tf.errors.OpError as e:  # E.g. the graph's max_batch_size check.
      code = _GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.INTERNAL)
      raise ServingError(code, " ".join(e.message.split())) from e
    return signature_name, {name: value.numpy() for name, value in outputs.items()}


# ------------------------------------------------------------------------- REST JSON formats


def _json_to_array(value, dtype: tf.DType, name: str) -> np.ndarray:
  """A JSON value as an ndarray of the signature's dtype, with TF Serving's type rules: floats
  take numbers, integers only integers, strings strings or {"b64": ...}; booleans are no numbers."""

  def leaf(item):
    if isinstance(item, list):
      return [leaf(x) for x in item]
    if dtype == tf.string:
      if isinstance(item, str):
        return item.encode("utf-8")
      if isinstance(item, dict) and set(item) == {"b64"}:
        return base64.b64decode(item["b64"])
    elif isinstance(item, bool):
      pass
    elif dtype.is_integer and isinstance(item, int):
      return item
    elif dtype.is_floating and isinstance(item, (int, float)):
      return item
    raise _invalid(f"input {name!r}: JSON value {json.dumps(item)[:50]} is not of expected "
                   f"type: {dtype.name}")

  try:
    return np.array(leaf(value), dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
  except (ValueError, OverflowError) as e:
    raise _invalid(f"input {name!r} is not a rectangular tensor of {dtype.name}") from e


def _array_to_json(value: np.ndarray, output_name: str):
  """An output as JSON; string outputs named *_bytes become {"b64": ...}."""
  if value.dtype != object:
    return value.tolist()

  def leaf(item):
    if isinstance(item, np.ndarray):
      return [leaf(x) for x in item]
    if output_name.endswith("_bytes"):
      return {"b64": base64.b64encode(item).decode("ascii")}
    return item.decode("utf-8", errors="replace")

  return leaf(value)


def _rest_inputs(body: dict, specs: dict) -> tuple[dict, bool]:
  """A request body as ({input name: ndarray}, whether it was in the row format)."""
  if ("instances" in body) == ("inputs" in body):
    raise _invalid("Missing 'inputs' or 'instances' key (exactly one is required)")
  if "inputs" in body:  # Columnar: {name: tensor} or, for one input, the tensor itself.
    columns = body["inputs"]
    if not (isinstance(columns, dict) and columns and set(columns) <= set(specs)):
      if len(specs) != 1:
        raise _invalid(f"'inputs' must be an object with keys {sorted(specs)}")
      columns = {next(iter(specs)): columns}
    return {name: _json_to_array(value, specs[name].dtype, name)
            for name, value in columns.items()}, False
  instances = body["instances"]
  if not isinstance(instances, list) or not instances:
    raise _invalid("'instances' must be a non-empty list")
  names = sorted(specs)
  if all(isinstance(instance, dict) and set(instance) == set(names) for instance in instances):
    rows = {name: [instance[name] for instance in instances] for name in names}
  elif len(names) == 1:
    rows = {names[0]: instances}
  else:
    raise _invalid(f"each instance must be an object with keys {names}")
  return {name: _json_to_array(values, specs[name].dtype, name)
          for name, values in rows.items()}, True


def _rest_answer(outputs: dict, row_format: bool) -> dict:
  key = "predictions" if row_format else "outputs"
  if len(outputs) == 1:
    (name, value), = outputs.items()
    return {key: _array_to_json(value, name)}
  if not row_format:
    return {key: {name: _array_to_json(value, name) for name, value in outputs.items()}}
  batch = len(next(iter(outputs.values())))
  return {key: [{name: _array_to_json(value[i], name) for name, value in outputs.items()}
                for i in range(batch)]}


# ---------------------------------------------------------------------------------- servers


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """gRPC Predict; other methods are left UNIMPLEMENTED."""

  def __init__(self, server: "ModelServer"):
    self._server = server

  def Predict(self, request, context):  # pylint: disable=invalid-name
    spec = request.model_spec
    try:
      model = self._server.model_for(spec.name,
                                     spec.version.value if spec.HasField("version") else None)
      try:
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
      except Exception as e:  # A malformed TensorProto.  pylint: disable=broad-except
        raise _invalid(f"cannot parse the inputs: {e}") from e
      signature_name, outputs = model.predict(spec.signature_name, inputs)
    except ServingError as e:
      context.abort(e.code, e.message)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model.name
    response.model_spec.version.value = model.version
    response.model_spec.signature_name = signature_name
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


def _rest_handler(server: "ModelServer"):
  """A BaseHTTPRequestHandler class bound to `server`."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      pass

    def _answer(self, handler):
      try:
        status, payload = 200, handler()
      except ServingError as e:
        status, payload = _HTTP_STATUS.get(e.code, 500), {"error": e.message}
      except Exception as e:  # pylint: disable=broad-except  # Never a dropped connection.
        status, payload = 400, {"error": f"{type(e).__name__}: {e}"[:300]}
      data = json.dumps(payload).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def do_GET(self):  # pylint: disable=invalid-name
      self._answer(self._status)

    def do_POST(self):  # pylint: disable=invalid-name
      body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
      self._answer(lambda: self._predict(body))

    def _model(self, pattern):
      match = pattern.fullmatch(self.path)
      if not match:
        raise _invalid(f"Malformed request: {self.command} {self.path}")
      name, version = match.groups()
      return server.model_for(name, int(version) if version else None)

    def _status(self):
      model = self._model(_STATUS_PATH)
      return {"model_version_status": [{
          "version": str(model.version), "state": "AVAILABLE",
          "status": {"error_code": "OK", "error_message": ""}}]}

    def _predict(self, body: bytes):
      model = self._model(_PREDICT_PATH)
      try:
        request = json.loads(body)
      except ValueError as e:
        raise _invalid(f"JSON Parse error: {e}") from e
      if not isinstance(request, dict):
        raise _invalid("JSON Parse error: the request must be an object")
      signature_name, specs = model.input_specs(request.get("signature_name", ""), rest=True)
      inputs, row_format = _rest_inputs(request, specs)
      _, outputs = model.predict(signature_name, inputs, rest=True)
      return _rest_answer(outputs, row_format)

  return Handler


class ModelServer:
  """Serves one model over gRPC and REST on 127.0.0.1, in threads of this process.

  Example:
    with ModelServer("/tmp/export/slt", model_name="slt") as server:
      grpc_port, rest_port = server.start()
      ...  # POST http://127.0.0.1:<rest_port>/v1/models/slt:predict
  """

  def __init__(self, model_base_path: str, *, model_name: str = "slt"):
    """Loads nothing yet; `model_base_path` holds numbered version directories (E/<model>)."""
    self.model_base_path = model_base_path
    self.model_name = model_name
    self._model = None
    self._grpc_server = None
    self._http_server = None
    self._http_thread = None

  def model_for(self, name: str, version: int | None) -> _Model:
    """The loaded model for a request's model spec, or NOT_FOUND like TF Serving."""
    if name != self.model_name or version not in (None, self._model.version):
      spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
      raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec}")
    return self._model

  def start(self) -> tuple[int, int]:
    """Loads the highest version and starts both servers on free ports.

    Returns:
      (grpc_port, rest_port) bound on 127.0.0.1.
    """
    self._model = _Model(self.model_name, servable.resolve_version_dir(self.model_base_path))
    self._http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                        _rest_handler(self))
    self._http_server.daemon_threads = True
    self._grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                    options=[("grpc.max_send_message_length", _MAX_MESSAGE_BYTES)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(self), self._grpc_server)
    grpc_port = self._grpc_server.add_insecure_port("127.0.0.1:0")
    self._grpc_server.start()
    self._http_thread = threading.Thread(target=self._http_server.serve_forever, daemon=True)
    self._http_thread.start()
    return grpc_port, self._http_server.server_address[1]

  def stop(self) -> None:
    """Stops both servers (idempotent)."""
    if self._http_server is not None:
      self._http_server.shutdown()
      self._http_server.server_close()
      self._http_thread.join()
      self._http_server = self._http_thread = None
    if self._grpc_server is not None:
      self._grpc_server.stop(grace=None).wait()
      self._grpc_server = None
    self._model = None

  def __enter__(self) -> "ModelServer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()
