"""Tests for slt_tf.layers against plain Keras layers and NumPy float64 references."""

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import layers
from slt_tf import masking


# ---------------------------------------------------------------- NumPy float64 references.

def _numpy_top_k_mask(scores: np.ndarray, keep_fraction: float) -> np.ndarray:
  k = masking.num_kept(scores.size, keep_fraction)
  mask = np.zeros(scores.size)
  mask[np.argsort(-np.abs(scores.astype(np.float64)).ravel(), kind="stable")[:k]] = 1.0
  return mask.reshape(scores.shape)


def _same_padding(size: int, kernel_size: int, stride: int, out_size: int) -> int:
  """TensorFlow's SAME: the padding before (top/left) of a conv from `size` to `out_size`."""
  return max((out_size - 1) * stride + kernel_size - size, 0) // 2


def _numpy_conv2d(x, w, stride, padding):
  """y[b,i,j,o] = sum_{a,c,d} xpad[b, i*s+a, j*s+c, d] w[a,c,d,o] (NHWC, TF padding)."""
  batch, size, _, _ = x.shape
  k = w.shape[0]
  if padding == "same":
    out = -(-size // stride)
    before = _same_padding(size, k, stride, out)
    after = max((out - 1) * stride + k - size, 0) - before
  else:
    out, before, after = (size - k) // stride + 1, 0, 0
  xpad = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
  y = np.zeros((batch, out, out, w.shape[3]))
  for i in range(out):
    for j in range(out):
      patch = xpad[:, i * stride:i * stride + k, j * stride:j * stride + k, :]  # (B, k, k, C)
      y[:, i, j, :] = np.einsum("bacd,acdo->bo", patch, w)
  return y


def _numpy_conv2d_transpose(x, w, stride):
  """The adjoint of a SAME conv from n*s to n: y[b, i*s+a-p, j*s+c-p, o] += x[b,i,j,d] w[a,c,o,d]."""
  batch, size, _, _ = x.shape
  k, out = w.shape[0], size * stride
  before = _same_padding(out, k, stride, size)
  y = np.zeros((batch, out, out, w.shape[2]))
  for i in range(size):
    for j in range(size):
      for a in range(k):
        for c in range(k):
          r, q = i * stride + a - before, j * stride + c - before
          if 0 <= r < out and 0 <= q < out:
            y[:, r, q, :] += x[:, i, j, :] @ w[a, c].T  # (B, D) @ (D, O)
  return y


# ---------------------------------------------------------------- Layer factories.

def _scored(kind, keep_fraction=0.3, name=None, **kwargs):
  rule = None if keep_fraction is None else masking.TopK(keep_fraction)
  name = name or f"scored_{kind}"
  if kind == "dense":
    return layers.ScoredDense(6, mask_rule=rule, name=name, **kwargs)
  if kind == "conv":
    return layers.ScoredConv2D(4, 3, mask_rule=rule, name=name, **kwargs)
  if kind == "conv_stride2":
    return layers.ScoredConv2D(4, 3, strides=2, mask_rule=rule, name=name, **kwargs)
  if kind == "conv_transpose":
    return layers.ScoredConv2DTranspose(4, 4, strides=2, mask_rule=rule, name=name, **kwargs)
  raise AssertionError(kind)


def _inputs(kind, batch=2):
  rng = np.random.default_rng(0)
  shape = (batch, 5) if kind == "dense" else (batch, 5, 5, 3)
  return rng.standard_normal(shape).astype(np.float32)


KINDS = ("dense", "conv", "conv_stride2", "conv_transpose")


def _plain_twin(kind):
  if kind == "dense":
    return keras.layers.Dense(6)
  if kind == "conv":
    return keras.layers.Conv2D(4, 3, padding="same")
  if kind == "conv_stride2":
    return keras.layers.Conv2D(4, 3, strides=2, padding="same")
  return keras.layers.Conv2DTranspose(4, 4, strides=2, padding="same")


def _numpy_apply(kind, x, kernel, bias):
  x = x.astype(np.float64)
  if kind == "dense":
    y = x @ kernel
  elif kind == "conv":
    y = _numpy_conv2d(x, kernel, 1, "same")
  elif kind == "conv_stride2":
    y = _numpy_conv2d(x, kernel, 2, "same")
  else:
    y = _numpy_conv2d_transpose(x, kernel, 2)
  return y if bias is None else y + bias


# ---------------------------------------------------------------- Tests.

def test_numpy_conv_references_agree_with_tensorflow_in_float64():
  # Guards the references themselves (independent of the layers under test).
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 5, 3))
  w = rng.standard_normal((3, 3, 3, 4))
  for stride in (1, 2):
    np.testing.assert_allclose(_numpy_conv2d(x, w, stride, "same"),
                               tf.nn.conv2d(x, w, stride, "SAME").numpy(), rtol=1e-12)
  wt = rng.standard_normal((4, 4, 4, 3))
  np.testing.assert_allclose(
      _numpy_conv2d_transpose(x, wt, 2),
      tf.nn.conv2d_transpose(x, wt, (2, 10, 10, 4), 2, "SAME").numpy(), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", [masking.TopK, masking.GlobalTopK])
def test_keep_fraction_one_equals_the_plain_keras_layer_with_the_same_weights(kind, rule):
  x = _inputs(kind)
  layer = _scored(kind, keep_fraction=None, name=f"{kind}_at_one")
  layer = type(layer).from_config({**layer.get_config(), "mask_rule": rule(1.0).get_config()})
  scored_out = layer(x).numpy()
  assert layer.masks()[0].numpy().all()
  plain = _plain_twin(kind)
  plain.build(x.shape)
  plain.set_weights([layer.kernel.numpy(), layer.bias.numpy()])
  # Float32 rounding only: the scored transposed convolution sums in another order
  # (slt_tf/transposed_conv.py); the other kinds run the same ops as Keras.
  np.testing.assert_allclose(scored_out, plain(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_scored_layer_at_keep_0_3_equals_numpy_float64_masked_reference(kind):
  x = _inputs(kind)
  layer = _scored(kind, keep_fraction=0.3)
  out = layer(x).numpy()
  kernel, scores = layer.kernel.numpy().astype(np.float64), layer.kernel_scores.numpy()
  mask = _numpy_top_k_mask(scores, 0.3)
  np.testing.assert_array_equal(layer.masks()[0].numpy(), mask)
  assert mask.sum() == masking.num_kept(scores.size, 0.3)
  expected = _numpy_apply(kind, x, kernel * mask, layer.bias.numpy().astype(np.float64))
  assert out.shape == expected.shape == layer.compute_output_shape(x.shape)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The mask matters: the unmasked output is far from it.
  assert np.abs(_numpy_apply(kind, x, kernel, None) - expected).max() > 0.1


def test_scored_conv_valid_padding_equals_numpy_reference():
  x = _inputs("conv")
  layer = layers.ScoredConv2D(4, 3, padding="valid", mask_rule=masking.TopK(0.5), name="valid")
  out = layer(x).numpy()
  mask = _numpy_top_k_mask(layer.kernel_scores.numpy(), 0.5)
  expected = _numpy_conv2d(x.astype(np.float64), layer.kernel.numpy() * mask, 1, "valid")
  np.testing.assert_allclose(out, expected + layer.bias.numpy(), rtol=1e-5, atol=1e-5)
  assert out.shape == layer.compute_output_shape(x.shape) == (2, 3, 3, 4)


def test_dense_score_gradient_equals_numpy_sign_times_weight_times_input_gradient():
  x = _inputs("dense")
  upstream = np.random.default_rng(2).standard_normal((2, 6))
  layer = _scored("dense", keep_fraction=0.3)
  layer.build(x.shape)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x) * upstream.astype(np.float32))
  gradient = tape.gradient(loss, layer.kernel_scores).numpy()
  # y = x (w * m) + b, straight-through dm/ds = sign(s): dL/ds = sign(s) w (x^T u).
  expected = (np.sign(layer.kernel_scores.numpy()) * layer.kernel.numpy()
              * (x.astype(np.float64).T @ upstream))
  np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask_bias", [False, True])
def test_only_scores_are_trainable_and_an_optimizer_step_leaves_frozen_weights_bit_identical(
    kind, mask_bias):
  x = _inputs(kind)
  layer = _scored(kind, mask_bias=mask_bias)
  layer.build(x.shape)
  expected_trainable = [layer.kernel_scores] + ([layer.bias_scores] if mask_bias else [])
  assert [id(v) for v in layer.trainable_variables] == [id(v) for v in expected_trainable]
  assert not layer.kernel.trainable and not layer.bias.trainable
  frozen = [layer.kernel.numpy().tobytes(), layer.bias.numpy().tobytes()]
  scores = [v.numpy().copy() for v in layer.trainable_variables]
  optimizer = keras.optimizers.Adam(0.1)
  for _ in range(2):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer(x) - 1.0))
    gradients = tape.gradient(loss, layer.trainable_variables)
    assert all(g is not None for g in gradients)
    optimizer.apply_gradients(zip(gradients, layer.trainable_variables))
  assert [layer.kernel.numpy().tobytes(), layer.bias.numpy().tobytes()] == frozen
  for before, variable in zip(scores, layer.trainable_variables):
    assert np.abs(variable.numpy() - before).max() > 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_dense_mode_has_trainable_kernel_and_bias_and_no_scores(kind):
  x = _inputs(kind)
  layer = _scored(kind, keep_fraction=None)
  out = layer(x).numpy()
  assert layer.is_dense and layer.kernel_scores is None and layer.bias_scores is None
  assert [id(v) for v in layer.trainable_variables] == [id(layer.kernel), id(layer.bias)]
  assert not any("scores" in v.path for v in layer.weights)
  np.testing.assert_allclose(out, _numpy_apply(kind, x, layer.kernel.numpy(), layer.bias.numpy()),
                             rtol=1e-5, atol=1e-5)
  before = layer.kernel.numpy().copy()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(x)))
  keras.optimizers.SGD(0.1).apply_gradients(
      zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))
  assert np.abs(layer.kernel.numpy() - before).max() > 0


def test_mask_bias_keeps_exactly_k_biases_and_matches_numpy_reference():
  x = _inputs("dense")
  layer = layers.ScoredDense(10, mask_rule=masking.TopK(0.3), mask_bias=True, name="mb")
  out = layer(x).numpy()
  kernel_mask, bias_mask = (m.numpy() for m in layer.masks())
  assert layer.bias_scores.shape == (10,) and bias_mask.sum() == 3
  np.testing.assert_array_equal(bias_mask, _numpy_top_k_mask(layer.bias_scores.numpy(), 0.3))
  expected = (x.astype(np.float64) @ (layer.kernel.numpy() * kernel_mask)
              + layer.bias.numpy() * bias_mask)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep_fraction,use_bias", [(None, True), (0.3, False)])
def test_mask_bias_is_off_without_a_bias_or_a_mask(keep_fraction, use_bias):
  layer = _scored("dense", keep_fraction=keep_fraction, use_bias=use_bias, mask_bias=True)
  layer.build((2, 5))
  assert not layer.mask_bias and layer.bias_scores is None
  assert (layer.bias is None) == (not use_bias)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", ["edge_popup", "global_edge_popup", "dense"])
def test_get_config_from_config_round_trip_rebuilds_the_same_layer(kind, rule):
  x = _inputs(kind)
  layer = _scored(kind, keep_fraction=None, name=f"round_trip_{kind}", weight_init="kaiming_normal",
                  score_init="uniform_01", seed=11)
  layer = type(layer).from_config(
      {**layer.get_config(), "mask_bias": True, "mask_rule": None if rule == "dense"
       else masking.make_rule(rule, 0.4).get_config()})
  out = layer(x).numpy()
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  np.testing.assert_array_equal(clone(x).numpy(), out)
  assert clone.kernel.numpy().tobytes() == layer.kernel.numpy().tobytes()
  if rule != "dense":
    assert type(clone.mask_rule) is type(layer.mask_rule)
    assert clone.mask_rule.keep_fraction == 0.4
    assert clone.kernel_scores.numpy().tobytes() == layer.kernel_scores.numpy().tobytes()
    assert clone.mask_bias and clone.bias_scores is not None
    assert clone.bias_scores.numpy().tobytes() == layer.bias_scores.numpy().tobytes()


def test_frozen_weights_come_from_seed_and_layer_name():
  a = _scored("dense", name="same", seed=3)
  b = _scored("dense", name="same", seed=3)
  c = _scored("dense", name="other", seed=3)
  for layer in (a, b, c):
    layer.build((2, 5))
  assert a.kernel.numpy().tobytes() == b.kernel.numpy().tobytes()
  assert a.kernel_scores.numpy().tobytes() == b.kernel_scores.numpy().tobytes()
  assert np.mean(a.kernel.numpy() == c.kernel.numpy()) < 0.8


def test_scored_layers_lists_the_scored_layers_of_a_model_in_order():
  inputs = keras.Input((5,))
  h = layers.ScoredDense(4, mask_rule=masking.TopK(0.5), name="first")(inputs)
  h = keras.layers.ReLU()(h)
  outputs = layers.ScoredDense(2, mask_rule=masking.TopK(0.5), name="second")(h)
  model = keras.Model(inputs, outputs)
  assert [l.name for l in layers.scored_layers(model)] == ["first", "second"]


def test_scored_layer_works_inside_tf_function_with_the_same_result():
  x = _inputs("conv")
  layer = _scored("conv")
  eager = layer(x).numpy()
  np.testing.assert_array_equal(tf.function(layer)(tf.constant(x)).numpy(), eager)
