"""Tests for slt_tf.losses against NumPy float64 references, on one device and mirrored."""

import math

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import distribution
from slt_tf import losses


def _numpy_adam_moving_average(targets, learning_rate, beta_1, beta_2, epsilon):
  """PyTorch's Adam (torch.optim.Adam, bias-corrected) on MSE(v, target), float64."""
  dim = targets.shape[1]
  value, first, second = np.zeros(dim), np.zeros(dim), np.zeros(dim)
  history = []
  for step, target in enumerate(targets.astype(np.float64), start=1):
    mse = np.mean((value - target) ** 2)
    grad = 2.0 * (value - target) / dim
    first = beta_1 * first + (1 - beta_1) * grad
    second = beta_2 * second + (1 - beta_2) * grad ** 2
    step_size = learning_rate / (1 - beta_1 ** step)
    denominator = np.sqrt(second) / math.sqrt(1 - beta_2 ** step) + epsilon
    value = value - step_size * first / denominator
    history.append((value.copy(), mse, first.copy(), second.copy()))
  return history


@pytest.mark.parametrize("learning_rate,beta_1,beta_2", [(1e-2, 0.5, 0.999), (0.1, 0.9, 0.99)])
def test_adam_moving_average_equals_numpy_pytorch_adam_over_several_steps(learning_rate, beta_1,
                                                                          beta_2):
  rng = np.random.default_rng(0)
  # Targets that drift, with one tiny coordinate where epsilon matters.
  targets = (rng.standard_normal((8, 5)) * 0.3 + np.linspace(-1, 1, 5)).astype(np.float32)
  targets[:, 2] = 1e-7
  ama = losses.AdamMovingAverage(5, learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2)
  expected = _numpy_adam_moving_average(targets, learning_rate, beta_1, beta_2, 1e-8)
  for step, (target, (value, mse, first, second)) in enumerate(zip(targets, expected), start=1):
    got_value, got_mse = ama.update(tf.constant(target))
    # Steps are ~learning_rate; float32 sums of opposite steps are good to ~1e-5 of one.
    np.testing.assert_allclose(got_value.numpy(), value, rtol=1e-5, atol=1e-5 * learning_rate)
    np.testing.assert_array_equal(ama.value.numpy(), got_value.numpy())
    np.testing.assert_allclose(got_mse.numpy(), mse, rtol=1e-5)
    # Moments inherit that absolute error: compare at 1e-5 of their largest entry.
    np.testing.assert_allclose(ama.first_moment.numpy(), first, rtol=1e-5,
                               atol=1e-5 * np.abs(first).max())
    np.testing.assert_allclose(ama.second_moment.numpy(), second, rtol=1e-5,
                               atol=1e-5 * np.abs(second).max())
    assert ama.steps.numpy() == step
  assert not ama.trainable_weights  # Only the explicit Adam step moves it.


def test_adam_moving_average_update_in_tf_function_matches_eager():
  targets = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
  eager = losses.AdamMovingAverage(3, learning_rate=0.05)
  graph = losses.AdamMovingAverage(3, learning_rate=0.05)
  update = tf.function(graph.update)
  for target in targets:
    eager.update(tf.constant(target))
    update(tf.constant(target))
  np.testing.assert_allclose(graph.value.numpy(), eager.value.numpy(), rtol=1e-6)


def _features(seed=0, batch=8, dim=5):
  """A batch whose halves have very different statistics (so per-replica moments are wrong)."""
  rng = np.random.default_rng(seed)
  first = rng.standard_normal((batch // 2, dim))
  second = 10.0 + 3.0 * rng.standard_normal((batch // 2, dim))
  return np.concatenate([first, second]).astype(np.float32)


def test_global_batch_moments_on_one_device_equal_numpy_mean_and_ddof0_variance():
  features = _features()
  mean, variance, count = losses.global_batch_moments(tf.constant(features))
  reference = features.astype(np.float64)
  np.testing.assert_allclose(mean.numpy(), reference.mean(0), rtol=1e-6)
  np.testing.assert_allclose(variance.numpy(), reference.var(0, ddof=0), rtol=1e-5)
  assert count.numpy() == 8


def test_global_batch_moments_are_accurate_for_a_large_offset():
  # Two passes: no cancellation even when the mean dwarfs the spread.
  features = (1000.0 + np.random.default_rng(2).standard_normal((64, 3))).astype(np.float32)
  _, variance, _ = losses.global_batch_moments(tf.constant(features))
  np.testing.assert_allclose(variance.numpy(), features.astype(np.float64).var(0), rtol=1e-3)


def test_global_batch_moments_carry_no_gradient():
  features = tf.Variable(_features())
  with tf.GradientTape() as tape:
    mean, variance, _ = losses.global_batch_moments(features)
    total = tf.reduce_sum(mean) + tf.reduce_sum(variance)
  assert tape.gradient(total, features) is None


def _per_replica(strategy, halves):
  return strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(halves[context.replica_id_in_sync_group]))


def test_global_batch_moments_under_mirrored_strategy_are_the_global_moments_on_every_replica():
  strategy = distribution.logical_cpu_strategy(2)
  features = _features()
  halves = np.split(features, 2)
  local = _per_replica(strategy, halves)

  @tf.function
  def step(x):
    return strategy.run(losses.global_batch_moments, args=(x,))

  results = step(local)
  reference = features.astype(np.float64)
  per_replica = [strategy.experimental_local_results(r) for r in results]
  for mean, variance, count in zip(*per_replica):
    np.testing.assert_allclose(mean.numpy(), reference.mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), reference.var(0), rtol=1e-5)
    assert count.numpy() == 8
  # The test can tell the difference: averaged per-replica variances are far from global ones.
  averaged = np.mean([h.astype(np.float64).var(0) for h in halves], axis=0)
  assert np.all(reference.var(0) > 2 * averaged)


def _numpy_moment_gradient(features, mean_weights, variance_weights):
  """dL/df_i = -(v_mu + 2 v_var (f_i - mu_f)) / n, L = v_mu.(mu_r-mu_f) + v_var.(var_r-var_f)."""
  f = features.astype(np.float64)
  return -(mean_weights + 2.0 * variance_weights * (f - f.mean(0))) / f.shape[0]


def _autodiff_true_loss_gradient(features, real_mean, real_variance, mean_weights,
                                 variance_weights):
  """Gradient of the true moment loss on the full batch, by autodiff in float64."""
  f = tf.constant(features.astype(np.float64))
  with tf.GradientTape() as tape:
    tape.watch(f)
    fake_mean = tf.reduce_mean(f, axis=0)
    fake_variance = tf.reduce_mean(tf.square(f - fake_mean), axis=0)
    loss = (tf.reduce_sum(mean_weights * (real_mean - fake_mean))
            + tf.reduce_sum(variance_weights * (real_variance - fake_variance)))
  return tape.gradient(loss, f).numpy()


def _loss_inputs(dim=5, seed=3):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(dim), rng.random(dim) + 0.5, rng.standard_normal(dim),
          rng.standard_normal(dim))


def _surrogate_gradient(features, mean_weights, variance_weights):
  features = tf.convert_to_tensor(features)
  with tf.GradientTape() as tape:
    tape.watch(features)
    fake_mean, _, batch_size = losses.global_batch_moments(features)
    surrogate = losses.moment_matching_surrogate(
        features, fake_mean, batch_size, tf.constant(mean_weights, tf.float32),
        tf.constant(variance_weights, tf.float32))
  return tape.gradient(surrogate, features)


def test_surrogate_gradient_equals_autodiff_gradient_of_the_true_moment_loss():
  features = _features()
  real_mean, real_variance, mean_weights, variance_weights = _loss_inputs()
  expected = _autodiff_true_loss_gradient(features, real_mean, real_variance, mean_weights,
                                          variance_weights)
  np.testing.assert_allclose(expected, _numpy_moment_gradient(features, mean_weights,
                                                              variance_weights), rtol=1e-10)
  got = _surrogate_gradient(features, mean_weights, variance_weights).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_surrogate_gradients_under_mirrored_strategy_concatenate_to_the_full_batch_gradient():
  strategy = distribution.logical_cpu_strategy(2)
  features = _features(seed=4)
  real_mean, real_variance, mean_weights, variance_weights = _loss_inputs(seed=5)
  expected = _autodiff_true_loss_gradient(features, real_mean, real_variance, mean_weights,
                                          variance_weights)

  @tf.function
  def step(x):
    return strategy.run(_surrogate_gradient, args=(x, mean_weights, variance_weights))

  gradients = strategy.experimental_local_results(step(_per_replica(strategy,
                                                                    np.split(features, 2))))
  got = np.concatenate([g.numpy() for g in gradients])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
