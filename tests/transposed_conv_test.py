"""Tests for slt_tf.transposed_conv: the phase form equals TensorFlow's transposed convolution.

TensorFlow's op is itself checked against a NumPy float64 reference in layers_test.py.
"""

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import transposed_conv

# (kernel size, stride, input height, input width): the generators' k4 s2, and other shapes.
SHAPES = [(4, 2, 4, 4), (4, 2, 3, 5), (2, 2, 3, 3), (6, 2, 5, 4), (3, 3, 2, 3), (6, 3, 3, 3),
          (8, 4, 2, 3)]


def _tensors(kernel_size, height, width, dtype=tf.float64, seed=0):
  rng = np.random.default_rng(seed)
  x = tf.constant(rng.standard_normal((3, height, width, 5)), dtype)
  w = tf.constant(rng.standard_normal((kernel_size, kernel_size, 7, 5)), dtype)
  return x, w


def _value_and_gradients(fn, x, w):
  with tf.GradientTape() as tape:
    tape.watch([x, w])
    y = fn(x, w)
    loss = tf.reduce_sum(tf.sin(y))  # a non-linear loss: the upstream gradient is not constant
  return (y, *tape.gradient(loss, [x, w]))


@pytest.mark.parametrize("kernel_size,stride,height,width", SHAPES)
def test_phase_form_equals_tensorflow_value_and_gradients_in_float64(kernel_size, stride, height,
                                                                     width):
  assert transposed_conv.supported(kernel_size, stride, "same")
  x, w = _tensors(kernel_size, height, width)
  want = _value_and_gradients(
      lambda x, w: keras.ops.conv_transpose(x, w, strides=stride, padding="same"), x, w)
  got = _value_and_gradients(lambda x, w: transposed_conv.conv_transpose(x, w, stride), x, w)
  assert got[0].shape == (3, height * stride, width * stride, 7)
  for name, a, b in zip(("output", "d_inputs", "d_kernel"), want, got):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_each_kernel_tap_reaches_each_output_phase_once():
  # Every (input i, tap t) pair lands on output s*i + t - pad exactly once across the phases.
  for kernel_size, stride in [(4, 2), (6, 2), (3, 3), (8, 4)]:
    pad = (kernel_size - stride) // 2
    seen = []
    for phase in range(stride):
      for t, offset in transposed_conv.phase_taps(kernel_size, stride, phase):
        q = 5  # any output row s*q + phase; its input row is q + offset
        assert stride * (q + offset) + t - pad == stride * q + phase
        seen.append(t)
    assert sorted(seen) == list(range(kernel_size))


def test_float32_inside_tf_function_matches_tensorflow():
  x, w = _tensors(4, 4, 4, tf.float32, seed=1)
  got = tf.function(lambda: _value_and_gradients(
      lambda x, w: transposed_conv.conv_transpose(x, w, 2), x, w))()
  want = _value_and_gradients(
      lambda x, w: keras.ops.conv_transpose(x, w, strides=2, padding="same"), x, w)
  for a, b in zip(want, got):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size,stride,padding", [(3, 2, "same"), (4, 2, "valid"),
                                                        (3, 1, "same")])
def test_other_shapes_fall_back_to_tensorflow(kernel_size, stride, padding):
  assert not transposed_conv.supported(kernel_size, stride, padding)
  x, w = _tensors(kernel_size, 4, 4)
  want = keras.ops.conv_transpose(x, w, strides=stride, padding=padding)
  got = transposed_conv.conv_transpose(x, w, stride, padding)
  np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_trainable_variable_kernel_gets_its_gradient():
  # The dense baseline passes its kernel variable itself, not a masked tensor.
  x, w = _tensors(4, 3, 3, tf.float32)
  kernel = tf.Variable(w)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(transposed_conv.conv_transpose(x, kernel, 2) ** 2)
  gradient = tape.gradient(loss, kernel)
  assert gradient is not None and gradient.shape == kernel.shape
  assert float(tf.reduce_max(tf.abs(gradient))) > 0
