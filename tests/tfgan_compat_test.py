"""Tests for slt_tf.tfgan_compat: TF-GAN's eval functions load on TF >= 2.16."""

import sys

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import tensorflow as tf

from slt_tf import tfgan_compat

_STUB_NAMES = ("tensorflow_gan", "tensorflow_gan.python", "tensorflow_gan.python.eval")


class TfganCompatTest(tf.test.TestCase):

  def test_frechet_distance_of_identical_activations_is_zero(self):
    activations = np.random.default_rng(0).normal(size=(64, 8))
    distance = tfgan_compat.frechet_classifier_distance_from_activations(
        tf.constant(activations), tf.constant(activations))
    self.assertEqual(distance.dtype, tf.float64)
    self.assertAllClose(distance, 0.0, atol=1e-8)

  def test_frechet_distance_of_shifted_activations_is_squared_shift(self):
    activations = np.random.default_rng(1).normal(size=(64, 4))
    distance = tfgan_compat.frechet_classifier_distance_from_activations(
        tf.constant(activations), tf.constant(activations + [1.0, 2.0, 0.0, 0.0]))
    self.assertAllClose(distance, 5.0, rtol=1e-6)

  def test_kernel_distance_returns_mean_and_standard_error(self):
    rng = np.random.default_rng(2)
    mean, std = tfgan_compat.kernel_classifier_distance_and_std_from_activations(
        tf.constant(rng.normal(size=(40, 6))), tf.constant(rng.normal(size=(40, 6)) + 1.0),
        max_block_size=10)
    self.assertGreater(mean, 0.0)
    self.assertGreater(std, 0.0)

  def test_classifier_score_of_constant_logits_is_one(self):
    score = tfgan_compat.classifier_score_from_logits(tf.zeros([16, 10], tf.float64))
    self.assertAllClose(score, 1.0)

  def test_image_grid_places_images_row_by_row(self):
    images = tf.reshape(tf.range(6, dtype=tf.float32), [6, 1, 1, 1]) * tf.ones([6, 2, 3, 1])
    grid = tfgan_compat.image_grid(images, (2, 3), image_shape=(2, 3), num_channels=1)
    self.assertEqual(grid.shape, (1, 4, 9, 1))
    self.assertAllEqual(grid[0, ::2, ::3, 0], [[0, 1, 2], [3, 4, 5]])

  def test_loading_twice_returns_the_same_modules(self):
    self.assertIs(tfgan_compat._eval_modules()[0], tfgan_compat._eval_modules()[0])
    self.assertEqual(tfgan_compat._eval_modules()[0].__name__,
                     "tensorflow_gan.python.eval.classifier_metrics")

  def test_loading_leaves_no_empty_packages_in_sys_modules(self):
    tfgan_compat._eval_modules()
    for name in _STUB_NAMES:
      module = sys.modules.get(name)
      self.assertTrue(module is None or hasattr(module, "__file__"), name)

  def test_later_real_import_behaves_as_without_this_module(self):
    tfgan_compat._eval_modules()
    try:
      import tensorflow_gan  # pylint: disable=g-import-not-at-top
    except AttributeError as error:  # TF >= 2.16, tensorflow/gan#55.
      self.assertIn("estimator", str(error))
    else:  # An older TF: the real package, not an empty stand-in.
      self.assertTrue(hasattr(tensorflow_gan, "eval"))
    # The functions still work after the failed import.
    self.assertAllClose(
        tfgan_compat.classifier_score_from_logits(tf.zeros([4, 3], tf.float64)), 1.0)


if __name__ == "__main__":
  tf.test.main()
