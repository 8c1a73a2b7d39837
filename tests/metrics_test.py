"""Tests of slt_tf.metrics against independent NumPy/SciPy float64 references."""

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from absl.testing import parameterized
import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import tensorflow as tf

from slt_tf import metrics
from slt_tf.errors import SltError


# ---------------------------------------------------------------- NumPy / SciPy references.

def _numpy_fid(real, fake):
  mean_real, mean_fake = real.mean(axis=0), fake.mean(axis=0)
  cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
  sqrt_product = scipy.linalg.sqrtm(cov_real @ cov_fake).real
  return (np.sum((mean_real - mean_fake)**2) +
          np.trace(cov_real + cov_fake - 2.0 * sqrt_product))


def _numpy_unbiased_mmd2(real, fake):
  """Unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, eq. 2)."""
  dim = real.shape[1]
  kernel = lambda a, b: (a @ b.T / dim + 1.0)**3
  m, n = len(real), len(fake)
  k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
  return ((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) +
          (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1)) - 2.0 * k_rf.mean())


def _numpy_block_kid(real, fake, max_block_size):
  """TF-GAN's blocking: ceil(max(N) / max_block_size) blocks, larger blocks last."""
  num_blocks = int(np.ceil(max(len(real), len(fake)) / max_block_size))

  def bounds(count):
    sizes = [count // num_blocks] * num_blocks
    for i in range(count - num_blocks * (count // num_blocks)):
      sizes[num_blocks - 1 - i] += 1
    return np.concatenate([[0], np.cumsum(sizes)])

  real_bounds, fake_bounds = bounds(len(real)), bounds(len(fake))
  estimates = np.array([
      _numpy_unbiased_mmd2(real[real_bounds[i]:real_bounds[i + 1]],
                           fake[fake_bounds[i]:fake_bounds[i + 1]])
      for i in range(num_blocks)])
  std = (np.sqrt(estimates.var(ddof=1) / num_blocks) if num_blocks > 1 else np.nan)
  return estimates.mean(), std


def _numpy_inception_score(logits, num_splits):
  scores = []
  for part in np.array_split(logits.astype(np.float64), num_splits):
    p_y_given_x = scipy.special.softmax(part, axis=1)
    p_y = p_y_given_x.mean(axis=0)
    kl = np.sum(p_y_given_x * (np.log(p_y_given_x) - np.log(p_y)), axis=1)
    scores.append(np.exp(kl.mean()))
  return np.mean(scores)


def _numpy_prdc(real, fake, k):
  """Naeem et al. (2020) as in their reference code, with full distance matrices."""
  real_radii = np.sort(scipy.spatial.distance.cdist(real, real), axis=1)[:, k]
  fake_radii = np.sort(scipy.spatial.distance.cdist(fake, fake), axis=1)[:, k]
  real_fake = scipy.spatial.distance.cdist(real, fake)   # (N_r, N_f)
  return {
      "precision": (real_fake < real_radii[:, None]).any(axis=0).mean(),
      "recall": (real_fake < fake_radii[None, :]).any(axis=1).mean(),
      "density": (real_fake < real_radii[:, None]).sum(axis=0).mean() / k,
      "coverage": (real_fake.min(axis=1) < real_radii).mean(),
  }



# ---------------------------------------------------------------- Tests.

class FidTest(tf.test.TestCase):

  def test_fid_matches_scipy_sqrtm_reference(self):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 12))
    fake = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    self.assertAllClose(metrics.fid(real, fake), _numpy_fid(real, fake), rtol=1e-5)

  def test_fid_of_float32_activations_is_computed_in_float64(self):
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 8)).astype(np.float32)
    fake = (rng.normal(size=(200, 8)) + 0.1).astype(np.float32)
    self.assertAllClose(metrics.fid(real, fake),
                        _numpy_fid(real.astype(np.float64), fake.astype(np.float64)),
                        rtol=1e-6)

  def test_fid_of_a_set_with_itself_is_zero(self):
    activations = np.random.default_rng(2).normal(size=(100, 6))
    self.assertAllClose(metrics.fid(activations, activations), 0.0, atol=1e-8)

  def test_fid_rejects_different_dimensions(self):
    with self.assertRaisesRegex(SltError, "same dimension"):
      metrics.fid(np.zeros((10, 3)), np.zeros((10, 4)))

  def test_fid_rejects_non_finite_activations(self):
    with self.assertRaisesRegex(SltError, "nan or inf"):
      metrics.fid(np.full((10, 3), np.nan), np.zeros((10, 3)))


class KidTest(tf.test.TestCase, parameterized.TestCase):

  def test_kid_with_one_block_matches_numpy_unbiased_mmd(self):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(120, 10)), rng.normal(size=(90, 10)) * 1.2 + 0.2
    mean, std = metrics.kid(real, fake)
    self.assertAllClose(mean, _numpy_unbiased_mmd2(real, fake), rtol=1e-10)
    self.assertTrue(np.isnan(std))

  @parameterized.parameters((100, 100, 25), (103, 97, 30), (60, 81, 40))
  def test_kid_with_blocks_matches_numpy_block_estimator(self, num_real, num_fake, block):
    rng = np.random.default_rng(num_real + num_fake)
    real, fake = rng.normal(size=(num_real, 7)), rng.normal(size=(num_fake, 7)) + 0.3
    mean, std = metrics.kid(real, fake, max_block_size=block)
    expected_mean, expected_std = _numpy_block_kid(real, fake, block)
    self.assertAllClose(mean, expected_mean, rtol=1e-10)
    self.assertAllClose(std, expected_std, rtol=1e-8)

  def test_kid_of_shifted_sets_is_larger_than_of_same_distribution(self):
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 5))
    same, _ = metrics.kid(real, rng.normal(size=(200, 5)))
    shifted, _ = metrics.kid(real, rng.normal(size=(200, 5)) + 1.0)
    self.assertLess(abs(same), 0.05)
    self.assertGreater(shifted, 10 * abs(same))

  def test_kid_rejects_blocks_of_one_sample(self):
    with self.assertRaisesRegex(SltError, "2 samples per block"):
      metrics.kid(np.ones((3, 2)), np.ones((100, 2)), max_block_size=10)


class InceptionScoreTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 3, 10)
  def test_inception_score_matches_numpy_mean_over_splits(self, num_splits):
    logits = np.random.default_rng(5).normal(size=(53, 7)) * 3.0
    self.assertAllClose(metrics.inception_score(logits, num_splits),
                        _numpy_inception_score(logits, num_splits), rtol=1e-10)

  def test_inception_score_of_identical_predictions_is_one(self):
    logits = np.tile(np.random.default_rng(6).normal(size=(1, 5)), (40, 1))
    self.assertAllClose(metrics.inception_score(logits, 4), 1.0)

  def test_inception_score_of_confident_balanced_predictions_is_num_classes(self):
    logits = np.tile(np.eye(4) * 60.0, (10, 1))  # Each split holds every class equally.
    self.assertAllClose(metrics.inception_score(logits, 10), 4.0, rtol=1e-6)

  def test_inception_score_rejects_more_splits_than_samples(self):
    with self.assertRaisesRegex(SltError, "num_splits"):
      metrics.inception_score(np.zeros((5, 3)), num_splits=6)


class PrdcTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters((1,), (3,), (5,))
  def test_prdc_matches_cdist_reference(self, nearest_k):
    rng = np.random.default_rng(7 + nearest_k)
    real = rng.normal(size=(80, 6))
    fake = rng.normal(size=(70, 6)) * 1.3 + 0.4
    result = metrics.prdc(real, fake, nearest_k)
    expected = _numpy_prdc(real, fake, nearest_k)
    self.assertAllClose(result, expected, rtol=1e-12, atol=0.0)
    self.assertTrue(all(0.0 < value < 1.0 for value in expected.values()))

  def test_prdc_of_float32_features_matches_float64_reference(self):
    rng = np.random.default_rng(8)
    real = np.abs(rng.normal(size=(60, 32))).astype(np.float32) + 5.0  # Large norms.
    fake = np.abs(rng.normal(size=(50, 32))).astype(np.float32) + 5.1
    self.assertAllClose(metrics.prdc(real, fake),
                        _numpy_prdc(real.astype(np.float64), fake.astype(np.float64), 5))

  def test_prdc_of_identical_sets_is_one(self):
    features = np.random.default_rng(9).normal(size=(50, 4))
    result = metrics.prdc(features, features.copy(), nearest_k=5)
    self.assertEqual(result["precision"], 1.0)
    self.assertEqual(result["recall"], 1.0)
    self.assertEqual(result["coverage"], 1.0)
    self.assertAllClose(result["density"], 1.0)

  def test_prdc_of_far_apart_sets_is_zero(self):
    features = np.random.default_rng(10).normal(size=(30, 3))
    result = metrics.prdc(features, features + 100.0)
    self.assertAllEqual(list(result.values()), [0.0, 0.0, 0.0, 0.0])

  @parameterized.parameters(1, 7, 64)
  def test_prdc_in_row_blocks_equals_one_block(self, block_rows):
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(64, 5)), rng.normal(size=(41, 5)) + 0.2
    self.assertEqual(metrics.prdc(real, fake, 3, block_rows=block_rows),
                     metrics.prdc(real, fake, 3, block_rows=1000))

  def test_prdc_rejects_nearest_k_not_below_sample_count(self):
    with self.assertRaisesRegex(SltError, "num_samples >= 6"):
      metrics.prdc(np.zeros((5, 2)), np.zeros((10, 2)), nearest_k=5)




class ComputeMetricsTest(tf.test.TestCase):

  def test_compute_metrics_collects_every_metric_matching_the_numpy_references(self):
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.5
    real_logits, fake_logits = rng.normal(size=(60, 3)), rng.normal(size=(50, 3))
    result = metrics.compute_metrics(real, real_logits, fake, fake_logits, nearest_k=3,
                                     inception_splits=5)
    self.assertCountEqual(result, metrics.METRIC_NAMES)
    self.assertIsNone(result["kid_std"])  # One KID block below 1025 samples.
    expected = dict(fid=_numpy_fid(real, fake), kid=_numpy_block_kid(real, fake, 1024)[0],
                    inception_score=_numpy_inception_score(fake_logits, 5),
                    confident_fraction=metrics.judge_confidence(fake_logits)[0],
                    **_numpy_prdc(real, fake, 3))
    for name, value in expected.items():
      self.assertAllClose(result[name], value, rtol=1e-5, atol=1e-8, msg=name)

  def test_compute_metrics_without_logits_has_no_inception_score(self):
    rng = np.random.default_rng(13)
    result = metrics.compute_metrics(rng.normal(size=(20, 3)), None,
                                     rng.normal(size=(20, 3)), None)
    self.assertIsNone(result["inception_score"])
    self.assertIsNone(result["confident_fraction"])
    self.assertIsNotNone(result["fid"])


class JudgeConfidenceTest(tf.test.TestCase):

  def test_counts_samples_at_or_above_the_threshold_and_their_classes(self):
    # Softmax rows: [0.97, ...] class 0, [~1, ...] class 2, uniform, class 0 again at 0.95.
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 30.0], [1.0, 1.0, 1.0],
                       [np.log(0.95 / 0.025), 0.0, 0.0]])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = probabilities.max(axis=1) >= 0.9
    fraction, classes = metrics.judge_confidence(logits)
    self.assertAllClose(fraction, expected.mean())
    self.assertEqual(fraction, 0.75)
    self.assertEqual(classes, 2)

  def test_large_logits_do_not_overflow(self):
    fraction, classes = metrics.judge_confidence(np.array([[1000.0, 0.0], [0.0, 1000.0]]))
    self.assertEqual((fraction, classes), (1.0, 2))

  def test_threshold_is_inclusive_and_no_confident_sample_means_no_class(self):
    self.assertEqual(metrics.judge_confidence(np.zeros((3, 4)), threshold=0.25), (1.0, 1))
    self.assertEqual(metrics.judge_confidence(np.zeros((3, 4))), (0.0, 0))
