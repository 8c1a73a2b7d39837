"""Image input pipelines over TFDS: real images in [-1, 1] for statistics, training and evaluation.

Every dataset goes through TFDS. `digits` (scikit-learn's 8x8 handwritten digits, see
`slt_tf.datasets.digits`) is prepared on the fly with no network; `fashion_mnist` is TFDS's own
dataset, prepared offline from Debian's IDX files when TFDS cannot download it
(`slt_tf.datasets.fashion_mnist`); every other dataset must already be prepared in `data_dir`,
e.g. `tfds build cifar10 --data_dir=DIR` on a machine with internet access.

Splits (docs/method.md, "Evaluation protocol"): the held-out split is the dataset's `test` split where
it has one (digits, CIFAR-10/100, CelebA's test partition, MNIST-like sets, SVHN, STL-10); otherwise
the first 10,000 examples of `train` are held out and training uses `train[10000:]` (LSUN: its
`validation` split has only 300 images per category, too few for FID on 10k images). The held-out
split is for evaluation only: never compute training statistics on it. Datasets in
`VALIDATION_EXAMPLES` (digits: the last 300 of its 1,497 `train` images; Fashion-MNIST: the last
10,000 of `train`) also keep a validation split out of training statistics, on which
hyperparameters are chosen.

Preprocessing: CelebA (218x178 aligned faces) is centre-cropped to 140x140 before resizing, a
common face crop in GAN work on CelebA (others use 108 or 148: `CELEB_A_CROP` is the one place to
change it, and statistics cached with another crop must be recomputed); any other non-square image
is centre-cropped to a square of its shorter side. Images are then resized with antialiasing (bilinear filter, area-like
when shrinking) to `image_size` and mapped from 0..255 to [-1, 1]. Grey images keep 1 channel;
an alpha channel is dropped.
"""

import contextlib
import difflib
import functools
import random

import tensorflow as tf
import tensorflow_datasets as tfds

from slt_tf.datasets import digits  # Registers the `digits` TFDS builder.
from slt_tf.datasets import fashion_mnist
from slt_tf.errors import SltError

DIGITS = 'digits'
FASHION_MNIST = fashion_mnist.NAME
# Datasets that keep the LAST examples of `train` apart as a validation split: hyperparameters
# are chosen there, training statistics never see them, and `test` gives the reported numbers.
VALIDATION_EXAMPLES = {DIGITS: 300, FASHION_MNIST: 10_000}
# Image sizes a dataset may be used at (others: any size the generator takes).
SUPPORTED_IMAGE_SIZES = {FASHION_MNIST: (16, 32)}
# Examples held out from `train` (and skipped by training) for datasets without a `test` split.
HELD_OUT_EXAMPLES = 10_000
# CelebA centre crop (pixels, square) applied to the 218x178 aligned images before resizing.
CELEB_A_CROP = 140


def preprocessing_tag(name: str) -> str:
  """Names how `load_images` turns stored images into model inputs, for statistics caches:
  change it whenever that pipeline changes, so stale cached statistics are never reused."""
  crop = CELEB_A_CROP if _base_and_config(name)[0] == 'celeb_a' else 'square'
  return f'v1-crop={crop}-bilinear-antialias-range=[-1,1]'
_MAX_SHUFFLE_BUFFER = 10_000

# Datasets whose `test` split is the held-out evaluation split.
_DATASETS_WITH_TEST_SPLIT = frozenset({
    DIGITS, 'cifar10', 'cifar100', 'celeb_a', 'mnist', 'fashion_mnist', 'kmnist', 'emnist',
    'svhn_cropped', 'stl10',
})
# Channels for names whose TFDS features do not say it (used only when the info has no shape).
_GREY_DATASETS = frozenset({DIGITS, 'mnist', 'fashion_mnist', 'kmnist', 'emnist',
                            'binarized_mnist'})
_EXAMPLE_NAMES = (DIGITS, 'cifar10', 'celeb_a', 'lsun/bedroom', 'mnist')


@functools.cache
def _known_base_names() -> frozenset[str]:
  # Community datasets are left out: listing them needs the network.
  return frozenset(tfds.list_builders(with_community_datasets=False)) | {DIGITS}


def _base_and_config(name: str) -> tuple[str, str | None]:
  """Splits 'lsun/bedroom:3.1.0' into ('lsun', 'bedroom'); the version is TFDS's business."""
  without_version = name.split(':', 1)[0]
  base, _, config = without_version.partition('/')
  return base, (config or None)


def validate_dataset_name(name: str) -> None:
  """Raises SltError (one line, with valid examples) unless `name` is `digits` or a TFDS name.

  Accepted forms: 'cifar10', 'celeb_a', 'lsun/bedroom' (builder config), 'cifar10:3.0.2'.
  """
  if not isinstance(name, str) or not name:
    raise SltError(f'Dataset name must be a non-empty string, got {name!r}; for example '
                   f'{", ".join(_EXAMPLE_NAMES)}.')
  base, config = _base_and_config(name)
  known = _known_base_names()
  if base not in known:
    close = difflib.get_close_matches(base, sorted(known), n=3)
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    raise SltError(f'Unknown dataset {name!r}{hint}: use {DIGITS!r} (offline, built in) or a TFDS '
                   f'name such as {", ".join(repr(n) for n in _EXAMPLE_NAMES[1:])} '
                   '(see tfds.list_builders()).')
  if config is not None:
    configs = tfds.builder_cls(base).builder_configs if base != DIGITS else {}
    if config not in configs:
      allowed = ', '.join(sorted(configs)) if configs else f'none, use {base!r}'
      raise SltError(f'Unknown config {config!r} of dataset {base!r}; its configs: {allowed}.')


def _image_feature(features: tfds.features.FeaturesDict, name: str) -> tfds.features.Image:
  if 'image' not in features:
    raise SltError(f'Dataset {name!r} has no "image" feature (it has {", ".join(features)}); '
                   'slt_tf needs an image dataset.')
  return features['image']


def _channels(image_feature: tfds.features.Image, name: str) -> int:
  """Channels of the images `load_images` yields: 1 for grey, 3 otherwise (alpha dropped)."""
  stored = image_feature.shape[-1]
  if stored is None:
    return 1 if _base_and_config(name)[0] in _GREY_DATASETS else 3
  return 1 if stored == 1 else 3


def num_channels(name: str) -> int:
  """Returns the number of channels of `name`'s images as `load_images` yields them (1 or 3).

  Read from the builder's feature spec, which needs no download.
  """
  validate_dataset_name(name)
  builder = tfds.builder(name)
  return _channels(_image_feature(builder.info.features, name), name)


def held_out_split(name: str) -> str:
  """Returns the evaluation split: 'test' where the dataset has one, else 'train[:10000]'."""
  validate_dataset_name(name)
  if _base_and_config(name)[0] in _DATASETS_WITH_TEST_SPLIT:
    return 'test'
  return f'train[:{HELD_OUT_EXAMPLES}]'


def training_split(name: str) -> str:
  """Returns the split used for training statistics: disjoint from `held_out_split(name)` and
  from `validation_split(name)`."""
  validate_dataset_name(name)
  base = _base_and_config(name)[0]
  if base in VALIDATION_EXAMPLES:
    return f'train[:-{VALIDATION_EXAMPLES[base]}]'
  if base in _DATASETS_WITH_TEST_SPLIT:
    return 'train'
  return f'train[{HELD_OUT_EXAMPLES}:]'


def validation_split(name: str) -> str:
  """Returns the split on which hyperparameters are chosen: the last examples of `train`."""
  validate_dataset_name(name)
  base = _base_and_config(name)[0]
  if base not in VALIDATION_EXAMPLES:
    raise SltError(f'Dataset {name!r} has no validation split; datasets with one: '
                   f'{", ".join(sorted(VALIDATION_EXAMPLES))}.')
  return f'train[-{VALIDATION_EXAMPLES[base]}:]'


# What `evaluation_split` takes: 'test' (the held-out split of reported numbers) or
# 'validation' (tuning).
EVALUATION_SPLITS = ('test', 'validation')


def validate_evaluation_split(which: str) -> None:
  if which not in EVALUATION_SPLITS:
    raise SltError(f'Unknown evaluation split {which!r}; choose test or validation.')


def evaluation_split(name: str, which: str) -> str:
  """The split of `which` ('test': the held-out split of reported numbers; 'validation')."""
  validate_evaluation_split(which)
  return held_out_split(name) if which == 'test' else validation_split(name)


def validate_image_size(name: str, image_size: int) -> None:
  """SltError unless `name` may be used at `image_size` (`SUPPORTED_IMAGE_SIZES`)."""
  allowed = SUPPORTED_IMAGE_SIZES.get(_base_and_config(name)[0])
  if allowed is not None and image_size not in allowed:
    raise SltError(f'{name} is supported at image_size {" or ".join(map(str, allowed))}, '
                   f'got {image_size}.')


@contextlib.contextmanager
def _python_random_kept():
  """Restores Python's global `random` state afterwards: TFDS names the temporary directory of
  a dataset it prepares with `random.choice`, which would shift every later draw of a seeded
  process (keras initialisers draw their seeds from it; slt_tf.classifiers seeds it)."""
  state = random.getstate()
  try:
    yield
  finally:
    random.setstate(state)


def prepare(name: str, data_dir: str | None = None, source_dir: str = '') -> None:
  """Makes `name` loadable from `data_dir`, offline where it can (an explicit first step).

  `digits` is built from scikit-learn's copy; `fashion_mnist` from the IDX files in
  `source_dir` (default Debian's `/usr/share/datasets/fashion-mnist`) unless TFDS already has
  it; any other dataset must already be prepared. Raises SltError (one line) otherwise.
  """
  validate_dataset_name(name)
  if _base_and_config(name)[0] == FASHION_MNIST:
    with _python_random_kept():
      fashion_mnist.prepare(data_dir, source_dir or fashion_mnist.DEFAULT_IDX_DIR)
  _prepared_builder(name, data_dir)


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns the builder of `name`, preparing `digits` offline; SltError if another is missing."""
  if _base_and_config(name)[0] == FASHION_MNIST:
    with _python_random_kept():
      fashion_mnist.prepare(data_dir, fashion_mnist.DEFAULT_IDX_DIR)  # No-op once prepared.
  builder = tfds.builder(name, data_dir=data_dir)
  if _base_and_config(name)[0] == DIGITS:
    if not builder.is_prepared():
      try:
        with _python_random_kept():
          builder.download_and_prepare()
      except OSError:
        # Several workers may prepare the same data_dir at once: TFDS writes into a private
        # temporary directory and renames it, so every rename but the first fails. The data of
        # the first one is identical; anything else is a real error.
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
          raise
    return builder
  if not builder.is_prepared():
    where = (data_dir if data_dir is not None
             else 'the default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)')
    flag = f' --data_dir={data_dir}' if data_dir is not None else ''
    raise SltError(f'Dataset {name!r} is not prepared in {where}: run '
                   f'`tfds build {name}{flag}` on a machine with internet access and copy the '
                   'prepared data_dir to this path.')
  return builder


def _split_size(builder: tfds.core.DatasetBuilder, name: str, split: str) -> int:
  """Returns the number of examples of `split`; SltError naming the splits if it is unknown."""
  available = list(builder.info.splits.keys())
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise SltError(f'Unknown split {split!r} for dataset {name!r}: available splits are '
                   f'{", ".join(available) or "none"} (slices such as "train[:1000]" or '
                   '"train[10%:]" also work).') from error


def _check_positive(value: int, what: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise SltError(f'{what} must be a positive integer, got {value!r}.')


def _check_shard(shard: tuple[int, int] | None) -> None:
  if shard is None:
    return
  if (not isinstance(shard, (tuple, list)) or len(shard) != 2 or
      not all(isinstance(v, int) and not isinstance(v, bool) for v in shard) or
      shard[1] < 1 or not 0 <= shard[0] < shard[1]):
    raise SltError(f'shard must be (index, count) with 0 <= index < count, got {shard!r}.')


def _central_crop(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """Crops a [H, W, C] image to its centre [size, size, C] (size <= H, W)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  return tf.image.crop_to_bounding_box(image, (height - size) // 2, (width - size) // 2,
                                       size, size)


def _preprocess(image: tf.Tensor, *, image_size: int, channels: int,
                crop: int | None) -> tf.Tensor:
  """uint8 [H, W, C] -> float32 [image_size, image_size, channels] in [-1, 1]."""
  image = image[..., :channels]  # Drops an alpha channel.
  if crop is None:
    crop = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
  image = _central_crop(image, crop)
  image = tf.cast(image, tf.float32)
  # Identity when the size already matches; antialiasing averages like 'area' when shrinking.
  image = tf.image.resize(image, [image_size, image_size], method='bilinear', antialias=True)
  image = tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)
  return tf.ensure_shape(image, [image_size, image_size, channels])


def load_images(name: str, split: str, *, image_size: int, batch_size: int,
                data_dir: str | None = None, with_labels: bool = False, shuffle: bool = False,
                seed: int = 0, repeat: bool = False, drop_remainder: bool = False,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
  """Returns batches of real images of `name`/`split` in [-1, 1].

  Args:
    name: 'digits' or a TFDS name (see `validate_dataset_name`).
    split: a split of the dataset or a TFDS slice of one ('train', 'test', 'train[:10000]').
    image_size: output height and width.
    batch_size: examples per batch.
    data_dir: TFDS data directory; `digits` is prepared there when missing, other datasets
      must already be prepared there.
    with_labels: also yield the int64 `label` feature.
    shuffle: shuffle the files and the examples (seeded by `seed`, reshuffled each epoch).
    seed: shuffling seed; the same seed gives the same order.
    repeat: repeat forever.
    drop_remainder: drop the last batch when it is smaller than `batch_size`.
    shard: (index, count): keep every count-th example starting at index, e.g. one part per
      worker; the parts of a split are disjoint and cover it.

  Returns:
    A dataset of float32 images [B, image_size, image_size, C] (C from `num_channels(name)`),
    or of (images, int64 labels [B]) when `with_labels`. Deterministic when `shuffle` is False.

  Raises:
    SltError: unknown dataset or split, bad argument, or a dataset that is not prepared.
  """
  validate_dataset_name(name)
  _check_positive(image_size, 'image_size')
  _check_positive(batch_size, 'batch_size')
  _check_shard(shard)
  builder = _prepared_builder(name, data_dir)
  num_examples = _split_size(builder, name, split)
  features = builder.info.features
  image_feature = _image_feature(features, name)
  if with_labels and 'label' not in features:
    raise SltError(f'Dataset {name!r} has no "label" feature (it has {", ".join(features)}); '
                   'use with_labels=False.')
  channels = _channels(image_feature, name)
  crop = CELEB_A_CROP if _base_and_config(name)[0] == 'celeb_a' else None

  # Images stay encoded until after sharding and shuffling, so both are cheap.
  dataset = builder.as_dataset(
      split=split, shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True))
  if shard is not None:
    index, count = shard
    dataset = dataset.shard(count, index)
  if shuffle:
    buffer_size = min(num_examples, _MAX_SHUFFLE_BUFFER) if num_examples else _MAX_SHUFFLE_BUFFER
    dataset = dataset.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()

  def prepare(example):
    image = _preprocess(image_feature.decode_example(example['image']),
                        image_size=image_size, channels=channels, crop=crop)
    if with_labels:
      return image, tf.cast(example['label'], tf.int64)
    return image

  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE)
