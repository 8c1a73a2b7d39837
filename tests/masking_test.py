"""Tests for slt_tf.masking: exact radix-select top-k, straight-through gradient, rules."""

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import distribution
from slt_tf import masking
from slt_tf.errors import SltError


def _numpy_kth_largest(values: np.ndarray, k: int) -> np.float32:
  return np.sort(values.astype(np.float64))[::-1][k - 1].astype(np.float32)


def _random_magnitudes(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
  """Non-negative float32 vectors that stress the radix select."""
  if kind == "uniform":
    values = rng.random(size)
  elif kind == "many_ties":  # A handful of distinct values, most entries tied.
    values = rng.choice([0.0, 0.25, 0.5, 1.0, 3.0], size)
  elif kind == "mostly_zeros":
    values = np.where(rng.random(size) < 0.8, 0.0, rng.random(size))
  elif kind == "all_equal":
    values = np.full(size, 0.7)
  elif kind == "wide_range":  # Tiny (near FLT_MIN) to huge (near FLT_MAX) magnitudes.
    values = 10.0 ** rng.uniform(-37.5, 38.4, size)
  elif kind == "same_high_bits":  # Differ only in the lowest mantissa bits (third pass).
    values = (np.float32(1.5).view(np.int32) + rng.integers(0, 1 << 9, size)).astype(
        np.int32).view(np.float32)
  else:
    raise AssertionError(kind)
  return np.abs(values).astype(np.float32)


KINDS = ("uniform", "many_ties", "mostly_zeros", "all_equal", "wide_range", "same_high_bits")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 7, 300])
def test_kth_largest_equals_numpy_sort_for_every_k(kind, size):
  rng = np.random.default_rng(size * 31 + KINDS.index(kind))
  values = _random_magnitudes(rng, kind, size)
  ks = sorted(k for k in {1, 2, size // 3 + 1, size // 2 + 1, size - 1, size} if 1 <= k <= size)
  for k in ks:
    got = masking.kth_largest(tf.constant(values), k).numpy()
    assert got == _numpy_kth_largest(values, k), (kind, size, k)


def test_kth_largest_handles_subnormals_zero_and_infinity_exactly():
  values = np.array([1e-45, 3e-42, 1e-39, 0.0, 1e-38, 2.0, 3e38, np.inf, 0.0, 1e-45],
                    np.float32)
  for k in range(1, values.size + 1):
    got = masking.kth_largest(tf.constant(values), k).numpy()
    assert got.view(np.int32) == _numpy_kth_largest(values, k).view(np.int32), k


def test_kth_largest_works_inside_tf_function():
  values = _random_magnitudes(np.random.default_rng(0), "many_ties", 101)
  fn = tf.function(lambda v: masking.kth_largest(v, 17))
  assert fn(tf.constant(values)).numpy() == _numpy_kth_largest(values, 17)


@pytest.mark.parametrize("num_weights,keep_fraction,expected", [
    (1000, 0.1, 100), (10, 0.05, 1), (10, 1e-9, 1), (7, 1.0, 7), (3, 0.5, 2), (9, 0.3, 3)])
def test_num_kept_rounds_and_keeps_between_one_and_n(num_weights, keep_fraction, expected):
  assert masking.num_kept(num_weights, keep_fraction) == expected


def _assert_exact_top_k(scores: np.ndarray, mask: np.ndarray, k: int):
  """Exactly k ones, binary, and every kept |score| >= every dropped |score|."""
  assert mask.shape == scores.shape
  assert set(np.unique(mask)) <= {0.0, 1.0}
  assert int(mask.sum()) == k
  magnitudes = np.abs(scores)
  kept, dropped = magnitudes[mask == 1], magnitudes[mask == 0]
  if kept.size and dropped.size:
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (3, 3, 2, 5), (1, 1, 7, 1)])
@pytest.mark.parametrize("keep_fraction", [0.01, 0.05, 0.1, 0.3, 0.5, 0.77, 0.99, 1.0])
def test_top_k_keeps_exactly_k_largest_magnitudes_per_tensor(shape, keep_fraction):
  rng = np.random.default_rng(int(np.prod(shape)) + int(keep_fraction * 100))
  scores = rng.standard_normal(shape).astype(np.float32)
  mask = masking.TopK(keep_fraction)(tf.constant(scores)).numpy()
  k = masking.num_kept(scores.size, keep_fraction)
  _assert_exact_top_k(scores, mask, k)
  # With distinct magnitudes the mask is unique: compare with the NumPy argsort mask.
  expected = np.zeros(scores.size)
  expected[np.argsort(-np.abs(scores.astype(np.float64)).ravel(), kind="stable")[:k]] = 1
  np.testing.assert_array_equal(mask.ravel(), expected)


@pytest.mark.parametrize("keep_fraction", [0.1, 0.3, 0.5, 0.9])
def test_top_k_breaks_ties_to_exactly_k(keep_fraction):
  rng = np.random.default_rng(3)
  # Signs differ but magnitudes tie: only |s| matters.
  scores = (rng.choice([0.0, 1.0, 2.0], (6, 7)) * rng.choice([-1.0, 1.0], (6, 7))).astype(
      np.float32)
  mask = masking.TopK(keep_fraction)(tf.constant(scores)).numpy()
  _assert_exact_top_k(scores, mask, masking.num_kept(scores.size, keep_fraction))


def test_top_k_of_all_equal_scores_keeps_exactly_k():
  mask = masking.TopK(0.25)(tf.fill([4, 10], -0.5)).numpy()
  assert mask.sum() == 10


def test_top_k_with_huge_and_tiny_scores_keeps_the_huge_ones():
  scores = np.array([1e-30, -3e38, 2e-38, 1e30, -1.0, 0.0, 5e37, -1e-37], np.float32)
  mask = masking.TopK(0.375)(tf.constant(scores)).numpy()
  np.testing.assert_array_equal(mask, [0, 1, 0, 1, 0, 0, 1, 0])


def _variables(rng, shapes):
  return [tf.Variable(rng.standard_normal(shape).astype(np.float32)) for shape in shapes]


SHAPES = [(3, 4), (50,), (2, 2, 3, 5), (1,)]


@pytest.mark.parametrize("keep_fraction", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("inside_shared_step", [False, True])
def test_global_top_k_keeps_exactly_k_over_all_layers(keep_fraction, inside_shared_step):
  rng = np.random.default_rng(int(keep_fraction * 100))
  variables = _variables(rng, SHAPES)
  rule = masking.GlobalTopK(keep_fraction)
  for v in variables:
    rule.register(v)
  if inside_shared_step:
    with rule.shared_step():
      masks = [rule(v).numpy() for v in variables]
  else:
    masks = [rule(v).numpy() for v in variables]
  all_scores = np.concatenate([v.numpy().ravel() for v in variables])
  all_masks = np.concatenate([m.ravel() for m in masks])
  k = masking.num_kept(all_scores.size, keep_fraction)
  _assert_exact_top_k(all_scores, all_masks, k)
  threshold = _numpy_kth_largest(np.abs(all_scores), k)
  for v, m in zip(variables, masks):
    np.testing.assert_array_equal(m, (np.abs(v.numpy()) >= threshold).astype(np.float32))


def test_global_top_k_gives_layers_different_kept_fractions():
  rng = np.random.default_rng(0)
  small = tf.Variable((rng.standard_normal((100,)) * 0.01).astype(np.float32))
  large = tf.Variable((rng.standard_normal((100,)) * 10.0).astype(np.float32))
  rule, per_layer = masking.GlobalTopK(0.5), masking.TopK(0.5)
  rule.register(small)
  rule.register(large)
  assert rule(large).numpy().sum() == 100 and rule(small).numpy().sum() == 0
  assert per_layer(small).numpy().sum() == 50 and per_layer(large).numpy().sum() == 50


def test_global_top_k_breaks_ties_across_layers_to_exactly_k():
  variables = [tf.Variable(tf.fill(shape, 0.5)) for shape in [(3, 3), (7,), (2, 5)]]
  rule = masking.GlobalTopK(0.4)
  for v in variables:
    rule.register(v)
  with rule.shared_step():
    total = sum(rule(v).numpy().sum() for v in variables)
  assert total == masking.num_kept(26, 0.4) == 10


def test_global_top_k_same_masks_inside_and_outside_shared_step_and_in_tf_function():
  variables = _variables(np.random.default_rng(5), SHAPES)
  rule = masking.GlobalTopK(0.3)
  for v in variables:
    rule.register(v)
  outside = [rule(v).numpy() for v in variables]

  @tf.function
  def shared():
    with rule.shared_step():
      return [rule(v) for v in variables]

  for a, b in zip(outside, shared()):
    np.testing.assert_array_equal(a, b.numpy())


def test_global_top_k_rejects_unregistered_scores():
  rule = masking.GlobalTopK(0.5)
  rule.register(tf.Variable(tf.ones([3])))
  with pytest.raises(ValueError, match="register"):
    rule(tf.Variable(tf.ones([3])))


@pytest.mark.parametrize("keep_fraction", [0.1, 0.5, 1.0])
def test_straight_through_gradient_of_top_k_is_sign_times_upstream(keep_fraction):
  rng = np.random.default_rng(1)
  scores = rng.standard_normal((4, 6)).astype(np.float32)
  scores[0, :3] = 0.0  # sign(0) = 0: no gradient through |s| at 0.
  upstream = rng.standard_normal((4, 6))
  variable = tf.Variable(scores)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(masking.TopK(keep_fraction)(variable) * upstream.astype(np.float32))
  gradient = tape.gradient(loss, variable).numpy()
  np.testing.assert_allclose(gradient, np.sign(scores.astype(np.float64)) * upstream,
                             rtol=1e-6, atol=0)


def test_straight_through_gradient_of_global_top_k_is_sign_times_upstream_per_layer():
  rng = np.random.default_rng(2)
  variables = _variables(rng, SHAPES)
  upstreams = [rng.standard_normal(v.shape) for v in variables]
  rule = masking.GlobalTopK(0.2)
  for v in variables:
    rule.register(v)
  with tf.GradientTape() as tape:
    with rule.shared_step():
      loss = tf.add_n([tf.reduce_sum(rule(v) * u.astype(np.float32))
                       for v, u in zip(variables, upstreams)])
  for v, u, g in zip(variables, upstreams, tape.gradient(loss, variables)):
    np.testing.assert_allclose(g.numpy(), np.sign(v.numpy().astype(np.float64)) * u,
                               rtol=1e-6, atol=0)


def test_straight_through_gradient_passes_through_a_masked_product():
  # d/ds sum(w * m(s) * u) = sign(s) * w * u: every score gets a gradient, kept or not.
  rng = np.random.default_rng(4)
  weights, upstream = rng.standard_normal((2, 3, 5))
  variable = tf.Variable(rng.standard_normal((3, 5)).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(weights.astype(np.float32) * masking.TopK(0.2)(variable)
                         * upstream.astype(np.float32))
  np.testing.assert_allclose(tape.gradient(loss, variable).numpy(),
                             np.sign(variable.numpy()) * weights * upstream, rtol=1e-6)


def test_make_rule_returns_the_rule_of_each_method():
  assert isinstance(masking.make_rule("edge_popup", 0.1), masking.TopK)
  assert isinstance(masking.make_rule("global_edge_popup", 0.1), masking.GlobalTopK)
  assert masking.make_rule("dense", 0.1) is None
  assert masking.make_rule("imp", 0.1) is None  # IMP trains kernels; slt_tf/imp.py masks them.
  assert isinstance(masking.make_rule("gem_miner", 0.1), masking.Threshold)
  assert masking.make_rule("edge_popup", 0.3).get_config() == {
      "name": "edge_popup", "keep_fraction": 0.3}


@pytest.mark.parametrize("method", ["gemminer", "EdgePopup", ""])
def test_make_rule_rejects_unknown_methods_naming_the_valid_ones(method):
  with pytest.raises(SltError) as error:
    masking.make_rule(method, 0.1)
  message = str(error.value)
  assert "\n" not in message and repr(method) in message
  for valid in masking.METHODS:
    assert valid in message


@pytest.mark.parametrize("rule", [masking.TopK, masking.GlobalTopK])
@pytest.mark.parametrize("keep_fraction", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_rules_reject_keep_fraction_outside_zero_one(rule, keep_fraction):
  with pytest.raises(SltError, match=r"keep_fraction must be in \(0, 1\]"):
    rule(keep_fraction)


def test_validate_keep_fraction_accepts_one_and_tiny_positive_values():
  masking.validate_keep_fraction(1.0)
  masking.validate_keep_fraction(1e-6)


def test_global_top_k_shared_step_gives_each_mirrored_replica_its_own_gradients():
  # MirroredStrategy traces replicas in threads that interleave at cross-replica syncs: a
  # shared mask cache would hand replica 0 the masks of replica 1 (and no gradient).
  strategy = distribution.logical_cpu_strategy(2)
  rng = np.random.default_rng(6)
  initial = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
  upstreams = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
  with strategy.scope():
    variables = [tf.Variable(value) for value in initial]
  rule = masking.GlobalTopK(0.3)
  for v in variables:
    rule.register(v)

  def replica_step():
    context = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
      with rule.shared_step():
        first = tf.reduce_sum(rule(variables[0]) * upstreams[0])
        first = context.all_reduce(tf.distribute.ReduceOp.SUM, first) / 2.0  # A sync point.
        loss = first + tf.add_n([tf.reduce_sum(rule(v) * u)
                                 for v, u in zip(variables[1:], upstreams[1:])])
    return tape.gradient(loss, variables)

  gradients = tf.function(lambda: strategy.run(replica_step))()
  for value, upstream, gradient in zip(initial, upstreams, gradients):
    for local in strategy.experimental_local_results(gradient):
      np.testing.assert_allclose(local.numpy(), np.sign(value) * upstream, rtol=1e-6)
