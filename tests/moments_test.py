"""Tests of streaming moments and the cached real-feature statistics."""

import json
import os

from absl import logging
import numpy as np
import pytest
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import  # Sets the keras backend first.
from slt_tf import array_cache
from slt_tf import errors
from slt_tf import features
from slt_tf import moments

_IMAGE_SIZE = 8


def _random_features(seed, num_examples, dim, offset=0.0):
  rng = np.random.default_rng(seed)
  return offset + rng.normal(size=[num_examples, dim]) * rng.uniform(0.1, 3.0, size=[dim])


def _split(array, sizes):
  return np.split(array, np.cumsum(sizes)[:-1])


def test_update_with_uneven_batches_equals_numpy_float64_mean_and_population_variance():
  data = _random_features(0, 100, 7)
  running = moments.RunningMoments(7)
  for batch in _split(data, [1, 30, 0, 2, 64, 3]):
    running.update(batch)
  assert running.count == 100
  np.testing.assert_allclose(running.mean, data.mean(axis=0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(running.variance, data.var(axis=0, ddof=0), rtol=1e-12)


def test_merging_shards_equals_one_shot_statistics():
  data = _random_features(1, 90, 5)
  shards = []
  for shard_data in _split(data, [17, 50, 23]):
    shard = moments.RunningMoments(5)
    for batch in _split(shard_data, [len(shard_data) // 2, len(shard_data) - len(shard_data) // 2]):
      shard.update(batch)
    shards.append(shard)
  merged = moments.RunningMoments(5)
  merged.merge(moments.RunningMoments(5))  # An empty shard changes nothing.
  for shard in shards:
    merged.merge(shard)
  one_shot = moments.RunningMoments(5)
  one_shot.update(data)
  assert merged.count == one_shot.count == 90
  np.testing.assert_allclose(merged.mean, one_shot.mean, rtol=1e-12)
  np.testing.assert_allclose(merged.variance, one_shot.variance, rtol=1e-12)
  np.testing.assert_allclose(merged.variance, data.var(axis=0), rtol=1e-12)


def test_large_offset_keeps_variance_accurate_where_naive_float32_sum_of_squares_fails():
  data = (1e4 + 0.1 * np.random.default_rng(2).normal(size=[4096, 4])).astype(np.float32)
  reference = data.astype(np.float64).var(axis=0)  # Two-pass, float64: about 0.01.
  naive_sum = np.zeros(4, np.float32)
  naive_sum_squares = np.zeros(4, np.float32)
  for batch in _split(data, [1000, 1000, 1000, 1096]):
    naive_sum += batch.sum(axis=0)
    naive_sum_squares += np.square(batch).sum(axis=0)
  naive_variance = naive_sum_squares / len(data) - np.square(naive_sum / len(data))
  assert np.min(np.abs(naive_variance - reference) / reference) > 1.0  # Every feature off by >100%.

  running = moments.RunningMoments(4)
  for batch in _split(data, [1000, 1000, 1000, 1096]):
    running.update(batch)
  np.testing.assert_allclose(running.variance, reference, rtol=1e-9)
  np.testing.assert_allclose(running.mean, data.astype(np.float64).mean(axis=0), rtol=1e-14)


def test_update_rejects_a_batch_of_the_wrong_feature_dimension():
  with pytest.raises(errors.SltError, match=r"\[batch, 3\]"):
    moments.RunningMoments(3).update(np.zeros([2, 4]))


def test_empty_accumulator_has_no_mean_or_variance():
  with pytest.raises(errors.SltError, match="no examples"):
    _ = moments.RunningMoments(3).variance


def test_cache_key_ignores_argument_order_and_changes_with_any_value():
  assert array_cache.cache_key(a=1, b="x") == array_cache.cache_key(b="x", a=1)
  assert array_cache.cache_key(a=1, b="x") != array_cache.cache_key(a=2, b="x")
  assert array_cache.cache_key(a=1, b="x") != array_cache.cache_key(a=1, b="x", c=None)
  with pytest.raises(errors.SltError, match="JSON"):
    array_cache.cache_key(a=object())


@pytest.fixture(scope="module")
def network():
  return features.build_feature_network("digits_cnn", image_size=_IMAGE_SIZE, channels=1,
                                        weights=None, seed=0)


def _images(seed, num_examples=37):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, size=[num_examples, _IMAGE_SIZE, _IMAGE_SIZE, 1]).astype(np.float32)


def _dataset(images, batch_size=16, with_labels=False):
  if with_labels:
    return tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(len(images), np.int64))).batch(batch_size)
  return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


def _reference(network, images):
  values = network(images).numpy().astype(np.float64)
  return values.mean(axis=0), values.var(axis=0)


_KEY = {"dataset": "digits", "split": "train", "image_size": _IMAGE_SIZE, "data_dir": None}


def test_real_feature_moments_equal_float64_statistics_of_all_features(network):
  images = _images(0)
  mean, variance = moments.real_feature_moments(
      network, _dataset(images, with_labels=True), cache_dir=None, key_parts=_KEY, progress=False)
  reference_mean, reference_variance = _reference(network, images)
  assert mean.dtype == variance.dtype == np.float32
  assert mean.shape == variance.shape == (network.feature_dim,)
  np.testing.assert_allclose(mean, reference_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variance, reference_variance, rtol=1e-4, atol=1e-6)


def test_cache_file_holds_key_parts_with_fingerprint_and_loads_without_pickle(network, tmp_path):
  images = _images(0)
  mean, variance = moments.real_feature_moments(network, _dataset(images), cache_dir=str(tmp_path),
                                                key_parts=_KEY, progress=True)
  [name] = os.listdir(tmp_path)
  parts = dict(_KEY, feature_network=network.name,
               feature_network_fingerprint=network.fingerprint)
  assert name == f"moments-{array_cache.cache_key(**parts)}.npz"
  with np.load(tmp_path / name, allow_pickle=False) as stored:
    assert json.loads(str(stored["key"])) == parts
    assert int(stored["count"]) == len(images)
    np.testing.assert_allclose(stored["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(stored["variance"], variance, rtol=1e-6)


def test_cache_is_reused_when_the_key_matches_and_recomputed_when_a_key_part_changes(
    network, tmp_path):
  first, second = _images(1), _images(2)
  mean_first, _ = moments.real_feature_moments(network, _dataset(first), cache_dir=str(tmp_path),
                                               key_parts=_KEY, progress=False)
  # Same key, other data: the cached statistics come back (the data are not read).
  mean_reused, _ = moments.real_feature_moments(network, _dataset(second), cache_dir=str(tmp_path),
                                                key_parts=_KEY, progress=False)
  np.testing.assert_array_equal(mean_reused, mean_first)
  # Any changed key part: recomputed from the data given.
  for changed in ({"split": "test"}, {"image_size": 16}, {"data_dir": "/elsewhere"}):
    mean_changed, _ = moments.real_feature_moments(
        network, _dataset(second), cache_dir=str(tmp_path), key_parts=dict(_KEY, **changed),
        progress=False)
    np.testing.assert_allclose(mean_changed, _reference(network, second)[0], rtol=1e-5, atol=1e-6)
  assert len(os.listdir(tmp_path)) == 4


def test_cache_is_recomputed_when_the_network_fingerprint_changes(network, tmp_path):
  images = _images(3)
  other_network = features.build_feature_network("digits_cnn", image_size=_IMAGE_SIZE, channels=1,
                                                 weights=None, seed=1)
  assert other_network.name == network.name
  assert other_network.fingerprint != network.fingerprint
  moments.real_feature_moments(network, _dataset(images), cache_dir=str(tmp_path), key_parts=_KEY,
                               progress=False)
  mean, _ = moments.real_feature_moments(other_network, _dataset(images), cache_dir=str(tmp_path),
                                         key_parts=_KEY, progress=False)
  np.testing.assert_allclose(mean, _reference(other_network, images)[0], rtol=1e-5, atol=1e-6)
  assert len(os.listdir(tmp_path)) == 2


def test_corrupt_cache_file_is_recomputed_with_a_warning_and_rewritten(network, tmp_path):
  images = _images(4)
  moments.real_feature_moments(network, _dataset(images), cache_dir=str(tmp_path), key_parts=_KEY,
                               progress=False)
  [name] = os.listdir(tmp_path)
  (tmp_path / name).write_bytes(b"not a zip file")
  with pytest.MonkeyPatch.context() as patch:
    warnings = []
    patch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
    mean, _ = moments.real_feature_moments(network, _dataset(images), cache_dir=str(tmp_path),
                                           key_parts=_KEY, progress=False)
  assert len(warnings) == 1 and "unreadable" in warnings[0]
  np.testing.assert_allclose(mean, _reference(network, images)[0], rtol=1e-5, atol=1e-6)
  assert os.listdir(tmp_path) == [name]  # Rewritten atomically, no temporary file left.
  with np.load(tmp_path / name, allow_pickle=False) as stored:
    assert int(stored["count"]) == len(images)


def test_cache_file_written_for_other_key_parts_is_not_trusted(network, tmp_path):
  first, second = _images(5), _images(6)
  moments.real_feature_moments(network, _dataset(first), cache_dir=str(tmp_path), key_parts=_KEY,
                               progress=False)
  [name] = os.listdir(tmp_path)
  other_key = dict(_KEY, split="test")
  other_name = "moments-" + array_cache.cache_key(
      **other_key, feature_network=network.name, feature_network_fingerprint=network.fingerprint)
  os.replace(tmp_path / name, tmp_path / f"{other_name}.npz")
  mean, _ = moments.real_feature_moments(network, _dataset(second), cache_dir=str(tmp_path),
                                         key_parts=other_key, progress=False)
  np.testing.assert_allclose(mean, _reference(network, second)[0], rtol=1e-5, atol=1e-6)


def test_key_parts_contradicting_the_network_fingerprint_are_rejected(network):
  with pytest.raises(errors.SltError, match="feature_network_fingerprint"):
    moments.real_feature_moments(network, _dataset(_images(0)), cache_dir=None,
                                 key_parts=dict(_KEY, feature_network_fingerprint="stale"),
                                 progress=False)


def test_repeating_or_empty_datasets_are_rejected(network):
  with pytest.raises(errors.SltError, match="finite"):
    moments.real_feature_moments(network, _dataset(_images(0)).repeat(), cache_dir=None,
                                 key_parts=_KEY, progress=False)
  with pytest.raises(errors.SltError, match="empty"):
    moments.real_feature_moments(network, _dataset(_images(0)).take(0), cache_dir=None,
                                 key_parts=_KEY, progress=False)
