"""The 2015 FID Inception network in Keras: the network behind published FIDs.

Published FIDs (TTUR, TF-GAN, pytorch-fid, the paper) embed images with the Inception v3
graph of December 2015 (`pt_inception-2015-12-05` in pytorch-fid), not with Keras' ImageNet
InceptionV3. The two differ in weights and in a few layers; this module builds the 2015
network as pytorch-fid's `FIDInceptionA/C/E_1/E_2` blocks describe it:

- average pools of the Inception blocks exclude the padding from the count
  (`count_include_pad=False`; TF's SAME average pooling does the same);
- the last block (Mixed_7c, `FIDInceptionE_2`) pools its pool branch with a 3x3 MAX pool;
- batch norm has scale and offset (eps 0.001); convolutions have no bias;
- 299x299x3 input in [-1, 1]; outputs pool3 (global average of Mixed_7c, 2048-d) and the
  1008 logits of its `fc` layer.

slt_tf never downloads the weights: pass a local file.
- `.npz`: pytorch-fid's state dict as NumPy arrays under its own keys, e.g. from
      state = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
      numpy.savez("fid_inception.npz", **{k: v.numpy() for k, v in state.items()})
  Keys: "<block>.conv.weight" [out, in, kh, kw]; "<block>.bn.weight" | ".bn.bias" |
  ".bn.running_mean" | ".bn.running_var" [out] (".bn.num_batches_tracked" is ignored);
  "fc.weight" [1008, 2048], "fc.bias" [1008]; `state_dict_shapes()` lists them all.
  `keras_weights_from_state_dict` converts them (conv kernels to [kh, kw, in, out], fc to
  [2048, 1008]).
- `.weights.h5`: this Keras model's own `save_weights` file (e.g. after loading the .npz once).

slt_tf ships no 2015 weights, so its tests check the architecture against pytorch-fid's
(trainable parameter count 23,850,960, the pooling semantics, the conversion on random arrays),
not against reference activations.
"""

from __future__ import annotations

import os
from typing import Mapping

import keras
import numpy as np

from slt_tf import errors

INPUT_SIZE = 299
NUM_LOGITS = 1008
EMBEDDING_LAYER = "pool3"
LOGITS_LAYER = "fc"
_BN_EPSILON = 1e-3


def _name(prefix: str) -> str:
  """Keras layer name of a pytorch-fid module prefix ("Mixed_5b.branch1x1" -> with "_")."""
  return prefix.replace(".", "_")


def _conv_bn(x, prefix: str, filters: int, kernel, strides=1, padding="same"):
  """pytorch-fid's BasicConv2d: conv (no bias) - batch norm (eps 0.001) - ReLU."""
  x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                          name=_name(prefix) + "_conv")(x)
  x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=_name(prefix) + "_bn")(x)
  return keras.layers.ReLU(name=_name(prefix) + "_relu")(x)


def _avg_pool(x, prefix: str):
  """3x3 stride-1 average pool, padding excluded from the count (count_include_pad=False)."""
  return keras.layers.AveragePooling2D(3, strides=1, padding="same",
                                       name=_name(prefix) + "_avgpool")(x)


def _concat(branches, prefix: str):
  return keras.layers.Concatenate(axis=-1, name=_name(prefix))(branches)


def _block_a(x, p: str, pool_features: int):  # FIDInceptionA
  b1 = _conv_bn(x, f"{p}.branch1x1", 64, 1)
  b5 = _conv_bn(_conv_bn(x, f"{p}.branch5x5_1", 48, 1), f"{p}.branch5x5_2", 64, 5)
  b3 = _conv_bn(x, f"{p}.branch3x3dbl_1", 64, 1)
  b3 = _conv_bn(_conv_bn(b3, f"{p}.branch3x3dbl_2", 96, 3), f"{p}.branch3x3dbl_3", 96, 3)
  bp = _conv_bn(_avg_pool(x, p), f"{p}.branch_pool", pool_features, 1)
  return _concat([b1, b5, b3, bp], p)


def _block_b(x, p: str):  # InceptionB (Mixed_6a), as in torchvision
  b3 = _conv_bn(x, f"{p}.branch3x3", 384, 3, strides=2, padding="valid")
  bd = _conv_bn(x, f"{p}.branch3x3dbl_1", 64, 1)
  bd = _conv_bn(bd, f"{p}.branch3x3dbl_2", 96, 3)
  bd = _conv_bn(bd, f"{p}.branch3x3dbl_3", 96, 3, strides=2, padding="valid")
  bp = keras.layers.MaxPooling2D(3, strides=2, name=_name(p) + "_maxpool")(x)
  return _concat([b3, bd, bp], p)


def _block_c(x, p: str, c7: int):  # FIDInceptionC
  b1 = _conv_bn(x, f"{p}.branch1x1", 192, 1)
  b7 = _conv_bn(x, f"{p}.branch7x7_1", c7, 1)
  b7 = _conv_bn(b7, f"{p}.branch7x7_2", c7, (1, 7))
  b7 = _conv_bn(b7, f"{p}.branch7x7_3", 192, (7, 1))
  bd = _conv_bn(x, f"{p}.branch7x7dbl_1", c7, 1)
  bd = _conv_bn(bd, f"{p}.branch7x7dbl_2", c7, (7, 1))
  bd = _conv_bn(bd, f"{p}.branch7x7dbl_3", c7, (1, 7))
  bd = _conv_bn(bd, f"{p}.branch7x7dbl_4", c7, (7, 1))
  bd = _conv_bn(bd, f"{p}.branch7x7dbl_5", 192, (1, 7))
  bp = _conv_bn(_avg_pool(x, p), f"{p}.branch_pool", 192, 1)
  return _concat([b1, b7, bd, bp], p)


def _block_d(x, p: str):  # InceptionD (Mixed_7a), as in torchvision
  b3 = _conv_bn(x, f"{p}.branch3x3_1", 192, 1)
  b3 = _conv_bn(b3, f"{p}.branch3x3_2", 320, 3, strides=2, padding="valid")
  b7 = _conv_bn(x, f"{p}.branch7x7x3_1", 192, 1)
  b7 = _conv_bn(b7, f"{p}.branch7x7x3_2", 192, (1, 7))
  b7 = _conv_bn(b7, f"{p}.branch7x7x3_3", 192, (7, 1))
  b7 = _conv_bn(b7, f"{p}.branch7x7x3_4", 192, 3, strides=2, padding="valid")
  bp = keras.layers.MaxPooling2D(3, strides=2, name=_name(p) + "_maxpool")(x)
  return _concat([b3, b7, bp], p)


def _block_e(x, p: str, max_pool: bool):  # FIDInceptionE_1 (avg pool) / FIDInceptionE_2 (max)
  b1 = _conv_bn(x, f"{p}.branch1x1", 320, 1)
  b3 = _conv_bn(x, f"{p}.branch3x3_1", 384, 1)
  b3 = keras.layers.Concatenate(name=_name(p) + "_branch3x3")([
      _conv_bn(b3, f"{p}.branch3x3_2a", 384, (1, 3)),
      _conv_bn(b3, f"{p}.branch3x3_2b", 384, (3, 1))])
  bd = _conv_bn(x, f"{p}.branch3x3dbl_1", 448, 1)
  bd = _conv_bn(bd, f"{p}.branch3x3dbl_2", 384, 3)
  bd = keras.layers.Concatenate(name=_name(p) + "_branch3x3dbl")([
      _conv_bn(bd, f"{p}.branch3x3dbl_3a", 384, (1, 3)),
      _conv_bn(bd, f"{p}.branch3x3dbl_3b", 384, (3, 1))])
  if max_pool:  # The 2015 graph max-pools here (pytorch-fid: "likely an error", kept as is).
    pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same",
                                       name=_name(p) + "_maxpool")(x)
  else:
    pooled = _avg_pool(x, p)
  bp = _conv_bn(pooled, f"{p}.branch_pool", 192, 1)
  return _concat([b1, b3, bd, bp], p)


def build_model() -> keras.Model:
  """The FID Inception v3 (random weights): images [B, 299, 299, 3] in [-1, 1] ->
  [pool3 [B, 2048], logits [B, 1008]]."""
  inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="images")
  x = _conv_bn(inputs, "Conv2d_1a_3x3", 32, 3, strides=2, padding="valid")
  x = _conv_bn(x, "Conv2d_2a_3x3", 32, 3, padding="valid")
  x = _conv_bn(x, "Conv2d_2b_3x3", 64, 3)
  x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool1")(x)
  x = _conv_bn(x, "Conv2d_3b_1x1", 80, 1, padding="valid")
  x = _conv_bn(x, "Conv2d_4a_3x3", 192, 3, padding="valid")
  x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool2")(x)  # (B, 35, 35, 192)
  for prefix, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
    x = _block_a(x, prefix, pool_features)
  x = _block_b(x, "Mixed_6a")  # (B, 17, 17, 768)
  for prefix, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    x = _block_c(x, prefix, c7)
  x = _block_d(x, "Mixed_7a")  # (B, 8, 8, 1280)
  x = _block_e(x, "Mixed_7b", max_pool=False)
  x = _block_e(x, "Mixed_7c", max_pool=True)  # (B, 8, 8, 2048)
  pool3 = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
  logits = keras.layers.Dense(NUM_LOGITS, name=LOGITS_LAYER)(pool3)
  return keras.Model(inputs, [pool3, logits], name="fid_inception")


_BN_KEYS = ("weight", "bias", "running_mean", "running_var")  # Keras order: gamma, beta, mean, var


def state_dict_shapes(model: keras.Model | None = None) -> dict[str, tuple[int, ...]]:
  """{pytorch-fid state-dict key: shape} the model needs (num_batches_tracked left out)."""
  model = model or build_model()
  shapes = {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kh, kw, c_in, c_out = layer.kernel.shape
      shapes[_torch_prefix(layer.name, "_conv") + ".conv.weight"] = (c_out, c_in, kh, kw)
    elif isinstance(layer, keras.layers.BatchNormalization):
      for key in _BN_KEYS:
        shapes[f"{_torch_prefix(layer.name, '_bn')}.bn.{key}"] = tuple(layer.gamma.shape)
    elif isinstance(layer, keras.layers.Dense):
      shapes["fc.weight"] = tuple(reversed(layer.kernel.shape))
      shapes["fc.bias"] = tuple(layer.bias.shape)
  return shapes


def _torch_prefix(layer_name: str, suffix: str) -> str:
  """Inverse of `_name` for conv/bn layers: "Mixed_5b_branch1x1_conv" -> "Mixed_5b.branch1x1"."""
  stem = layer_name[:-len(suffix)]
  if stem.startswith("Mixed_"):
    return stem[:len("Mixed_5b")] + "." + stem[len("Mixed_5b_"):]
  return stem


def keras_weights_from_state_dict(state: Mapping[str, np.ndarray],
                                  model: keras.Model | None = None) -> dict[str, list[np.ndarray]]:
  """{Keras layer name: its weights in Keras order} from pytorch-fid's state dict (NumPy).

  Raises:
    SltError: a key missing, unknown, or of the wrong shape (one line naming it).
  """
  expected = state_dict_shapes(model)
  given = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
  missing, unknown = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
  if missing or unknown:
    raise errors.SltError(
        f"not a pytorch-fid FID Inception state dict: {len(missing)} keys missing "
        f"({', '.join(missing[:3])}...) and {len(unknown)} unknown ({', '.join(unknown[:3])}); "
        "convert pt_inception-2015-12-05 as slt_tf/fid_inception.py says")
  for key, shape in expected.items():
    if tuple(np.shape(given[key])) != shape:
      raise errors.SltError(f"FID Inception weight {key} has shape {list(np.shape(given[key]))}; "
                            f"it needs {list(shape)}")
  weights = {}
  for key in expected:
    prefix, kind, _ = key.rsplit(".", 2) if key.count(".") >= 2 else (None, "fc", None)
    value = np.asarray(given[key], np.float32)
    if kind == "conv":
      weights[_name(prefix) + "_conv"] = [value.transpose(2, 3, 1, 0)]
    elif kind == "bn" and key.endswith(".bn.weight"):
      weights[_name(prefix) + "_bn"] = [np.asarray(given[f"{prefix}.bn.{k}"], np.float32)
                                        for k in _BN_KEYS]
  weights[LOGITS_LAYER] = [np.asarray(given["fc.weight"], np.float32).T,
                           np.asarray(given["fc.bias"], np.float32)]
  return weights


def load_weights(model: keras.Model, path: str) -> None:
  """Loads a local `.npz` (pytorch-fid state dict) or `.weights.h5` (this model's) file."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path) or not path.endswith((".npz", ".weights.h5")):
    raise errors.SltError(f"eval.weights={path!r} for fid_inception is not an existing .npz "
                          "(pytorch-fid's pt_inception-2015-12-05 state dict as NumPy arrays) "
                          "or .weights.h5 file; see slt_tf/fid_inception.py")
  if path.endswith(".weights.h5"):
    try:
      model.load_weights(path)
    except ValueError as e:
      raise errors.SltError(f"{path} does not fit the FID Inception network: "
                            f"{' '.join(str(e).split())[:300]}") from None
    return
  try:
    with np.load(path, allow_pickle=False) as arrays:
      state = {key: arrays[key] for key in arrays.files}
  except (OSError, ValueError) as e:
    raise errors.SltError(f"cannot read {path} as .npz ({type(e).__name__}: {e})") from None
  for name, values in keras_weights_from_state_dict(state, model).items():
    for variable, value in zip(_variables(model.get_layer(name)), values):
      variable.assign(value)


def _variables(layer: keras.layers.Layer) -> list:
  """A conv, batch-norm or dense layer's variables in `keras_weights_from_state_dict` order."""
  if isinstance(layer, keras.layers.BatchNormalization):
    return [layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance]
  return [layer.kernel] + ([layer.bias] if getattr(layer, "bias", None) is not None else [])


def build(weights: str | None) -> keras.Model:
  """The FID Inception model with weights from a local file (None: random, for tests)."""
  if weights in ("default", "imagenet"):
    raise errors.SltError(
        "fid_inception needs eval.weights=PATH: the 2015 FID Inception weights as a local .npz "
        "(pytorch-fid's pt_inception-2015-12-05 state dict) or .weights.h5 file; slt_tf does not "
        "download them (slt_tf/fid_inception.py says how to convert them)")
  model = build_model()
  if weights is not None:
    load_weights(model, weights)
  return model
