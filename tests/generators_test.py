"""Tests for slt_tf.generators: architectures, sizes, plain twins, frozen batch norm."""

import dataclasses

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import generators
from slt_tf import masking
from slt_tf.errors import SltError


def _spec(name="resnet32", **kwargs):
  values = dict(name=name, image_size=8, channels=3, latent_dim=8, filters=(8, 4))
  values.update(kwargs)
  return generators.GeneratorSpec(**values)


def _latents(batch=4, dim=8, seed=0):
  return np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)


def _num_weights(generator) -> int:
  """Kernel and bias entries of every weight layer (scores and BN statistics excluded)."""
  return sum(int(np.prod(v.shape)) for layer in generator.weight_layers()
             for v in (layer.kernel, layer.bias) if v is not None)


@pytest.mark.parametrize("name", generators.GENERATORS)
@pytest.mark.parametrize("method", masking.METHODS)
def test_every_generator_builds_and_outputs_images_in_minus_one_one(name, method):
  image_size, channels = (16, 1) if name == "dcgan" else (8, 3)
  filters = (8, 6, 4) if name == "dcgan" else (8, 4)
  score_init = "unit_uniform" if method == "gem_miner" else "kaiming_uniform"  # [0, 1] scores.
  spec = _spec(name, image_size=image_size, channels=channels, filters=filters, method=method,
               keep_fraction=0.5, score_init=score_init)
  generator = generators.build(spec)
  z = _latents()
  for training in (False, True):
    images = generator(z, training=training).numpy()
    assert images.shape == (4, image_size, image_size, channels)
    assert np.all(np.isfinite(images)) and images.min() >= -1.0 and images.max() <= 1.0
    assert images.std() > 0  # Not a constant image.


def test_default_filters_are_used_when_none_are_given():
  spec = generators.GeneratorSpec("resnet32", 16, 3)
  assert spec.resolved_filters() == (512, 256, 128)
  assert generators.GeneratorSpec("dcgan", 64, 3).resolved_filters() == (256, 128, 64, 32, 16)


def test_resnet32_at_32x32_has_about_3_5_million_weights():
  spec = generators.GeneratorSpec("resnet32", 32, 3)
  generator = generators.build(spec)
  count = _num_weights(generator)
  assert abs(count / 3.5e6 - 1.0) < 0.03, count  # docs/method.md: about 3.5M (3,553,859).
  assert count == _num_weights(generators.build(spec, plain=True))
  scores = sum(int(np.prod(v.shape)) for v in generator.trainable_variables)
  kernels = sum(int(np.prod(layer.kernel.shape)) for layer in generator.weight_layers())
  assert scores == kernels  # One score per kernel weight (mask_bias off).


def test_resnet64_at_64x64_has_about_12_2_million_weights():
  # The plain twin has the same shapes (checked for resnet32 above) and is cheaper to build.
  generator = generators.build(generators.GeneratorSpec("resnet64", 64, 3), plain=True)
  count = _num_weights(generator)
  assert abs(count / 12.2e6 - 1.0) < 0.03, count  # docs/method.md: about 12.2M (12,213,827).
  assert generator(np.zeros((1, 128), np.float32)).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("name,image_size,num_blocks", [
    ("resnet32", 8, 1), ("resnet32", 32, 3), ("sngan64", 16, 2), ("dcgan", 32, 3)])
def test_number_of_upsamplings_follows_image_size(name, image_size, num_blocks):
  spec = _spec(name, image_size=image_size, filters=(4,) * (num_blocks + 1))
  generator = generators.build(spec)
  if name == "dcgan":
    assert len([l for l in generator.weight_layers() if l.name.startswith("up")]) == num_blocks
  else:
    assert len([l for l in generator.weight_layers() if l.name.endswith("_skip_conv")]) == num_blocks


@pytest.mark.parametrize("image_size", [0, 2, 3, 6, 12, 48, -8])
def test_bad_image_size_raises_slt_error(image_size):
  with pytest.raises(SltError, match="image_size must be 4 \\* 2\\^n") as error:
    generators.build(_spec(image_size=image_size, filters=()))
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("filters", [(8,), (8, 4, 2), (1, 2, 3, 4, 5)])
def test_wrong_number_of_filters_raises_slt_error(filters):
  with pytest.raises(SltError, match="needs 2 filter counts") as error:
    generators.build(_spec(filters=filters))
  assert str(list(filters)) in str(error.value)


def test_unknown_generator_raises_slt_error_naming_the_valid_ones():
  with pytest.raises(SltError) as error:
    generators.Generator(_spec("stylegan"))
  for name in generators.GENERATORS:
    assert name in str(error.value)


@pytest.mark.parametrize("name", ["resnet32", "dcgan"])
def test_batch_norm_layers_have_no_gamma_or_beta_and_only_scores_are_trainable(name):
  generator = generators.build(_spec(name))
  batch_norms = generator.batch_norm_layers()
  assert batch_norms
  for layer in batch_norms:
    assert layer.gamma is None and layer.beta is None
    assert not layer.trainable_weights
    assert sorted(v.name for v in layer.weights) == ["moving_mean", "moving_variance"]
  assert generator.trainable_variables
  assert all(v.name == "kernel_scores" for v in generator.trainable_variables)
  assert all(not layer.kernel.trainable for layer in generator.weight_layers())


def test_dense_method_trains_kernels_and_biases_and_has_no_scores():
  generator = generators.build(_spec(method="dense"))
  assert generator.mask_rule is None
  names = {v.name for v in generator.trainable_variables}
  assert names == {"kernel", "bias"}
  assert not any("scores" in v.path for v in generator.weights)


def test_same_spec_builds_bit_identical_weights_and_another_seed_does_not():
  first, second = generators.build(_spec()), generators.build(_spec())
  other = generators.build(_spec(seed=1))
  for a, b, c in zip(first.weights, second.weights, other.weights):
    assert a.path == b.path
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  kernels = lambda g: np.concatenate([l.kernel.numpy().ravel() for l in g.weight_layers()])
  assert np.mean(kernels(first) == kernels(other)) < 0.6
  np.testing.assert_array_equal(first(_latents()).numpy(), second(_latents()).numpy())


def test_per_layer_method_keeps_k_in_each_layer_and_global_keeps_k_overall():
  per_layer = generators.build(_spec(keep_fraction=0.2))
  for layer in per_layer.scored_layers():
    mask = layer.masks()[0].numpy()
    assert mask.sum() == masking.num_kept(mask.size, 0.2)
  global_ = generators.build(_spec(method="global_edge_popup", keep_fraction=0.2))
  masks = [layer.masks()[0].numpy() for layer in global_.scored_layers()]
  total = sum(m.size for m in masks)
  assert sum(m.sum() for m in masks) == masking.num_kept(total, 0.2)
  fractions = [m.mean() for m in masks]
  assert max(fractions) - min(fractions) > 0.01  # One threshold, different fractions per layer.


@pytest.mark.parametrize("name,method,mask_bias,native_size", [
    ("resnet32", "edge_popup", False, 0), ("resnet32", "global_edge_popup", True, 0),
    ("dcgan", "edge_popup", True, 0), ("resnet32", "dense", False, 0),
    ("dcgan", "edge_popup", False, 8), ("dcgan", "edge_popup", False, "stop at 8")])
def test_plain_twin_with_copied_effective_weights_computes_the_same_images(name, method,
                                                                           mask_bias,
                                                                           native_size):
  filters = (8, 6, 4) if name == "dcgan" else (8, 4)
  if native_size == "stop at 8":  # filters up to 8x8: the layers stop at native_size
    native_size, filters = 8, (8, 6)
  spec = _spec(name, method=method, mask_bias=mask_bias, keep_fraction=0.3,
               image_size=16 if name == "dcgan" else 8, filters=filters, native_size=native_size)
  generator = generators.build(spec)
  plain = generators.build(spec, plain=True)
  assert [l.name for l in plain.body.layers] == [l.name for l in generator.body.layers]
  assert [type(l) for l in plain.weight_layers()] != [type(l) for l in generator.weight_layers()]
  assert not plain.scored_layers() and plain.mask_rule is None
  # Move the BN statistics away from their init so copying them matters.
  generator(_latents(16, seed=5), training=True)
  by_name = {l.name: l for l in plain.body.layers}
  for layer in generator.weight_layers():
    kernel, bias = layer.effective_weights()
    twin = by_name[layer.name]
    twin.kernel.assign(kernel)
    if bias is not None:
      twin.bias.assign(bias)
    else:
      assert twin.bias is None
  for layer in generator.batch_norm_layers():
    by_name[layer.name].moving_mean.assign(layer.moving_mean)
    by_name[layer.name].moving_variance.assign(layer.moving_variance)
  z = _latents()
  for training in (False, True):
    np.testing.assert_allclose(plain(z, training=training).numpy(),
                               generator(z, training=training).numpy(), rtol=0, atol=1e-6)


def _bilinear_upsampling_matrix(small: int, large: int) -> np.ndarray:
  """[large, small] float64: 1-D bilinear resize with half-pixel centres, edges clamped."""
  matrix = np.zeros((large, small))
  for i in range(large):
    x = min(max((i + 0.5) * small / large - 0.5, 0.0), small - 1.0)
    left = int(np.floor(x))
    right = min(left + 1, small - 1)
    matrix[i, left] += 1.0 - (x - left)
    matrix[i, right] += x - left
  return matrix


@pytest.mark.parametrize("name,filters", [("dcgan", (8, 6, 4)), ("resnet32", (8, 6, 4)),
                                          ("dcgan", (8, 6)), ("resnet32", (8, 6))])
def test_native_size_images_lie_in_the_span_of_bilinearly_resized_native_images(name, filters):
  # The data pipeline resizes the 8x8 digits to 16x16 bilinearly: real images span a
  # 64-dimensional space. A generator with native_size=8 must make images in that span only,
  # whether its layers reach 16x16 and average (3 filter counts) or stop at 8x8 (2).
  spec = _spec(name, image_size=16, channels=1, filters=filters, native_size=8)
  generator = generators.build(spec)
  assert spec.layer_size() == (8 if len(filters) == 2 else 16)
  assert any(l.name == "native_pool" for l in generator.body.layers) == (len(filters) == 3)
  images = generator(_latents(6)).numpy().astype(np.float64)
  assert images.shape == (6, 16, 16, 1)
  one_d = _bilinear_upsampling_matrix(8, 16)
  basis = np.kron(one_d, one_d)  # [256, 64]: row-major 8x8 -> 16x16.
  flat = images.reshape(6, 256).T
  coefficients, *_ = np.linalg.lstsq(basis, flat, rcond=None)
  assert np.abs(basis @ coefficients - flat).max() < 1e-5
  assert images.std() > 0 and images.min() >= -1.0 and images.max() <= 1.0
  # A generator without native_size makes images outside that span.
  free = generators.build(dataclasses.replace(spec, native_size=0, filters=(8, 6, 4)))(
      _latents(6)).numpy()
  free = free.reshape(6, 256).T.astype(np.float64)
  coefficients, *_ = np.linalg.lstsq(basis, free, rcond=None)
  assert np.abs(basis @ coefficients - free).max() > 0.1 * free.std()


def test_native_size_keeps_the_weights_and_masks_of_the_same_generator():
  spec = _spec("dcgan", image_size=16, channels=1, filters=(8, 6, 4), keep_fraction=0.3)
  plain, native = generators.build(spec), generators.build(
      dataclasses.replace(spec, native_size=8))
  assert [l.name for l in native.weight_layers()] == [l.name for l in plain.weight_layers()]
  for a, b in zip(plain.weight_layers(), native.weight_layers()):
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
    np.testing.assert_array_equal(a.effective_weights()[0].numpy(),
                                  b.effective_weights()[0].numpy())


def test_filters_stop_at_native_size_only_with_one_count_per_layer_up_to_it():
  stop = _spec("dcgan", image_size=32, channels=1, filters=(8, 6), native_size=8)
  assert stop.layer_size() == 8 and generators.build(stop)(_latents(2)).shape == (2, 32, 32, 1)
  assert _spec("dcgan", image_size=16, channels=1, filters=(8, 6, 4)).layer_size() == 16
  with pytest.raises(SltError, match=r"needs 4 filter counts .* or 2 to stop at native_size 8, "
                                     r"got 3"):
    _spec("dcgan", image_size=32, channels=1, filters=(8, 6, 4), native_size=8).resolved_filters()
  with pytest.raises(SltError, match=r"needs 3 filter counts .4x4 start, 2 upsamplings., got 2"):
    _spec("dcgan", image_size=16, channels=1, filters=(8, 6)).resolved_filters()


@pytest.mark.parametrize("native_size", [16, 32, 3, 12, -8])
def test_bad_native_size_raises_slt_error_naming_what_is_allowed(native_size):
  with pytest.raises(SltError, match="native_size must be 0 .off. or a power of two below"):
    generators.build(_spec("dcgan", image_size=16, channels=1, filters=(8, 6, 4),
                           native_size=native_size))


def test_spec_round_trips_through_a_json_compatible_dict():
  spec = _spec("dcgan", filters=(), image_size=16, method="global_edge_popup", seed=9,
               mask_bias=True, scale_fan=True, native_size=8)
  values = spec.to_dict()
  assert values["filters"] == [256, 128, 64] and values["native_size"] == 8
  assert generators.GeneratorSpec.from_dict(values) == generators.GeneratorSpec(
      **{**dataclasses.asdict(spec), "filters": (256, 128, 64)})


def test_generator_config_round_trip_rebuilds_the_same_generator():
  generator = generators.build(_spec(method="global_edge_popup"))
  clone = generators.Generator.from_config(generator.get_config())
  z = _latents()
  np.testing.assert_array_equal(clone(z).numpy(), generator(z).numpy())


def test_generator_runs_in_tf_function_like_eagerly():
  generator = generators.build(_spec(method="global_edge_popup"))
  z = tf.constant(_latents())
  np.testing.assert_allclose(tf.function(lambda x: generator(x))(z).numpy(),
                             generator(z).numpy(), rtol=0, atol=1e-6)


def test_generator_is_a_keras_model_with_named_layers():
  generator = generators.build(_spec())
  assert isinstance(generator, keras.Model)
  names = [l.name for l in generator.weight_layers()]
  assert names == ["dense_in", "block0_conv1", "block0_conv2", "block0_skip_conv", "conv_out"]
