"""Classifiers trained on a dataset, for its loss features and its evaluation: an explicit step.

A dataset without ImageNet-scale pretrained networks (digits, Fashion-MNIST) gets its own frozen
networks, trained on its training split only:

- `digits_cnn` (loss): conv32/2 - conv64/2 - dense128 (ReLU) - dense10, features = its three
  ReLU activations; seeded by the run's seed (`config.seed`), like every other frozen weight.
- `digits_cnn_deep` (loss, the digits default): conv32 5x5/1 - conv64/2 - conv64/1 - conv128/2 -
  dense256 (ReLU) - dense10, features = its five ReLU activations (18,688 values at 16x16): the
  full-resolution first layer gives the loss the stroke-level statistics the strided
  `digits_cnn` lacks. Seeded by the run's seed.
- `digits_eval_cnn` (evaluation): deeper and wider, with batch norm and its own seed: 3
  conv-BN-ReLU (32/2, 64/2, 128/2) - dense256 (ReLU) - dense10, embedding = its 256-d
  penultimate layer.
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
loads, so building a network never trains it (`slt_tf.features` builds the frozen networks
from these). Training is deterministic (seeded data order, TF op determinism enabled for the
training only and restored afterwards), so the same recipe gives the same weights bit for bit.
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
from slt_tf import workdir

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


def _digits_cnn(image_size: int, seed: int) -> keras.Model:
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=_init(seed, 1), name="conv1")(inputs)
  x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=_init(seed, 2), name="conv2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", kernel_initializer=_init(seed, 3),
                         name="dense1")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 4), name="logits")(x)
  return keras.Model(inputs, logits, name="digits_cnn")


def _digits_cnn_deep(image_size: int, seed: int) -> keras.Model:
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = inputs
  for index, (filters, kernel, stride) in enumerate(((32, 5, 1), (64, 3, 2), (64, 3, 1),
                                                     (128, 3, 2)), start=1):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", activation="relu",
                            kernel_initializer=_init(seed, 50 + index), name=f"conv{index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(256, activation="relu", kernel_initializer=_init(seed, 55),
                         name="dense1")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 56), name="logits")(x)
  return keras.Model(inputs, logits, name="digits_cnn_deep")


def _digits_eval_cnn(image_size: int, seed: int) -> keras.Model:
  """Batch norm with momentum 0.9, so that its moving statistics converge within the few
  hundred training steps."""
  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = inputs
  for index, filters in enumerate((32, 64, 128), start=1):
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                            kernel_initializer=_init(seed, index), name=f"conv{index}")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
    x = keras.layers.ReLU(name=f"relu{index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(256, activation="relu", kernel_initializer=_init(seed, 4),
                         name="embedding")(x)
  logits = keras.layers.Dense(10, kernel_initializer=_init(seed, 5), name="logits")(x)
  return keras.Model(inputs, logits, name="digits_eval_cnn")


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
  seed: int | None               # None: the run's seed (the `seed` argument below)
  epochs: int
  batch_size: int = 128
  learning_rate: float = 1e-3


RECIPES = {
    "digits_cnn": Recipe(
        "digits", _digits_cnn, "c32s2-c64s2-d128", ("conv1", "conv2", "dense1"), seed=None,
        epochs=10, batch_size=64),
    "digits_cnn_deep": Recipe(
        "digits", _digits_cnn_deep, "c5x32-c64s2-c64-c128s2-d256",
        ("conv1", "conv2", "conv3", "conv4", "dense1"), seed=None, epochs=10, batch_size=64),
    "digits_eval_cnn": Recipe(
        "digits", _digits_eval_cnn, "c32s2bn-c64s2bn-c128s2bn-d256", ("embedding", "logits"),
        seed=1234, epochs=10, batch_size=64),
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


def _check_name(name: str) -> Recipe:
  if name not in RECIPES:
    raise errors.SltError(f"unknown classifier {name!r}; choose one of {', '.join(RECIPES)}")
  return RECIPES[name]


def recipe_seed(name: str, seed: int = 0) -> int:
  """The seed `name` is built and trained with: its recipe's, or the run's `seed` if it has none."""
  own_seed = _check_name(name).seed
  return seed if own_seed is None else own_seed


def _paths(name: str, image_size: int, cache_dir: str | None, seed: int) -> tuple[str, str]:
  recipe = RECIPES[name]
  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
  stem = os.path.join(cache_dir, f"{name}-{recipe.tag}-e{recipe.epochs}-b{recipe.batch_size}-"
                                 f"size{image_size}-seed{recipe_seed(name, seed)}")
  return stem + ".weights.h5", stem + ".json"


def build(name: str, image_size: int, seed: int = 0) -> keras.Model:
  """The untrained classifier `name` (seeded: the same weights in every process)."""
  seed = recipe_seed(name, seed)
  with python_random_seed(seed):
    return RECIPES[name].architecture(image_size, seed)


def is_prepared(name: str, image_size: int, cache_dir: str | None, seed: int = 0) -> bool:
  return all(tf.io.gfile.exists(path) for path in _paths(name, image_size, cache_dir, seed))


def _prepare_command(name: str, image_size: int, cache_dir: str | None, seed: int) -> str:
  flags = f" --seed={seed}" if RECIPES[name].seed is None and seed else ""
  flags += f" --cache_dir={cache_dir}" if cache_dir else ""
  return (f"python -m bin.train_classifiers --dataset={RECIPES[name].dataset} "
          f"--image_size={image_size}{flags}")


def load(name: str, image_size: int, cache_dir: str | None,
         seed: int = 0) -> tuple[keras.Model, dict[str, Any]]:
  """The trained classifier from the cache, and its info; SltError when it is not prepared.

  Args:
    name: one of RECIPES.
    image_size: side of its input images.
    cache_dir: where `prepare` wrote it (None: DEFAULT_CACHE_DIR).
    seed: the run's seed; only recipes without a seed of their own (the digits loss networks)
      use it.
  """
  weights_path, info_path = _paths(name, image_size, cache_dir, seed)
  command = _prepare_command(name, image_size, cache_dir, seed)
  if not is_prepared(name, image_size, cache_dir, seed):
    raise errors.SltError(f"{name} is not trained yet ({weights_path} is missing): "
                          f"bin/find_ticket and bin/evaluate train it first, or run `{command}`")
  model = build(name, image_size, seed)
  try:
    model.load_weights(weights_path)
    with tf.io.gfile.GFile(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
    raise errors.SltError(
        f"cached {name} at {weights_path} is unreadable ({type(e).__name__}); run "
        f"`{command}` to train it again") from e
  logging.info("Loaded %s from %s (held-out accuracy %.4f).", name, weights_path,
               info.get("test_accuracy", float("nan")))
  return model, info


def accuracy(model: keras.Model, images: tf.data.Dataset) -> tuple[float, int]:
  """(fraction of correct argmax predictions, number of examples) over (images, labels)."""
  correct = total = 0
  for batch, labels in images:
    predictions = tf.argmax(model(batch, training=False), axis=-1)
    correct += int(tf.reduce_sum(tf.cast(predictions == labels, tf.int64)))
    total += int(labels.shape[0])
  return correct / total, total


def prepare(name: str, image_size: int, *, seed: int = 0, cache_dir: str | None = None,
            data_dir: str | None = None, verbose: int = 1) -> dict[str, Any]:
  """Trains `name` on its dataset's `train` split unless it is cached; returns its info.

  Logged, with keras' per-epoch progress bar (`verbose`), deterministic ops (enabled for the
  training only) and a seeded data order. The held-out `test` accuracy is measured and stored
  with the weights. A cached file that cannot be read is trained again, with a warning.

  Args:
    name: one of RECIPES.
    image_size: side of its input images.
    seed: the run's seed; only recipes without a seed of their own (the digits loss networks)
      use it.
    cache_dir: where to write it (None: DEFAULT_CACHE_DIR).
    data_dir: TFDS data directory of the dataset.
    verbose: keras' `fit` verbosity.
  """
  from slt_tf import data  # pylint: disable=g-import-not-at-top  # TFDS only when training.

  recipe = _check_name(name)
  weights_path, info_path = _paths(name, image_size, cache_dir, seed)
  if is_prepared(name, image_size, cache_dir, seed):
    try:
      return load(name, image_size, cache_dir, seed)[1]
    except errors.SltError as e:
      logging.warning("%s; training it again.", e)
  if tf.distribute.has_strategy():
    raise errors.SltError(f"{name} must be trained outside a tf.distribute strategy scope")
  seed = recipe_seed(name, seed)
  data.prepare(recipe.dataset, data_dir)
  logging.info("Training %s on %s/train (%d epochs, image_size %d), once; cached in %s.", name,
               recipe.dataset, recipe.epochs, image_size, weights_path)
  start = time.time()
  train = data.load_images(recipe.dataset, "train", image_size=image_size,
                           batch_size=recipe.batch_size, data_dir=data_dir, with_labels=True,
                           shuffle=True, seed=seed)
  test = data.load_images(recipe.dataset, "test", image_size=image_size, batch_size=500,
                          data_dir=data_dir, with_labels=True)
  model = build(name, image_size, seed)
  model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], jit_compile=False)
  with deterministic_ops():
    history = model.fit(train, epochs=recipe.epochs, shuffle=False,  # `train` is shuffled.
                        verbose=verbose)
  test_accuracy, test_examples = accuracy(model, test)
  info = {"network": name, "dataset": recipe.dataset, "architecture": recipe.tag,
          "image_size": image_size, "seed": seed, "epochs": recipe.epochs,
          "batch_size": recipe.batch_size,
          "train_accuracy": float(history.history["accuracy"][-1]),
          "test_accuracy": test_accuracy, "test_examples": test_examples,
          "training_seconds": round(time.time() - start, 1), "weights": weights_path}
  with workdir.atomic_path(weights_path, suffix=".weights.h5") as temporary:
    model.save_weights(temporary)
  workdir.atomic_write(info_path, json.dumps(info, indent=2, sort_keys=True))
  logging.info("Trained %s in %.0f s: test accuracy %.4f (%d images).", name,
               info["training_seconds"], test_accuracy, test_examples)
  return info
