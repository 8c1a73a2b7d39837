"""Tests of the frozen feature and evaluation networks (random weights; digits prepared once)."""

import json
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

import slt_tf  # pylint: disable=unused-import  # Sets the keras backend first.
from slt_tf import classifiers
from slt_tf import errors
from slt_tf import features

_DIGITS_SIZE = 16
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68])


def _images(seed, batch, size, channels):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, size=[batch, size, size, channels]).astype(np.float32)


def _assert_frozen(network):
  assert network.model.trainable_weights == []
  assert network.model.weights  # ... and it has weights to freeze.


@pytest.mark.parametrize("name", ["resnet50", "", "vgg16", "digits_cnn+resnet50",
                                  "digits_cnn+digits_cnn", "digits_cnn+", "digits_cnn#0",
                                  "digits_cnn#01", "digits_cnn#", "digits_cnn#x", "digits_cnn#-1",
                                  "digits_cnn#1+digits_cnn#1", "inception_v3#1", "fashion_cnn#2"])
def test_unknown_feature_network_name_raises_listing_the_valid_ones(name):
  with pytest.raises(errors.SltError, match="inception_v3, vgg19, digits_cnn"):
    features.build_feature_network(name, image_size=32, channels=3, weights=None)


def test_unknown_eval_network_name_raises_listing_the_valid_ones():
  with pytest.raises(errors.SltError, match=", ".join(features.EVAL_NETWORKS)):
    features.build_eval_network("digits_cnn", image_size=32, channels=1, weights=None)


def test_bad_arguments_raise_one_line_errors():
  with pytest.raises(errors.SltError, match="channels must be 1 or 3"):
    features.build_feature_network("digits_cnn", image_size=8, channels=4, weights=None)
  with pytest.raises(errors.SltError, match="vgg19 needs image_size >= 32"):
    features.build_feature_network("vgg19", image_size=16, channels=3, weights=None)
  with pytest.raises(errors.SltError, match="no ImageNet weights"):
    features.build_feature_network("digits_cnn", image_size=8, channels=1, weights="imagenet")
  with pytest.raises(errors.SltError, match="not an existing"):
    features.build_feature_network("vgg19", image_size=32, channels=3, weights="/no/such.h5")


def test_unreachable_imagenet_weights_raise_a_one_line_error_suggesting_a_local_file(monkeypatch):
  def offline(**kwargs):  # Like keras.utils.get_file without network.
    del kwargs
    raise RuntimeError("URL fetch failure on https://storage.googleapis.com/")
  monkeypatch.setattr(keras.applications, "InceptionV3", offline)
  with pytest.raises(errors.SltError, match="offline, pass weights=<path") as raised:
    features.build_feature_network("inception_v3", image_size=32, channels=3)
  assert "\n" not in str(raised.value)


@pytest.mark.e2e
def test_inception_v3_features_are_10048_pooled_mixed_block_activations_at_75x75():
  network = features.build_feature_network("inception_v3", image_size=32, channels=1, weights=None)
  assert network.input_size == 75
  assert network.layer_names == tuple(f"mixed{i}" for i in range(11))
  assert network.layer_dims == (256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048)
  assert network.feature_dim == 10048
  values = network(_images(0, 2, 32, 1)).numpy()
  assert values.shape == (2, 10048) and values.dtype == np.float32
  assert np.all(np.isfinite(values)) and np.all(values >= 0)  # Pooled ReLU outputs.
  _assert_frozen(network)


@pytest.mark.e2e
def test_inception_v3_preprocessing_tiles_grey_to_rgb_keeps_minus_one_to_one_and_resizes():
  network = features.build_feature_network("inception_v3", image_size=32, channels=1, weights=None)
  images = np.concatenate([np.full([1, 32, 32, 1], -1.0), np.full([1, 32, 32, 1], 1.0),
                           _images(1, 1, 32, 1)]).astype(np.float32)
  prepared = network.preprocess(images).numpy()
  assert prepared.shape == (3, 75, 75, 3)
  np.testing.assert_allclose(prepared[0], -1.0, atol=1e-6)
  np.testing.assert_allclose(prepared[1], 1.0, atol=1e-6)
  assert np.all(prepared[2, ..., 0] == prepared[2, ..., 2])  # Grey tiled to three channels.
  assert prepared[2].min() >= -1.0 - 1e-6 and prepared[2].max() <= 1.0 + 1e-6


def test_vgg19_features_are_the_16_relu_conv_outputs_flattened():
  network = features.build_feature_network("vgg19", image_size=32, channels=3, weights=None)
  assert len(network.layer_names) == 16
  assert network.layer_dims[:2] == (32 * 32 * 64, 32 * 32 * 64)
  assert network.layer_dims[-1] == 2 * 2 * 512
  assert network.feature_dim == 303104
  values = network(_images(2, 2, 32, 3)).numpy()
  assert values.shape == (2, 303104)
  assert np.all(np.isfinite(values)) and np.all(values >= 0)
  _assert_frozen(network)


def test_vgg19_preprocessing_maps_minus_one_to_one_rgb_to_caffe_bgr_minus_imagenet_mean():
  network = features.build_feature_network("vgg19", image_size=32, channels=3, weights=None)
  red = np.stack([np.ones([32, 32]), -np.ones([32, 32]), -np.ones([32, 32])], axis=-1)
  prepared = network.preprocess(red[np.newaxis].astype(np.float32)).numpy()
  expected_bgr = np.array([0.0, 0.0, 255.0]) - _CAFFE_BGR_MEAN
  np.testing.assert_allclose(prepared[0], np.broadcast_to(expected_bgr, [32, 32, 3]), atol=1e-4)
  mid_grey = np.zeros([1, 32, 32, 1], np.float32)
  np.testing.assert_allclose(network.preprocess(mid_grey).numpy()[0, 0, 0],
                             127.5 - _CAFFE_BGR_MEAN, atol=1e-4)


def test_digits_preprocessing_averages_rgb_to_grey_and_resizes_to_the_trained_size():
  network = features.build_feature_network("digits_cnn", image_size=8, channels=3, weights=None)
  images = _images(3, 2, 16, 3)
  prepared = network.preprocess(images).numpy()
  assert prepared.shape == (2, 8, 8, 1)
  reference = tf.image.resize(images.mean(axis=-1, keepdims=True), [8, 8], antialias=True)
  np.testing.assert_allclose(prepared, reference.numpy(), atol=1e-6)


def test_features_are_differentiable_with_respect_to_the_generator_images():
  network = features.build_feature_network("digits_cnn", image_size=8, channels=1, weights=None)
  images = tf.constant(_images(4, 2, 16, 1))  # Resized 16 -> 8 inside.
  with tf.GradientTape() as tape:
    tape.watch(images)
    total = tf.reduce_sum(network(images))
  gradient = tape.gradient(total, images).numpy()
  assert gradient.shape == images.shape
  assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_several_networks_give_their_features_concatenated_in_order():
  build = lambda name: features.build_feature_network(  # pylint: disable=g-long-lambda
      name, image_size=16, channels=1, weights=None, seed=3)
  deep, small = build("digits_cnn_deep"), build("digits_cnn")
  combined = build("digits_cnn_deep+digits_cnn")
  images = tf.constant(_images(5, 3, 16, 1))
  expected = np.concatenate([deep(images).numpy(), small(images).numpy()], axis=1)
  np.testing.assert_array_equal(combined(images).numpy(), expected)
  assert combined.name == "digits_cnn_deep+digits_cnn"
  assert combined.feature_dim == deep.feature_dim + small.feature_dim == expected.shape[1]
  assert combined.layer_dims == deep.layer_dims + small.layer_dims
  assert combined.layer_names[0] == "digits_cnn_deep/conv1"
  assert combined.layer_names[-1] == "digits_cnn/dense1"
  swapped = build("digits_cnn+digits_cnn_deep")
  assert len({combined.fingerprint, swapped.fingerprint, deep.fingerprint,
              small.fingerprint}) == 4
  assert build("digits_cnn_deep+digits_cnn").fingerprint == combined.fingerprint
  with tf.GradientTape() as tape:
    tape.watch(images)
    total = tf.reduce_sum(combined(images))
  assert np.any(tape.gradient(total, images).numpy() != 0)


def test_a_copy_is_the_network_built_from_seed_plus_1000_k_with_its_own_name():
  build = lambda name, seed: features.build_feature_network(  # pylint: disable=g-long-lambda
      name, image_size=16, channels=1, weights=None, seed=seed)
  assert features.SEEDED_NETWORKS == ("digits_cnn", "digits_cnn_deep")
  combined = build("digits_cnn+digits_cnn#1+digits_cnn#2", 3)
  images = tf.constant(_images(6, 3, 16, 1))
  expected = [build("digits_cnn", seed)(images).numpy() for seed in (3, 1003, 2003)]
  np.testing.assert_array_equal(combined(images).numpy(), np.concatenate(expected, axis=1))
  assert not np.array_equal(expected[0], expected[1])
  assert [part.name for part in combined.parts] == ["digits_cnn", "digits_cnn#1", "digits_cnn#2"]
  assert len(set(combined.layer_names)) == len(combined.layer_names) == 9
  assert combined.layer_names[3] == "digits_cnn#1/conv1"
  assert len({part.fingerprint for part in combined.parts}) == 3
  assert set(combined.info) == {"digits_cnn", "digits_cnn#1", "digits_cnn#2"}
  assert combined.parts[1].info == {"weights": "random", "seed": 1003}


def test_a_copy_refuses_a_weights_file_that_would_make_it_the_same_network(tmp_path):
  path = tmp_path / "digits_cnn.weights.h5"
  classifiers.build("digits_cnn", 16, seed=0).save_weights(str(path))
  assert features.build_feature_network("digits_cnn", image_size=16, channels=1,
                                        weights=str(path)).feature_dim > 0
  with pytest.raises(errors.SltError, match="differ only by their seed"):
    features.build_feature_network("digits_cnn+digits_cnn#1", image_size=16, channels=1,
                                   weights=str(path))


def test_fingerprint_is_stable_for_the_same_weights_and_changes_with_the_weights():
  build = lambda seed: features.build_feature_network(  # pylint: disable=g-long-lambda
      "digits_cnn", image_size=8, channels=1, weights=None, seed=seed)
  first, again, other = build(0), build(0), build(1)
  assert len(first.fingerprint) == 64
  assert first.fingerprint == again.fingerprint
  assert first.fingerprint != other.fingerprint
  first.model.get_layer("conv1").kernel.assign(first.model.get_layer("conv1").kernel * 0.5)
  changed = features.FeatureNetwork(
      first.name, first.model, input_size=8, input_channels=1, preprocessing="digits",
      layer_names=first.layer_names, info={})
  assert changed.fingerprint != again.fingerprint


@pytest.mark.e2e
def test_legacy_h5_file_with_a_classifier_head_loads_into_the_headless_vgg19(tmp_path):
  base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
  logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(base.output))
  path = str(tmp_path / "vgg19_with_head.h5")
  keras.Model(base.input, logits).save(path)  # Legacy HDF5, like the keras applications files.

  network = features.build_feature_network("vgg19", image_size=32, channels=3, weights=path)
  for layer in network.layer_names:
    for loaded, saved in zip(network.model.get_layer(layer).weights, base.get_layer(layer).weights):
      np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
  random_network = features.build_feature_network("vgg19", image_size=32, channels=3, weights=None)
  assert network.fingerprint != random_network.fingerprint
  assert network.info["weights"] == path


@pytest.mark.e2e
def test_inception_v3_eval_network_gives_pool3_embedding_and_1000_logits_at_299():
  network = features.build_eval_network("inception_v3", image_size=32, channels=3, weights=None)
  assert network.input_size == 299
  embedding, logits = network(_images(4, 1, 32, 3))
  assert embedding.shape == (1, 2048) and network.embedding_dim == 2048
  assert logits.shape == (1, 1000) and network.num_classes == 1000
  assert np.all(np.isfinite(embedding.numpy())) and np.all(np.isfinite(logits.numpy()))
  _assert_frozen(network)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("slt_tf_cache"))


def _global_state():
  return (random.getstate(), np.random.get_state()[1].tobytes(),
          tf_framework_config.is_op_determinism_enabled())


@pytest.fixture(scope="module")
def prepared_digits(digits_cache):
  """Trains both digits classifiers (the explicit step) and records the global state around it."""
  before = _global_state()
  infos = {name: classifiers.prepare(name, _DIGITS_SIZE, seed=0, cache_dir=digits_cache,
                                     verbose=0)
           for name in ("digits_cnn", "digits_cnn_deep", "digits_eval_cnn")}
  return infos, before, _global_state()


@pytest.fixture(scope="module")
def trained_digits_cnn(digits_cache, prepared_digits):
  return features.build_feature_network("digits_cnn", image_size=_DIGITS_SIZE, channels=1,
                                        cache_dir=digits_cache, seed=0)


@pytest.fixture(scope="module")
def trained_digits_eval_cnn(digits_cache, prepared_digits):
  return features.build_eval_network("digits_eval_cnn", image_size=_DIGITS_SIZE, channels=1,
                                     cache_dir=digits_cache)


@pytest.mark.e2e
def test_preparing_the_digits_classifiers_leaves_python_numpy_and_tf_global_state_unchanged(
    prepared_digits):
  _, before, after = prepared_digits
  assert before == after


@pytest.mark.e2e
def test_digits_cnn_trains_on_digits_train_and_classifies_held_out_digits(trained_digits_cnn,
                                                                          prepared_digits,
                                                                          digits_cache):
  info = trained_digits_cnn.info
  assert info == prepared_digits[0]["digits_cnn"]
  assert info["test_examples"] == 300
  assert info["test_accuracy"] >= 0.95
  stem = os.path.join(digits_cache,
                      f"digits_cnn-c32s2-c64s2-d128-e10-b64-size{_DIGITS_SIZE}-seed0")
  assert info["weights"] == stem + ".weights.h5" and os.path.isfile(stem + ".weights.h5")
  with open(stem + ".json") as f:
    assert json.load(f)["test_accuracy"] == info["test_accuracy"]


@pytest.mark.e2e
def test_digits_cnn_features_are_its_three_relu_activations(trained_digits_cnn):
  network = trained_digits_cnn
  assert network.layer_dims == (8 * 8 * 32, 4 * 4 * 64, 128)
  values = network(_images(5, 3, _DIGITS_SIZE, 1)).numpy()
  assert values.shape == (3, network.feature_dim) == (3, 3200)
  assert np.all(np.isfinite(values)) and np.all(values >= 0) and np.any(values > 0)
  _assert_frozen(network)


@pytest.mark.e2e
def test_digits_cnn_deep_features_start_at_full_resolution_and_it_classifies_held_out_digits(
    digits_cache, prepared_digits, trained_digits_cnn):
  network = features.build_feature_network("digits_cnn_deep", image_size=_DIGITS_SIZE,
                                           channels=1, cache_dir=digits_cache, seed=0)
  assert network.info == prepared_digits[0]["digits_cnn_deep"]
  assert network.info["test_accuracy"] >= 0.95
  size = _DIGITS_SIZE
  assert network.layer_dims == (size * size * 32, (size // 2) ** 2 * 64, (size // 2) ** 2 * 64,
                                (size // 4) ** 2 * 128, 256)
  values = network(_images(7, 3, size, 1)).numpy()
  assert values.shape == (3, sum(network.layer_dims))
  assert np.all(np.isfinite(values)) and np.all(values >= 0) and np.any(values > 0)
  assert network.fingerprint != trained_digits_cnn.fingerprint
  _assert_frozen(network)


@pytest.mark.e2e
def test_second_digits_cnn_build_loads_the_cache_with_the_same_fingerprint(trained_digits_cnn,
                                                                           digits_cache):
  again = features.build_feature_network("digits_cnn", image_size=_DIGITS_SIZE, channels=1,
                                         cache_dir=digits_cache, seed=0)
  assert again.fingerprint == trained_digits_cnn.fingerprint
  assert again.info == trained_digits_cnn.info
  untrained = features.build_feature_network("digits_cnn", image_size=_DIGITS_SIZE, channels=1,
                                             weights=None, seed=0)
  assert untrained.fingerprint != trained_digits_cnn.fingerprint
  from_file = features.build_feature_network("digits_cnn", image_size=_DIGITS_SIZE, channels=1,
                                             weights=trained_digits_cnn.info["weights"])
  assert from_file.fingerprint == trained_digits_cnn.fingerprint


@pytest.mark.e2e
def test_digits_eval_cnn_is_a_different_trained_classifier_with_embedding_and_logits(
    trained_digits_eval_cnn, trained_digits_cnn):
  network = trained_digits_eval_cnn
  assert network.info["test_accuracy"] >= 0.95 and network.info["seed"] != 0
  images = _images(6, 4, _DIGITS_SIZE, 1)
  embedding, logits = network(images)
  assert embedding.shape == (4, 256) and logits.shape == (4, 10)
  assert np.all(np.isfinite(embedding.numpy()))
  # Inference mode: an image's outputs do not depend on the rest of the batch (batch norm).
  single_embedding, _ = network(images[:1])
  np.testing.assert_allclose(single_embedding.numpy()[0], embedding.numpy()[0], rtol=1e-5,
                             atol=1e-5)
  assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in network.model.layers)
  assert network.fingerprint != trained_digits_cnn.fingerprint
  _assert_frozen(network)


@pytest.mark.parametrize("build", [
    lambda cache_dir: features.build_feature_network(
        "digits_cnn", image_size=_DIGITS_SIZE, channels=1, cache_dir=cache_dir, seed=3),
    lambda cache_dir: features.build_eval_network(
        "digits_eval_cnn", image_size=_DIGITS_SIZE, channels=1, cache_dir=cache_dir)])
def test_building_an_unprepared_digits_network_only_loads_and_names_the_command_to_prepare_it(
    build, tmp_path):
  with pytest.raises(errors.SltError) as raised:
    build(str(tmp_path))
  message = str(raised.value)
  assert "\n" not in message and "not trained yet" in message
  assert "python -m bin.train_classifiers --dataset=digits --image_size=16" in message
  assert os.listdir(tmp_path) == []  # Nothing was trained or written.


@pytest.mark.e2e
def test_unreadable_cached_classifier_is_a_one_line_error_when_built_and_retrained_by_prepare(
    prepared_digits, digits_cache, tmp_path):
  info = prepared_digits[0]["digits_eval_cnn"]
  for suffix in (".weights.h5", ".json"):
    source = info["weights"].replace(".weights.h5", suffix)
    with open(source, "rb") as f:
      data = f.read()
    (tmp_path / os.path.basename(source)).write_bytes(data if suffix == ".json" else b"garbage")
  with pytest.raises(errors.SltError, match="unreadable.*bin.train_classifiers"):
    features.build_eval_network("digits_eval_cnn", image_size=_DIGITS_SIZE, channels=1,
                                cache_dir=str(tmp_path))
  retrained = classifiers.prepare("digits_eval_cnn", _DIGITS_SIZE, cache_dir=str(tmp_path),
                                  verbose=0)
  assert retrained["test_accuracy"] == info["test_accuracy"]  # Deterministic: the same weights.


@pytest.mark.e2e
def test_digits_classifiers_refuse_to_train_inside_a_distribution_scope_but_load_there(
    trained_digits_cnn, digits_cache, tmp_path):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    with pytest.raises(errors.SltError, match="outside a tf.distribute strategy scope"):
      classifiers.prepare("digits_cnn", _DIGITS_SIZE, seed=0, cache_dir=str(tmp_path))
    loaded = features.build_feature_network("digits_cnn", image_size=_DIGITS_SIZE, channels=1,
                                            cache_dir=digits_cache, seed=0)
  assert loaded.fingerprint == trained_digits_cnn.fingerprint
