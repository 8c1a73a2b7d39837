"""End-to-end tests of slt_tf/export/client.py against local servers, and of bin/generate_samples.

Every server listens on 127.0.0.1 and is started and stopped here. The same tests run against
tests/serving_double.py (a test double of TensorFlow Serving) and, where
`tensorflow_model_server` is on PATH, against TensorFlow Serving itself.
"""

import base64
import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import NamedTuple
import urllib.error
import urllib.request

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import grpc  # pylint: disable=g-bad-import-order
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from slt_tf import errors
from slt_tf import images as slt_images
from slt_tf.export import client
from slt_tf.export import servable
from tests import serving_double

LATENT_DIM = 4
BACKENDS = ("serving_double", "tensorflow_model_server")
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024


def tiny_generator(image_shape, seed=0) -> keras.Model:
  """Dense -> Reshape -> tanh: z [N, LATENT_DIM] -> images [N, H, W, C] in [-1, 1]."""
  return keras.Sequential([
      keras.Input((LATENT_DIM,)),
      keras.layers.Dense(int(np.prod(image_shape)),
                         kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed)),
      keras.layers.Reshape(image_shape),
      keras.layers.Activation("tanh"),
  ])


class Served(NamedTuple):
  backend: str
  grpc_address: str
  rest_url: str
  model_name: str


def closed_port() -> int:
  """A port nobody listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve(backend: str, model_base_path: str, model_name: str, log_dir: str):
  """Serves a model with `backend` on 127.0.0.1 until the block ends."""
  if backend == "serving_double":
    with serving_double.ModelServer(model_base_path, model_name=model_name) as server:
      grpc_port, rest_port = server.start()
      yield Served(backend, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", model_name)
    return
  binary = shutil.which("tensorflow_model_server")
  if binary is None:
    pytest.skip("tensorflow_model_server is not on PATH; the same tests ran against the double")
  grpc_port, rest_port = closed_port(), closed_port()
  log_path = os.path.join(log_dir, f"tensorflow_model_server_{model_name}.log")
  with open(log_path, "wb") as log:
    process = subprocess.Popen(
        [binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_name={model_name}", f"--model_base_path={os.path.abspath(model_base_path)}"],
        stdout=log, stderr=subprocess.STDOUT)
  served = Served(backend, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", model_name)
  try:
    deadline = time.monotonic() + 120
    while True:
      if process.poll() is not None:
        pytest.fail(f"tensorflow_model_server exited: {open(log_path).read()[-2000:]}")
      try:
        if model_state(served.rest_url, model_name, timeout=2) == "AVAILABLE":
          break
      except (OSError, ValueError, LookupError):
        pass
      if time.monotonic() > deadline:
        pytest.fail(f"tensorflow_model_server not ready: {open(log_path).read()[-2000:]}")
      time.sleep(0.5)
    yield served
  finally:
    process.terminate()
    process.wait(timeout=30)


def model_state(rest_url, model_name, timeout=30) -> str:
  """The state of the model's version (GET /v1/models/<name>), e.g. "AVAILABLE"."""
  with urllib.request.urlopen(f"{rest_url}/v1/models/{model_name}", timeout=timeout) as answer:
    return json.loads(answer.read())["model_version_status"][0]["state"]


class _ServingDefaultOnly(tf.Module):
  """A model that is not an slt_tf export: serving_default only, no seed signatures."""

  @tf.function(input_signature=[tf.TensorSpec([None, LATENT_DIM], tf.float32, name="z")])
  def serving_default(self, z):
    return {"images": tf.reshape(tf.tanh(tf.tile(z, [1, 48])), [-1, 8, 8, 3])}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """Exports a tiny 8x8x3 model "slt", a 128x128x3 model "big" (49 KB per uint8 image) and
  "plain" (serving_default only)."""
  export_base = str(tmp_path_factory.mktemp("export"))
  small = tiny_generator((8, 8, 3))
  servable.write_servable(small, latent_dim=LATENT_DIM, export_base=export_base, model_name="slt")
  servable.write_servable(tiny_generator((128, 128, 3), seed=1), latent_dim=LATENT_DIM,
                          export_base=export_base, model_name="big", num_warmup_records=1,
                          max_batch_size=128)  # One request of 90 images (default: 16).
  plain = _ServingDefaultOnly()
  tf.saved_model.save(plain, os.path.join(export_base, "plain", "1"),
                      signatures={"serving_default": plain.serving_default})
  return {"export_base": export_base, "generator": small,
          **{name: os.path.join(export_base, name) for name in ("slt", "big", "plain")}}


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
  return request.param


@pytest.fixture(scope="module")
def served(backend, models, tmp_path_factory):
  with serve(backend, models["slt"], "slt", str(tmp_path_factory.mktemp("logs"))) as s:
    yield s


def raw_grpc_predict(address, model_name, signature, inputs):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  with grpc.insecure_channel(address) as channel:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def raw_rest_post(url, body) -> tuple[int, dict]:
  request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
  try:
    with urllib.request.urlopen(request, timeout=30) as answer:
      return answer.status, json.loads(answer.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def local_images(models, seeds):
  return client.generate(saved_model=models["slt"], seeds=np.asarray(seeds))


# ------------------------------------------------------------------------ same images everywhere


@pytest.mark.parametrize("signature", client.SEED_SIGNATURES)
def test_grpc_and_rest_images_equal_local_saved_model_for_the_same_seeds(served, models,
                                                                          signature):
  seeds = np.arange(10, 16)
  expected = local_images(models, seeds)
  assert expected.shape == (6, 8, 8, 3) and expected.dtype == np.uint8
  for source in ({"grpc_address": served.grpc_address}, {"server": served.rest_url},
                 {"saved_model": models["slt"]}):
    np.testing.assert_array_equal(
        client.generate(seeds=seeds, model_name="slt", signature=signature, **source), expected)


def test_serving_default_on_the_seeds_latents_quantises_like_generate_uint8(models):
  seeds = np.array([3, 4, 5])
  z = slt_tf.sampling.latents(tf.constant(seeds), LATENT_DIM)
  model = tf.saved_model.load(os.path.join(models["slt"], "1"))
  images = model.signatures["serving_default"](z=z)["images"]
  np.testing.assert_array_equal(slt_images.to_uint8(images).numpy(), local_images(models, seeds))


def test_rest_png_outputs_are_b64_objects_in_row_and_columnar_formats(served, models):
  seeds = [1, 2, 3]
  expected = local_images(models, seeds)
  url = f"{served.rest_url}/v1/models/slt:predict"
  status, rows = raw_rest_post(url, {"signature_name": "generate_png", "instances": seeds})
  assert status == 200
  status, columns = raw_rest_post(url, {"signature_name": "generate_png",
                                        "inputs": {"seeds": seeds}})
  assert status == 200
  for encoded in (rows["predictions"], columns["outputs"]):
    assert [sorted(item) for item in encoded] == [["b64"]] * 3
    decoded = np.stack([tf.io.decode_png(base64.b64decode(item["b64"])).numpy()
                        for item in encoded])
    np.testing.assert_array_equal(decoded, expected)


def test_rest_serving_default_float_images_equal_keras_generator(served, models):
  z = np.random.default_rng(1).standard_normal([2, LATENT_DIM]).astype(np.float32)
  expected = models["generator"](z, training=False).numpy()
  url = f"{served.rest_url}/v1/models/slt/versions/1:predict"
  status, rows = raw_rest_post(url, {"instances": z.tolist()})
  assert status == 200
  status, columns = raw_rest_post(url, {"signature_name": "serving_default",
                                        "inputs": {"z": z.tolist()}})
  assert status == 200
  np.testing.assert_allclose(np.array(rows["predictions"]), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.array(columns["outputs"]), expected, rtol=1e-6, atol=1e-6)


def test_grpc_response_over_4mb_arrives_with_raised_limit_and_default_limit_fails_clearly(
    backend, models, tmp_path, monkeypatch):
  seeds = np.arange(90)  # 90 * 128 * 128 * 3 bytes = 4.4 MB of uint8 images.
  with serve(backend, models["big"], "big", str(tmp_path)) as big:
    images = client.generate(grpc_address=big.grpc_address, model_name="big", seeds=seeds)
    assert images.nbytes > GRPC_DEFAULT_LIMIT
    np.testing.assert_array_equal(images, client.generate(saved_model=models["big"], seeds=seeds))
    monkeypatch.setattr(client, "MAX_MESSAGE_BYTES", GRPC_DEFAULT_LIMIT)
    with pytest.raises(errors.SltError, match="larger than max_message_bytes=4194304") as e:
      client.generate(grpc_address=big.grpc_address, model_name="big", seeds=seeds)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("inputs", [
    {"z": np.zeros([2, LATENT_DIM + 1], np.float32)},  # Wrong shape.
    {"z": np.zeros([2, LATENT_DIM], np.int64)},  # Wrong type.
    {"z": np.zeros([2, LATENT_DIM, 1], np.float32)},  # Wrong rank.
], ids=["shape", "dtype", "rank"])
def test_grpc_bad_input_is_invalid_argument_and_server_answers_afterwards(served, models,
                                                                          inputs):
  with pytest.raises(grpc.RpcError) as e:
    raw_grpc_predict(served.grpc_address, "slt", "serving_default", inputs)
  assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert e.value.details()
  np.testing.assert_array_equal(client.generate(grpc_address=served.grpc_address, seeds=[5]),
                                local_images(models, [5]))


@pytest.mark.parametrize("body", [
    {"instances": [[0.0, 1.0, 2.0]]},  # Wrong shape.
    {"instances": [["a", "b", "c", "d"]]},  # Wrong type.
    {"signature_name": "generate_uint8", "instances": [1.5]},  # Float for int64 seeds.
    {"inputs": [[[0.0], [1.0]], [[0.0]]]},  # Ragged.
], ids=["shape", "string_for_float", "float_for_int", "ragged"])
def test_rest_bad_input_is_http_400_with_error_and_server_answers_afterwards(served, models, body):
  status, answer = raw_rest_post(f"{served.rest_url}/v1/models/slt:predict", body)
  assert status == 400
  assert isinstance(answer["error"], str) and answer["error"]
  np.testing.assert_array_equal(client.generate(server=served.rest_url, seeds=[5]),
                                local_images(models, [5]))


def test_unknown_model_is_not_found_with_a_clear_error(served):
  with pytest.raises(grpc.RpcError) as e:
    raw_grpc_predict(served.grpc_address, "nope", "generate_uint8", {"seeds": np.arange(2)})
  assert e.value.code() == grpc.StatusCode.NOT_FOUND
  status, answer = raw_rest_post(f"{served.rest_url}/v1/models/nope:predict", {"instances": [1]})
  assert status == 404 and answer["error"]
  with pytest.raises(errors.SltError, match=r"model 'nope' not found on 127\.0\.0\.1:\d+"):
    client.generate(grpc_address=served.grpc_address, model_name="nope", seeds=[1])
  with pytest.raises(errors.SltError, match=r"model 'nope' not found on http://127\.0\.0\.1:\d+"):
    client.generate(server=served.rest_url, model_name="nope", seeds=[1])


def test_unknown_version_is_not_found(served):
  for source in ({"grpc_address": served.grpc_address}, {"server": served.rest_url}):
    with pytest.raises(errors.SltError, match="model 'slt' version 7 not found"):
      client.generate(seeds=[1], version=7, **source)


def test_unknown_signature_is_rejected_with_a_clear_error(backend, served, models, tmp_path):
  with pytest.raises(grpc.RpcError) as e:
    raw_grpc_predict(served.grpc_address, "slt", "nope", {"seeds": np.arange(2)})
  # TF Serving's predict_util answers FAILED_PRECONDITION; its REST parser INVALID_ARGUMENT.
  assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
  status, _ = raw_rest_post(f"{served.rest_url}/v1/models/slt:predict",
                            {"signature_name": "nope", "instances": [1]})
  assert status == 400
  with serve(backend, models["plain"], "plain", str(tmp_path)) as plain:
    with pytest.raises(errors.SltError, match="model 'plain' on .* has no signature "
                       "'generate_uint8'"):
      client.generate(grpc_address=plain.grpc_address, model_name="plain", seeds=[1])
    with pytest.raises(errors.SltError, match="model 'plain' on .* has no signature "
                       "'generate_png'"):
      client.generate(server=plain.rest_url, model_name="plain", seeds=[1])


def test_rest_model_status_reports_the_available_version(served):
  with urllib.request.urlopen(f"{served.rest_url}/v1/models/slt", timeout=30) as answer:
    status = json.loads(answer.read())
  assert status["model_version_status"][0]["version"] == "1"
  assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_unreachable_server_gives_one_line_error_naming_the_address():
  port = closed_port()
  with pytest.raises(errors.SltError, match=f"cannot reach TF Serving gRPC server at "
                     f"127.0.0.1:{port}") as e:
    client.generate(grpc_address=f"127.0.0.1:{port}", seeds=[1], timeout=10)
  assert "\n" not in str(e.value)
  with pytest.raises(errors.SltError, match=f"cannot reach TF Serving REST server at "
                     f"http://127.0.0.1:{port}") as e:
    client.generate(server=f"http://127.0.0.1:{port}", seeds=[1], timeout=10)
  assert "\n" not in str(e.value)


@contextlib.contextmanager
def stub_rest_server(status: int, answer: dict):
  """A REST server on 127.0.0.1 that gives every request the same answer."""

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_POST(self):  # pylint: disable=invalid-name
      self.rfile.read(int(self.headers["Content-Length"]))
      data = json.dumps(answer).encode()
      self.send_response(status)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


def test_rest_answer_of_the_wrong_shape_is_a_clear_error():
  with stub_rest_server(200, {"outputs": [[1, 2], [3, 4]]}) as url:
    with pytest.raises(errors.SltError, match=r"answered 'images' as uint8 \[2, 2\], expected "
                       r"uint8 images \[2, H, W, C\]"):
      client.generate(server=url, seeds=[1, 2], signature="generate_uint8")


def test_rest_non_200_answer_includes_the_server_error_text():
  with stub_rest_server(503, {"error": "Model is loading, try again"}) as url:
    with pytest.raises(errors.SltError, match="answered HTTP 503 .* Model is loading, try again"):
      client.generate(server=url, seeds=[1])


@pytest.mark.parametrize("seeds, message", [
    ([], "seeds must be a non-empty 1-D array of integers"),
    ([[1, 2]], "seeds must be a non-empty 1-D array of integers"),
    ([0.5], "seeds must be a non-empty 1-D array of integers"),
])
def test_bad_seeds_are_rejected_before_any_request(seeds, message):
  with pytest.raises(errors.SltError, match=message):
    client.generate(grpc_address=f"127.0.0.1:{closed_port()}", seeds=seeds)


def test_seed_signature_is_required_for_seed_sampling():
  with pytest.raises(errors.SltError, match="'serving_default' cannot be sampled with seeds"):
    client.generate(server="http://127.0.0.1:1", seeds=[1], signature="serving_default")


def test_generate_needs_exactly_one_source():
  with pytest.raises(errors.SltError, match="give exactly one source"):
    client.generate(seeds=np.arange(2))
  with pytest.raises(errors.SltError, match=r"give exactly one source.*\(got --server, --grpc\)"):
    client.generate(seeds=np.arange(2), server="http://x:8501", grpc_address="x:8500")


# ------------------------------------------------------------------------------------ output


def test_save_images_writes_png_grid_and_npz_and_rejects_other_extensions(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, [4, 8, 8, 3], dtype=np.uint8)
  client.save_images(images, str(tmp_path / "grid.png"))
  grid = tf.io.decode_png((tmp_path / "grid.png").read_bytes()).numpy()
  np.testing.assert_array_equal(grid, slt_images.grid(images))
  client.save_images(images, str(tmp_path / "out" / "samples.npz"), seeds=np.arange(4))
  with np.load(tmp_path / "out" / "samples.npz") as saved:
    np.testing.assert_array_equal(saved["images"], images)
    np.testing.assert_array_equal(saved["seeds"], np.arange(4))
  with pytest.raises(errors.SltError, match=r"must end in \.png \(grid\) or \.npz"):
    client.save_images(images, str(tmp_path / "grid.jpg"))


# ------------------------------------------------------------------------ bin/generate_samples


@pytest.mark.e2e
def test_generate_samples_from_saved_model_writes_png_grid(run_binary, models, tmp_path):
  out = tmp_path / "grid.png"
  run_binary("bin.generate_samples", f"--saved_model={models['slt']}", "--num_samples=5",
             "--seed=3", f"--out={out}").check()
  grid = tf.io.decode_png(out.read_bytes()).numpy()
  np.testing.assert_array_equal(grid, slt_images.grid(local_images(models, np.arange(3, 8))))


@pytest.mark.e2e
def test_generate_samples_without_source_exits_with_one_line_error(run_binary):
  line = run_binary("bin.generate_samples", "--out=x.png").error_line()
  assert line.startswith("generate_samples: error: give exactly one source")


@pytest.mark.e2e
def test_generate_samples_help_documents_every_flag(run_binary):
  result = run_binary("bin.generate_samples", "--help")  # absl exits 1 after printing help.
  assert "Traceback" not in result.stderr
  for flag in ("server", "grpc", "saved_model", "model_name", "version", "num_samples", "seed",
               "signature", "out", "timeout"):
    assert f"--{flag}:" in result.stdout, flag
