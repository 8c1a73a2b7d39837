"""Generators built from scored layers (or their plain Keras twins), chosen by name.

Architectures (docs/method.md, "Generators"):
- `resnet32` / `resnet64`: GFMN ResNet generator, 4x4 start, upsampling residual blocks
  (BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, 1x1 conv + up on the skip), BN-ReLU-conv3x3-tanh.
  Filters [512, 256, 128, 64] / [1024, 512, 256, 128, 64].
- `sngan32` / `sngan64`: the same blocks at a constant 256 channels (SNGAN's generator).
- `dcgan`: dense to 4x4, transposed convolutions (k4, s2) with BN-ReLU, tanh.
With `native_size` (any architecture), the last pre-activation is averaged down to
native_size x native_size, then tanh, then resized bilinearly to image_size: the resize the
data pipeline applies to a dataset stored at that size (`digits`: 8x8), so every image lies
in the space the real images span (docs/method.md, "Native resolution"). When `filters` list
the widths only up to native_size (one count fewer per halving), the layers stop there and
make native_size images directly: no averaging, and none of the larger layers' cost.
Batch norm has no learned affine parameters and is synchronised across replicas, so the
batch statistics are those of the global batch.

Every layer has a fixed name, so a ticket generator and its plain twin (`plain=True`, used to
bake masks into a servable model) have the same layer names.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from slt_tf import errors
from slt_tf import layers as scored

DEFAULT_FILTERS = {
    "resnet32": (512, 256, 128, 64),
    "resnet64": (1024, 512, 256, 128, 64),
    "sngan32": (256, 256, 256, 256),
    "sngan64": (256, 256, 256, 256, 256),
    "dcgan": (256, 128, 64, 32, 16),
}
IMAGE_SIZES = {"resnet32": 32, "resnet64": 64, "sngan32": 32, "sngan64": 64}
GENERATORS = tuple(DEFAULT_FILTERS)


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
  """Everything needed to rebuild a generator's architecture and frozen weights."""
  name: str
  image_size: int
  channels: int
  latent_dim: int = 128
  filters: tuple[int, ...] = ()
  method: str = "edge_popup"
  keep_fraction: float = 0.1
  weight_init: str = "signed_kaiming_constant"
  score_init: str = "kaiming_uniform"
  scale_fan: bool = False
  mask_bias: bool = False
  seed: int = 0
  native_size: int = 0  # 0: images made at image_size; else see the module docstring

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "filters": list(self.resolved_filters())}

  @classmethod
  def from_dict(cls, values: dict) -> "GeneratorSpec":
    return cls(**{**values, "filters": tuple(values.get("filters", ()))})

  def resolved_filters(self) -> tuple[int, ...]:
    num_blocks = _num_upsamplings(self.image_size)
    filters = tuple(self.filters) or DEFAULT_FILTERS[self.name][:num_blocks + 1]
    if len(filters) == num_blocks + 1 or self._stops_at_native_size(filters):
      return filters
    native = ""
    if _is_layer_size(self.native_size):
      native = (f", or {_num_upsamplings(self.native_size) + 1} to stop at native_size "
                f"{self.native_size}")
    raise errors.SltError(
        f"generator {self.name} at image_size {self.image_size} needs {num_blocks + 1} filter "
        f"counts (4x4 start, {num_blocks} upsamplings){native}, got {len(filters)}: "
        f"{list(filters)}")

  def _stops_at_native_size(self, filters: tuple[int, ...]) -> bool:
    return (0 < self.native_size < self.image_size and _is_layer_size(self.native_size)
            and len(filters) == _num_upsamplings(self.native_size) + 1)

  def layer_size(self) -> int:
    """The size of the last layer's output: image_size, or native_size when `filters` stop
    there (the layers then make native_size images directly, with no averaging)."""
    return self.native_size if self._stops_at_native_size(self.resolved_filters()) else (
        self.image_size)


def validate_native_size(spec: GeneratorSpec) -> None:
  """SltError unless native_size is 0 or a power of two below image_size."""
  size = spec.native_size
  if size != 0 and (size < 1 or size >= spec.image_size or spec.image_size % size
                    or size & (size - 1)):
    raise errors.SltError(f"generator native_size must be 0 (off) or a power of two below "
                          f"image_size {spec.image_size}, got {size}")


def _is_layer_size(size: int) -> bool:
  """Whether the layers can reach `size`: 4 * 2^n."""
  return size >= 4 and size % 4 == 0 and (size // 4) & (size // 4 - 1) == 0


def _num_upsamplings(image_size: int) -> int:
  blocks = math.log2(image_size / 4) if image_size >= 4 else -1
  if blocks < 0 or blocks != int(blocks):
    raise errors.SltError(f"image_size must be 4 * 2^n (4, 8, 16, 32, 64, ...), got {image_size}")
  return int(blocks)


class _Layers:
  """Makes the generator's weight layers: scored ones, or plain Keras twins (`plain=True`)."""

  def __init__(self, spec: GeneratorSpec, mask_rule, plain: bool):
    self.spec = spec
    self.mask_rule = mask_rule
    self.plain = plain

  def _scored_args(self, use_bias):
    return dict(mask_rule=self.mask_rule, use_bias=use_bias, mask_bias=self.spec.mask_bias,
                weight_init=self.spec.weight_init, score_init=self.spec.score_init,
                seed=self.spec.seed, scale_fan=self.spec.scale_fan)

  def dense(self, units, name, use_bias=True):
    if self.plain:
      return keras.layers.Dense(units, use_bias=use_bias, name=name)
    return scored.ScoredDense(units, name=name, **self._scored_args(use_bias))

  def conv(self, filters, kernel_size, name, use_bias=True):
    if self.plain:
      return keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=use_bias, name=name)
    return scored.ScoredConv2D(filters, kernel_size, name=name, **self._scored_args(use_bias))

  def conv_transpose(self, filters, name, use_bias=True):
    if self.plain:
      return keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same",
                                          use_bias=use_bias, name=name)
    return scored.ScoredConv2DTranspose(filters, 4, strides=2, name=name,
                                        **self._scored_args(use_bias))


def _batch_norm(name):
  return keras.layers.BatchNormalization(center=False, scale=False, synchronized=True,
                                         momentum=0.9, epsilon=1e-5, name=name)


def _resnet_body(z, spec, make):
  filters = spec.resolved_filters()
  x = make.dense(4 * 4 * filters[0], "dense_in")(z)
  x = keras.layers.Reshape((4, 4, filters[0]), name="to_4x4")(x)  # (B, 4, 4, F0)
  for i, (f_in, f_out) in enumerate(zip(filters[:-1], filters[1:])):
    p = f"block{i}"
    h = keras.layers.ReLU(name=f"{p}_relu1")(_batch_norm(f"{p}_bn1")(x))
    h = keras.layers.UpSampling2D(2, name=f"{p}_up")(h)
    h = make.conv(f_out, 3, f"{p}_conv1", use_bias=False)(h)
    h = keras.layers.ReLU(name=f"{p}_relu2")(_batch_norm(f"{p}_bn2")(h))
    h = make.conv(f_out, 3, f"{p}_conv2")(h)
    skip = keras.layers.UpSampling2D(2, name=f"{p}_skip_up")(x)
    skip = make.conv(f_out, 1, f"{p}_skip_conv")(skip)
    x = keras.layers.Add(name=f"{p}_add")([h, skip])  # (B, 2S, 2S, f_out)
  x = keras.layers.ReLU(name="out_relu")(_batch_norm("out_bn")(x))
  return make.conv(spec.channels, 3, "conv_out")(x)


def _dcgan_body(z, spec, make):
  filters = spec.resolved_filters()
  x = make.dense(4 * 4 * filters[0], "dense_in", use_bias=False)(z)
  x = keras.layers.Reshape((4, 4, filters[0]), name="to_4x4")(x)
  x = keras.layers.ReLU(name="in_relu")(_batch_norm("in_bn")(x))
  for i, f_out in enumerate(filters[1:-1]):
    x = make.conv_transpose(f_out, f"up{i}", use_bias=False)(x)
    x = keras.layers.ReLU(name=f"up{i}_relu")(_batch_norm(f"up{i}_bn")(x))
  if len(filters) > 1:
    x = make.conv_transpose(filters[-1], f"up{len(filters) - 2}", use_bias=False)(x)
    x = keras.layers.ReLU(name="out_relu")(_batch_norm("out_bn")(x))
  return make.conv(spec.channels, 3, "conv_out")(x)


def validate_name(name: str) -> None:
  """SltError naming GENERATORS unless `name` is one of them."""
  if name not in GENERATORS:
    raise errors.SltError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")


class Generator(keras.Model):
  """z float32 [B, latent_dim] -> images float32 [B, S, S, C] in [-1, 1]."""

  def __init__(self, spec: GeneratorSpec, *, plain: bool = False, **kwargs):
    super().__init__(name=kwargs.pop("name", "generator"), **kwargs)
    validate_name(spec.name)
    from slt_tf import masking  # pylint: disable=g-import-not-at-top
    self.spec = spec
    self.plain = plain
    self.mask_rule = None if plain else masking.make_rule(spec.method, spec.keep_fraction)
    make = _Layers(spec, self.mask_rule, plain)
    z = keras.Input((spec.latent_dim,), name="z")
    validate_native_size(spec)
    body = _dcgan_body if spec.name == "dcgan" else _resnet_body
    x = body(z, spec, make)
    if spec.native_size and spec.layer_size() != spec.native_size:
      x = keras.layers.AveragePooling2D(spec.image_size // spec.native_size,
                                        name="native_pool")(x)
    images = keras.layers.Activation("tanh", name="tanh")(x)
    if spec.native_size:
      images = keras.layers.Resizing(spec.image_size, spec.image_size, interpolation="bilinear",
                                     name="native_resize")(images)
    self.body = keras.Model(z, images, name="body")

  def call(self, z, training=False):
    shared_step = getattr(self.mask_rule, "shared_step", None)
    if shared_step is None:
      return self.body(z, training=training)
    with shared_step():
      return self.body(z, training=training)

  def scored_layers(self) -> list[scored.ScoredLayer]:
    return scored.scored_layers(self.body)

  def weight_layers(self) -> list[keras.layers.Layer]:
    """Layers with a kernel (scored or plain), in creation order."""
    return [l for l in self.body.layers if hasattr(l, "kernel")]

  def batch_norm_layers(self) -> list[keras.layers.BatchNormalization]:
    return [l for l in self.body.layers if isinstance(l, keras.layers.BatchNormalization)]

  def get_config(self):
    return {"spec": self.spec.to_dict(), "plain": self.plain}

  @classmethod
  def from_config(cls, config):
    return cls(GeneratorSpec.from_dict(config["spec"]), plain=config["plain"])


def build(spec: GeneratorSpec, *, plain: bool = False) -> Generator:
  """Builds (and creates the weights of) a generator."""
  generator = Generator(spec, plain=plain)
  generator(keras.ops.zeros((1, spec.latent_dim)))
  return generator
