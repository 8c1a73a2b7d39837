"""Tests for Gem-Miner: the threshold mask and its straight-through gradient (slt_tf.masking),
the regulariser and its annealing (slt_tf.gem_miner), and method=gem_miner end to end on
configs/test.py with its ticket and SavedModel export."""

import os

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import errors
from slt_tf import gem_miner
from slt_tf import layers
from slt_tf import masking
from slt_tf import ticket as ticket_lib
from slt_tf import train
from slt_tf.export import bake
from slt_tf import checkpoints
from slt_tf import workdir as workdir_lib


def _scores(shape=(7, 9), seed=0):
  values = np.random.default_rng(seed).random(shape).astype(np.float32)
  values.flat[:4] = [0.5, np.nextafter(np.float32(0.5), np.float32(0)), 0.0, 1.0]  # Edges.
  return values


def test_mask_is_exactly_scores_at_least_one_half():
  scores = _scores()
  rule = masking.make_rule("gem_miner", 0.2)
  mask = rule(tf.constant(scores)).numpy()
  np.testing.assert_array_equal(mask, (scores >= 0.5).astype(np.float32))
  assert mask.flat[0] == 1.0 and mask.flat[1] == 0.0
  assert rule.get_config() == {"name": "gem_miner", "keep_fraction": 0.2}


def test_gradient_is_straight_through():
  scores = tf.Variable(_scores())
  upstream = tf.constant(np.random.default_rng(1).standard_normal(scores.shape), tf.float32)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(upstream * masking.make_rule("gem_miner", 0.2)(scores))
  np.testing.assert_array_equal(tape.gradient(loss, scores).numpy(), upstream.numpy())


def test_layer_masks_its_kernel_and_its_scores_gradient_is_straight_through():
  rule = masking.make_rule("gem_miner", 0.3)
  layer = layers.ScoredDense(5, mask_rule=rule, score_init="unit_uniform", seed=3, name="g")
  x = tf.constant(np.random.default_rng(2).standard_normal((4, 6)), tf.float32)
  with tf.GradientTape() as tape:
    y = layer(x)
    loss = tf.reduce_sum(y * y)
  scores, kernel = layer.kernel_scores.numpy(), layer.kernel.numpy()
  assert scores.min() >= 0.0 and scores.max() <= 1.0 and 0 < (scores >= 0.5).mean() < 1
  np.testing.assert_allclose(y.numpy(), x.numpy() @ (kernel * (scores >= 0.5))
                             + layer.bias.numpy(), rtol=1e-5, atol=1e-5)
  # dL/ds = dL/dm = x^T dL/dy * W (the mask's gradient handed on unchanged).
  expected = (x.numpy().T @ (2.0 * y.numpy())) * kernel
  np.testing.assert_allclose(tape.gradient(loss, layer.kernel_scores).numpy(), expected,
                             rtol=1e-4, atol=1e-5)


def test_optimizer_keeps_scores_in_the_unit_interval():
  layer = layers.ScoredDense(5, mask_rule=masking.make_rule("gem_miner", 0.3),
                             score_init="unit_uniform", seed=3, name="clip")
  layer.build((None, 6))
  optimizer = keras.optimizers.SGD(10.0)
  gradient = np.where(np.random.default_rng(0).random(layer.kernel_scores.shape) < 0.5, -1.0, 1.0)
  optimizer.apply_gradients([(tf.constant(gradient, tf.float32), layer.kernel_scores)])
  scores = layer.kernel_scores.numpy()
  np.testing.assert_array_equal(scores, np.where(gradient < 0, 1.0, 0.0))


def test_regularizer_gradient_matches_autodiff():
  scores = [tf.Variable(_scores((3, 4), seed)) for seed in range(3)]
  strength = 3e-3
  with tf.GradientTape() as tape:
    penalty = gem_miner.l2_penalty(scores, strength)
  np.testing.assert_allclose(penalty.numpy(), strength * sum(
      float(np.sum(s.numpy().astype(np.float64) ** 2)) for s in scores), rtol=1e-6)
  for got, expected in zip(tape.gradient(penalty, scores),
                           gem_miner.l2_penalty_gradient(scores, strength)):
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
  regularizer = gem_miner.ScoreRegularizer(strength, target_keep_fraction=0.1, anneal_factor=2.0)
  with tf.GradientTape() as tape:
    penalty = regularizer.penalty(scores)
  for got, expected in zip(tape.gradient(penalty, scores),
                           gem_miner.l2_penalty_gradient(scores, strength)):
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_annealing_raises_lambda_above_the_target_and_switches_it_off_at_or_below():
  regularizer = gem_miner.ScoreRegularizer(1e-4, target_keep_fraction=0.1, anneal_factor=2.0)
  assert regularizer.anneal(0.5, grow=False) == pytest.approx(1e-4)
  assert regularizer.anneal(0.5, grow=True) == pytest.approx(2e-4)
  assert regularizer.anneal(0.2, grow=True) == pytest.approx(4e-4)
  assert regularizer.anneal(0.05, grow=True) == 0.0
  assert regularizer.anneal(0.1, grow=False) == 0.0
  assert float(regularizer.strength.numpy()) == 0.0
  assert regularizer.anneal(0.11, grow=False) == pytest.approx(4e-4)  # Back on at its level.
  assert gem_miner.kept_fraction([np.array([0.5, 0.49, 1.0, 0.0])]) == 0.5


@pytest.mark.parametrize("values, fragment", [
    ((0.0, 10, 1.5), "gem_miner.regularization must be a positive number"),
    ((1e-5, 0, 1.5), "gem_miner.anneal_every must be an integer >= 1"),
    ((1e-5, 10, 0.5), "gem_miner.anneal_factor must be a number in [1, 100]"),
])
def test_bad_values_are_one_line_errors(values, fragment):
  with pytest.raises(errors.SltError) as error:
    gem_miner.validate(*values)
  assert fragment in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------ end to end + export

def _config(tmp_path_factory):
  shared = tmp_path_factory.getbasetemp()
  config = test_config.get_config()
  config.method = "gem_miner"
  config.generator.score_init = "unit_uniform"
  config.keep_fraction = 0.3
  config.num_steps = 12
  config.gem_miner.anneal_every = 2
  config.gem_miner.anneal_factor = 3.0
  config.checkpoint_every_steps = config.log_every_steps = config.sample_every_steps = 4
  config.features.weights = "none"
  config.dataset.data_dir = os.path.join(shared, "tfds")
  config.features.cache_dir = os.path.join(shared, "cache")
  return config


def test_gem_miner_needs_unit_uniform_scores(tmp_path_factory):
  config = _config(tmp_path_factory)
  config.generator.score_init = "kaiming_uniform"
  with pytest.raises(errors.SltError, match="needs generator.score_init=unit_uniform"):
    train.validate_config(config)


@pytest.fixture(scope="module")
def gem_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gem_run"))
  summary = train.train_and_evaluate(_config(tmp_path_factory), workdir,
                                     strategy=tf.distribute.get_strategy())
  return workdir, summary


@pytest.mark.e2e
def test_gem_miner_run_writes_a_ticket_whose_mask_is_scores_at_least_one_half(gem_run):
  workdir, summary = gem_run
  ticket = ticket_lib.load(summary["ticket"])
  assert ticket.spec.method == "gem_miner" and ticket.spec.keep_fraction == 0.3
  assert summary["num_kept"] == ticket.num_kept and summary["weight_updates"] == 0
  checkpoint, _ = workdir_lib.latest_checkpoint(workdir)
  generator = checkpoints.restore_generator(ticket.spec, checkpoint)
  for layer in generator.scored_layers():
    scores = layer.kernel_scores.numpy()
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    np.testing.assert_array_equal(ticket.masks[f"{layer.name}/kernel"], scores >= 0.5)
  # The regulariser lowered the kept fraction from about one half (U(0, 1) scores); the run
  # reports what it reached and does not force the target.
  assert ticket.num_kept / ticket.num_weights < 0.49
  rebuilt = ticket_lib.build_generator(ticket)  # Scores = mask bits select the same mask.
  assert ticket_lib.current_masks(rebuilt).keys() == ticket.masks.keys()


@pytest.mark.e2e
@pytest.mark.parametrize("source", ["workdir", "ticket"])
def test_gem_miner_exports_a_saved_model_without_score_variables(gem_run, tmp_path, source):
  workdir, summary = gem_run
  version_dir = bake.export(export_base=str(tmp_path),
                            num_warmup_records=0, **({"workdir": workdir} if source == "workdir"
                                                     else {"ticket_path": summary["ticket"]}))
  keys = [k for k, _ in tf.train.list_variables(os.path.join(version_dir, "variables",
                                                             "variables"))]
  assert keys and not [k for k in keys if "score" in k.lower()], keys
  model = tf.saved_model.load(version_dir)
  nonzero = sum(int(np.count_nonzero(v.numpy())) for v in model.generator_variables
                if "kernel" in v.name)
  assert nonzero == summary["num_kept"]
