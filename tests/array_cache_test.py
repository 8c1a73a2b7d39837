"""Tests of the one cache of real-image statistics (slt_tf.array_cache)."""

import hashlib
import os

from absl import logging
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import array_cache
from slt_tf import errors


@pytest.fixture
def warnings(monkeypatch):
  messages = []
  monkeypatch.setattr(logging, "warning", lambda message, *args: messages.append(message % args))
  return messages


def test_cache_file_name_is_the_sha256_of_the_canonical_json_key(tmp_path):
  cache = array_cache.cache_file(str(tmp_path), "moments-", {"b": [1, 2], "a": "x"})
  assert cache.key == '{"a":"x","b":[1,2]}'
  digest = hashlib.sha256(cache.key.encode()).hexdigest()
  assert cache.path == os.path.join(str(tmp_path), f"moments-{digest}.npz")
  assert digest == array_cache.cache_key(a="x", b=(1, 2))  # Tuples and lists are one key.


def test_key_parts_that_are_not_json_values_are_refused_in_one_line(tmp_path):
  with pytest.raises(errors.SltError, match="JSON"):
    array_cache.cache_file(str(tmp_path), "x-", {"array": np.zeros(2)})


def test_saved_arrays_load_back_exactly_on_a_non_local_filesystem(warnings):
  cache = array_cache.cache_file("ram://array_cache_test/cache", "x-", {"n": 1})
  assert cache.load() is None and warnings == []  # Missing: computed, nothing to warn about.
  arrays = {"mean": np.arange(5, dtype=np.float64), "count": np.int64(7)}
  cache.save(arrays)
  loaded = cache.load()
  assert sorted(loaded) == ["count", "mean"] and warnings == []
  np.testing.assert_array_equal(loaded["mean"], arrays["mean"])
  assert loaded["count"] == 7
  assert tf.io.gfile.listdir("ram://array_cache_test/cache") == [os.path.basename(cache.path)]


def test_file_stored_under_another_key_is_recomputed_with_a_warning(tmp_path, warnings):
  stored = array_cache.cache_file(str(tmp_path), "x-", {"split": "train"})
  stored.save({"mean": np.ones(3)})
  wanted = array_cache.CacheFile(stored.path, array_cache.canonical_json({"split": "test"}))
  assert wanted.load() is None
  assert len(warnings) == 1 and "recomputing" in warnings[0]


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04 truncated"])
def test_unreadable_file_is_recomputed_with_a_warning(tmp_path, warnings, content):
  cache = array_cache.cache_file(str(tmp_path), "x-", {"n": 1})
  with open(cache.path, "wb") as f:
    f.write(content)
  assert cache.load() is None
  assert len(warnings) == 1 and "unreadable" in warnings[0]


def test_npz_without_a_stored_key_is_unreadable(tmp_path, warnings):
  cache = array_cache.cache_file(str(tmp_path), "x-", {"n": 1})
  np.savez(cache.path, mean=np.ones(3))
  assert cache.load() is None
  assert len(warnings) == 1 and "unreadable" in warnings[0]


def test_an_array_named_like_the_stored_key_is_refused(tmp_path):
  with pytest.raises(errors.SltError, match="key"):
    array_cache.cache_file(str(tmp_path), "x-", {}).save({"key": np.ones(1)})
