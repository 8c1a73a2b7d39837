"""Tests for slt_tf.initializers: bit-reproducible frozen weights and scores, their laws."""

import hashlib
import math

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest

from slt_tf import initializers
from slt_tf.errors import SltError

SHAPE = (3, 3, 16, 8)
# First 16 hex digits of the SHA-256 of kaiming_normal (4, 5), fan_in 4, seed 0, "dense_in".
_GOLDEN_KAIMING_NORMAL_DIGEST = "776ee0a8f153a786"
FAN_IN = 3 * 3 * 16


def _weight(kind="signed_kaiming_constant", shape=SHAPE, fan_in=FAN_IN, seed=7,
            layer_name="block0_conv1", tensor_name="kernel", **kwargs):
  return initializers.frozen_weight(kind, shape, fan_in, seed=seed, layer_name=layer_name,
                                    tensor_name=tensor_name, **kwargs)


@pytest.mark.parametrize("kind", initializers.WEIGHT_INITS)
def test_frozen_weight_is_bit_identical_for_the_same_seed_layer_and_tensor(kind):
  first, second = _weight(kind), _weight(kind)
  assert first.dtype == np.float32 and first.shape == SHAPE
  assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("kind", initializers.WEIGHT_INITS)
@pytest.mark.parametrize("change", [dict(seed=8), dict(layer_name="block0_conv2"),
                                    dict(tensor_name="bias")])
def test_frozen_weight_differs_when_seed_layer_or_tensor_differs(kind, change):
  base, other = _weight(kind), _weight(kind, **change)
  # Signed constants agree on about half the entries by chance; all must not.
  assert np.mean(base == other) < 0.6


def test_frozen_weight_stream_is_stable_across_versions():
  # Tickets store only the seed: if this digest changes, every saved ticket silently breaks.
  values = _weight("kaiming_normal", shape=(4, 5), fan_in=4, seed=0, layer_name="dense_in")
  assert hashlib.sha256(values.tobytes()).hexdigest()[:16] == _GOLDEN_KAIMING_NORMAL_DIGEST


def test_scores_and_bias_are_bit_identical_for_the_same_triple_and_differ_otherwise():
  a = initializers.score("kaiming_uniform", (5, 6), 5, seed=1, layer_name="x")
  b = initializers.score("kaiming_uniform", (5, 6), 5, seed=1, layer_name="x")
  c = initializers.score("kaiming_uniform", (5, 6), 5, seed=1, layer_name="x",
                         tensor_name="bias_scores")
  assert a.tobytes() == b.tobytes() and not np.any(a == c)
  bias = initializers.frozen_bias((50,), 5, seed=1, layer_name="x")
  assert bias.tobytes() == initializers.frozen_bias((50,), 5, seed=1, layer_name="x").tobytes()
  assert not np.any(bias == initializers.frozen_bias((50,), 5, seed=2, layer_name="x"))


@pytest.mark.parametrize("fan_in", [1, 27, 1152])
def test_signed_kaiming_constant_is_plus_or_minus_sqrt_two_over_fan_in_about_half_each(fan_in):
  values = _weight(shape=(100, 100), fan_in=fan_in)
  magnitude = np.float32(math.sqrt(2.0 / fan_in))
  assert set(np.unique(values)) == {-magnitude, magnitude}
  positives = int(np.sum(values > 0))
  assert abs(positives - 5000) < 4.5 * 50  # Binomial(10^4, 1/2): std 50.


def test_signed_kaiming_constant_with_scaled_fan_uses_fan_in_times_keep_fraction():
  values = _weight(shape=(10, 10), fan_in=100, keep_fraction=0.25, scale_fan=True)
  np.testing.assert_array_equal(np.unique(np.abs(values)), [np.float32(math.sqrt(2.0 / 25))])
  unscaled = _weight(shape=(10, 10), fan_in=100, keep_fraction=0.25, scale_fan=False)
  np.testing.assert_array_equal(np.unique(np.abs(unscaled)), [np.float32(math.sqrt(2.0 / 100))])
  np.testing.assert_array_equal(np.sign(values), np.sign(unscaled))


@pytest.mark.parametrize("fan_in,keep_fraction,scale_fan", [
    (27, 1.0, False), (512, 1.0, False), (512, 0.1, True), (512, 0.1, False)])
def test_kaiming_normal_has_std_sqrt_two_over_fan(fan_in, keep_fraction, scale_fan):
  values = _weight("kaiming_normal", shape=(200, 200), fan_in=fan_in,
                   keep_fraction=keep_fraction, scale_fan=scale_fan).astype(np.float64)
  fan = fan_in * keep_fraction if scale_fan else fan_in
  std = math.sqrt(2.0 / fan)
  # 40,000 samples: std of the sample std ~ std / sqrt(2 n) = 0.35%; mean ~ std / 200.
  assert abs(values.std() / std - 1.0) < 0.02
  assert abs(values.mean()) < 4 * std / 200


def test_normal_002_has_std_0_02_and_mean_zero():
  values = _weight("normal_002", shape=(200, 200), fan_in=99999).astype(np.float64)
  assert abs(values.std() / 0.02 - 1.0) < 0.02
  assert abs(values.mean()) < 4 * 0.02 / 200


@pytest.mark.parametrize("kind,fan_in,bound", [
    ("kaiming_uniform", 9, 1 / 3), ("kaiming_uniform", 400, 0.05), ("uniform_01", 9, 0.1),
    ("uniform_01", 400, 0.1)])
def test_score_init_is_uniform_within_its_bounds(kind, fan_in, bound):
  values = initializers.score(kind, (100, 100), fan_in, seed=3, layer_name="conv_out")
  assert values.dtype == np.float32
  assert values.min() >= -bound and values.max() <= bound
  assert values.min() < -0.99 * bound and values.max() > 0.99 * bound
  # U(-b, b): std b / sqrt(3).
  assert abs(values.astype(np.float64).std() / (bound / math.sqrt(3)) - 1.0) < 0.02


def test_frozen_bias_is_uniform_within_one_over_sqrt_fan_in():
  values = initializers.frozen_bias((10000,), 16, seed=0, layer_name="dense_in")
  assert values.min() >= -0.25 and values.max() <= 0.25
  assert values.min() < -0.24 and values.max() > 0.24


def test_unknown_weight_init_raises_naming_the_valid_ones():
  with pytest.raises(SltError) as error:
    _weight("xavier")
  assert "'xavier'" in str(error.value) and "\n" not in str(error.value)
  for name in initializers.WEIGHT_INITS:
    assert name in str(error.value)


def test_unknown_score_init_raises_naming_the_valid_ones():
  with pytest.raises(SltError) as error:
    initializers.score("ones", (2,), 1, seed=0, layer_name="x")
  for name in initializers.SCORE_INITS:
    assert name in str(error.value)
