"""GFMN moment matching with Adam moving averages (dos Santos et al., ICCV 2019, Sec. 3.2).

Per feature j, with real statistics (mu_r, var_r) and generated-batch statistics (mu_f, var_f):
  v_mu  <- one Adam step on MSE(v_mu, mu_r - mu_f)      (lr 1e-5, betas (0.5, 0.999))
  v_var <- one Adam step on MSE(v_var, var_r - var_f)
  L_G    = v_mu . (mu_r - mu_f) + v_var . (var_r - var_f),  v held constant.
The moving averages smooth the noisy per-batch moment differences.

The batch moments are those of the GLOBAL batch: under tf.distribute each replica holds a
slice of it, so sums are all-reduced (never per-replica variances averaged).
"""

from __future__ import annotations

import keras
import tensorflow as tf


class AdamMovingAverage(keras.layers.Layer):
  """A vector v that takes one Adam step on MSE(v, target) per call (PyTorch Adam, with bias
  correction), as GFMN's `netMean` / `netVar` linear layers do."""

  def __init__(self, dim: int, learning_rate: float = 1e-5, beta_1: float = 0.5,
               beta_2: float = 0.999, epsilon: float = 1e-8, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.learning_rate = learning_rate
    self.beta_1 = beta_1
    self.beta_2 = beta_2
    self.epsilon = epsilon
    state = dict(shape=(dim,), initializer="zeros", trainable=False,
                 aggregation="only_first_replica")
    self.value = self.add_weight(name="value", **state)
    self.first_moment = self.add_weight(name="first_moment", **state)
    self.second_moment = self.add_weight(name="second_moment", **state)
    self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False,
                                 aggregation="only_first_replica")

  def update(self, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Takes the Adam step towards `target`; returns (new value, MSE before the step)."""
    value = tf.convert_to_tensor(self.value)
    error = value - target
    mse = tf.reduce_mean(tf.square(error))
    grad = 2.0 * error / self.dim  # d MSE / d v
    steps = tf.convert_to_tensor(self.steps) + 1.0
    first = self.beta_1 * tf.convert_to_tensor(self.first_moment) + (1.0 - self.beta_1) * grad
    second = (self.beta_2 * tf.convert_to_tensor(self.second_moment)
              + (1.0 - self.beta_2) * tf.square(grad))
    step_size = self.learning_rate / (1.0 - tf.pow(self.beta_1, steps))
    denominator = tf.sqrt(second / (1.0 - tf.pow(self.beta_2, steps))) + self.epsilon
    new_value = value - step_size * first / denominator
    self.first_moment.assign(first)
    self.second_moment.assign(second)
    self.steps.assign(steps)
    self.value.assign(new_value)
    return new_value, mse


def global_batch_moments(features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Per-feature mean and variance (ddof 0) of the global batch, without gradient.

  Args:
    features: float32 [B_local, D], this replica's slice of the batch.

  Returns:
    (mean [D], variance [D], global batch size), identical on every replica. Two passes
    (mean first, then squared deviations), so no catastrophic cancellation.
  """
  context = tf.distribute.get_replica_context()
  features = tf.stop_gradient(features)
  count = tf.cast(tf.shape(features)[0], tf.float32)
  total, count = _all_reduce_sum(context, [tf.reduce_sum(features, axis=0), count])
  mean = total / count
  squared = _all_reduce_sum(context, [tf.reduce_sum(tf.square(features - mean), axis=0)])[0]
  return mean, squared / count, count


def _all_reduce_sum(context, values):
  if context is None or context.num_replicas_in_sync == 1:
    return values
  return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def moment_matching_surrogate(features: tf.Tensor, fake_mean: tf.Tensor, batch_size: tf.Tensor,
                              mean_weights: tf.Tensor, variance_weights: tf.Tensor) -> tf.Tensor:
  """This replica's share of L_G whose gradient, summed over replicas, is dL_G/d(features).

  For sample i of a global batch of n: dL_G/df_i = -(v_mu + 2 v_var * (f_i - mu_f)) / n (the
  mu_f dependence of var_f cancels because sum_i (f_i - mu_f) = 0). Differentiating
  -(1/n) sum_i [v_mu . f_i + v_var . (f_i - stopgrad(mu_f))^2] over the local samples gives
  exactly that, with no gradient through the cross-replica reduction.
  """
  centred = features - tf.stop_gradient(fake_mean)
  per_sample = (tf.linalg.matvec(features, mean_weights)
                + tf.linalg.matvec(tf.square(centred), variance_weights))
  return -tf.reduce_sum(per_sample) / batch_size
