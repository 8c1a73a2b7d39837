"""Trains a dataset's loss and evaluation classifiers once and caches them (explicit first step).

  python -m bin.train_classifiers --dataset=fashion_mnist --image_size=32
  python -m bin.train_classifiers --dataset=digits --image_size=16 --seed=0

bin/find_ticket and bin/evaluate run this step themselves when a network is missing; running it
first separates the one-time preparation (data set, classifiers) from the search. Prints each
network's test accuracy and the cache file. digits_cnn's weights follow the run's seed
(`--config.seed` of bin/find_ticket), so pass the same `--seed`.
"""

from absl import flags

import slt_tf  # pylint: disable=unused-import
from slt_tf.cli import common as cli
from slt_tf import classifiers

_DATASETS = sorted({recipe.dataset for recipe in classifiers.RECIPES.values()})
_DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", _DATASETS, "Dataset whose classifiers "
                             "to train.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Side of the images (the generator's).",
                                   lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "The run's seed (config.seed): seeds the classifiers "
                             "without a seed of their own (digits_cnn).", lower_bound=0)
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Cache (default ~/.cache/slt_tf).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default TFDS's).")


def main(argv):
  del argv
  from slt_tf import data  # pylint: disable=g-import-not-at-top
  data.validate_image_size(_DATASET.value, _IMAGE_SIZE.value)
  for name, recipe in classifiers.RECIPES.items():
    if recipe.dataset == _DATASET.value:
      info = classifiers.prepare(name, _IMAGE_SIZE.value, seed=_SEED.value,
                                 cache_dir=_CACHE_DIR.value, data_dir=_DATA_DIR.value)
      print(f"{name}: test accuracy {info['test_accuracy']:.4f} on {info['test_examples']} "
            f"images, trained in {info['training_seconds']:.0f} s; {info['weights']}")


def run() -> None:
  """The `slt-train-classifiers` console script (and `python -m bin.train_classifiers`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
