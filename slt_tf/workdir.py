"""The run directory of a search and the one way slt_tf writes a file atomically.

Every write goes through `tf.io.gfile`, so a workdir may live on any filesystem TensorFlow
knows (local disk, GCS, `ram://`): readers never see a half-written file, because a file is
written under a temporary name next to its destination and then renamed over it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator, Union

import tensorflow as tf


def _temporary_name(path: str) -> str:
  head, tail = os.path.split(path)
  return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` when the block succeeds.

  For writers that take a file name (Keras `save_weights`, `np.savez`, `tf.io.write_file`):
  `suffix` is appended to the temporary name where the writer insists on an extension (e.g.
  ".weights.h5"). On an exception the temporary file is removed and `path` is left untouched.
  """
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  temporary = _temporary_name(path) + suffix
  try:
    yield temporary
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
    raise


def atomic_write(path: str, data: Union[bytes, str]) -> None:
  """Writes `data` (bytes, or text as UTF-8) to `path` atomically, through tf.io.gfile."""
  with atomic_path(path) as temporary:
    with tf.io.gfile.GFile(temporary, "wb" if isinstance(data, bytes) else "w") as f:
      f.write(data)
