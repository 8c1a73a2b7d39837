"""Global-batch semantics on several replicas: same step, same ticket, same moments, same z."""

import json

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import distribution
from slt_tf import errors
from slt_tf import generators
from slt_tf import sampling
from slt_tf import ticket as ticket_lib
from slt_tf import train
from slt_tf import workdir as workdir_lib


def _strategy(num_replicas):
  return distribution.logical_cpu_strategy(num_replicas)


def _config():
  config = test_config.get_config()
  config.features.weights = "none"  # A random digits_cnn: nothing to train or download.
  return config


def _random_real_moments(config):
  dim = train.feature_network(config, channels=1).feature_dim
  rng = np.random.default_rng(7)
  return (rng.uniform(-0.5, 0.5, dim).astype(np.float32),
          rng.uniform(0.05, 0.5, dim).astype(np.float32))


def _one_step(num_replicas, real_moments=None):
  """Scores, BN statistics, AMA values and logs after one step of configs/test.py."""
  config = _config()
  real_moments = real_moments or _random_real_moments(config)
  search = train.build_model(config, _strategy(num_replicas), 1, *real_moments)
  indices = tf.data.Dataset.range(config.batch_size).batch(config.batch_size)
  history = search.fit(indices, epochs=1, verbose=0).history
  state = {f"{layer.name}/scores": layer.kernel_scores.numpy()
           for layer in search.generator.scored_layers()}
  for layer in search.generator.batch_norm_layers():
    state[f"{layer.name}/moving_mean"] = layer.moving_mean.numpy()
    state[f"{layer.name}/moving_variance"] = layer.moving_variance.numpy()
  state["ama_mean"] = search.ama_mean.value.numpy()
  state["ama_variance"] = search.ama_variance.value.numpy()
  return state, {name: values[0] for name, values in history.items()}


@pytest.mark.e2e
def test_one_step_gives_the_same_scores_on_one_and_two_replicas_with_the_same_global_batch():
  one, one_logs = _one_step(1)
  two, two_logs = _one_step(2)
  initial = {layer.name: layer.kernel_scores.numpy() for layer in generators.build(
      workdir_lib.spec_from_config(_config(), channels=1)).scored_layers()}
  for key, value in one.items():
    np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if key.endswith("/scores"):  # The step moved the scores (Adam: about lr per score).
      assert np.abs(value - initial[key.split("/")[0]]).max() > 1e-3, key
  for name, value in one_logs.items():
    np.testing.assert_allclose(two_logs[name], value, rtol=1e-5, err_msg=name)


@pytest.mark.e2e
def test_loss_moments_on_two_replicas_are_the_moments_of_the_global_batch():
  config = _config()
  # Float64 moments of the whole first global batch, from an identical generator and network.
  twin = generators.build(workdir_lib.spec_from_config(config, channels=1))
  network = train.feature_network(config, channels=1)
  z = sampling.latents(tf.range(config.batch_size, dtype=tf.int64), config.generator.latent_dim,
                       stream=config.seed)
  features = network(twin(z, training=True)).numpy().astype(np.float64)  # (B, D)
  global_mean, global_variance = features.mean(0), features.var(0)
  # With real statistics equal to the global batch's, the loss sees (nearly) zero gaps...
  _, logs = _one_step(2, (global_mean.astype(np.float32), global_variance.astype(np.float32)))
  # ...whereas per-replica variances averaged, the classic mistake, leave a clear gap.
  averaged = np.mean([half.var(0) for half in np.split(features, 2)], axis=0)
  mistaken_variance_loss = np.mean((global_variance - averaged) ** 2)
  assert mistaken_variance_loss > 1e-3 * np.mean(global_variance ** 2)
  assert logs["variance_loss"] < 1e-6 * mistaken_variance_loss
  assert logs["mean_loss"] < 1e-6 * np.mean(global_mean ** 2)


@pytest.mark.parametrize("num_workers, local_replicas", [(1, 2), (2, 1), (2, 2)])
def test_replica_sample_indices_split_each_global_batch_into_distinct_consecutive_slices(
    num_workers, local_replicas):
  batch, start, num_steps = 8, 3, 6
  replicas = num_workers * local_replicas
  per_worker = []
  for worker in range(num_workers):
    context = tf.distribute.InputContext(num_input_pipelines=num_workers,
                                         input_pipeline_id=worker, num_replicas_in_sync=replicas)
    dataset = distribution.replica_sample_indices(start, num_steps, batch)(context)
    per_worker.append([element.numpy() for element in dataset])
  for step_number, step in enumerate(range(start, num_steps)):
    slices = [elements[step_number * local_replicas + local]
              for elements in per_worker for local in range(local_replicas)]  # replica order
    np.testing.assert_array_equal(np.concatenate(slices),
                                  np.arange(step * batch, (step + 1) * batch))
  for elements in per_worker:
    assert len(elements) == (num_steps - start) * local_replicas


def test_latents_of_a_global_batch_are_distinct_per_replica_and_reproducible():
  config = _config()
  strategy = _strategy(2)
  indices = tf.data.Dataset.range(2 * config.batch_size).batch(config.batch_size)
  for step, global_indices in enumerate(strategy.experimental_distribute_dataset(indices)):
    local = [t.numpy() for t in strategy.experimental_local_results(global_indices)]
    np.testing.assert_array_equal(np.concatenate(local), np.arange(
        step * config.batch_size, (step + 1) * config.batch_size))
    latents = [sampling.latents(tf.constant(x), config.generator.latent_dim, config.seed).numpy()
               for x in local]
    assert not np.any(np.all(np.isclose(latents[0][:, None], latents[1][None]), axis=-1))
    whole = sampling.latents(tf.constant(np.concatenate(local)), config.generator.latent_dim,
                             config.seed).numpy()
    np.testing.assert_array_equal(np.concatenate(latents), whole)


@pytest.mark.e2e
def test_ten_steps_on_one_and_two_replicas_give_masks_agreeing_on_at_least_99_5_percent(
    replica_tickets):
  one, two = ticket_lib.load(replica_tickets[1]), ticket_lib.load(replica_tickets[2])
  assert one.masks.keys() == two.masks.keys()
  agreeing = sum(int(np.sum(one.masks[k] == two.masks[k])) for k in one.masks)
  assert agreeing / one.num_weights >= 0.995
  assert one.num_kept == two.num_kept
  for key, value in one.batch_norm.items():
    np.testing.assert_allclose(two.batch_norm[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_multi_worker_strategy_without_tf_config_is_a_one_line_error(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(errors.SltError, match="needs TF_CONFIG"):
    distribution.make_strategy("multi_worker")


def test_malformed_tf_config_is_a_one_line_error(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(errors.SltError, match="TF_CONFIG is not a JSON object"):
    distribution.make_strategy("auto")


def test_auto_strategy_ignores_a_tf_config_of_one_task(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                              "task": {"type": "worker", "index": 0}}))
  strategy = distribution.make_strategy("auto")
  assert not distribution.is_multi_worker(strategy)
  assert distribution.is_chief(strategy)


def test_broadcast_from_chief_without_workers_returns_the_arrays_unchanged():
  arrays = [np.arange(3, dtype=np.float32), np.ones([2, 2], np.float32)]
  for got, expected in zip(distribution.broadcast_from_chief(_strategy(2), arrays), arrays):
    np.testing.assert_array_equal(got, expected)
