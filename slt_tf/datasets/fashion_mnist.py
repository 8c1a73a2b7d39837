"""Fashion-MNIST offline: TFDS's own `fashion_mnist` dataset, prepared from local IDX files.

TFDS's `fashion_mnist` builder downloads the four IDX files and checks their SHA-256. Debian's
`dataset-fashion-mnist` package installs the same images (`/usr/share/datasets/fashion-mnist/`),
but re-compressed, so TFDS refuses them as manual downloads on checksum. `prepare` therefore
writes the dataset with a subclass of TFDS's builder that reads the (validated, decompressed)
IDX files instead of downloading: same name, version, features (`image` uint8 28x28x1,
`label` of 10 classes), splits (`train` 60,000, `test` 10,000), example keys and on-disk
location, so TFDS's own `tfds.builder('fashion_mnist')` loads it afterwards as if it had
downloaded it.

Reading is bounded: each file's IDX header must announce exactly the standard counts and
shapes, and no more bytes than those are decompressed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from slt_tf.errors import SltError

NAME = 'fashion_mnist'
DEFAULT_IDX_DIR = '/usr/share/datasets/fashion-mnist'
INSTALL_HINT = 'apt-get install -y dataset-fashion-mnist'
IMAGE_SIZE = 28
# split -> (images file, labels file, number of examples): the four original IDX files.
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60_000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10_000),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def _read_exactly(path: str, header_format: str, expected_header: tuple[int, ...],
                  payload_bytes: int) -> bytes:
  """Decompresses `path`, checks its big-endian header, returns exactly `payload_bytes` after it."""
  header_bytes = struct.calcsize(header_format)
  try:
    with gzip.open(path, 'rb') as f:
      header = f.read(header_bytes)
      if len(header) < header_bytes:
        raise SltError(f'{path} is truncated (no complete IDX header); reinstall it: '
                       f'{INSTALL_HINT}')
      values = struct.unpack(header_format, header)
      if values != expected_header:
        raise SltError(f'{path} has IDX header {values}, expected {expected_header} '
                       '(the original Fashion-MNIST file)')
      payload = f.read(payload_bytes)
  except (OSError, EOFError, zlib.error) as e:
    raise SltError(f'{path} is not a readable gzip file ({type(e).__name__}: '
                   f'{" ".join(str(e).split())}); reinstall it: {INSTALL_HINT}') from e
  if len(payload) != payload_bytes:
    raise SltError(f'{path} is truncated ({len(payload)} of {payload_bytes} bytes after the '
                   f'header); reinstall it: {INSTALL_HINT}')
  return payload


def missing_files(idx_dir: str) -> list[str]:
  """The names of the four IDX files that are not in `idx_dir`."""
  return [name for images, labels, _ in FILES.values() for name in (images, labels)
          if not os.path.isfile(os.path.join(idx_dir, name))]


def read_split(idx_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, 28, 28, 1], int64 labels [N]) of `split` ('train' or 'test')."""
  images_file, labels_file, count = FILES[split]
  pixels = _read_exactly(os.path.join(idx_dir, images_file), '>IIII',
                         (_IMAGES_MAGIC, count, IMAGE_SIZE, IMAGE_SIZE),
                         count * IMAGE_SIZE * IMAGE_SIZE)
  labels = _read_exactly(os.path.join(idx_dir, labels_file), '>II', (_LABELS_MAGIC, count),
                         count)
  images = np.frombuffer(pixels, np.uint8).reshape(count, IMAGE_SIZE, IMAGE_SIZE, 1)
  labels = np.frombuffer(labels, np.uint8).astype(np.int64)
  if labels.max() >= 10:
    raise SltError(f'{os.path.join(idx_dir, labels_file)} holds label {labels.max()}; '
                   'Fashion-MNIST labels are 0..9')
  return images, labels


class _FashionMNISTFromIdx(tfds_mnist.FashionMNIST, skip_registration=True):
  """TFDS's FashionMNIST builder whose sources are local IDX files instead of downloads."""

  name = NAME  # Where TFDS's own builder looks: <data_dir>/fashion_mnist/<version>/.

  def __init__(self, *, idx_dir: str, **kwargs):
    self._idx_dir = idx_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return [tfds.core.SplitGenerator(name=split, gen_kwargs={'split': split}) for split in FILES]

  def _generate_examples(self, split):  # pylint: disable=arguments-differ
    images, labels = read_split(self._idx_dir, split)
    for index, (image, label) in enumerate(zip(images, labels)):  # Keys as TFDS's builder.
      yield index, {'image': image, 'label': label}


def prepare(data_dir: str | None, idx_dir: str) -> None:
  """Makes TFDS's `fashion_mnist` available in `data_dir` (None: TFDS's default).

  Already prepared: nothing to do. Else, the four IDX files in `idx_dir` are validated and
  written as TFDS's dataset (no network). Without them, one line says how to get them.
  """
  if tfds.builder(NAME, data_dir=data_dir).is_prepared():
    return
  missing = missing_files(idx_dir)
  if missing:
    where = data_dir or 'the default TFDS data_dir'
    raise SltError(
        f'Fashion-MNIST is not prepared in {where} and its IDX files are not in {idx_dir} '
        f'(missing {", ".join(missing)}): install them with `{INSTALL_HINT}`, or set '
        '--config.dataset.source_dir to a directory holding the four original .gz files, or '
        'run `tfds build fashion_mnist` where there is internet')
  for split in FILES:  # Validate everything before TFDS writes anything.
    read_split(idx_dir, split)
  logging.info('Preparing TFDS fashion_mnist in %s from the IDX files in %s.',
               data_dir or 'the default data_dir', idx_dir)
  builder = _FashionMNISTFromIdx(idx_dir=idx_dir, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
