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
- `digits_cnn`, `digits_cnn_deep`, `fashion_cnn`, `fashion_inception`: classifiers of the
  dataset itself (`slt_tf.classifiers`: trained by an explicit step, `classifiers.prepare`,
  only loaded here); features are their tapped layers (ReLU activations), flattened.
- Several networks, `name1+name2`: the features of each, concatenated in that order (GFMN
  matches the features of several extractors at once: more and more varied features).
- Copies, `name#K` (K = 1, 2, ...; only for the networks whose weights come from the run's
  seed, `SEEDED_NETWORKS`): the network built and trained from seed `seed + 1000 K` instead of
  `seed`, e.g. `digits_cnn+digits_cnn#1`: two independently trained digits_cnn.

Evaluation networks (FID / KID / IS / PRDC) return (embedding, logits):

- `inception_v3`: pool3 (2048-d average pool of mixed10) and the 1000 ImageNet logits at 299x299
  (Keras' ImageNet InceptionV3: its FIDs are NOT comparable to published ones).
- `fid_inception`: the 2015 FID Inception graph of published FIDs (TTUR / TF-GAN / pytorch-fid;
  `slt_tf.fid_inception`), pool3 and 1008 logits at 299x299, weights from a local file only.
- `digits_eval_cnn`, `fashion_eval_cnn`: classifiers of the dataset independent of the loss's
  (`slt_tf.classifiers`); embedding = their penultimate layer, logits = their 10-way last layer.

Every network is frozen (no trainable weights, batch norm in inference mode) and carries a
`fingerprint`: sha256 over its name, tapped layers, input shape and all weight bytes, so caches
keyed by it (real feature moments) are never reused for other weights.
"""

import hashlib
import json
import os
from typing import Any, Callable

from absl import logging
import h5py
import keras
import numpy as np
import tensorflow as tf

from slt_tf import classifiers
from slt_tf import errors
from slt_tf import fid_inception
# The names (re-exported: callers use features.validate_name, features.FEATURE_NETWORKS, ...).
from slt_tf.feature_names import COPY_SEPARATOR  # pylint: disable=unused-import
from slt_tf.feature_names import COPY_SEED_STRIDE  # pylint: disable=unused-import
from slt_tf.feature_names import copy_seed
from slt_tf.feature_names import EVAL_NETWORKS
from slt_tf.feature_names import FEATURE_NETWORKS  # pylint: disable=unused-import
from slt_tf.feature_names import network_names
from slt_tf.feature_names import NETWORK_SEPARATOR
from slt_tf.feature_names import SEEDED_NETWORKS  # pylint: disable=unused-import
from slt_tf.feature_names import split_copy
from slt_tf.feature_names import validate_name

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


class CombinedFeatureNetwork:
  """Several frozen feature networks as one: their feature vectors, concatenated in order.

  Has FeatureNetwork's attributes: `name` (the parts' names joined by "+"), `feature_dim`,
  `layer_dims` and `layer_names` (the parts', in order; names prefixed "<part>/"), `info` (per
  part) and `fingerprint` (sha256 over the parts' fingerprints, in order).
  """

  def __init__(self, parts: list[FeatureNetwork]):
    self.parts = list(parts)
    self.name = NETWORK_SEPARATOR.join(part.name for part in self.parts)
    self.layer_dims = tuple(dim for part in self.parts for dim in part.layer_dims)
    self.layer_names = tuple(f"{part.name}/{layer}" for part in self.parts
                             for layer in part.layer_names)
    self.feature_dim = sum(part.feature_dim for part in self.parts)
    self.info = {part.name: part.info for part in self.parts}
    self.fingerprint = hashlib.sha256(
        "|".join(part.fingerprint for part in self.parts).encode("utf-8")).hexdigest()

  def __call__(self, images: tf.Tensor) -> tf.Tensor:
    """float32 [B, H, W, C] in [-1, 1] -> float32 [B, feature_dim]."""
    return tf.concat([part(images) for part in self.parts], axis=1)


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


def _check_arguments(kind: str, name: str, image_size: int, channels: int) -> None:
  validate_name(name, kind=kind)
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
  if name in classifiers.RECIPES:
    return "'default' (trained by bin/train_classifiers), None (random) or a weights file"
  return "'default' or 'imagenet' (keras download), None (random) or a local weights file"


def _load_weights_file(model: keras.Model, path: str) -> None:
  """Loads a weights file into `model` with Keras' own `load_weights` (.keras, .weights.h5, or a
  legacy keras .h5 file), and accepts the one file Keras refuses that we need: a legacy .h5 file
  with MORE layers whose first layers match (`_load_leading_layers`)."""
  try:
    model.load_weights(path)
    return
  except (ValueError, KeyError) as e:
    if path.endswith((".keras", ".weights.h5")):
      raise errors.SltError(f"Weights file {path} does not fit this network: {_one_line(e)}") from e
  _load_leading_layers(model, path)


def _load_leading_layers(model: keras.Model, path: str) -> None:
  """Loads a legacy keras .h5 file holding more layers than `model`, in keras' topological
  order: so the full ImageNet file (with the classifier head) also serves a model without the
  head, which `load_weights` refuses (its layer counts differ)."""
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
                          seed: int = 0) -> FeatureNetwork | CombinedFeatureNetwork:
  """Builds the frozen feature network `name` for images [B, image_size, image_size, channels].

  Args:
    name: one of FEATURE_NETWORKS, or several distinct ones joined by "+" (each built with
      these arguments; a CombinedFeatureNetwork); `name#K` is a copy of a SEEDED_NETWORKS
      network built (and trained by `classifiers.prepare`) from seed `copy_seed(seed, name#K)`.
    image_size: side of the generator's images (the inputs are resized as each network needs).
    channels: channels of the generator's images (1 or 3).
    weights: 'default' ('imagenet' for inception_v3/vgg19; for a dataset classifier the weights
      `classifiers.prepare` trained, loaded from the cache), 'imagenet', None (random, seeded;
      for tests), or a weights file (.h5 from keras, or .keras/.weights.h5).
    cache_dir: where `classifiers.prepare` wrote the classifiers (default ~/.cache/slt_tf).
    seed: the run's seed: random ImageNet-architecture weights, the digits loss networks' weights.

  Returns:
    The FeatureNetwork (a CombinedFeatureNetwork for several names).
  """
  _check_arguments("feature", name, image_size, channels)
  if len(network_names(name)) > 1:
    return CombinedFeatureNetwork([
        build_feature_network(part, image_size=image_size, channels=channels, weights=weights,
                              cache_dir=cache_dir, seed=seed) for part in network_names(name)])
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
  network, copy = split_copy(name)
  if copy and weights not in ("default", None):
    raise errors.SltError(f"{name}: copies (NAME{COPY_SEPARATOR}K) differ only by their seed; "
                          "a weights file would give every copy the same weights, so pass "
                          "weights=default (trained) or none (random).")
  model, info = _dataset_classifier(network, image_size, weights, cache_dir,
                                    copy_seed(seed, name))
  return FeatureNetwork(name, model, input_size=image_size, input_channels=1,
                        preprocessing=_classifier_preprocessing(network),
                        layer_names=classifiers.RECIPES[network].feature_layers, info=info)


def build_eval_network(name: str, *, image_size: int, channels: int,
                       weights: str | None = "default",
                       cache_dir: str | None = None) -> EvalNetwork:
  """Builds the frozen evaluation network `name` (embedding and logits) for FID/KID/IS/PRDC.

  Args:
    name: one of EVAL_NETWORKS.
    image_size: side of the images to evaluate (inception_v3 resizes them to 299x299).
    channels: channels of the images (1 or 3).
    weights: as in `build_feature_network`; a legacy inception_v3 .h5 file must hold the
      classifier head (the full ImageNet file, not the "notop" one).
    cache_dir: where `classifiers.prepare` wrote the classifiers (default ~/.cache/slt_tf).

  Returns:
    The EvalNetwork.
  """
  _check_arguments("eval", name, image_size, channels)
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
  model, info = _dataset_classifier(name, image_size, weights, cache_dir, seed=0)
  return EvalNetwork(name, model, input_size=image_size, input_channels=1,
                     preprocessing=_classifier_preprocessing(name),
                     layer_names=classifiers.RECIPES[name].feature_layers, info=info)


def _classifier_preprocessing(name: str) -> str:
  """None of these models preprocess; the tag only keeps the fingerprints of earlier versions."""
  return "digits" if classifiers.RECIPES[name].dataset == "digits" else "raw"


def _dataset_classifier(name: str, image_size: int, weights: str | None, cache_dir: str | None,
                        seed: int) -> tuple[keras.Model, dict[str, Any]]:
  """A `slt_tf.classifiers` network cut at its tapped layers: trained (loaded from the cache,
  never trained here), random (weights None) or from a weights file."""
  if weights == "default":
    classifier, info = classifiers.load(name, image_size, cache_dir, seed)
  elif weights is None:
    classifier = classifiers.build(name, image_size, seed)
    info = {"weights": "random", "seed": classifiers.recipe_seed(name, seed)}
  elif weights == "imagenet":
    raise errors.SltError(f"{name} has no ImageNet weights; pass {_weights_choices(name)}.")
  else:
    classifier = classifiers.build(name, image_size, seed)
    path = _check_weights_file(weights, name)
    _load_weights_file(classifier, path)
    info = {"weights": path}
  layers = classifiers.RECIPES[name].feature_layers
  model = keras.Model(classifier.input, [classifier.get_layer(layer).output for layer in layers],
                      name=f"{name}_taps")
  return model, info
