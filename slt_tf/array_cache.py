"""Arrays computed once from real images and cached on disk, keyed by everything they depend on.

Two statistics of real images are cached: the evaluation network's activations
(`slt_tf.activations.real_activations`) and the loss's feature moments
(`slt_tf.moments.real_feature_moments`). Both follow one rule:

- the key is the canonical JSON of a dict of JSON values (sorted keys, no spaces); the file is
  `<cache_dir>/<prefix><sha256 of the key>.npz` (no pickle) and stores the key beside the arrays;
- a file is reused only when its stored key equals the requested one; a file that is unreadable
  or was stored under another key is recomputed, with a logged warning, and replaced;
- files are written atomically (`slt_tf.workdir.atomic_write`) through `tf.io.gfile`, so the
  cache may live on any filesystem TensorFlow knows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from typing import Any, Mapping

from absl import logging
import numpy as np
import tensorflow as tf

from slt_tf import errors
from slt_tf import workdir

_KEY_ENTRY = "key"


def canonical_json(parts: Mapping[str, Any]) -> str:
  """The sorted-key, space-free JSON of `parts`; SltError for values JSON cannot hold."""
  try:
    return json.dumps(dict(parts), sort_keys=True, separators=(",", ":"))
  except TypeError as e:
    raise errors.SltError(
        f"Cache key parts must be JSON values (str, int, float, bool, None, lists, dicts): {e}"
    ) from e


def cache_key(**parts: Any) -> str:
  """The sha256 hex digest of `canonical_json(parts)`: the cache file's name."""
  return _sha256(canonical_json(parts))


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CacheFile:
  """One cache file: where it lives and the key it must hold to be reused."""
  path: str
  key: str  # canonical JSON

  def load(self) -> dict[str, np.ndarray] | None:
    """The stored arrays; None (with a warning unless the file is missing) to recompute."""
    if not tf.io.gfile.exists(self.path):
      return None
    try:
      with tf.io.gfile.GFile(self.path, "rb") as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as stored:
          arrays = {name: stored[name] for name in stored.files}
      stored_key = str(arrays.pop(_KEY_ENTRY))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            tf.errors.OpError) as e:
      logging.warning("Cache file %s is unreadable (%s: %s); recomputing.", self.path,
                      type(e).__name__, e)
      return None
    if stored_key != self.key:
      logging.warning("Cache file %s was stored for %s, not %s; recomputing.", self.path,
                      stored_key, self.key)
      return None
    return arrays

  def save(self, arrays: Mapping[str, np.ndarray]) -> None:
    """Stores `arrays` with the key, atomically (the directory is created if missing)."""
    if _KEY_ENTRY in arrays:
      raise errors.SltError(f"{_KEY_ENTRY!r} is the cache's own entry; name the array otherwise.")
    buffer = io.BytesIO()
    np.savez(buffer, **{_KEY_ENTRY: np.array(self.key)}, **arrays)
    workdir.atomic_write(self.path, buffer.getvalue())


def cache_file(cache_dir: str, prefix: str, parts: Mapping[str, Any]) -> CacheFile:
  """The file `<cache_dir>/<prefix><cache_key(parts)>.npz` of the key `parts`."""
  key = canonical_json(parts)
  return CacheFile(os.path.join(os.path.expanduser(cache_dir), f"{prefix}{_sha256(key)}.npz"), key)
