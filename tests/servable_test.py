"""Tests for slt_tf/export/servable.py: TF Serving layout, signatures, warmup records, versions."""

import json
import os
import subprocess
import sys

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras  # pylint: disable=g-bad-import-order
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from slt_tf.export import servable
from slt_tf import errors
from slt_tf import images
from slt_tf import sampling

LATENT_DIM = 4
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_generator(image_shape=(8, 8, 3), latent_dim=LATENT_DIM, seed=0) -> keras.Model:
  """Dense -> Reshape -> tanh: z [N, latent_dim] -> images [N, H, W, C] in [-1, 1]."""
  return keras.Sequential([
      keras.Input((latent_dim,)),
      keras.layers.Dense(
          int(np.prod(image_shape)),
          kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed),
          bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1)),
      keras.layers.Reshape(image_shape),
      keras.layers.Activation("tanh"),
  ])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  generator = tiny_generator()
  export_base = str(tmp_path_factory.mktemp("export"))
  path = servable.write_servable(generator, latent_dim=LATENT_DIM, export_base=export_base,
                                 model_name="tiny", version=3, num_warmup_records=4,
                                 metadata={"keep_fraction": 0.1, "dataset": "digits"})
  return generator, export_base, path


def test_write_servable_returns_version_dir_in_tf_serving_layout(exported):
  _, export_base, path = exported
  assert path == os.path.join(export_base, "tiny", "3")
  assert os.path.isfile(os.path.join(path, "saved_model.pb"))
  assert os.path.isfile(os.path.join(path, "variables", "variables.index"))
  assert os.path.isfile(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
  # Only the version directory: the temporary directory was renamed, not left behind.
  assert os.listdir(os.path.join(export_base, "tiny")) == ["3"]


def test_warmup_requests_are_prediction_logs_starting_with_serving_default_z_batch(exported):
  _, _, path = exported
  records = list(tf.data.TFRecordDataset(
      os.path.join(path, "assets.extra", "tf_serving_warmup_requests")).as_numpy_iterator())
  assert len(records) == 4
  logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in records]
  assert all(log.WhichOneof("log_type") == "predict_log" for log in logs)
  first = logs[0].predict_log.request
  assert first.model_spec.name == "tiny"
  assert first.model_spec.signature_name == "serving_default"
  z = tf.make_ndarray(first.inputs["z"])
  assert z.dtype == np.float32 and z.shape == (2, LATENT_DIM)
  loaded = tf.saved_model.load(path)
  for log in logs:  # Every record is a valid request for its signature.
    request = log.predict_log.request
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
    assert all(value.shape[0] == 2 for value in outputs.values())


def test_metadata_json_has_latent_dim_image_shape_and_user_metadata(exported):
  _, _, path = exported
  metadata = servable.read_metadata(path)
  assert metadata["latent_dim"] == LATENT_DIM
  assert metadata["image_shape"] == [8, 8, 3]
  assert metadata["version"] == 3 and metadata["model_name"] == "tiny"
  assert metadata["metadata"] == {"keep_fraction": 0.1, "dataset": "digits"}
  assert sorted(metadata["signatures"]) == sorted(servable.SIGNATURES)


@pytest.mark.e2e
def test_saved_model_loaded_in_fresh_process_equals_keras_generator(exported, tmp_path):
  generator, _, path = exported
  z = np.random.default_rng(0).standard_normal([5, LATENT_DIM]).astype(np.float32)
  np.save(tmp_path / "z.npy", z)
  script = (
      "import sys, numpy as np, tensorflow as tf\n"
      "m = tf.saved_model.load(sys.argv[1])\n"
      "print(sorted(m.signatures))\n"
      "z = np.load(sys.argv[2])\n"
      "np.save(sys.argv[3], m.signatures['serving_default'](z=tf.constant(z))['images'].numpy())\n")
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-c", script, path, str(tmp_path / "z.npy"), str(tmp_path / "out.npy")],
      capture_output=True, text=True, env=environment, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "['generate_png', 'generate_uint8', 'serving_default']" in result.stdout
  served = np.load(tmp_path / "out.npy")
  expected = generator(z, training=False).numpy()
  assert served.shape == (5, 8, 8, 3) and served.dtype == np.float32
  np.testing.assert_allclose(served, expected, rtol=1e-6, atol=1e-6)


def test_uint8_and_png_signatures_equal_quantised_serving_default_for_same_seeds(exported):
  _, _, path = exported
  loaded = tf.saved_model.load(path)
  seeds = np.array([0, 1, 7, 123456789], np.int64)
  z = sampling.latents(tf.constant(seeds), LATENT_DIM, stream=0)
  floats = loaded.signatures["serving_default"](z=z)["images"].numpy().astype(np.float64)
  reference = np.clip(np.round((floats + 1.0) * 127.5), 0, 255)
  images = loaded.signatures["generate_uint8"](seeds=tf.constant(seeds))["images"].numpy()
  assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 3)
  # float32 vs float64 arithmetic may move a value sitting on a .5 boundary by one level.
  assert np.abs(images.astype(np.float64) - reference).max() <= 1
  assert np.mean(images == reference) > 0.99
  pngs = loaded.signatures["generate_png"](seeds=tf.constant(seeds))["images_bytes"].numpy()
  assert pngs.shape == (4,)
  decoded = np.stack([tf.io.decode_png(png).numpy() for png in pngs])
  np.testing.assert_array_equal(decoded, images)


def test_generate_uint8_quantises_like_slt_tf_images_to_uint8(exported):
  _, _, path = exported
  loaded = tf.saved_model.load(path)
  seeds = tf.constant([2, 3], tf.int64)
  floats = loaded.signatures["serving_default"](z=sampling.latents(seeds, LATENT_DIM))["images"]
  np.testing.assert_array_equal(loaded.signatures["generate_uint8"](seeds=seeds)["images"],
                                images.to_uint8(floats))
  # The shared quantiser: -1 -> 0, 1 -> 255, halves to even, clipped.
  quantised = images.to_uint8(tf.constant([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]))
  assert quantised.numpy().tolist() == [0, 0, 64, 128, 191, 255, 255]


def test_existing_version_is_never_overwritten(exported):
  _, export_base, path = exported
  before = os.path.getmtime(os.path.join(path, "saved_model.pb"))
  with pytest.raises(errors.SltError, match="version 3 of model 'tiny' already exists") as e:
    servable.write_servable(tiny_generator(seed=5), latent_dim=LATENT_DIM,
                            export_base=export_base, model_name="tiny", version=3)
  assert "\n" not in str(e.value)
  assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == before
  assert os.listdir(os.path.join(export_base, "tiny")) == ["3"]


@pytest.mark.e2e
def test_resolve_version_dir_picks_highest_version_or_the_given_one(tmp_path):
  generator = tiny_generator(image_shape=(4, 4, 1))
  for version in (1, 10, 2):
    servable.write_servable(generator, latent_dim=LATENT_DIM, export_base=str(tmp_path),
                            version=version, num_warmup_records=0)
  base = str(tmp_path / "slt")
  assert servable.resolve_version_dir(base) == os.path.join(base, "10")
  assert servable.resolve_version_dir(base, 2) == os.path.join(base, "2")
  assert servable.resolve_version_dir(os.path.join(base, "1")) == os.path.join(base, "1")
  with pytest.raises(errors.SltError, match=r"version 7 not found .* available: \[1, 2, 10\]"):
    servable.resolve_version_dir(base, 7)
  with pytest.raises(errors.SltError, match="holds neither saved_model.pb"):
    servable.resolve_version_dir(str(tmp_path))


@pytest.mark.parametrize("overrides, message", [
    ({"model_name": "a/b"}, "model_name 'a/b' is not allowed"),
    ({"version": -1}, "version must be a non-negative integer"),
    ({"latent_dim": 0}, "latent_dim must be a positive integer"),
    ({"latent_dim": 5}, "does not accept z of shape"),
    ({"num_warmup_records": 1001}, r"num_warmup_records must be an integer in \[0, 1000\]"),
    ({"metadata": {"array": np.zeros(2)}}, "metadata must be JSON-serialisable"),
])
def test_bad_arguments_raise_one_line_slt_error(tmp_path, overrides, message):
  arguments = dict(latent_dim=LATENT_DIM, export_base=str(tmp_path))
  arguments.update(overrides)
  with pytest.raises(errors.SltError, match=message) as e:
    servable.write_servable(tiny_generator(image_shape=(4, 4, 1)), **arguments)
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "slt")


def test_generator_that_does_not_return_images_is_rejected(tmp_path):
  flat = keras.Sequential([keras.Input((LATENT_DIM,)), keras.layers.Dense(6)])
  with pytest.raises(errors.SltError, match=r"must return float images \[N, H, W, C\]"):
    servable.write_servable(flat, latent_dim=LATENT_DIM, export_base=str(tmp_path))
