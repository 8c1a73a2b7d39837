"""TF Serving's REST JSON formats (row "instances" / columnar "inputs") for export/model_server.py,
and the error type whose gRPC status code maps to an HTTP status."""

import base64
import json

import grpc
import numpy as np
import tensorflow as tf

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ServingError(Exception):
  """A request failed with a gRPC status code (mapped to an HTTP status for REST)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message

  @property
  def http_status(self) -> int:
    return _HTTP_STATUS.get(self.code, 500)


def json_to_array(value, dtype: tf.DType, name: str) -> np.ndarray:
  """JSON value -> ndarray of the signature's dtype, with TF Serving's type rules.

  Floats accept JSON numbers; integers accept only JSON integers; strings accept JSON strings
  or {"b64": ...}. Booleans are not numbers.
  """

  def leaf(item):
    if isinstance(item, list):
      return [leaf(x) for x in item]
    if dtype == tf.string:
      if isinstance(item, str):
        return item.encode("utf-8")
      if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
          return base64.b64decode(item["b64"], validate=True)
        except ValueError as e:
          raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"input {name!r}: invalid base64: {e}") from e
    elif dtype == tf.bool:
      if isinstance(item, bool):
        return item
    elif dtype.is_integer:
      if isinstance(item, int) and not isinstance(item, bool):
        return item
    elif dtype.is_floating:
      if isinstance(item, (int, float)) and not isinstance(item, bool):
        return item
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"input {name!r}: JSON value {json.dumps(item)[:50]} is not of "
                       f"expected type: {dtype.name}")

  converted = leaf(value)
  try:
    if dtype == tf.string:
      return np.array(converted, dtype=object)
    return np.array(converted, dtype=dtype.as_numpy_dtype)
  except (ValueError, OverflowError) as e:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"input {name!r} is not a rectangular tensor of {dtype.name}: "
                       f"{str(e).splitlines()[0]}") from e


def array_to_json(value: np.ndarray, output_name: str):
  """ndarray -> JSON value; string outputs named *_bytes become {"b64": ...}."""
  if value.dtype == object or value.dtype.kind in "SU":
    encode_b64 = output_name.endswith("_bytes")

    def leaf(item):
      if isinstance(item, np.ndarray):
        return [leaf(x) for x in item]
      item = item if isinstance(item, bytes) else str(item).encode("utf-8")
      if encode_b64:
        return {"b64": base64.b64encode(item).decode("ascii")}
      return item.decode("utf-8", errors="replace")

    return leaf(np.asarray(value, dtype=object))
  return value.tolist()


def parse_rest_inputs(body: dict, specs: dict) -> tuple[dict, bool]:
  """Request body -> ({input name: ndarray}, row_format)."""
  if ("instances" in body) == ("inputs" in body):
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       'Missing \'inputs\' or \'instances\' key (exactly one is required)')
  if "inputs" in body:  # Columnar: {name: tensor} or, for one input, the tensor itself.
    columns = body["inputs"]
    if not (isinstance(columns, dict) and set(columns) <= set(specs) and columns):
      if len(specs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"'inputs' must be an object with keys {sorted(specs)}")
      columns = {next(iter(specs)): columns}
    return {name: json_to_array(value, specs[name].dtype, name)
            for name, value in columns.items()}, False
  instances = body["instances"]
  if not isinstance(instances, list) or not instances:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       "'instances' must be a non-empty list")
  names = sorted(specs)
  rows = {name: [] for name in names}
  for instance in instances:
    if isinstance(instance, dict) and not (set(instance) == {"b64"} and len(specs) == 1):
      if set(instance) != set(names):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"each instance must have keys {names}, got {sorted(instance)}")
      for name in names:
        rows[name].append(instance[name])
    elif len(names) == 1:
      rows[names[0]].append(instance)
    else:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"each instance must be an object with keys {names}")
  return {name: json_to_array(values, specs[name].dtype, name)
          for name, values in rows.items()}, True


def rest_response(outputs: dict, row_format: bool) -> dict:
  if row_format:
    sizes = {value.shape[0] if value.ndim else None for value in outputs.values()}
    if len(sizes) != 1 or None in sizes:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         "row format needs every output to have the same batch size; "
                         "use the columnar 'inputs' format")
    if len(outputs) == 1:
      (name, value), = outputs.items()
      return {"predictions": array_to_json(value, name)}
    batch = sizes.pop()
    return {"predictions": [{name: array_to_json(value[i], name)
                             for name, value in outputs.items()} for i in range(batch)]}
  if len(outputs) == 1:
    (name, value), = outputs.items()
    return {"outputs": array_to_json(value, name)}
  return {"outputs": {name: array_to_json(value, name) for name, value in outputs.items()}}
