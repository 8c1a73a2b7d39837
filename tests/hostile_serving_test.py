"""One request cannot take a server: the export's max_batch_size is checked in the graph, the
client splits larger requests, and careless output paths or seeds fail before any work."""

import http.client
import json
import os
import subprocess
import sys

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import grpc
import keras  # pylint: disable=g-bad-import-order
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from slt_tf import generators
from slt_tf.errors import SltError
from slt_tf.export import bake
from slt_tf.export import client
from slt_tf.export import servable
from tests import serving_double

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 8


def tiny_generator() -> keras.Model:
  return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8 * 8 * 3),
                           keras.layers.Reshape((8, 8, 3)), keras.layers.Activation("tanh")])


@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("export"))
  servable.write_servable(tiny_generator(), latent_dim=4, export_base=base, model_name="tiny",
                          max_batch_size=LIMIT, num_warmup_records=0)
  return base


@pytest.fixture(scope="module")
def server(export_base):
  with serving_double.ModelServer(os.path.join(export_base, "tiny"), model_name="tiny") as s:
    yield s, *s.start()


def post(rest_port, body: bytes, model="tiny"):
  connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=120)
  connection.request("POST", f"/v1/models/{model}:predict", body=body)
  answer = connection.getresponse()
  return answer.status, json.loads(answer.read())


def seeds_body(num):
  return json.dumps({"signature_name": "generate_png",
                     "inputs": {"seeds": list(range(num))}}).encode()


def test_seed_limit_is_in_the_graph(export_base):
  # Old code: any number of seeds (100,000 seeds took 12.8 GB).
  model = tf.saved_model.load(os.path.join(export_base, "tiny", "1"))
  for name in ("generate_png", "generate_uint8"):
    assert model.signatures[name](seeds=tf.range(LIMIT, dtype=tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"at most {LIMIT} seeds per "
                       r"request are allowed \(max_batch_size of this model\)"):
      model.signatures[name](seeds=tf.range(LIMIT + 1, dtype=tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError, match=rf"at most {LIMIT} z rows"):
    model.signatures["serving_default"](z=tf.zeros([LIMIT + 1, 4]))
  metadata = servable.read_metadata(os.path.join(export_base, "tiny", "1"))
  assert metadata["max_batch_size"] == LIMIT


def test_too_many_seeds_is_http_400_and_grpc_invalid_argument_naming_the_limit(server):
  _, grpc_port, rest_port = server
  status, answer = post(rest_port, seeds_body(LIMIT + 1))
  assert status == 400 and f"at most {LIMIT} seeds per request" in answer["error"]
  assert post(rest_port, seeds_body(LIMIT))[0] == 200
  request = predict_pb2.PredictRequest()
  request.model_spec.name, request.model_spec.signature_name = "tiny", "generate_uint8"
  request.inputs["seeds"].CopyFrom(tf.make_tensor_proto(np.arange(LIMIT + 1, dtype=np.int64)))
  with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
    with pytest.raises(grpc.RpcError) as error:
      prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
  assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert f"at most {LIMIT} seeds" in error.value.details()


@pytest.mark.e2e
def test_client_splits_requests_by_the_limit_the_models_refusal_names(export_base, server):
  # The first request holds all 25 seeds; each source refuses it naming the model's limit of 8,
  # and the client splits by that.
  _, grpc_port, rest_port = server
  expected = client.generate(saved_model=os.path.join(export_base, "tiny"),
                             seeds=np.arange(LIMIT))
  for source in ({"saved_model": os.path.join(export_base, "tiny")},
                 {"server": f"http://127.0.0.1:{rest_port}", "model_name": "tiny"},
                 {"grpc_address": f"127.0.0.1:{grpc_port}", "model_name": "tiny"}):
    images = client.generate(seeds=np.arange(3 * LIMIT + 1), **source)
    assert images.shape == (3 * LIMIT + 1, 8, 8, 3)
    assert np.array_equal(images[:LIMIT], expected)


def test_default_limit_shrinks_with_the_image_size():
  assert servable.default_max_batch_size(16, 16) == 256
  assert servable.default_max_batch_size(32, 32) == 256
  assert servable.default_max_batch_size(64, 64) == 64


def test_export_dir_that_is_a_file_is_one_line_and_writes_nothing(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(SltError, match=r"export_dir \S+ is a file; pass a directory"):
    bake.export(export_base=str(path), ticket_path=str(tmp_path / "t.slt"))
  with pytest.raises(SltError, match=r"cannot create /proc/slt/tiny"):
    servable.write_servable(tiny_generator(), latent_dim=4, export_base="/proc/slt",
                            model_name="tiny")


def test_generate_samples_seeds_and_output_path_are_checked_first(tmp_path):
  with pytest.raises(SltError, match=r"--seed must be in \[0, 9223372036854775806\] for "
                     r"--num_samples=2"):
    client.seed_range(2**63 - 1, 2)
  with pytest.raises(SltError, match=r"directory \S+missing does not exist; create it first"):
    client.check_output_path(str(tmp_path / "missing" / "grid.png"), existing_directory=True)
  assert not (tmp_path / "missing").exists()


@pytest.mark.e2e
def test_serving_rss_after_the_largest_allowed_request_stays_under_2_gb(tmp_path):
  """The digits generator (dcgan, 16x16), served with the default max_batch_size."""
  spec = generators.GeneratorSpec(name="dcgan", image_size=16, channels=1, latent_dim=128)
  plain = bake.bake(generators.build(spec))
  servable.write_servable(plain, latent_dim=128, export_base=str(tmp_path), model_name="d",
                          num_warmup_records=0)
  script = ("import sys; import slt_tf; from tests import serving_double; "
            f"s = serving_double.ModelServer({str(tmp_path / 'd')!r}, model_name='d'); "
            "print(s.start()[1], flush=True); sys.stdin.read()")
  process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL":
                                                          "3", "CUDA_VISIBLE_DEVICES": ""},
                             text=True)
  try:
    rest_port = int(process.stdout.readline())
    status, answer = post(rest_port, seeds_body(servable.MAX_BATCH_SIZE), model="d")
    assert status == 200 and len(answer["outputs"]) == servable.MAX_BATCH_SIZE
    assert post(rest_port, seeds_body(servable.MAX_BATCH_SIZE + 1), model="d")[0] == 400
    with open(f"/proc/{process.pid}/status") as f:
      fields = dict(line.split(":", 1) for line in f)
    rss_kb = int(fields["VmHWM"].split()[0])  # Peak resident set size.
    print(f"serving peak RSS after {servable.MAX_BATCH_SIZE} seeds: {rss_kb / 1024:.0f} MB")
    assert rss_kb < 2 * 1024 * 1024
  finally:
    process.stdin.close()
    process.wait(timeout=60)
