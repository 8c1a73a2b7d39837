"""End to end: bin/evaluate (slt_tf.workdir_evaluation) on configs/test.py runs."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import slt_tf  # pylint: disable=unused-import
from slt_tf import checkpoints
from slt_tf import errors
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib
from slt_tf import workdir_evaluation

NUM_STEPS = 10
METRIC_KEYS = ("fid", "kid", "kid_std", "inception_score", "precision", "recall", "density",
               "coverage", "confident_fraction", "confident_classes")


@pytest.fixture(scope="module")
def train(run_binary, shared_dirs):
  """`train(workdir, *overrides)`: bin/find_ticket, NUM_STEPS of configs/test.py (session data)."""
  data_dir, cache_dir = shared_dirs

  def run(workdir, *overrides):
    run_binary("bin.find_ticket", "--config=configs/test.py", f"--workdir={workdir}",
               f"--config.num_steps={NUM_STEPS}", "--config.features.weights=none",
               f"--config.dataset.data_dir={data_dir}",
               f"--config.features.cache_dir={cache_dir}", *overrides).check()

  return run


@pytest.fixture(scope="module")
def ticket_run(train, tmp_path_factory):
  """A ticket run whose training also evaluates every 5 steps (the train.py hook)."""
  workdir = str(tmp_path_factory.mktemp("ticket") / "w")
  train(workdir, "--config.eval.every_steps=5", "--config.eval.num_samples=64")
  return workdir


@pytest.fixture(scope="module")
def evaluated_ticket(run_binary, ticket_run):
  result = run_binary("bin.evaluate", f"--workdir={ticket_run}", "--num_samples=96",
                      "--batch_size=40").check()
  with open(os.path.join(ticket_run, "metrics.json")) as f:
    return json.load(f), result


def event_scalars(directory, newest_file_only=False):
  """{tag: {step: value}} of the TensorBoard event files in `directory`.

  Training's periodic evaluation and bin/evaluate both log the final step, each in its own
  file; with 96 samples in 256 dimensions FID's covariance is singular, so the two values
  differ in the last digits. `newest_file_only` reads only bin/evaluate's file.
  """
  scalars = {}
  names = sorted(os.listdir(directory),
                 key=lambda name: os.path.getmtime(os.path.join(directory, name)))
  for name in names[-1:] if newest_file_only else names:
    for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
      for value in event.summary.value:
        number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else \
            value.simple_value
        scalars.setdefault(value.tag, {})[event.step] = number
  return scalars


@pytest.mark.e2e
def test_evaluate_on_a_test_config_run_writes_finite_metrics(evaluated_ticket):
  metrics, _ = evaluated_ticket
  for key in METRIC_KEYS:
    if key == "kid_std":  # One KID block below 1025 samples: no standard error.
      assert metrics[key] is None
      continue
    assert metrics[key] is not None and math.isfinite(metrics[key]), key
  assert metrics["fid"] >= 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["coverage"] <= 1
  assert 1.0 <= metrics["inception_score"] <= 10.0


@pytest.mark.e2e
def test_metrics_name_split_network_step_and_sample_counts(evaluated_ticket):
  metrics, _ = evaluated_ticket
  assert metrics["num_samples"] == 96
  assert metrics["num_real"] == 300  # digits' held-out test split
  assert metrics["split"] == "test" and metrics["dataset"] == "digits"
  assert metrics["eval_network"] == "digits_eval_cnn"
  assert metrics["step"] == NUM_STEPS and metrics["checkpoint"].endswith(f"ckpt-{NUM_STEPS}")
  assert metrics["untrained"] is False and metrics["method"] == "edge_popup"
  assert metrics["samples_per_second"] > 0 and metrics["peak_memory_mb"] > 0


@pytest.mark.e2e
def test_evaluate_prints_throughput_and_peak_memory(evaluated_ticket):
  _, result = evaluated_ticket
  assert "samples/s" in result.stdout and "peak memory" in result.stdout


@pytest.mark.e2e
def test_evaluate_writes_tensorboard_eval_scalars_at_the_final_step(evaluated_ticket, ticket_run):
  metrics, _ = evaluated_ticket
  scalars = event_scalars(os.path.join(ticket_run, "tensorboard", "eval"), newest_file_only=True)
  assert scalars["eval/fid"][NUM_STEPS] == pytest.approx(metrics["fid"], rel=1e-6)
  assert "eval/coverage" in scalars


@pytest.mark.e2e
def test_periodic_evaluation_during_training_logs_every_5_steps(ticket_run):
  scalars = event_scalars(os.path.join(ticket_run, "tensorboard", "eval"))
  assert {5, NUM_STEPS} <= set(scalars["eval/fid"])


@pytest.mark.e2e
def test_restored_generator_equals_the_ticket_files_generator(ticket_run):
  config = workdir_lib.read_config(ticket_run)
  restored, (path, step) = workdir_lib.restore_generator(
      ticket_run, workdir_lib.generator_spec(ticket_run))
  assert path.endswith(f"ckpt-{NUM_STEPS}") and step == NUM_STEPS
  from_ticket = ticket_lib.build_generator(ticket_lib.load(os.path.join(ticket_run, "ticket.slt")))
  z = tf.random.stateless_normal([8, config.generator.latent_dim], seed=[1, 2])
  np.testing.assert_array_equal(restored(z, training=False).numpy(),
                                from_ticket(z, training=False).numpy())


@pytest.mark.e2e
def test_untrained_mode_evaluates_step_0_into_its_own_file(run_binary, ticket_run,
                                                          evaluated_ticket):
  run_binary("bin.evaluate", f"--workdir={ticket_run}", "--num_samples=64", "--untrained").check()
  with open(os.path.join(ticket_run, "metrics_untrained.json")) as f:
    floor = json.load(f)
  assert floor["step"] == 0 and floor["untrained"] is True and floor["checkpoint"] is None
  assert math.isfinite(floor["fid"])
  with open(os.path.join(ticket_run, "metrics.json")) as f:  # Untouched.
    assert json.load(f)["step"] == NUM_STEPS


@pytest.mark.e2e
def test_dense_run_is_evaluated_from_its_checkpoint(train, tmp_path):
  workdir = str(tmp_path / "dense")
  train(workdir, "--config.method=dense")
  metrics = workdir_evaluation.evaluate_workdir(workdir, num_samples=48, batch_size=48)
  assert metrics["method"] == "dense" and metrics["step"] == NUM_STEPS
  assert math.isfinite(metrics["fid"])


@pytest.mark.e2e
def test_evaluate_without_a_run_gives_a_one_line_error(run_binary, tmp_path):
  run_binary("bin.evaluate", f"--workdir={tmp_path}").error_line(
      "config.json does not exist", "bin/find_ticket")


def test_evaluate_without_checkpoint_suggests_training_or_untrained(ticket_run, tmp_path):
  for name in (workdir_lib.CONFIG_FILE, workdir_lib.GENERATOR_FILE):
    shutil.copy(os.path.join(ticket_run, name), tmp_path / name)
  with pytest.raises(errors.SltError, match="no checkpoint.*--untrained"):
    workdir_evaluation.evaluate_workdir(str(tmp_path), num_samples=8)


def test_checkpoint_step_parses_the_trainers_names():
  assert checkpoints.checkpoint_step("/w/checkpoints/ckpt-1500") == 1500
  with pytest.raises(errors.SltError, match="ckpt-N"):
    checkpoints.checkpoint_step("/w/checkpoints/model")
