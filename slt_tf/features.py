"""Frozen networks that turn images into features: for the moment-matching loss and for evaluation.

Feature networks (the GFMN loss, docs/method.md "The moment-matching loss") take generator images,
float32 [B, H, W, C] in [-1, 1], do all preprocessing themselves (channels, size, value range)
and return the activations of several layers, flattened per sample and concatenated:

- `inception_v3`: keras InceptionV3 without its top, input resized to max(75, image_size);
  features are the global-average-pooled outputs of the eleven Inception blocks mixed0..mixed10
  (256 + 2 * 288 + 5 * 768 + 1280 + 2 * 2048 = 10,048 features whatever the input size). Pooling
  keeps the dimension small and independent of the resolution; at 75x75 the later blocks are
  1x1 or 3x3 anyway, so little spatial information is lost.
- `vgg19`: the paper code's choice: the 16 ReLU conv outputs of VGG19, flattened without pooling
  (303,104 features at 32x32), caffe preprocessing (BGR, 0..255 minus the ImageNet mean).
- `digits_cnn`: a small classifier trained on the embedded `digits` train split on first use and
  cached; features are its three ReLU activations (conv32/2, conv64/2, dense128).

- `fashion_cnn`, `fashion_inception`: Fashion-MNIST classifiers (`slt_tf.classifiers`, trained
  by an explicit step, only loaded here); features are their tapped layers, flattened.

Evaluation networks (FID / KID / IS / PRDC) return (embedding, logits):

- `inception_v3`: pool3 (2048-d average pool of mixed10) and the 1000 ImageNet logits at 299x299
  (Keras' ImageNet InceptionV3: its FIDs are NOT comparable to published ones).
- `fid_inception`: the 2015 FID Inception graph of published FIDs (TTUR / TF-GAN / pytorch-fid;
  `slt_tf.fid_inception`), pool3 and 1008 logits at 299x299, weights from a local file only.
- `digits_eval_cnn`: a different, deeper and wider classifier with batch norm and another seed,
  trained the same way; embedding = its 256-d penultimate layer, logits = its 10-way last layer.

- `fashion_eval_cnn`: an independent Fashion-MNIST classifier (`slt_tf.classifiers`).

Every network is frozen (no trainable weights, batch norm in inference mode) and carries a
`fingerprint`: sha256 over its name, tapped layers, input shape and all weight bytes, so caches
keyed by it (real feature moments) are never reused for other weights.
"""

import hashlib
import json
import os
import time
from typing import Any, Callable

from absl import logging
import h5py
import keras
import numpy as np
import tensorflow as tf

from slt_tf import classifiers
from slt_tf import errors
from slt_tf import fid_inception

FEATURE_NETWORKS = ("inception_v3", "vgg19", "digits_cnn", "fashion_cnn", "fashion_inception")
EVAL_NETWORKS = ("inception_v3", "fid_inception", "digits_eval_cnn", "fashion_eval_cnn")
DEFAULT_CACHE_DIR = classifiers.DEFAULT_CACHE_DIR

_INCEPTION_FEATURE_LAYERS = tuple(f"mixed{i}" for i in range(11))
_INCEPTION_MIN_SIZE = 75
_INCEPTION_EVAL_SIZE = 299
_VGG19_RELU_CONV_LAYERS = tuple(
    f"block{block}_conv{conv}"
    for block, num_convs in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    for conv in range(1, num_convs + 1))
_VGG19_MIN_SIZE = 32
# keras.applications.imagenet_utils "caffe" mode: BGR means of ImageNet, in 0..255.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

# The digits classifiers: training recipe and the seed of the evaluation network. Changing any of
# these changes the cached weights, so they are part of the cache file names.
_DIGITS_NUM_CLASSES = 10
_DIGITS_BATCH_SIZE = 64
_DIGITS_LEARNING_RATE = 1e-3
_DIGITS_CNN_EPOCHS = 10
_DIGITS_CNN_TAG = "c32s2-c64s2-d128"
_DIGITS_EVAL_CNN_EPOCHS = 10
_DIGITS_EVAL_CNN_TAG = "c32s2bn-c64s2bn-c128s2bn-d256"
_DIGITS_EVAL_SEED = 1234


class _FrozenNetwork:
  """A frozen keras model behind a preprocessing step, with a weight fingerprint."""

  def __init__(self, name: str, model: keras.Model, *, input_size: int, input_channels: int,
               preprocessing: str, layer_names: tuple[str, ...], info: dict[str, Any]):
    model.trainable = False
    self.name = name
    self.model = model
    self.input_size = input_size
    self.input_channels = input_channels
    self.preprocessing = preprocessing
    self.layer_names = tuple(layer_names)
    self.info = dict(info)
    self.fingerprint = _fingerprint(
        name=name, layer_names=self.layer_names, preprocessing=preprocessing,
        input_shape=(input_size, input_size, input_channels), model=model)

  def preprocess(self, images: tf.Tensor) -> tf.Tensor:
    """Maps generator images, float32 [B, H, W, C] in [-1, 1], to the model's input.

    Channels: grey is tiled to RGB, RGB is averaged to grey. Size: bilinear resize to
    [input_size, input_size] (antialiased when shrinking). Values: `inception` and `digits`
    models take [-1, 1] as it is; `caffe` (VGG19) takes BGR in 0..255 minus the ImageNet mean.
    """
    images = tf.cast(images, tf.float32)
    if images.shape.rank != 4:
      raise errors.SltError(
          f"{self.name} expects images [batch, height, width, channels]; got shape {images.shape}.")
    channels = images.shape[-1]
    if channels != self.input_channels:
      if channels == 1:
        images = tf.tile(images, [1, 1, 1, self.input_channels])
      elif self.input_channels == 1:
        images = tf.reduce_mean(images, axis=-1, keepdims=True)
      else:
        raise errors.SltError(
            f"{self.name} takes images with 1 or {self.input_channels} channels; got {channels}.")
    height, width = images.shape[1], images.shape[2]
    if height != self.input_size or width != self.input_size:
      shrinking = height is not None and width is not None and max(height, width) > self.input_size
      images = tf.image.resize(images, [self.input_size, self.input_size], method="bilinear",
                               antialias=shrinking)
    if self.preprocessing == "caffe":
      images = (images + 1.0) * 127.5  # [-1, 1] -> [0, 255]
      images = images[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, tf.float32)  # RGB -> BGR
    return images

  def _outputs(self, images: tf.Tensor) -> list[tf.Tensor]:
    outputs = self.model(self.preprocess(images), training=False)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class FeatureNetwork(_FrozenNetwork):
  """A frozen feature network for the moment-matching loss.

  Attributes:
    name: one of FEATURE_NETWORKS.
    feature_dim: length of the feature vector of one image.
    layer_dims: the flattened size of each tapped layer, in order (they sum to feature_dim).
    layer_names: the tapped layers.
    fingerprint: sha256 hex of name, layers, input shape, preprocessing and all weight bytes.
    model: the keras model from network input to the list of tapped layers.
    info: provenance (weights source, cache file, held-out accuracy for the digits networks).
  """

  def __init__(self, name: str, model: keras.Model, **kwargs: Any):
    super().__init__(name, model, **kwargs)
    self.layer_dims = tuple(int(np.prod(output.shape[1:])) for output in model.outputs)
    self.feature_dim = sum(self.layer_dims)

  def __call__(self, images: tf.Tensor) -> tf.Tensor:
    """float32 [B, H, W, C] in [-1, 1] -> float32 [B, feature_dim]."""
    outputs = self._outputs(images)
    return tf.concat([tf.reshape(output, [-1, dim])  # (B, prod(layer shape))
                      for output, dim in zip(outputs, self.layer_dims)], axis=1)


class EvalNetwork(_FrozenNetwork):
  """A frozen evaluation network: FID-style embedding and class logits.

  Attributes:
    name: one of EVAL_NETWORKS.
    embedding_dim: length of the embedding (2048 for Inception pool3).
    num_classes: number of logits, or None when the network has no classifier.
    fingerprint, model, layer_names, info: as for FeatureNetwork.
  """

  def __init__(self, name: str, model: keras.Model, **kwargs: Any):
    super().__init__(name, model, **kwargs)
    self.embedding_dim = int(np.prod(model.outputs[0].shape[1:]))
    self.num_classes = int(model.outputs[1].shape[-1]) if len(model.outputs) > 1 else None

  def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
    """float32 [B, H, W, C] in [-1, 1] -> (embedding [B, E], logits [B, K] or None)."""
    outputs = self._outputs(images)
    embedding = tf.reshape(outputs[0], [-1, self.embedding_dim])
    return embedding, (outputs[1] if len(outputs) > 1 else None)


def _fingerprint(*, name: str, layer_names: tuple[str, ...], preprocessing: str,
                 input_shape: tuple[int, int, int], model: keras.Model) -> str:
  """sha256 over the description and every weight (dtype, shape, bytes) in model order.

  Weight names are left out on purpose: keras numbers unnamed layers per session, so the same
  weights would otherwise get different fingerprints in different processes.
  """
  digest = hashlib.sha256()
  digest.update(json.dumps({"name": name, "layers": list(layer_names),
                            "preprocessing": preprocessing, "input_shape": list(input_shape)},
                           sort_keys=True).encode("utf-8"))
  for variable in model.weights:
    value = np.ascontiguousarray(variable.numpy())
    digest.update(f"{value.dtype.str}{value.shape}".encode("utf-8"))
    digest.update(value.tobytes())
  return digest.hexdigest()


def _check_arguments(kind: str, name: str, allowed: tuple[str, ...], image_size: int,
                     channels: int) -> None:
  if name not in allowed:
    raise errors.SltError(f"Unknown {kind} network {name!r}; choose one of {', '.join(allowed)}.")
  if channels not in (1, 3):
    raise errors.SltError(f"channels must be 1 or 3; got {channels}.")
  if image_size < 1:
    raise errors.SltError(f"image_size must be a positive number of pixels; got {image_size}.")


def _check_weights_file(path: str, name: str) -> str:
  path = os.path.expanduser(path)
  if not os.path.isfile(path) or not path.endswith((".h5", ".hdf5", ".keras")):
    raise errors.SltError(
        f"weights={path!r} for {name} is not an existing .h5/.hdf5/.keras file; pass "
        f"{_weights_choices(name)}.")
  return path


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def _weights_choices(name: str) -> str:
  if name.startswith("digits"):
    return "'default' (train on digits or load from the cache), None (random) or a weights file"
  if name in classifiers.RECIPES:
    return "'default' (trained by bin/train_classifiers), None (random) or a weights file"
  return "'default' or 'imagenet' (keras download), None (random) or a local weights file"


def _load_weights_file(model: keras.Model, path: str) -> None:
  """Loads a weights file into `model`: keras 3 format, or a legacy keras .h5 file.

  Legacy files are loaded in topological order of the layers with weights, as keras does, but
  a file with MORE layers is accepted when its first layers match: so the full ImageNet file
  (with the classifier head) also serves a model without the head.
  """
  if path.endswith((".keras", ".weights.h5")):
    try:
      model.load_weights(path)
    except ValueError as e:
      raise errors.SltError(f"Weights file {path} does not fit this network: {_one_line(e)}") from e
    return
  with h5py.File(path, "r") as f:
    group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in group.attrs:
      raise errors.SltError(f"{path} is not a keras weights file (no 'layer_names'); pass a "
                            ".h5 file saved by keras or a .keras/.weights.h5 file.")
    saved = []
    for layer_name in group.attrs["layer_names"]:
      layer_name = layer_name.decode("utf-8") if isinstance(layer_name, bytes) else layer_name
      weight_names = [n.decode("utf-8") if isinstance(n, bytes) else n
                      for n in group[layer_name].attrs.get("weight_names", [])]
      if weight_names:
        saved.append((layer_name, [np.asarray(group[layer_name][n]) for n in weight_names]))
  layers = [layer for layer in model.layers if layer.weights]
  if len(saved) < len(layers):
    raise errors.SltError(f"Weights file {path} has {len(saved)} layers with weights; this network "
                          f"needs {len(layers)}.")
  for layer, (saved_name, values) in zip(layers, saved):
    variables = layer.trainable_weights + layer.non_trainable_weights  # keras' legacy order.
    if [tuple(v.shape) for v in variables] != [value.shape for value in values]:
      raise errors.SltError(
          f"Weights file {path}: layer {saved_name} holds shapes {[v.shape for v in values]}, "
          f"layer {layer.name} of this network needs {[tuple(v.shape) for v in variables]}.")
    for variable, value in zip(variables, values):
      variable.assign(value)
  if len(saved) > len(layers):
    logging.info("Loaded %d layers from %s and ignored its last %d (a classifier head).",
                 len(layers), path, len(saved) - len(layers))


def _imagenet_application(name: str, application: Callable[..., keras.Model], *, input_size: int,
                          weights: str | None, seed: int, **kwargs: Any) -> keras.Model:
  """Builds a keras.applications model with ImageNet weights, a weights file, or seeded random."""
  input_shape = (input_size, input_size, 3)
  if weights in ("default", "imagenet"):
    try:
      return application(weights="imagenet", input_shape=input_shape, **kwargs)
    except Exception as e:  # keras.utils.get_file raises a plain Exception when offline.
      raise errors.SltError(
          f"Could not get the ImageNet weights of {name} ({type(e).__name__}: {_one_line(e)}); "
          "offline, pass "
          "weights=<path to the keras applications .h5 file> (or None for random weights).") from e
  if weights is not None:
    weights = _check_weights_file(weights, name)
  with classifiers.python_random_seed(seed):
    model = application(weights=None, input_shape=input_shape, **kwargs)
  if weights is not None:
    _load_weights_file(model, weights)
  return model


def _weights_info(weights: str | None) -> dict[str, Any]:
  if weights is None:
    return {"weights": "random"}
  if weights in ("default", "imagenet"):
    return {"weights": "imagenet"}
  return {"weights": os.path.expanduser(weights)}


def build_feature_network(name: str, *, image_size: int, channels: int,
                          weights: str | None = "default", cache_dir: str | None = None,
                          data_dir: str | None = None, seed: int = 0) -> FeatureNetwork:
  """Builds the frozen feature network `name` for images [B, image_size, image_size, channels].

  Args:
    name: one of FEATURE_NETWORKS.
    image_size: side of the generator's images (the inputs are resized as each network needs).
    channels: channels of the generator's images (1 or 3).
    weights: 'default' ('imagenet' for inception_v3/vgg19; train-or-load-from-cache for
      digits_cnn), 'imagenet', None (random, seeded by `seed`; for tests), or a weights file
      (.h5 from keras, or .keras/.weights.h5).
    cache_dir: where digits_cnn keeps its trained weights (default ~/.cache/slt_tf).
    data_dir: TFDS data directory passed to `data.load_images` when digits_cnn trains.
    seed: initialisation and data-order seed (random weights, digits_cnn training).

  Returns:
    The FeatureNetwork.
  """
  _check_arguments("feature", name, FEATURE_NETWORKS, image_size, channels)
  if name == "inception_v3":
    input_size = max(_INCEPTION_MIN_SIZE, image_size)
    base = _imagenet_application(name, keras.applications.InceptionV3, input_size=input_size,
                                 weights=weights, seed=seed, include_top=False)
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"{layer}_avg_pool")(
        base.get_layer(layer).output) for layer in _INCEPTION_FEATURE_LAYERS]
    model = keras.Model(base.input, pooled, name="inception_v3_features")
    return FeatureNetwork(name, model, input_size=input_size, input_channels=3,
                          preprocessing="inception", layer_names=_INCEPTION_FEATURE_LAYERS,
                          info=_weights_info(weights))
  if name == "vgg19":
    if image_size < _VGG19_MIN_SIZE:
      raise errors.SltError(f"vgg19 needs image_size >= {_VGG19_MIN_SIZE}; got {image_size}.")
    base = _imagenet_application(name, keras.applications.VGG19, input_size=image_size,
                                 weights=weights, seed=seed, include_top=False)
    model = keras.Model(base.input, [base.get_layer(layer).output
                                     for layer in _VGG19_RELU_CONV_LAYERS], name="vgg19_features")
    return FeatureNetwork(name, model, input_size=image_size, input_channels=3,
                          preprocessing="caffe", layer_names=_VGG19_RELU_CONV_LAYERS,
                          info=_weights_info(weights))
  if name in classifiers.RECIPES:
    model, info = _dataset_classifier(name, image_size, weights, cache_dir)
    return FeatureNetwork(name, model, input_size=image_size, input_channels=1,
                          preprocessing="raw", layer_names=classifiers.RECIPES[name].feature_layers, info=info)
  # digits_cnn
  classifier, info = _digits_classifier(
      name, _digits_cnn, tag=_DIGITS_CNN_TAG, epochs=_DIGITS_CNN_EPOCHS, image_size=image_size,
      weights=weights, cache_dir=cache_dir, data_dir=data_dir, seed=seed)
  layer_names = ("conv1", "conv2", "dense1")
  model = keras.Model(classifier.input, [classifier.get_layer(layer).output
                                         for layer in layer_names], name="digits_cnn_features")
  return FeatureNetwork(name, model, input_size=image_size, input_channels=1,
                        preprocessing="digits", layer_names=layer_names, info=info)


def build_eval_network(name: str, *, image_size: int, channels: int,
                       weights: str | None = "default", cache_dir: str | None = None,
                       data_dir: str | None = None) -> EvalNetwork:
  """Builds the frozen evaluation network `name` (embedding and logits) for FID/KID/IS/PRDC.

  Args:
    name: one of EVAL_NETWORKS.
    image_size: side of the images to evaluate (inception_v3 resizes them to 299x299).
    channels: channels of the images (1 or 3).
    weights: as in `build_feature_network`; a legacy inception_v3 .h5 file must hold the
      classifier head (the full ImageNet file, not the "notop" one).
    cache_dir: where digits_eval_cnn keeps its trained weights (default ~/.cache/slt_tf).
    data_dir: TFDS data directory used when digits_eval_cnn trains.

  Returns:
    The EvalNetwork.
  """
  _check_arguments("eval", name, EVAL_NETWORKS, image_size, channels)
  if name == "inception_v3":
    full = _imagenet_application(name, keras.applications.InceptionV3,
                                 input_size=_INCEPTION_EVAL_SIZE, weights=weights, seed=0,
                                 include_top=True, classifier_activation=None)
    layer_names = ("avg_pool", "predictions")
    model = keras.Model(full.input, [full.get_layer(layer).output for layer in layer_names],
                        name="inception_v3_eval")
    return EvalNetwork(name, model, input_size=_INCEPTION_EVAL_SIZE, input_channels=3,
                       preprocessing="inception", layer_names=layer_names,
                       info=_weights_info(weights))
  if name == "fid_inception":  # Local weights file only (or None: random, for tests).
    layer_names = (fid_inception.EMBEDDING_LAYER, fid_inception.LOGITS_LAYER)
    return EvalNetwork(name, fid_inception.build(weights), input_size=fid_inception.INPUT_SIZE,
                       input_channels=3, preprocessing="inception", layer_names=layer_names,
                       info=_weights_info(weights))
  if name in classifiers.RECIPES:
    model, info = _dataset_classifier(name, image_size, weights, cache_dir)
    return EvalNetwork(name, model, input_size=image_size, input_channels=1,
                       preprocessing="raw", layer_names=classifiers.RECIPES[name].feature_layers, info=info)
  # digits_eval_cnn
  classifier, info = _digits_classifier(
      name, _digits_eval_cnn, tag=_DIGITS_EVAL_CNN_TAG, epochs=_DIGITS_EVAL_CNN_EPOCHS,
      image_size=image_size, weights=weights, cache_dir=cache_dir, data_dir=data_dir,
      seed=_DIGITS_EVAL_SEED)
  layer_names = ("embedding", "logits")
  model = keras.Model(classifier.input, [classifier.get_layer(layer).output
                                         for layer in layer_names], name="digits_eval_cnn")
  return EvalNetwork(name, model, input_size=image_size, input_channels=1,
                     preprocessing="digits", layer_names=layer_names, info=info)


def _dataset_classifier(name: str, image_size: int, weights: str | None,
                        cache_dir: str | None) -> tuple[keras.Model, dict[str, Any]]:
  """A `slt_tf.classifiers` network cut at its tapped layers: trained (loaded from the cache,
  never trained here), random (weights None) or from a weights file."""
  if weights == "default":
    classifier, info = classifiers.load(name, image_size, cache_dir)
  elif weights is None:
    classifier, info = classifiers.build(name, image_size), {"weights": "random"}
  elif weights == "imagenet":
    raise errors.SltError(f"{name} has no ImageNet weights; pass {_weights_choices(name)}.")
  else:
    classifier = classifiers.build(name, image_size)
    _load_weights_file(classifier, _check_weights_file(weights, name))
    info = {"weights": weights}
  layers = classifiers.RECIPES[name].feature_layers
  model = keras.Model(classifier.input, [classifier.get_layer(layer).output for layer in layers],
                      name=f"{name}_taps")
  return model, info


def _digits_cnn(image_size: int, seed: int) -> keras.Model:
  """The loss's digits classifier: conv32/2 - conv64/2 - dense128 (ReLU) - dense10."""
  def init(index):
    return keras.initializers.GlorotUniform(seed=seed * 100 + index)

  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=init(1), name="conv1")(inputs)
  x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                          kernel_initializer=init(2), name="conv2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(128, activation="relu", kernel_initializer=init(3), name="dense1")(x)
  logits = keras.layers.Dense(_DIGITS_NUM_CLASSES, kernel_initializer=init(4), name="logits")(x)
  return keras.Model(inputs, logits, name="digits_cnn")


def _digits_eval_cnn(image_size: int, seed: int) -> keras.Model:
  """The evaluation classifier: 3 conv-BN-ReLU (32/2, 64/2, 128/2) - dense256 (ReLU) - dense10.

  Deeper and wider than `_digits_cnn`, with batch norm (momentum 0.9, so that its moving
  statistics converge within the few hundred training steps).
  """
  def init(index):
    return keras.initializers.GlorotUniform(seed=seed * 100 + index)

  inputs = keras.Input([image_size, image_size, 1], name="images")
  x = inputs
  for index, filters in enumerate((32, 64, 128), start=1):
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                            kernel_initializer=init(index), name=f"conv{index}")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
    x = keras.layers.ReLU(name=f"relu{index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(256, activation="relu", kernel_initializer=init(4), name="embedding")(x)
  logits = keras.layers.Dense(_DIGITS_NUM_CLASSES, kernel_initializer=init(5), name="logits")(x)
  return keras.Model(inputs, logits, name="digits_eval_cnn")


def _digits_classifier(name: str, architecture: Callable[[int, int], keras.Model], *, tag: str,
                       epochs: int, image_size: int, weights: str | None, cache_dir: str | None,
                       data_dir: str | None, seed: int) -> tuple[keras.Model, dict[str, Any]]:
  """Returns a digits classifier: random, from a file, or trained on first use and cached."""
  if weights == "imagenet":
    raise errors.SltError(f"{name} has no ImageNet weights; pass {_weights_choices(name)}.")
  classifier = architecture(image_size, seed)
  if weights is None:
    return classifier, {"weights": "random", "seed": seed}
  if weights != "default":
    path = _check_weights_file(weights, name)
    _load_weights_file(classifier, path)
    return classifier, {"weights": path}

  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
  stem = os.path.join(cache_dir, f"{name}-{tag}-e{epochs}-size{image_size}-seed{seed}")
  weights_path, info_path = stem + ".weights.h5", stem + ".json"
  if os.path.exists(weights_path) and os.path.exists(info_path):
    try:
      classifier.load_weights(weights_path)
      with open(info_path) as f:
        info = json.load(f)
      logging.info("Loaded %s from %s (held-out accuracy %.4f).", name, weights_path,
                   info["test_accuracy"])
      return classifier, info
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Cached %s at %s is unreadable (%s: %s); training it again.", name,
                      weights_path, type(e).__name__, e)
      classifier = architecture(image_size, seed)

  if tf.distribute.has_strategy():
    raise errors.SltError(
        f"{name} is not in the cache {cache_dir} and must be trained outside a tf.distribute "
        "strategy scope (its weights would depend on the replicas); build it once outside the "
        "scope, later builds load the cache.")
  info = _train_digits_classifier(classifier, name=name, epochs=epochs, image_size=image_size,
                                  data_dir=data_dir, seed=seed)
  info.update(weights=weights_path, architecture=tag)
  os.makedirs(cache_dir, exist_ok=True)
  tmp_stem = f"{stem}.tmp-{os.getpid()}"
  classifier.save_weights(tmp_stem + ".weights.h5")
  with open(tmp_stem + ".json", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp_stem + ".weights.h5", weights_path)
  os.replace(tmp_stem + ".json", info_path)
  return classifier, info


def _train_digits_classifier(classifier: keras.Model, *, name: str, epochs: int, image_size: int,
                             data_dir: str | None, seed: int) -> dict[str, Any]:
  """Trains on digits/train (seeded order, op determinism), returns the held-out accuracy info."""
  from slt_tf import data  # pylint: disable=g-import-not-at-top  # TFDS only when training.

  start = time.time()
  train = data.load_images("digits", "train", image_size=image_size, batch_size=_DIGITS_BATCH_SIZE,
                           data_dir=data_dir, with_labels=True, shuffle=True, seed=seed)
  test = data.load_images("digits", "test", image_size=image_size, batch_size=256,
                          data_dir=data_dir, with_labels=True)
  classifier.compile(
      optimizer=keras.optimizers.Adam(_DIGITS_LEARNING_RATE),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"], jit_compile=False)
  with classifiers.deterministic_ops():
    history = classifier.fit(train, epochs=epochs, shuffle=False, verbose=0)
  test_accuracy, test_examples = classifiers.accuracy(classifier, test)
  info = {
      "network": name, "image_size": image_size, "seed": seed, "epochs": epochs,
      "train_accuracy": float(history.history["accuracy"][-1]),
      "test_accuracy": test_accuracy, "test_examples": test_examples,
      "training_seconds": round(time.time() - start, 2),
  }
  logging.info("Trained %s on digits/train in %.1f s: held-out (digits/test) accuracy %.4f.",
               name, info["training_seconds"], info["test_accuracy"])
  return info
