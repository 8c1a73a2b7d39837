"""The ticket search as a keras.Model: `fit()` optimises the scores (or, dense, the kernels).

Each step: z from the global sample indices the dataset yields (so any replica count and any
restart sees the same latents), images = G(z), features = E(images), global-batch moments,
AMA update, and one optimiser step on the generator's trainable variables only: the scores in
a ticket search, the kernels in the dense GFMN baseline. Frozen weights never get a gradient.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from slt_tf import callbacks
from slt_tf import generators
from slt_tf import losses
from slt_tf import masking
from slt_tf import sampling


class _Frozen:
  """Holds the feature network out of Keras/checkpoint tracking (it is never trained)."""

  def __init__(self, network):
    self.network = network

  def __call__(self, images):
    return self.network(images)


class TicketSearch(keras.Model):
  """Moment-matching search of a strong lottery ticket (or dense training) for a generator."""

  def __init__(self, generator: generators.Generator, feature_network, real_mean: np.ndarray,
               real_variance: np.ndarray, *, latent_seed: int, ama_learning_rate: float = 1e-5,
               score_regularizer=None, **kwargs):
    """`score_regularizer`: None, or an object whose `penalty(trainable variables)` is added to
    the generator's loss (Gem-Miner's annealed L2 on the scores, slt_tf/gem_miner.py)."""
    super().__init__(**kwargs)
    self.generator = generator
    self._features = _Frozen(feature_network)
    self.latent_seed = latent_seed
    dim = int(real_mean.shape[0])
    self.real_mean = self.add_weight(name="real_mean", shape=(dim,), trainable=False,
                                     initializer=keras.initializers.Constant(real_mean))
    self.real_variance = self.add_weight(name="real_variance", shape=(dim,), trainable=False,
                                         initializer=keras.initializers.Constant(real_variance))
    self.ama_mean = losses.AdamMovingAverage(dim, learning_rate=ama_learning_rate, name="ama_mean")
    self.ama_variance = losses.AdamMovingAverage(dim, learning_rate=ama_learning_rate,
                                                 name="ama_variance")
    names = ["loss", "mean_loss", "variance_loss", "ama_mean_loss", "ama_variance_loss"]
    if score_regularizer is not None:  # Only then: the other methods' checkpoints are unchanged.
      self.score_regularizer = score_regularizer
      names += ["regularization", "kept_fraction"]
    self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

  def build(self, input_shape=None):
    self.built = True  # Every weight is created in __init__.

  @property
  def metrics(self):
    return list(self.trackers.values())

  def call(self, sample_indices, training=False):
    """Images for int64 global sample indices (the inputs `fit()` feeds)."""
    return self.generator(self.latents(sample_indices), training=training)

  def latents(self, sample_indices: tf.Tensor) -> tf.Tensor:
    return sampling.latents(sample_indices, self.generator.spec.latent_dim, self.latent_seed)

  def train_step(self, data):
    sample_indices = data  # int64 [B_local]: global indices of this replica's samples
    z = self.latents(sample_indices)
    trainable = self.generator.trainable_variables
    with tf.GradientTape() as tape:
      images = self.generator(z, training=True)  # (B_local, S, S, C)
      features = self._features(images)  # (B_local, D)
      fake_mean, fake_variance, batch_size = losses.global_batch_moments(features)
      mean_gap = self.real_mean - fake_mean
      variance_gap = self.real_variance - fake_variance
      mean_weights, ama_mean_loss = self.ama_mean.update(mean_gap)
      variance_weights, ama_variance_loss = self.ama_variance.update(variance_gap)
      surrogate = losses.moment_matching_surrogate(features, fake_mean, batch_size,
                                                   tf.stop_gradient(mean_weights),
                                                   tf.stop_gradient(variance_weights))
      regularizer = getattr(self, "score_regularizer", None)
      if regularizer is not None:
        penalty = regularizer.penalty(trainable)
        # Replicas' gradients are summed: each adds its share, so the penalty counts once.
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        surrogate = surrogate + penalty / replicas
    gradients = tape.gradient(surrogate, trainable)
    self.optimizer.apply_gradients(zip(gradients, trainable))
    loss = (tf.reduce_sum(mean_weights * mean_gap)
            + tf.reduce_sum(variance_weights * variance_gap))
    # The guard of callbacks.StopOnNonFinite: 1.0 when an updated trained variable (or the AMA
    # state) holds NaN/Inf. Checked on the variables after the all-reduced update, so it is exact
    # and the same on every replica, whatever a CPU's kernels do with NaN inside the network
    # (oneDNN's ReLU maps NaN to 0 on some CPUs, so the loss alone can stay finite).
    updated = trainable + [self.ama_mean.value, self.ama_variance.value]
    non_finite = 1.0 - tf.cast(tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(v)) for v in updated]), tf.float32)
    values = {"loss": loss, "mean_loss": tf.reduce_mean(tf.square(mean_gap)),
              "variance_loss": tf.reduce_mean(tf.square(variance_gap)),
              "ama_mean_loss": ama_mean_loss, "ama_variance_loss": ama_variance_loss}
    if regularizer is not None:
      kept = tf.add_n([tf.reduce_sum(tf.cast(v >= masking.GEM_MINER_THRESHOLD, tf.float32))
                       for v in trainable])
      values.update(regularization=penalty,
                    kept_fraction=kept / float(sum(int(np.prod(v.shape)) for v in trainable)))
    for name, value in values.items():
      self.trackers[name].update_state(value)
    logs = {name: tracker.result() for name, tracker in self.trackers.items()}
    logs[callbacks.NON_FINITE] = non_finite
    return logs

