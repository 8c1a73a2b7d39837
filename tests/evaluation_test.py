"""Tests of activation streaming (slt_tf.activations) and the Evaluator (slt_tf.evaluation).

The metrics themselves are checked against NumPy/SciPy references in metrics_test.py.
"""

import hashlib
import os
import tempfile
import weakref

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
from absl import logging
import numpy as np
import tensorflow as tf

from slt_tf import activations
from slt_tf import evaluation
from slt_tf import images as images_lib
from slt_tf import metrics
from slt_tf import sampling
from slt_tf.errors import SltError


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

class QuantizationTest(tf.test.TestCase):

  def test_every_uint8_value_survives_dequantize_then_quantize(self):
    values = tf.range(256, dtype=tf.int32)
    values = tf.cast(values, tf.uint8)
    self.assertAllEqual(images_lib.to_uint8(activations.dequantize(values)), values)

  def test_dequantize_maps_0_and_255_to_minus_one_and_one(self):
    images = activations.dequantize(tf.constant([0, 255], tf.uint8))
    self.assertEqual(images.dtype, tf.float32)
    self.assertAllClose(images, [-1.0, 1.0])

  def test_quantize_rounds_and_clips(self):
    images = tf.constant([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    # (x + 1) * 127.5 = -63.75, 0, 0.1275, 127.5 (half to even: 128), 191.25, 255, 382.5.
    self.assertAllEqual(images_lib.to_uint8(images), [0, 0, 0, 128, 191, 255, 255])

  def test_quantization_error_is_at_most_half_a_level(self):
    images = tf.random.stateless_uniform([1000], seed=[1, 2], minval=-1.0, maxval=1.0)
    round_trip = activations.dequantize(images_lib.to_uint8(images))
    self.assertAllLessEqual(tf.abs(round_trip - images), 0.5 / 127.5 + 1e-6)

  def test_dequantize_rejects_float_images(self):
    with self.assertRaisesRegex(SltError, "uint8"):
      activations.dequantize(tf.zeros([2]))


class ActivationAccumulatorTest(tf.test.TestCase):

  def test_accumulator_concatenates_batches_in_order(self):
    accumulator = activations.ActivationAccumulator(5)
    accumulator.add(np.arange(6).reshape(3, 2), np.ones((3, 4)))
    accumulator.add(np.arange(6, 10).reshape(2, 2), np.zeros((2, 4)))
    embeddings, logits = accumulator.result()
    self.assertEqual(embeddings.dtype, np.float32)
    self.assertAllEqual(embeddings, np.arange(10).reshape(5, 2))
    self.assertAllEqual(logits, np.concatenate([np.ones((3, 4)), np.zeros((2, 4))]))

  def test_accumulator_without_capacity_grows(self):
    accumulator = activations.ActivationAccumulator(None)
    for start in range(0, 3000, 700):
      accumulator.add(np.arange(start, min(start + 700, 3000))[:, None])
    embeddings, logits = accumulator.result()
    self.assertAllEqual(embeddings[:, 0], np.arange(3000))
    self.assertIsNone(logits)

  def test_accumulator_rejects_more_samples_than_capacity(self):
    accumulator = activations.ActivationAccumulator(2)
    with self.assertRaisesRegex(SltError, "more than the 2"):
      accumulator.add(np.zeros((3, 2)))

  def test_accumulator_rejects_missing_samples(self):
    accumulator = activations.ActivationAccumulator(4)
    accumulator.add(np.zeros((3, 2)))
    with self.assertRaisesRegex(SltError, "expected 4 samples, got 3"):
      accumulator.result()

  def test_accumulator_rejects_logits_in_some_batches_only(self):
    accumulator = activations.ActivationAccumulator(4)
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
    embeddings, logits = activations.generated_activations(
        generate_batch, network, num_samples=10, batch_size=4, progress=False)
    self.assertEqual(calls, [(0, 4), (4, 4), (8, 2)])
    self.assertEqual(embeddings.shape, (10, 5))
    self.assertEqual(logits.shape, (10, 3))
    self.assertEqual([len(batch) for batch in network.seen_batches], [4, 4, 2])

  def test_generated_activations_equal_network_on_quantized_images_in_one_batch(self):
    generate_batch = lambda start, size: tf.constant(_images_for(range(start, start + size)))
    embeddings, logits = activations.generated_activations(
        generate_batch, _ProjectionNetwork(), num_samples=7, batch_size=3, progress=True)
    all_images = activations.dequantize(images_lib.to_uint8(_images_for(range(7))))
    expected_embeddings, expected_logits = _ProjectionNetwork()(all_images)
    self.assertAllClose(embeddings, expected_embeddings, rtol=1e-6)
    self.assertAllClose(logits, expected_logits, rtol=1e-6)

  def test_eval_network_sees_only_quantized_images(self):
    network = _ProjectionNetwork()
    activations.generated_activations(
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
    embeddings, logits = activations.generated_activations(
        generate_batch, network, num_samples=9, batch_size=2, progress=False)
    self.assertEqual(embeddings.shape, (9, 5))
    self.assertIsNone(logits)

  def test_generated_activations_rejects_wrong_batch_size(self):
    with self.assertRaisesRegex(SltError, r"generate_batch\(0, 4\)"):
      activations.generated_activations(
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
    embeddings, logits = activations.real_activations(
        self._dataset(), network, num_samples=6, cache_dir=None, key_parts={},
        progress=False)
    expected_embeddings, expected_logits = _ProjectionNetwork()(
        activations.dequantize(_uint8_images(10)[:6]))
    self.assertAllClose(embeddings, expected_embeddings, rtol=1e-6)
    self.assertAllClose(logits, expected_logits, rtol=1e-6)
    self.assertEqual([len(batch) for batch in network.seen_batches], [4, 2])

  def test_real_activations_of_whole_dataset_of_dicts(self):
    dataset = self._dataset(count=9).map(lambda images: {"image": images, "label": 0})
    embeddings, _ = activations.real_activations(
        dataset, _ProjectionNetwork(), num_samples=None, cache_dir=None, key_parts={},
        progress=True)
    self.assertEqual(embeddings.shape, (9, 5))

  def test_real_activations_reject_too_few_images(self):
    with self.assertRaisesRegex(SltError, "only 10 images, num_samples=11"):
      activations.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=11,
                                  cache_dir=None, key_parts={}, progress=False)

  def test_cache_is_reused_only_when_key_parts_and_fingerprint_match(self):
    cache_dir = self._new_cache_dir()
    key_parts = {"dataset": "random", "split": "test", "resolution": 4}

    def run(network, parts):
      return activations.real_activations(self._dataset(), network, num_samples=8,
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
    run = lambda network: activations.real_activations(
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
        activations.dequantize(_uint8_images(10)[:4]))[0], rtol=1e-6)

  def test_unreadable_cache_file_is_recomputed_with_a_warning_and_replaced(self):
    cache_dir = self._new_cache_dir()
    run = lambda network: activations.real_activations(
        self._dataset(), network, num_samples=4, cache_dir=cache_dir,
        key_parts={"dataset": "random"}, progress=False)
    first, _ = run(_ProjectionNetwork())
    (name,) = os.listdir(cache_dir)
    with open(os.path.join(cache_dir, name), "wb") as f:
      f.write(b"not an npz file")
    warnings = []
    with self.subTest("recomputed"), tf.compat.v1.test.mock.patch.object(
        logging, "warning", lambda message, *args: warnings.append(message % args)):
      network = _ProjectionNetwork()
      embeddings, _ = run(network)
    self.assertLen(network.seen_batches, 1)
    self.assertAllEqual(embeddings, first)
    self.assertLen(warnings, 1)
    self.assertIn("unreadable", warnings[0])
    self.assertEqual(os.listdir(cache_dir), [name])  # Replaced atomically, no temporary left.
    reusing = _ProjectionNetwork()
    run(reusing)
    self.assertEmpty(reusing.seen_batches)

  def test_cache_name_is_sha256_of_the_key(self):
    cache_dir = self._new_cache_dir()
    activations.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=4,
                                 cache_dir=cache_dir, key_parts={"dataset": "random"},
                                 progress=False)
    (name,) = os.listdir(cache_dir)
    with np.load(os.path.join(cache_dir, name), allow_pickle=False) as stored:
      key = str(stored["key"])
    self.assertEqual(name, f"real_activations_{hashlib.sha256(key.encode()).hexdigest()}.npz")
    self.assertIn('"eval_network_fingerprint":"projection-v1"', key)

  def test_real_activations_reject_key_parts_that_are_not_json(self):
    with self.assertRaisesRegex(SltError, "JSON"):
      activations.real_activations(self._dataset(), _ProjectionNetwork(), num_samples=4,
                                   cache_dir=self._new_cache_dir(),
                                   key_parts={"array": np.zeros(2)}, progress=False)


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
  real = activations.dequantize(_uint8_images(50, seed=3))
  real_embeddings, real_logits = (np.asarray(t) for t in network(real))
  return evaluation.Evaluator(network, real_embeddings, real_logits, num_samples=num_samples,
                              batch_size=batch_size, info={"split": "test"})


class EvaluatorTest(tf.test.TestCase):

  def test_evaluator_scores_the_generator_on_fixed_evaluation_latents(self):
    evaluator = _evaluator()
    generator = _FakeGenerator()
    result = evaluator(generator)
    # Reference: the same latents (stream EVAL_LATENT_STREAM, indices 0..39) in one batch.
    z = sampling.latents(tf.range(40, dtype=tf.int64), 6, evaluation.EVAL_LATENT_STREAM)
    quantised = activations.dequantize(images_lib.to_uint8(generator(z)))
    fake_embeddings, fake_logits = evaluator.eval_network(quantised)
    expected = metrics.compute_metrics(evaluator.real_embeddings, evaluator.real_logits,
                                       np.asarray(fake_embeddings), np.asarray(fake_logits))
    for key, value in expected.items():
      if value is None:
        self.assertIsNone(result[key])
      else:
        self.assertAllClose(result[key], value, rtol=1e-5, atol=1e-6, msg=key)
    self.assertEqual(result["num_samples"], 40)
    self.assertEqual(result["num_real"], 50)
    self.assertEqual(result["split"], "test")
    self.assertEqual(result["eval_network"], "projection")
    self.assertGreater(result["samples_per_second"], 0)
    self.assertGreater(result["peak_memory_mb"], 0)

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

  def test_real_reference_scores_the_first_num_samples_real_images_or_all_when_fewer(self):
    evaluator = _evaluator()
    images = activations.dequantize(_uint8_images(12, seed=8))  # Already on the uint8 grid.
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(5)
    for requested, used in ((11, 11), (50, 12)):
      result = evaluation.real_reference_metrics(evaluator, dataset, requested)
      fake_embeddings, fake_logits = evaluator.eval_network(images[:used])
      expected = metrics.compute_metrics(evaluator.real_embeddings, evaluator.real_logits,
                                         np.asarray(fake_embeddings), np.asarray(fake_logits))
      self.assertAllClose(result["fid"], expected["fid"], rtol=1e-5, atol=1e-6)
      self.assertEqual((result["num_samples"], result["num_real"]), (used, 50))

  def test_default_eval_network_is_the_digits_cnn_only_for_digits(self):
    self.assertEqual(evaluation.default_eval_network("digits"), "digits_eval_cnn")
    self.assertEqual(evaluation.default_eval_network("cifar10"), "inception_v3")


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
