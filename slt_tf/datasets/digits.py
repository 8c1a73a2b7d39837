"""TFDS builder `digits`: the 8x8 handwritten digits that scikit-learn ships (offline default).

The data are the 1,797 images of the UCI "Optical Recognition of Handwritten Digits" test set
as `sklearn.datasets.load_digits()` returns them (8x8, 17 grey levels 0..16). They are inside
the scikit-learn wheel, so `download_and_prepare()` needs no network. The builder lets the
offline default go through the same TFDS input pipeline as every other dataset.

Splits are a fixed stratified partition: `test` holds 30 images of each class (300 images),
chosen by a seeded permutation that never changes (`numpy.random.RandomState`, whose stream is
frozen); `train` holds the other 1,497. `test` is the held-out evaluation split.

Importing this module registers the builder with TFDS (class definition only, no other work).
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# The fixed partition: 30 test images per class, drawn with this seed. Changing either changes
# the dataset, so bump VERSION with it.
TEST_IMAGES_PER_CLASS = 30
SPLIT_SEED = 2023
NUM_CLASSES = 10
NUM_GREY_LEVELS = 16  # sklearn values are 0..16.


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns the sklearn digits as (uint8 images [1797, 8, 8, 1] in 0..255, int64 labels [1797]).

  Each value v in 0..16 becomes round(v * 255 / 16).
  """
  from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top

  digits = sklearn_datasets.load_digits()
  images = np.round(digits.images * (255.0 / NUM_GREY_LEVELS)).astype(np.uint8)
  return images[..., np.newaxis], digits.target.astype(np.int64)  # (N, 8, 8, 1), (N,)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Returns the fixed partition of sklearn indices: {'train': [1497], 'test': [300]}, sorted."""
  random_state = np.random.RandomState(SPLIT_SEED)
  test_parts = []
  for label in range(NUM_CLASSES):
    class_indices = np.flatnonzero(labels == label)
    test_parts.append(random_state.permutation(class_indices)[:TEST_IMAGES_PER_CLASS])
  test = np.sort(np.concatenate(test_parts))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': train, 'test': test}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, grey levels scaled to 0..255."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: train 1,497 / test 300 (30 per class, seed 2023).',
  }

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file (TFDS looks for a checksums file beside it; there is none: nothing to download).

    Overridden because TFDS 4.9.10's own lookup imports `importlib_resources`, which it only
    declares as a dependency for Python < 3.9.
    """
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            # Position in sklearn.datasets.load_digits(), to trace an example to its source.
            'index': np.int64,
        }),
        supervised_keys=('image', 'label'),
        homepage=(
            'https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits'),
        citation=(
            '@misc{alpaydin1998digits, author={Alpaydin, E. and Kaynak, C.}, title={Optical '
            'Recognition of Handwritten Digits}, year={1998}, howpublished={UCI Machine '
            'Learning Repository}}'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data come with scikit-learn: nothing to download.
    images, labels = load_sklearn_digits()
    return {
        split: self._generate_examples(images, labels, indices)
        for split, indices in split_indices(labels).items()
    }

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
    for index in indices:
      yield int(index), {
          'image': images[index],
          'label': int(labels[index]),
          'index': int(index),
      }
