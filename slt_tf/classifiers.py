"""Classifiers trained on a dataset, for its loss features and its evaluation: an explicit step.

A dataset without ImageNet-scale pretrained networks (Fashion-MNIST here) gets its own frozen
networks, trained on its 60,000 training images only:

- `fashion_cnn` (loss, plain CNN): conv16/2 - conv32/2 - conv64/2 - dense128 - dense10,
  features = all four ReLU outputs, flattened (GFMN matches several layers without pooling).
- `fashion_inception` (loss, Inception-style): a stem and three mixed blocks built like
  InceptionV3's (parallel 1x1, 3x3, double-3x3 and pool-projection branches, concatenated), the
  middle one a stride-2 reduction; features = the stem's and every block's outputs, flattened.
- `fashion_eval_cnn` (evaluation, independent of both: another architecture and seed): VGG-style
  conv-BN-ReLU (16, 32, 64, 64) with max pooling, embedding = its 128-d penultimate layer.
Sizes are set by what two CPU cores can afford per search step.

`prepare` trains what is not in the cache yet (logged, with a progress bar) and writes
`<cache>/<name>-<recipe>.weights.h5` plus an info JSON (test accuracy, time); `load` only
loads, so building a network never trains it. The digits networks still live in
`slt_tf.features`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from typing import Any, Callable

from absl import logging
import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config  # Op-determinism state.

from slt_tf import errors

DEFAULT_CACHE_DIR = "~/.cache/slt_tf"


@contextlib.contextmanager
def python_random_seed(seed: int):
  """Seeds Python's `random` (unseeded keras initialisers draw seeds from it), then restores it."""
  state = random.getstate()
  random.seed(seed)
  try:
    yield
  finally:
    random.setstate(state)


@contextlib.contextmanager
def deterministic_ops():
  """Enables TF op determinism for the block, restoring the previous setting afterwards."""
  was_enabled = tf_framework_config.is_op_determinism_enabled()
  if not was_enabled:
    tf_framework_config.enable_op_determinism()
  try:
    yield
  finally:
    if not was_enabled:
      tf_framework_config.disable_op_determinism()


def _init(seed: int, index: int) -> keras.initializers.Initializer:
  return keras.initializers.GlorotUniform(seed=seed * 100 + index)


def _fashion_cnn(image_size: int, seed: int) -> keras.Model:
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = inputs
  for index, filters in enumerate((16, 32, 64), start=1):
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                            kernel_initializer=_init(seed, index), name=f"conv{index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", kernel_initializer=_init(seed, 5),
                         name="dense1")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 6), name="logits")(x)
  return keras.Model(inputs, logits, name="fashion_cnn")


def _conv_bn(x, filters: int, kernel: int, name: str, seed: int, index: int, stride: int = 1):
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=_init(seed, index), name=f"{name}_conv")(x)
  x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def _mixed(x, widths: tuple[int, int, int, int], name: str, seed: int, index: int,
           stride: int = 1):
  """An InceptionV3-style block: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1, concatenated."""
  one, three, double, pool = widths
  branches = [
      _conv_bn(x, one, 1, f"{name}_b1", seed, index, stride),
      _conv_bn(_conv_bn(x, three // 2, 1, f"{name}_b3a", seed, index + 1), three, 3,
               f"{name}_b3b", seed, index + 2, stride),
      _conv_bn(_conv_bn(_conv_bn(x, double // 2, 1, f"{name}_b5a", seed, index + 3), double, 3,
                        f"{name}_b5b", seed, index + 4), double, 3, f"{name}_b5c", seed,
               index + 5, stride),
  ]
  pooled = (keras.layers.AveragePooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
            if stride == 1 else
            keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x))
  branches.append(_conv_bn(pooled, pool, 1, f"{name}_bp", seed, index + 6))
  return keras.layers.Concatenate(name=name)(branches)


def _fashion_inception(image_size: int, seed: int) -> keras.Model:
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = _conv_bn(inputs, 16, 3, "stem", seed, 1, stride=2)                  # (S/2, S/2, 16)
  x = _mixed(x, (16, 16, 16, 8), "mixed0", seed, 10)                       # (S/2, S/2, 56)
  x = _mixed(x, (32, 32, 32, 16), "mixed1", seed, 20, stride=2)            # (S/4, S/4, 112)
  x = _mixed(x, (32, 48, 32, 16), "mixed2", seed, 30)                      # (S/4, S/4, 128)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 40), name="logits")(x)
  return keras.Model(inputs, logits, name="fashion_inception")


def _fashion_eval_cnn(image_size: int, seed: int) -> keras.Model:
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = inputs
  for index, (filters, pool) in enumerate(((16, True), (32, True), (64, False), (64, True))):
    x = _conv_bn(x, filters, 3, f"block{index}", seed, index + 1)
    if pool:
      x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", kernel_initializer=_init(seed, 20),
                         name="embedding")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 21), name="logits")(x)
  return keras.Model(inputs, logits, name="fashion_eval_cnn")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How one classifier is built and trained; every field is part of its cache file name."""
  dataset: str
  architecture: Callable[[int, int], keras.Model]
  tag: str                       # names the architecture in the cache file
  feature_layers: tuple[str, ...]  # tapped layers (features) or (embedding, logits) for eval
  seed: int
  epochs: int
  batch_size: int = 128
  learning_rate: float = 1e-3


RECIPES = {
    "fashion_cnn": Recipe(
        "fashion_mnist", _fashion_cnn, "c16s2-c32s2-c64s2-d128",
        ("conv1", "conv2", "conv3", "dense1"), seed=7, epochs=3),
    "fashion_inception": Recipe(
        "fashion_mnist", _fashion_inception, "stem16s2-mixed56-mixed112s2-mixed128",
        ("stem_relu", "mixed0", "mixed1", "mixed2"), seed=11, epochs=1),
    "fashion_eval_cnn": Recipe(
        "fashion_mnist", _fashion_eval_cnn, "vgg16p-32p-64-64p-bn-d128",
        ("embedding", "logits"), seed=1234, epochs=2),
}


def _paths(name: str, image_size: int, cache_dir: str | None) -> tuple[str, str]:
  recipe = RECIPES[name]
  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
  stem = os.path.join(cache_dir, f"{name}-{recipe.tag}-e{recipe.epochs}-b{recipe.batch_size}-"
                                 f"size{image_size}-seed{recipe.seed}")
  return stem + ".weights.h5", stem + ".json"


def build(name: str, image_size: int) -> keras.Model:
  """The untrained classifier `name` (seeded: the same weights in every process)."""
  recipe = RECIPES[name]
  with python_random_seed(recipe.seed):
    return recipe.architecture(image_size, recipe.seed)


def is_prepared(name: str, image_size: int, cache_dir: str | None) -> bool:
  return all(os.path.exists(path) for path in _paths(name, image_size, cache_dir))


def load(name: str, image_size: int, cache_dir: str | None) -> tuple[keras.Model, dict[str, Any]]:
  """The trained classifier from the cache, and its info; SltError when it is not prepared."""
  weights_path, info_path = _paths(name, image_size, cache_dir)
  if not is_prepared(name, image_size, cache_dir):
    raise errors.SltError(
        f"{name} is not trained yet ({weights_path} is missing): bin/find_ticket trains it "
        f"first, or run `python -m bin.train_classifiers --dataset={RECIPES[name].dataset} "
        f"--image_size={image_size}`")
  model = build(name, image_size)
  try:
    model.load_weights(weights_path)
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError, KeyError) as e:
    raise errors.SltError(f"cached {name} at {weights_path} is unreadable ({type(e).__name__}); "
                          "delete it and its .json to train it again") from e
  return model, info


def accuracy(model: keras.Model, images: tf.data.Dataset) -> tuple[float, int]:
  """(fraction of correct argmax predictions, number of examples) over (images, labels)."""
  correct = total = 0
  for batch, labels in images:
    predictions = tf.argmax(model(batch, training=False), axis=-1)
    correct += int(tf.reduce_sum(tf.cast(predictions == labels, tf.int64)))
    total += int(labels.shape[0])
  return correct / total, total


def prepare(name: str, image_size: int, *, cache_dir: str | None = None,
            data_dir: str | None = None, verbose: int = 1) -> dict[str, Any]:
  """Trains `name` on its dataset's `train` split unless it is cached; returns its info.

  Logged, with keras' per-epoch progress bar (`verbose`), deterministic ops and a seeded data
  order. The held-out `test` accuracy is measured and stored with the weights.
  """
  from slt_tf import data  # pylint: disable=g-import-not-at-top  # TFDS only when training.

  if name not in RECIPES:
    raise errors.SltError(f"unknown classifier {name!r}; choose one of {', '.join(RECIPES)}")
  weights_path, info_path = _paths(name, image_size, cache_dir)
  if is_prepared(name, image_size, cache_dir):
    return load(name, image_size, cache_dir)[1]
  if tf.distribute.has_strategy():
    raise errors.SltError(f"{name} must be trained outside a tf.distribute strategy scope")
  recipe = RECIPES[name]
  data.prepare(recipe.dataset, data_dir)
  logging.info("Training %s on %s/train (%d epochs, image_size %d), once; cached in %s.", name,
               recipe.dataset, recipe.epochs, image_size, weights_path)
  start = time.time()
  train = data.load_images(recipe.dataset, "train", image_size=image_size,
                           batch_size=recipe.batch_size, data_dir=data_dir, with_labels=True,
                           shuffle=True, seed=recipe.seed)
  test = data.load_images(recipe.dataset, "test", image_size=image_size, batch_size=500,
                          data_dir=data_dir, with_labels=True)
  model = build(name, image_size)
  model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], jit_compile=False)
  with deterministic_ops():
    history = model.fit(train, epochs=recipe.epochs, verbose=verbose)
  test_accuracy, test_examples = accuracy(model, test)
  info = {"network": name, "dataset": recipe.dataset, "architecture": recipe.tag,
          "image_size": image_size, "seed": recipe.seed, "epochs": recipe.epochs,
          "train_accuracy": float(history.history["accuracy"][-1]),
          "test_accuracy": test_accuracy, "test_examples": test_examples,
          "training_seconds": round(time.time() - start, 1), "weights": weights_path}
  os.makedirs(os.path.dirname(weights_path), exist_ok=True)
  tmp = f"{weights_path}.tmp-{os.getpid()}.weights.h5"
  model.save_weights(tmp)
  with open(info_path + ".tmp", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp, weights_path)
  os.replace(info_path + ".tmp", info_path)
  logging.info("Trained %s in %.0f s: test accuracy %.4f (%d images).", name,
               info["training_seconds"], test_accuracy, test_examples)
  return info
