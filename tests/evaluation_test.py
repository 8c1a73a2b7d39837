"""Tests for slt_tf.evaluation against independent NumPy/SciPy float64 references."""

import hashlib
import os
import tempfile
import weakref

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from absl.testing import parameterized
import numpy as np
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import tensorflow as tf

from slt_tf import evaluation
from slt_tf import images
from slt_tf import sampling
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


# ---------------------------------------------------------------- Stand-ins.

class _ProjectionNetwork:
  """A fixed random projection of the flattened image: embedding and logits."""

  def __init__(self, image_size=4, channels=3, embedding_dim=5, num_classes=3,
               fingerprint="projection-v1", with_logits=True, record_batches=True):
    rng = np.random.default_rng(123)
    pixels = image_size * image_size * channels
    self.embedding_kernel = rng.normal(size=(pixels, embedding_dim)).astype(np.float32)
    self.logit_kernel = rng.normal(size=(pixels, num_classes)).astype(np.float32)
    self.name = "projection"
    self.fingerprint = fingerprint
    self.embedding_dim = embedding_dim
    self.with_logits = with_logits
    self.record_batches = record_batches
    self.seen_batches = []  # Copies of the images seen, when record_batches.

  def __call__(self, images):
    if self.record_batches:
      self.seen_batches.append(np.asarray(images))
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    logits = tf.matmul(flat, self.logit_kernel) if self.with_logits else None
    return tf.matmul(flat, self.embedding_kernel), logits


def _images_for(indices, image_size=4, channels=3):
  """Deterministic float32 images in [-1, 1], one per global sample index."""
  grid = np.arange(image_size * image_size * channels, dtype=np.float32).reshape(
      image_size, image_size, channels)
  return np.stack([np.sin(0.37 * grid + 1.3 * i) for i in indices]).astype(np.float32)


def _uint8_images(count, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(count, 4, 4, 3), dtype=np.uint8)


# ---------------------------------------------------------------- Tests.

class FidTest(tf.test.TestCase):

  def test_fid_matches_scipy_sqrtm_reference(self):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 12))
    fake = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    self.assertAllClose(evaluation.fid(real, fake), _numpy_fid(real, fake), rtol=1e-5)

  def test_fid_of_float32_activations_is_computed_in_float64(self):
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 8)).astype(np.float32)
    fake = (rng.normal(size=(200, 8)) + 0.1).astype(np.float32)
    self.assertAllClose(evaluation.fid(real, fake),
                        _numpy_fid(real.astype(np.float64), fake.astype(np.float64)),
                        rtol=1e-6)

  def test_fid_of_a_set_with_itself_is_zero(self):
    activations = np.random.default_rng(2).normal(size=(100, 6))
    self.assertAllClose(evaluation.fid(activations, activations), 0.0, atol=1e-8)

  def test_fid_rejects_different_dimensions(self):
    with self.assertRaisesRegex(SltError, "same dimension"):
      evaluation.fid(np.zeros((10, 3)), np.zeros((10, 4)))

  def test_fid_rejects_non_finite_activations(self):
    with self.assertRaisesRegex(SltError, "nan or inf"):
      evaluation.fid(np.full((10, 3), np.nan), np.zeros((10, 3)))


class KidTest(tf.test.TestCase, parameterized.TestCase):

  def test_kid_with_one_block_matches_numpy_unbiased_mmd(self):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(120, 10)), rng.normal(size=(90, 10)) * 1.2 + 0.2
    mean, std = evaluation.kid(real, fake)
    self.assertAllClose(mean, _numpy_unbiased_mmd2(real, fake), rtol=1e-10)
    self.assertTrue(np.isnan(std))

  @parameterized.parameters((100, 100, 25), (103, 97, 30), (60, 81, 40))
  def test_kid_with_blocks_matches_numpy_block_estimator(self, num_real, num_fake, block):
    rng = np.random.default_rng(num_real + num_fake)
    real, fake = rng.normal(size=(num_real, 7)), rng.normal(size=(num_fake, 7)) + 0.3
    mean, std = evaluation.kid(real, fake, max_block_size=block)
    expected_mean, expected_std = _numpy_block_kid(real, fake, block)
    self.assertAllClose(mean, expected_mean, rtol=1e-10)
    self.assertAllClose(std, expected_std, rtol=1e-8)

  def test_kid_of_shifted_sets_is_larger_than_of_same_distribution(self):
    rng = np.random.default_rng(4)
    real = rng.normal(size=(200, 5))
    same, _ = evaluation.kid(real, rng.normal(size=(200, 5)))
    shifted, _ = evaluation.kid(real, rng.normal(size=(200, 5)) + 1.0)
    self.assertLess(abs(same), 0.05)
    self.assertGreater(shifted, 10 * abs(same))

  def test_kid_rejects_blocks_of_one_sample(self):
    with self.assertRaisesRegex(SltError, "2 samples per block"):
      evaluation.kid(np.ones((3, 2)), np.ones((100, 2)), max_block_size=10)


class InceptionScoreTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 3, 10)
  def test_inception_score_matches_numpy_mean_over_splits(self, num_splits):
    logits = np.random.default_rng(5).normal(size=(53, 7)) * 3.0
    self.assertAllClose(evaluation.inception_score(logits, num_splits),
                        _numpy_inception_score(logits, num_splits), rtol=1e-10)

  def test_inception_score_of_identical_predictions_is_one(self):
    logits = np.tile(np.random.default_rng(6).normal(size=(1, 5)), (40, 1))
    self.assertAllClose(evaluation.inception_score(logits, 4), 1.0)

  def test_inception_score_of_confident_balanced_predictions_is_num_classes(self):
    logits = np.tile(np.eye(4) * 60.0, (10, 1))  # Each split holds every class equally.
    self.assertAllClose(evaluation.inception_score(logits, 10), 4.0, rtol=1e-6)

  def test_inception_score_rejects_more_splits_than_samples(self):
    with self.assertRaisesRegex(SltError, "num_splits"):
      evaluation.inception_score(np.zeros((5, 3)), num_splits=6)


class PrdcTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters((1,), (3,), (5,))
  def test_prdc_matches_cdist_reference(self, nearest_k):
    rng = np.random.default_rng(7 + nearest_k)
    real = rng.normal(size=(80, 6))
    fake = rng.normal(size=(70, 6)) * 1.3 + 0.4
    result = evaluation.prdc(real, fake, nearest_k)
    expected = _numpy_prdc(real, fake, nearest_k)
    self.assertAllClose(result, expected, rtol=1e-12, atol=0.0)
    self.assertTrue(all(0.0 < value < 1.0 for value in expected.values()))

  def test_prdc_of_float32_features_matches_float64_reference(self):
    rng = np.random.default_rng(8)
    real = np.abs(rng.normal(size=(60, 32))).astype(np.float32) + 5.0  # Large norms.
    fake = np.abs(rng.normal(size=(50, 32))).astype(np.float32) + 5.1
    self.assertAllClose(evaluation.prdc(real, fake),
                        _numpy_prdc(real.astype(np.float64), fake.astype(np.float64), 5))

  def test_prdc_of_identical_sets_is_one(self):
    features = np.random.default_rng(9).normal(size=(50, 4))
    result = evaluation.prdc(features, features.copy(), nearest_k=5)
    self.assertEqual(result["precision"], 1.0)
    self.assertEqual(result["recall"], 1.0)
    self.assertEqual(result["coverage"], 1.0)
    self.assertAllClose(result["density"], 1.0)

  def test_prdc_of_far_apart_sets_is_zero(self):
    features = np.random.default_rng(10).normal(size=(30, 3))
    result = evaluation.prdc(features, features + 100.0)
    self.assertAllEqual(list(result.values()), [0.0, 0.0, 0.0, 0.0])

  @parameterized.parameters(1, 7, 64)
  def test_prdc_in_row_blocks_equals_one_block(self, block_rows):
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(64, 5)), rng.normal(size=(41, 5)) + 0.2
    self.assertEqual(evaluation.prdc(real, fake, 3, block_rows=block_rows),
                     evaluation.prdc(real, fake, 3, block_rows=1000))

  def test_prdc_rejects_nearest_k_not_below_sample_count(self):
    with self.assertRaisesRegex(SltError, "num_samples >= 6"):
      evaluation.prdc(np.zeros((5, 2)), np.zeros((10, 2)), nearest_k=5)


class QuantizationTest(tf.test.TestCase):

  def test_every_uint8_value_survives_dequantize_then_quantize(self):
    values = tf.range(256, dtype=tf.int32)
    values = tf.cast(values, tf.uint8)
    self.assertAllEqual(evaluation.quantize_to_uint8(evaluation.dequantize(values)), values)

  def test_dequantize_maps_0_and_255_to_minus_one_and_one(self):
    images = evaluation.dequantize(tf.constant([0, 255], tf.uint8))
    self.assertEqual(images.dtype, tf.float32)
    self.assertAllClose(images, [-1.0, 1.0])

  def test_quantize_rounds_and_clips(self):
    images = tf.constant([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    # (x + 1) * 127.5 = -63.75, 0, 0.1275, 127.5 (half to even: 128), 191.25, 255, 382.5.
    self.assertAllEqual(evaluation.quantize_to_uint8(images), [0, 0, 0, 128, 191, 255, 255])

  def test_quantization_error_is_at_most_half_a_level(self):
    images = tf.random.stateless_uniform([1000], seed=[1, 2], minval=-1.0, maxval=1.0)
    round_trip = evaluation.dequantize(evaluation.quantize_to_uint8(images))
    self.assertAllLessEqual(tf.abs(round_trip - images), 0.5 / 127.5 + 1e-6)

  def test_dequantize_rejects_float_images(self):
    with self.assertRaisesRegex(SltError, "uint8"):
      evaluation.dequantize(tf.zeros([2]))


class ActivationAccumulatorTest(tf.test.TestCase):

  def test_accumulator_concatenates_batches_in_order(self):
    accumulator = evaluation.ActivationAccumulator(5)
    accumulator.add(np.arange(6).reshape(3, 2), np.ones((3, 4)))
    accumulator.add(np.arange(6, 10).reshape(2, 2), np.zeros((2, 4)))
    embeddings, logits = accumulator.result()
    self.assertEqual(embeddings.dtype, np.float32)
    self.assertAllEqual(embeddings, np.arange(10).reshape(5, 2))
    self.assertAllEqual(logits, np.concatenate([np.ones((3, 4)), np.zeros((2, 4))]))

  def test_accumulator_without_capacity_grows(self):
    accumulator = evaluation.ActivationAccumulator(None)
    for start in range(0, 3000, 700):
      accumulator.add(np.arange(start, min(start + 700, 3000))[:, None])
    embeddings, logits = accumulator.result()
    self.assertAllEqual(embeddings[:, 0], np.arange(3000))
    self.assertIsNone(logits)

  def test_accumulator_rejects_more_samples_than_capacity(self):
    accumulator = evaluation.ActivationAccumulator(2)
    with self.assertRaisesRegex(SltError, "more than the 2"):
      accumulator.add(np.zeros((3, 2)))

  def test_accumulator_rejects_missing_samples(self):
    accumulator = evaluation.ActivationAccumulator(4)
    accumulator.add(np.zeros((3, 2)))
    with self.assertRaisesRegex(SltError, "expected 4 samples, got 3"):
      accumulator.result()

  def test_accumulator_rejects_logits_in_some_batches_only(self):
    accumulator = evaluation.ActivationAccumulator(4)
    accumulator.add(np.zeros((2, 2)), np.zeros((2, 3)))
    with self.assertRaisesRegex(SltError, "logits"):
      accumulator.add(np.zeros((2, 2)), None)


class GeneratedActivationsTest(tf.test.TestCase):

  def test_generated_activations_calls_generate_batch_with_consecutive_indices(self):
    calls = []

    def generate_batch(start, size):
      calls.append((start, size))
      return tf.constant(_images_for(range(start, start + size)))

    network = _ProjectionNetwork()
    embeddings, logits = evaluation.generated_activations(
        generate_batch, network, num_samples=10, batch_size=4, progress=False)
    self.assertEqual(calls, [(0, 4), (4, 4), (8, 2)])
    self.assertEqual(embeddings.shape, (10, 5))
    self.assertEqual(logits.shape, (10, 3))
    self.assertEqual([len(batch) for batch in network.seen_batches], [4, 4, 2])

  def test_generated_activations_equal_network_on_quantized_images_in_one_batch(self):
    generate_batch = lambda start, size: tf.constant(_images_for(range(start, start + size)))
    embeddings, logits = evaluation.generated_activations(
        generate_batch, _ProjectionNetwork(), num_samples=7, batch_size=3, progress=True)
    all_images = evaluation.dequantize(evaluation.quantize_to_uint8(_images_for(range(7))))
    expected_embeddings, expected_logits = _ProjectionNetwork()(all_images)
    self.assertAllClose(embeddings, expected_embeddings, rtol=1e-6)
    self.assertAllClose(logits, expected_logits, rtol=1e-6)

  def test_eval_network_sees_only_quantized_images(self):
    network = _ProjectionNetwork()
    evaluation.generated_activations(
        lambda start, size: tf.constant(_images_for(range(start, start + size))), network,
        num_samples=4, batch_size=4, progress=False)
    levels = (network.seen_batches[0] + 1.0) * 127.5
    self.assertAllClose(levels, np.round(levels), atol=1e-4)

  def test_generated_activations_keep_no_image_batch_alive(self):
    previous_batches = []

    def generate_batch(start, size):
      for batch in previous_batches:
        self.assertIsNone(batch(), "an earlier image batch is still referenced")
      images = tf.constant(_images_for(range(start, start + size)))
      previous_batches.append(weakref.ref(images))
      return images

    network = _ProjectionNetwork(with_logits=False, record_batches=False)
    embeddings, logits = evaluation.generated_activations(
        generate_batch, network, num_samples=9, batch_size=2, progress=False)
    self.assertEqual(embeddings.shape, (9, 5))
    self.assertIsNone(logits)

  def test_generated_activations_rejects_wrong_batch_size(self):
    with self.assertRaisesRegex(SltError, r"generate_batch\(0, 4\)"):
      evaluation.generated_activations(
          lambda start, size: tf.zeros([size + 1, 4, 4, 3]), _ProjectionNetwork(),
          num_samples=4, batch_size=4, progress=False)


class RealActivationsTest(tf.test.TestCase):

  def _new_cache_dir(self):
    directory = tempfile.TemporaryDirectory()
    self.addCleanup(directory.cleanup)
    return directory.name

  def _dataset(self, count=10, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(_uint8_images(count)).batch(batch_size)

  def test_real_activations_use_the_first_num_samples_images(self):
    network = _ProjectionNetwork()
    embeddings, logits = evaluation.real_activations(
        self._dataset(), network, num_samples=6, cache_dir=None, key_parts={},
        progress=False)
    expected_embeddings, expected_logits = _ProjectionNetwork()(
        evaluation.dequantize(_uint8_images(10)[:6]))
    self.assertAllClose(embeddings, expected_embeddings, rtol=1e-6)
    self.assertAllClose(logits, expected_logits, rtol=1e-6)
    self.assertEqual([len(batch) for batch in network.seen_batches], [4, 2])

  def test_real_activations_of_whole_dataset_of_dicts(self):
    dataset = self._dataset(count=9).map(lambda images: {"image": images, "label": 0})
    embeddings, _ = evaluation.real_activations(
        dataset, _ProjectionNetwork(), num_samples=None, cache_dir=None, key_parts={},
        progress=True)
    self.assertEqual(embeddings.shape, (9, 5))

  def test_real_activations_reject_too_few_images(self):
    with self.assertRaisesRegex(SltError, "only 10 images, num_samples=11"):
      evaluation.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=11,
                                  cache_dir=None, key_parts={}, progress=False)

  def test_cache_is_reused_only_when_key_parts_and_fingerprint_match(self):
    cache_dir = self._new_cache_dir()
    key_parts = {"dataset": "random", "split": "test", "resolution": 4}

    def run(network, parts):
      return evaluation.real_activations(self._dataset(), network, num_samples=8,
                                         cache_dir=cache_dir, key_parts=parts,
                                         progress=False)

    first_network = _ProjectionNetwork()
    first, _ = run(first_network, key_parts)
    self.assertLen(first_network.seen_batches, 2)

    reusing_network = _ProjectionNetwork()
    reused, _ = run(reusing_network, key_parts)
    self.assertEmpty(reusing_network.seen_batches)
    self.assertAllEqual(reused, first)

    other_split = _ProjectionNetwork()
    run(other_split, dict(key_parts, split="train"))
    self.assertLen(other_split.seen_batches, 2)

    other_fingerprint = _ProjectionNetwork(fingerprint="projection-v2")
    run(other_fingerprint, key_parts)
    self.assertLen(other_fingerprint.seen_batches, 2)

    files = sorted(os.listdir(cache_dir))
    self.assertLen(files, 3)
    self.assertTrue(all(name.startswith("real_activations_") and name.endswith(".npz")
                        for name in files))

  def test_cache_file_with_another_stored_key_is_recomputed(self):
    cache_dir = self._new_cache_dir()
    run = lambda network: evaluation.real_activations(
        self._dataset(), network, num_samples=4, cache_dir=cache_dir,
        key_parts={"dataset": "random"}, progress=False)
    run(_ProjectionNetwork())
    (name,) = os.listdir(cache_dir)
    path = os.path.join(cache_dir, name)
    with np.load(path) as stored:
      np.savez(path, key=np.array("something else"), embeddings=stored["embeddings"] + 1)
    network = _ProjectionNetwork()
    embeddings, _ = run(network)
    self.assertLen(network.seen_batches, 1)
    self.assertAllClose(embeddings, _ProjectionNetwork()(
        evaluation.dequantize(_uint8_images(10)[:4]))[0], rtol=1e-6)

  def test_cache_name_is_sha256_of_the_key(self):
    cache_dir = self._new_cache_dir()
    evaluation.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=4,
                                cache_dir=cache_dir, key_parts={"dataset": "random"},
                                progress=False)
    (name,) = os.listdir(cache_dir)
    with np.load(os.path.join(cache_dir, name), allow_pickle=False) as stored:
      key = str(stored["key"])
    self.assertEqual(name, f"real_activations_{hashlib.sha256(key.encode()).hexdigest()}.npz")
    self.assertIn('"eval_network_fingerprint":"projection-v1"', key)

  def test_real_activations_reject_key_parts_that_are_not_json(self):
    with self.assertRaisesRegex(SltError, "JSON"):
      evaluation.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=4,
                                  cache_dir=self._new_cache_dir(),
                                  key_parts={"array": np.zeros(2)}, progress=False)


class ComputeMetricsTest(tf.test.TestCase):

  def test_compute_metrics_collects_every_metric(self):
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.5
    real_logits, fake_logits = rng.normal(size=(60, 3)), rng.normal(size=(50, 3))
    metrics = evaluation.compute_metrics(real, real_logits, fake, fake_logits, nearest_k=3,
                                         inception_splits=5)
    expected = dict(fid=evaluation.fid(real, fake), kid=evaluation.kid(real, fake)[0],
                    kid_std=None,
                    inception_score=evaluation.inception_score(fake_logits, 5),
                    **evaluation.prdc(real, fake, 3))
    self.assertEqual(metrics, expected)

  def test_compute_metrics_without_logits_has_no_inception_score(self):
    rng = np.random.default_rng(13)
    metrics = evaluation.compute_metrics(rng.normal(size=(20, 3)), None,
                                         rng.normal(size=(20, 3)), None)
    self.assertIsNone(metrics["inception_score"])
    self.assertIsNotNone(metrics["fid"])



class _FakeGenerator:
  """latents [B, latent_dim] -> images [B, 4, 4, 3] in [-1, 1]; records the latents it saw."""

  class spec:  # pylint: disable=invalid-name  # Mimics GeneratorSpec.latent_dim.
    latent_dim = 6

  def __init__(self, shift=0.0):
    self.shift = shift
    self.training_flags = []
    rng = np.random.default_rng(5)
    self.kernel = rng.normal(size=(6, 48)).astype(np.float32)

  def __call__(self, z, training=False):
    self.training_flags.append(training)
    return tf.reshape(tf.tanh(tf.matmul(z, self.kernel) + self.shift), [-1, 4, 4, 3])


def _evaluator(num_samples=40, batch_size=16):
  network = _ProjectionNetwork(record_batches=False)
  real = evaluation.dequantize(_uint8_images(50, seed=3))
  real_embeddings, real_logits = (np.asarray(t) for t in network(real))
  return evaluation.Evaluator(network, real_embeddings, real_logits, num_samples=num_samples,
                              batch_size=batch_size, info={"split": "test"})


class EvaluatorTest(tf.test.TestCase):

  def test_evaluator_scores_the_generator_on_fixed_evaluation_latents(self):
    evaluator = _evaluator()
    generator = _FakeGenerator()
    metrics = evaluator(generator)
    # Reference: the same latents (stream EVAL_LATENT_STREAM, indices 0..39) in one batch.
    z = sampling.latents(tf.range(40, dtype=tf.int64), 6, evaluation.EVAL_LATENT_STREAM)
    images = evaluation.dequantize(evaluation.quantize_to_uint8(generator(z)))
    fake_embeddings, fake_logits = evaluator.eval_network(images)
    expected = evaluation.compute_metrics(evaluator.real_embeddings, evaluator.real_logits,
                                          np.asarray(fake_embeddings), np.asarray(fake_logits))
    for key, value in expected.items():
      if value is None:
        self.assertIsNone(metrics[key])
      else:
        self.assertAllClose(metrics[key], value, rtol=1e-5, atol=1e-6, msg=key)
    self.assertEqual(metrics["num_samples"], 40)
    self.assertEqual(metrics["num_real"], 50)
    self.assertEqual(metrics["split"], "test")
    self.assertEqual(metrics["eval_network"], "projection")
    self.assertGreater(metrics["samples_per_second"], 0)
    self.assertGreater(metrics["peak_memory_mb"], 0)

  def test_evaluator_runs_the_generator_in_inference_mode(self):
    generator = _FakeGenerator()
    _evaluator()(generator)
    self.assertTrue(generator.training_flags)
    self.assertNotIn(True, generator.training_flags)

  def test_evaluator_is_deterministic_and_sees_generator_changes(self):
    evaluator = _evaluator()
    first, again = evaluator(_FakeGenerator()), evaluator(_FakeGenerator())
    self.assertEqual(first["fid"], again["fid"])
    self.assertNotEqual(first["fid"], evaluator(_FakeGenerator(shift=0.7))["fid"])

  def test_evaluator_rejects_too_few_samples(self):
    with self.assertRaisesRegex(SltError, "num_samples"):
      _evaluator(num_samples=1)

  def test_default_eval_network_is_the_digits_cnn_only_for_digits(self):
    self.assertEqual(evaluation.default_eval_network("digits"), "digits_eval_cnn")
    self.assertEqual(evaluation.default_eval_network("cifar10"), "inception_v3")

  def test_quantize_to_uint8_is_the_images_module_conversion(self):
    values = tf.random.stateless_uniform([200], seed=[3, 4], minval=-1.2, maxval=1.2)
    self.assertAllEqual(evaluation.quantize_to_uint8(values), images.to_uint8(values))


class _FakeModel:

  def __init__(self, generator):
    self.generator = generator
    self.optimizer = type("Optimizer", (), {})()
    self.optimizer.iterations = tf.Variable(0, dtype=tf.int64)


class PeriodicEvaluationTest(tf.test.TestCase):

  def _scalars(self, log_dir):
    steps = {}
    for name in os.listdir(log_dir):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
        for value in event.summary.value:
          steps.setdefault(value.tag, []).append(event.step)
    return steps

  def test_evaluates_every_n_steps_and_once_at_the_end(self):
    log_dir = os.path.join(self.get_temp_dir(), "eval_every")
    callback = evaluation.PeriodicEvaluation(_evaluator(num_samples=20), log_dir, every_steps=2)
    model = _FakeModel(_FakeGenerator())
    callback.set_model(model)
    for step in range(1, 6):
      model.optimizer.iterations.assign(step)
      callback.on_train_batch_end(step - 1)
    callback.on_train_end()
    self.assertEqual(sorted(self._scalars(log_dir)["eval/fid"]), [2, 4, 5])
    self.assertIn("eval/precision", self._scalars(log_dir))

  def test_end_of_training_on_an_evaluated_step_does_not_evaluate_twice(self):
    log_dir = os.path.join(self.get_temp_dir(), "eval_once")
    callback = evaluation.PeriodicEvaluation(_evaluator(num_samples=20), log_dir, every_steps=3)
    model = _FakeModel(_FakeGenerator())
    callback.set_model(model)
    model.optimizer.iterations.assign(3)
    callback.on_train_batch_end(2)
    callback.on_train_end()
    self.assertEqual(self._scalars(log_dir)["eval/fid"], [3])

  def test_rejects_non_positive_period(self):
    with self.assertRaisesRegex(SltError, "every_steps"):
      evaluation.PeriodicEvaluation(_evaluator(), self.get_temp_dir(), every_steps=0)


if __name__ == "__main__":
  tf.test.main()
