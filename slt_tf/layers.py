"""Scored layers: frozen random weights and trainable scores (edge-popup), on one shared base.

Each layer holds a non-trainable `kernel` (and `bias`) drawn from the run's seed and a
trainable `kernel_scores` (and `bias_scores` when `mask_bias`). The forward pass uses
`kernel * mask_rule(kernel_scores)`. With `mask_rule=None` the layer is the dense GFMN
baseline: the kernel (and bias) are trainable and no mask is applied.

Subclasses only say how their kernel is shaped and which op applies it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from slt_tf import initializers
from slt_tf import masking
from slt_tf import transposed_conv

_RULES = {"edge_popup": masking.TopK, "global_edge_popup": masking.GlobalTopK,
          "gem_miner": masking.Threshold}


class ScoredLayer(keras.layers.Layer):
  """Base: owns the frozen weights, the scores and the masking; subclasses own the op."""

  def __init__(self, *, mask_rule=None, use_bias: bool = True, mask_bias: bool = False,
               weight_init: str = "signed_kaiming_constant", score_init: str = "kaiming_uniform",
               seed: int = 0, scale_fan: bool = False, **kwargs):
    super().__init__(**kwargs)
    if isinstance(mask_rule, dict):
      mask_rule = _RULES[mask_rule["name"]](mask_rule["keep_fraction"])
    self.mask_rule = mask_rule
    self.use_bias = use_bias
    self.mask_bias = mask_bias and use_bias and mask_rule is not None
    self.weight_init = weight_init
    self.score_init = score_init
    self.seed = seed
    self.scale_fan = scale_fan

  # --- what subclasses define -------------------------------------------------------------
  def kernel_shape(self, input_shape) -> tuple[int, ...]:
    raise NotImplementedError

  def fan_in(self, kernel_shape: tuple[int, ...]) -> int:
    raise NotImplementedError

  def output_size(self, kernel_shape: tuple[int, ...]) -> int:
    raise NotImplementedError

  def apply_kernel(self, inputs, kernel):
    raise NotImplementedError

  # --- shared ------------------------------------------------------------------------------
  @property
  def is_dense(self) -> bool:
    """True for the dense baseline (no mask, trainable kernel)."""
    return self.mask_rule is None

  def build(self, input_shape):
    shape = self.kernel_shape(input_shape)
    fan_in = self.fan_in(shape)
    keep = self.mask_rule.keep_fraction if self.mask_rule is not None else 1.0

    def frozen(tensor_shape, tensor_name, kind):
      def init(shape=None, dtype=None):  # pylint: disable=unused-argument
        if kind == "bias":
          return initializers.frozen_bias(tensor_shape, fan_in, seed=self.seed,
                                          layer_name=self.name)
        return initializers.frozen_weight(
            self.weight_init, tensor_shape, fan_in, seed=self.seed, layer_name=self.name,
            tensor_name=tensor_name, keep_fraction=keep, scale_fan=self.scale_fan)
      return init

    def scores(tensor_shape, tensor_name):
      def init(shape=None, dtype=None):  # pylint: disable=unused-argument
        return initializers.score(self.score_init, tensor_shape, fan_in, seed=self.seed,
                                  layer_name=self.name, tensor_name=tensor_name)
      return init

    self.kernel = self.add_weight(name="kernel", shape=shape, initializer=frozen(shape, "kernel", "w"),
                                  trainable=self.is_dense)
    self.bias = None
    if self.use_bias:
      bias_shape = (self.output_size(shape),)
      self.bias = self.add_weight(name="bias", shape=bias_shape,
                                  initializer=frozen(bias_shape, "bias", "bias"),
                                  trainable=self.is_dense)
    self.kernel_scores = None
    self.bias_scores = None
    # A rule may bound its scores (Gem-Miner: [0, 1]); Keras' optimiser applies the constraint
    # after each update. Rules without one (edge-popup) leave the scores free, as before.
    constraint = getattr(self.mask_rule, "score_constraint", None)
    if not self.is_dense:
      self.kernel_scores = self.add_weight(name="kernel_scores", shape=shape,
                                           initializer=scores(shape, "kernel_scores"),
                                           constraint=constraint)
      if hasattr(self.mask_rule, "register"):
        self.mask_rule.register(self.kernel_scores)
      if self.mask_bias:
        self.bias_scores = self.add_weight(name="bias_scores", shape=bias_shape,
                                           initializer=scores(bias_shape, "bias_scores"),
                                           constraint=constraint)
        if hasattr(self.mask_rule, "register"):
          self.mask_rule.register(self.bias_scores)

  def masks(self) -> tuple:
    """The current (kernel mask, bias mask or None) as tensors; all ones in dense mode."""
    if self.is_dense:
      return tf.ones_like(self.kernel), None
    bias_mask = self.mask_rule(self.bias_scores) if self.mask_bias else None
    return self.mask_rule(self.kernel_scores), bias_mask

  def effective_weights(self) -> tuple:
    """(kernel * mask, bias * bias_mask or bias or None): what the forward pass uses."""
    if self.is_dense:
      return self.kernel, self.bias
    kernel_mask, bias_mask = self.masks()
    bias = self.bias
    if bias is not None and bias_mask is not None:
      bias = bias * bias_mask
    return self.kernel * kernel_mask, bias

  def call(self, inputs):
    kernel, bias = self.effective_weights()
    outputs = self.apply_kernel(inputs, kernel)
    if bias is not None:
      outputs = outputs + bias
    return outputs

  def get_config(self) -> dict:
    config = super().get_config()
    config.update(
        mask_rule=None if self.mask_rule is None else self.mask_rule.get_config(),
        use_bias=self.use_bias, mask_bias=self.mask_bias, weight_init=self.weight_init,
        score_init=self.score_init, seed=self.seed, scale_fan=self.scale_fan)
    return config


class ScoredDense(ScoredLayer):
  """Fully connected layer: y = x (W * M) + b."""

  def __init__(self, units: int, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def kernel_shape(self, input_shape):
    return (int(input_shape[-1]), self.units)

  def fan_in(self, kernel_shape):
    return kernel_shape[0]

  def output_size(self, kernel_shape):
    return kernel_shape[1]

  def apply_kernel(self, inputs, kernel):
    return tf.matmul(inputs, kernel)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.units,)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


class _ScoredConvBase(ScoredLayer):
  """Shared arguments of the 2-D convolutions (channels last)."""

  def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "same",
               **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.padding = padding

  def get_config(self):
    return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
            "strides": self.strides, "padding": self.padding}


class ScoredConv2D(_ScoredConvBase):
  """2-D convolution; kernel (kh, kw, in, out)."""

  def kernel_shape(self, input_shape):
    return (self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters)

  def fan_in(self, kernel_shape):
    return kernel_shape[0] * kernel_shape[1] * kernel_shape[2]

  def output_size(self, kernel_shape):
    return kernel_shape[3]

  def apply_kernel(self, inputs, kernel):
    return tf.nn.conv2d(inputs, kernel, strides=self.strides, padding=self.padding.upper())

  def compute_output_shape(self, input_shape):
    size = lambda n: None if n is None else (
        -(-n // self.strides) if self.padding == "same" else (n - self.kernel_size) // self.strides + 1)
    return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters)


class ScoredConv2DTranspose(_ScoredConvBase):
  """2-D transposed convolution; kernel (kh, kw, out, in) as in Keras."""

  def kernel_shape(self, input_shape):
    return (self.kernel_size, self.kernel_size, self.filters, int(input_shape[-1]))

  def fan_in(self, kernel_shape):
    # Inputs feeding one output unit: each output pixel sees about k*k/stride^2 input pixels.
    return max(1, kernel_shape[0] * kernel_shape[1] * kernel_shape[3] // (self.strides ** 2))

  def output_size(self, kernel_shape):
    return kernel_shape[2]

  def apply_kernel(self, inputs, kernel):
    # TensorFlow's result and gradient, faster on CPU (slt_tf/transposed_conv.py).
    return transposed_conv.conv_transpose(inputs, kernel, self.strides, self.padding)

  def compute_output_shape(self, input_shape):
    size = lambda n: None if n is None else (
        n * self.strides if self.padding == "same" else (n - 1) * self.strides + self.kernel_size)
    return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters)


def scored_layers(model: keras.Model) -> list[ScoredLayer]:
  """Every scored layer of a model, in a stable (creation) order."""
  return [layer for layer in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(layer, ScoredLayer)]
