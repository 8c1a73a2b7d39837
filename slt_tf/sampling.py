"""Latent vectors that depend only on integer seeds (reproducible across replicas and runs)."""

import tensorflow as tf


def latents(seeds: tf.Tensor, latent_dim: int, stream: int = 0) -> tf.Tensor:
  """Returns one standard-normal latent vector per seed.

  Each row depends only on (stream, seed), so a batch split over any number of replicas,
  or regenerated after a restart, gets exactly the same vectors.

  Args:
    seeds: int64 [N]; e.g. global sample indices, or user-chosen seeds.
    latent_dim: length of each vector.
    stream: a second integer (the run's seed in training, 0 when serving).

  Returns:
    float32 [N, latent_dim].
  """
  seeds = tf.cast(tf.reshape(seeds, [-1]), tf.int64)
  stream = tf.cast(stream, tf.int64)

  def one(seed):
    return tf.random.stateless_normal([latent_dim], seed=tf.stack([stream, seed]),
                                      dtype=tf.float32)

  return tf.map_fn(one, seeds, fn_output_signature=tf.TensorSpec([latent_dim], tf.float32))
