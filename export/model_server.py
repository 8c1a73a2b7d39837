"""A small local model server that follows TensorFlow Serving's gRPC and REST contracts.

For tests and local use where `tensorflow_model_server` is not installed. It serves one model
name from a TF Serving model base path (numbered version directories), like
`tensorflow_model_server --model_name=M --model_base_path=E/M`:

- gRPC `tensorflow.serving.PredictionService/Predict` (tensorflow_serving.apis), inputs and
  outputs as TensorProto; messages up to 2 GB in both directions, as TF Serving allows.
- REST (https://www.tensorflow.org/tfx/serving/api_rest):
  `GET /v1/models/<name>[/versions/<v>]` model status,
  `POST /v1/models/<name>[/versions/<v>]:predict` with row ("instances") or columnar ("inputs")
  requests, answering {"predictions": ...} or {"outputs": ...}; string outputs whose name ends
  in `_bytes` are returned as {"b64": ...}; errors as {"error": "..."}.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND (HTTP 404); a wrongly
shaped or typed input is INVALID_ARGUMENT (HTTP 400); an unknown signature is FAILED_PRECONDITION
over gRPC (TF Serving's predict_util) and INVALID_ARGUMENT over REST (its JSON input parser),
both HTTP 400. A failed request never stops the server.

Limits (one request cannot take the process): the model's max_batch_size (checked in its
graph: INVALID_ARGUMENT / HTTP 400); request bodies and gRPC messages of at most
MAX_REQUEST_BYTES (HTTP 413 / RESOURCE_EXHAUSTED); a missing, malformed or negative
Content-Length or JSON nested deeper than Python's parser allows is HTTP 400; a connection
that sends nothing for SOCKET_TIMEOUT_S is closed; at most MAX_CONCURRENT_PREDICTIONS
predictions run at once over both transports (each may hold its batch's activations).
"""

from concurrent import futures
import http.server
import json
import os
import re
import threading

from absl import logging
import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from export import rest_json
from export import servable
from export.rest_json import ServingError  # Public here too (model_server.ServingError).
from slt_tf import errors

# TF Serving's URL patterns (model_servers/http_rest_api_util.cc), labels left out.
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
_STATUS_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?")
# Responses may be large (float images); requests are seeds or z rows, small.
_MAX_MESSAGE_BYTES = 2**31 - 1
MAX_REQUEST_BYTES = 16 << 20
SOCKET_TIMEOUT_S = 30.0
MAX_CONCURRENT_PREDICTIONS = 2
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class _LoadedModel:
  """One version of the model and the dtype/shape contract of each signature."""

  def __init__(self, name: str, version: int, path: str):
    self.name = name
    self.version = version
    self.loaded = tf.saved_model.load(path)
    self.signatures = dict(self.loaded.signatures)

  def _signature(self, name: str, unknown_code: grpc.StatusCode, unknown_message: str):
    name = name or servable.SERVING_DEFAULT
    if name not in self.signatures:
      raise ServingError(unknown_code, unknown_message.format(name=name))
    return name, self.signatures[name]

  def input_specs(self, signature_name: str, *, rest: bool) -> tuple[str, dict]:
    """The signature's inputs: {name: TensorSpec}."""
    if rest:  # model_servers/http_rest_api_handler (GetInfoMap).
      code, message = (grpc.StatusCode.INVALID_ARGUMENT,
                       'Serving signature name: "{name}" not found in signature def')
    else:  # servables/tensorflow/predict_util.
      code, message = (grpc.StatusCode.FAILED_PRECONDITION,
                       'Serving signature key "{name}" not found.')
    name, function = self._signature(signature_name, code, message)
    _, specs = function.structured_input_signature
    return name, dict(specs)

  def predict(self, signature_name: str, inputs: dict, *, rest: bool = False) -> tuple[str, dict]:
    """Runs a signature on numpy inputs; returns (signature name, {output name: ndarray})."""
    signature_name, specs = self.input_specs(signature_name, rest=rest)
    if set(inputs) != set(specs):
      raise ServingError(
          grpc.StatusCode.INVALID_ARGUMENT,
          f"signature {signature_name!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
    arguments = {}
    for name, spec in specs.items():
      value = inputs[name]
      if value.dtype != spec.dtype.as_numpy_dtype:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} of signature {signature_name!r} must be {spec.dtype.name}, "
            f"got {tf.as_dtype(value.dtype).name}")
      if not spec.shape.is_compatible_with(value.shape):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} of signature {signature_name!r} must have shape "
            f"{_shape_text(spec.shape)}, got {list(value.shape)}")
      arguments[name] = tf.constant(value, dtype=spec.dtype)
    try:
      outputs = self.signatures[signature_name](**arguments)
    except tf.errors.OpError as e:
      code = _GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.INTERNAL)
      raise ServingError(code, " ".join(e.message.split())) from e
    return signature_name, {name: value.numpy() for name, value in outputs.items()}


def _shape_text(shape: tf.TensorShape) -> str:
  return "[" + ", ".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """gRPC Predict; other methods are left UNIMPLEMENTED."""

  def __init__(self, server: "ModelServer"):
    self._server = server

  def Predict(self, request, context):  # pylint: disable=invalid-name
    try:
      version = request.model_spec.version.value if request.model_spec.HasField("version") else None
      model = self._server.model_for(request.model_spec.name, version)
      inputs = {}
      for name, proto in request.inputs.items():
        try:
          inputs[name] = tf.make_ndarray(proto)
        except Exception as e:  # A malformed TensorProto (e.g. content of the wrong size).
          raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"cannot parse input {name!r}: {e}") from e
      with self._server.predict_slots:
        signature_name, outputs = model.predict(request.model_spec.signature_name, inputs)
    except ServingError as e:
      logging.info("gRPC Predict failed: %s: %s", e.code.name, e.message)
      context.abort(e.code, e.message)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model.name
    response.model_spec.version.value = model.version
    response.model_spec.signature_name = signature_name
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


def _make_rest_handler(server: "ModelServer"):
  """A BaseHTTPRequestHandler class bound to `server`."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S  # A stalled connection is closed (socket.timeout) after this.

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      logging.debug("REST %s", format % args)

    def _reply(self, status: int, payload: dict):
      data = json.dumps(payload).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def _handle(self, handler):
      try:
        self._reply(200, handler())
      except ServingError as e:
        logging.info("REST %s %s failed: %s: %s", self.command, self.path, e.code.name, e.message)
        self._reply(e.http_status, {"error": e.message})
      except RecursionError:
        self._reply(400, {"error": "JSON Parse error: the request is nested too deeply"})
      except Exception as e:  # pylint: disable=broad-except  # Never a dropped connection.
        logging.exception("REST %s %s failed", self.command, self.path)
        self._reply(500, {"error": f"internal error: {type(e).__name__}"})

    def _refuse(self, status: int, message: str):
      """Answers without reading the body, then closes the connection."""
      self.close_connection = True
      data = json.dumps({"error": message}).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.send_header("Connection", "close")
      self.end_headers()
      self.wfile.write(data)

    def do_GET(self):  # pylint: disable=invalid-name
      self._handle(self._status)

    def do_POST(self):  # pylint: disable=invalid-name
      text = self.headers.get("Content-Length")
      if text is None or not text.strip().isdigit():
        self._refuse(400 if text is not None else 411,
                     f"Content-Length must be a non-negative integer, got {str(text)[:40]!r}")
        return
      length = int(text)
      if length > MAX_REQUEST_BYTES:
        self._refuse(413, f"request body of {length} bytes; at most {MAX_REQUEST_BYTES} are "
                     "allowed")
        return
      body = self.rfile.read(length)
      if len(body) != length:
        self.close_connection = True
        return  # The client went away.
      self._handle(lambda: self._predict(body))

    def _status(self):
      match = _STATUS_PATH.fullmatch(self.path)
      if not match:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Malformed request: GET {self.path}")
      name, version = match.group(1), match.group(2)
      model = server.model_for(name, int(version) if version else None)
      return {"model_version_status": [{
          "version": str(model.version), "state": "AVAILABLE",
          "status": {"error_code": "OK", "error_message": ""}}]}

    def _predict(self, body: bytes):
      match = _PREDICT_PATH.fullmatch(self.path)
      if not match:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Malformed request: POST {self.path}")
      name, version, method = match.groups()
      model = server.model_for(name, int(version) if version else None)
      if method.lower() != "predict":
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"{method} is not supported by this server; use :predict")
      try:
        request = json.loads(body)
      except (ValueError, UnicodeDecodeError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from e
      except RecursionError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "JSON Parse error: the request is nested too deeply") from None
      if not isinstance(request, dict):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "JSON Parse error: the request must be an object")
      signature_name = request.get("signature_name", "")
      if not isinstance(signature_name, str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'signature_name' must be a string")
      signature_name, specs = model.input_specs(signature_name, rest=True)
      inputs, row_format = rest_json.parse_rest_inputs(request, specs)
      with server.predict_slots:
        _, outputs = model.predict(signature_name, inputs, rest=True)
      return rest_json.rest_response(outputs, row_format)

  return Handler


class ModelServer:
  """Serves one model over gRPC and REST on 127.0.0.1, in threads of this process.

  Example:
    server = ModelServer("/tmp/export/slt", model_name="slt")
    grpc_port, rest_port = server.start()
    ...  # POST http://127.0.0.1:<rest_port>/v1/models/slt:predict
    server.stop()
  """

  def __init__(self, model_base_path: str, *, model_name: str = "slt",
               version: int | None = None, max_workers: int = 4):
    """Loads nothing yet.

    Args:
      model_base_path: directory of numbered version directories (TF Serving's
        --model_base_path), e.g. E/<model_name>.
      model_name: the name clients use.
      version: the version to serve; None serves the highest one.
      max_workers: gRPC worker threads.
    """
    self.model_base_path = model_base_path
    self.model_name = model_name
    self._version = version
    self._max_workers = max_workers
    # REST answers each connection in a thread; gRPC has max_workers threads: both share these.
    self.predict_slots = threading.BoundedSemaphore(MAX_CONCURRENT_PREDICTIONS)
    self._model = None
    self._grpc_server = None
    self._http_server = None
    self._http_thread = None

  @property
  def version(self) -> int:
    if self._model is None:
      raise errors.SltError("the server is not started; call start() first")
    return self._model.version

  def model_for(self, name: str, version: int | None) -> _LoadedModel:
    """The loaded model for a request's model spec, or NOT_FOUND like TF Serving."""
    model = self._model
    if name != self.model_name or (version is not None and version != model.version):
      spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
      raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec}")
    return model

  def start(self, grpc_port: int = 0, rest_port: int = 0) -> tuple[int, int]:
    """Loads the model and starts both servers; port 0 picks a free port.

    Returns:
      (grpc_port, rest_port) actually bound on 127.0.0.1.

    Raises:
      SltError: no model under the base path, or a port that cannot be bound.
    """
    if self._model is not None:
      raise errors.SltError("the server is already started")
    path = servable.resolve_version_dir(self.model_base_path, self._version)
    self._model = _LoadedModel(self.model_name, int(os.path.basename(path)), path)

    options = [("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_REQUEST_BYTES)]
    self._grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers),
                                    options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(self), self._grpc_server)
    try:
      bound_grpc_port = self._grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    except RuntimeError as e:
      bound_grpc_port = 0
      cause = e
    else:
      cause = None
    if not bound_grpc_port:
      self._model = self._grpc_server = None
      raise errors.SltError(f"cannot bind gRPC port 127.0.0.1:{grpc_port}: {cause or 'in use'}")
    try:
      self._http_server = http.server.ThreadingHTTPServer(("127.0.0.1", rest_port),
                                                          _make_rest_handler(self))
    except OSError as e:
      self._model = self._grpc_server = None
      raise errors.SltError(f"cannot bind REST port 127.0.0.1:{rest_port}: {e}") from e
    self._http_server.daemon_threads = True
    self._grpc_server.start()
    self._http_thread = threading.Thread(target=self._http_server.serve_forever,
                                         name="slt-rest-server", daemon=True)
    self._http_thread.start()
    bound_rest_port = self._http_server.server_address[1]
    logging.info("Serving model %r version %d from %s: gRPC 127.0.0.1:%d, REST 127.0.0.1:%d",
                 self.model_name, self._model.version, path, bound_grpc_port, bound_rest_port)
    return bound_grpc_port, bound_rest_port

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
