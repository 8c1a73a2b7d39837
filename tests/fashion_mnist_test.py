"""Fashion-MNIST: offline preparation from Debian's IDX files, splits, bad input, a tiny search."""

import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from slt_tf import config_schema
from slt_tf import data
from slt_tf import errors
from slt_tf import train
from slt_tf.datasets import fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_DIR = fashion_mnist.DEFAULT_IDX_DIR
needs_idx_files = pytest.mark.skipif(
    bool(fashion_mnist.missing_files(IDX_DIR)),
    reason=f"Debian's IDX files are not in {IDX_DIR} (apt-get install -y dataset-fashion-mnist; "
           ".ci/run installs them)")


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("fashion_mnist", data_dir, IDX_DIR)
  return data_dir


@pytest.mark.e2e
@needs_idx_files
def test_offline_preparation_is_tfds_own_fashion_mnist_with_60000_train_and_10000_test(
    prepared_dir):
  builder = tfds.builder("fashion_mnist", data_dir=prepared_dir)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 60_000
  assert builder.info.splits["test"].num_examples == 10_000
  image, label = builder.info.features["image"], builder.info.features["label"]
  assert image.shape == (28, 28, 1) and image.dtype.name == "uint8"
  assert label.num_classes == 10 and label.names[0] == "T-shirt/top"
  test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
  assert test["image"].shape == (10_000, 28, 28, 1) and test["image"].dtype == np.uint8
  idx_images, idx_labels = fashion_mnist.read_split(IDX_DIR, "test")
  # Same images and labels as the IDX file (TFDS stores them in its own order).
  assert int(test["image"].astype(np.int64).sum()) == int(idx_images.astype(np.int64).sum())
  np.testing.assert_array_equal(np.bincount(test["label"]), np.bincount(idx_labels))


@pytest.mark.e2e
@needs_idx_files
def test_loaded_training_images_are_32x32_in_minus_one_one(prepared_dir):
  images = next(iter(data.load_images("fashion_mnist", data.training_split("fashion_mnist"),
                                      image_size=32, batch_size=8, data_dir=prepared_dir)))
  assert images.shape == (8, 32, 32, 1)
  assert -1.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0


def test_validation_is_the_last_10000_training_images_and_overlaps_neither_training_nor_test():
  sizes = tfds.core.SplitDict([tfds.core.SplitInfo(name=name, shard_lengths=[size], num_bytes=0)
                               for name, size in (("train", 60_000), ("test", 10_000))])

  def ranges(split):
    return [(i.splitname, i.from_ or 0, 60_000 if i.to is None and i.splitname == "train"
             else 10_000 if i.to is None else i.to)
            for i in tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)]

  assert ranges(data.validation_split("fashion_mnist")) == [("train", 50_000, 60_000)]
  assert ranges(data.training_split("fashion_mnist")) == [("train", 0, 50_000)]
  assert ranges(data.held_out_split("fashion_mnist")) == [("test", 0, 10_000)]
  assert data.evaluation_split("fashion_mnist", "validation") == data.validation_split(
      "fashion_mnist")
  with pytest.raises(errors.SltError, match="no validation split"):
    data.validation_split("cifar10")


def test_missing_idx_directory_says_how_to_install_the_files(tmp_path):
  with pytest.raises(errors.SltError, match=r"apt-get install -y dataset-fashion-mnist"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), str(tmp_path / "nowhere"))
  assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist")


def _write_idx(directory, split, count, truncate_to=None):
  """Fake IDX files with the original headers (random pixels); optionally truncated."""
  images_name, labels_name, _ = fashion_mnist.FILES[split]
  rng = np.random.default_rng(0)
  images = (b"\x00\x00\x08\x03" + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + rng.integers(0, 256, count * 784, dtype=np.uint8).tobytes())
  labels = (b"\x00\x00\x08\x01" + count.to_bytes(4, "big")
            + rng.integers(0, 10, count, dtype=np.uint8).tobytes())
  compressed = gzip.compress(images)
  with open(os.path.join(directory, images_name), "wb") as f:
    f.write(compressed[:truncate_to] if truncate_to else compressed)
  with open(os.path.join(directory, labels_name), "wb") as f:
    f.write(gzip.compress(labels))


@pytest.mark.e2e
def test_truncated_gz_file_is_refused_in_one_line_before_anything_is_written(tmp_path):
  idx_dir = tmp_path / "idx"
  idx_dir.mkdir()
  _write_idx(idx_dir, "train", 60_000)
  _write_idx(idx_dir, "test", 10_000, truncate_to=5000)
  with pytest.raises(errors.SltError, match=r"t10k-images-idx3-ubyte.gz is (truncated|not a "
                     r"readable gzip file).*reinstall it: apt-get install -y dataset-fashion-mnist"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), str(idx_dir))
  assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist")


def test_idx_header_with_another_count_is_refused(tmp_path):
  _write_idx(tmp_path, "test", 10)
  with pytest.raises(errors.SltError, match=r"has IDX header .* expected \(2051, 10000, 28, 28\)"):
    fashion_mnist.read_split(str(tmp_path), "test")


@pytest.mark.parametrize("size", [8, 64, 28])
def test_fashion_mnist_at_an_unsupported_size_is_refused_by_the_config_check(size):
  config = config_schema.load_file(os.path.join(ROOT, "configs", "fashion_mnist.py"))
  config.dataset.image_size = size
  with pytest.raises(errors.SltError, match=r"fashion_mnist is supported at image_size 16 or 32"):
    train.validate_config(config)


@pytest.mark.e2e
def test_find_ticket_with_a_missing_idx_directory_writes_nothing(run_binary, tmp_path):
  workdir = tmp_path / "w"
  line = run_binary(
      "bin.find_ticket", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
      f"--config.dataset.data_dir={tmp_path / 'tfds'}",
      f"--config.dataset.source_dir={tmp_path / 'missing'}",
      f"--config.features.cache_dir={tmp_path / 'cache'}").error_line(
          "apt-get install -y dataset-fashion-mnist")
  assert line.startswith("find_ticket: error: Fashion-MNIST is not prepared in "), line
  assert not workdir.exists()


@pytest.mark.e2e
def test_tiny_search_on_mock_fashion_mnist_runs_end_to_end(mock_tfds, tmp_path):
  config = config_schema.load_file(os.path.join(ROOT, "configs", "test.py"))
  config.dataset.name = "fashion_mnist"
  config.dataset.image_size = 16
  config.generator.filters = (32, 16, 8)
  config.features.name = "fashion_cnn"
  config.features.weights = "none"
  config.features.cache_dir = str(tmp_path / "cache")
  config.num_steps = 4
  config.checkpoint_every_steps = config.log_every_steps = config.sample_every_steps = 2
  with mock_tfds("fashion_mnist", {"train": 60_000, "test": 10_000}, num_examples=64) as data_dir:
    config.dataset.data_dir = data_dir
    summary = train.train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["step"] == 4
  assert os.path.exists(summary["ticket"])
  assert summary["prepare_seconds"] >= 0 and summary["search_seconds"] > 0
  assert os.path.exists(tmp_path / "w" / "samples" / "final.png")
