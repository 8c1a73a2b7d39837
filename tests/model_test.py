"""Tests for slt_tf.model.TicketSearch: what `fit()` changes, and that it is the same everywhere."""

import math

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import callbacks as callbacks_lib
from slt_tf import distribution
from slt_tf import errors
from slt_tf import generators
from slt_tf import model as model_lib
from slt_tf import sampling

IMAGE_SIZE, CHANNELS, LATENT_DIM, FEATURE_DIM, BATCH = 8, 1, 8, 12, 8
LATENT_SEED = 3


class _Projection:
  """A frozen stand-in feature network: tanh of a fixed random projection of the pixels."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    pixels = IMAGE_SIZE * IMAGE_SIZE * CHANNELS
    self.matrix = tf.constant(rng.standard_normal((pixels, FEATURE_DIM)) / math.sqrt(pixels),
                              tf.float32)

  def __call__(self, images):
    flat = tf.reshape(images, [tf.shape(images)[0], -1])  # (B, S*S*C)
    return tf.tanh(3.0 * tf.matmul(flat, self.matrix))  # (B, D)


def _real_moments():
  rng = np.random.default_rng(1)
  return (rng.uniform(-0.5, 0.5, FEATURE_DIM).astype(np.float32),
          rng.uniform(0.1, 0.3, FEATURE_DIM).astype(np.float32))


def _spec(method="edge_popup"):
  # Global top-k over kaiming_uniform scores (bound 1/sqrt(fan_in)) would start with whole
  # layers masked out (conv_out among them: no gradient reaches the other layers), so the
  # global search here uses the paper code's U(-0.1, 0.1) scores.
  score_init = "uniform_01" if method == "global_edge_popup" else "kaiming_uniform"
  return generators.GeneratorSpec("resnet32", IMAGE_SIZE, CHANNELS, latent_dim=LATENT_DIM,
                                  filters=(8, 4), method=method, keep_fraction=0.3, seed=5,
                                  score_init=score_init)


def _search(method="edge_popup", optimizer=None, strategy=None, run_eagerly=False,
            ama_learning_rate=1e-3):
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    generator = generators.build(_spec(method))
    real_mean, real_variance = _real_moments()
    search = model_lib.TicketSearch(generator, _Projection(), real_mean, real_variance,
                                    latent_seed=LATENT_SEED, ama_learning_rate=ama_learning_rate)
    search.compile(optimizer=optimizer or keras.optimizers.Adam(0.05, beta_1=0.5),
                   run_eagerly=run_eagerly, jit_compile=False)
  return search


def _indices(num_steps, batch=BATCH):
  return tf.data.Dataset.range(num_steps * batch).batch(batch, drop_remainder=True)


def _snapshot(variables):
  return {v.path: v.numpy().copy() for v in variables}


def _frozen_variables(generator):
  return [v for layer in generator.weight_layers() for v in (layer.kernel, layer.bias)
          if v is not None]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["edge_popup", "global_edge_popup"])
def test_fit_moves_only_scores_and_leaves_frozen_weights_bit_identical(method):
  search = _search(method)
  generator = search.generator
  scores = [layer.kernel_scores for layer in generator.scored_layers()]
  assert {id(v) for v in search.trainable_variables} == {id(v) for v in scores}
  frozen_before = _snapshot(_frozen_variables(generator))
  real_before = _snapshot([search.real_mean, search.real_variance])
  scores_before = _snapshot(scores)
  masks_before = [layer.masks()[0].numpy() for layer in generator.scored_layers()]
  history = search.fit(_indices(3), epochs=1, verbose=0, shuffle=False)
  assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
  for path, value in _snapshot(_frozen_variables(generator)).items():
    assert value.tobytes() == frozen_before[path].tobytes(), path
  for path, value in _snapshot([search.real_mean, search.real_variance]).items():
    assert value.tobytes() == real_before[path].tobytes(), path
  for path, value in _snapshot(scores).items():
    assert np.abs(value - scores_before[path]).max() > 0.05, path  # Adam: ~lr per step.
  for layer in generator.batch_norm_layers():
    assert layer.gamma is None and layer.beta is None
  masks_after = [layer.masks()[0].numpy() for layer in generator.scored_layers()]
  assert sum(int(np.sum(a != b)) for a, b in zip(masks_before, masks_after)) > 0
  assert search.ama_mean.steps.numpy() == 3 and search.optimizer.iterations.numpy() == 3


@pytest.mark.e2e
def test_dense_method_moves_kernels_and_biases_and_has_no_scores():
  search = _search("dense")
  generator = search.generator
  assert not generator.scored_layers() or all(
      layer.kernel_scores is None for layer in generator.scored_layers())
  assert not any("scores" in v.path for v in search.weights)
  assert {id(v) for v in search.trainable_variables} == {
      id(v) for v in _frozen_variables(generator)}
  before = _snapshot(_frozen_variables(generator))
  search.fit(_indices(2), epochs=1, verbose=0, shuffle=False)
  for path, value in _snapshot(_frozen_variables(generator)).items():
    assert np.abs(value - before[path]).max() > 0, path


def _numpy_first_ama_value(gap, learning_rate, beta_1=0.5, beta_2=0.999, epsilon=1e-8):
  """One PyTorch Adam step from v = 0 on MSE(v, gap), float64."""
  grad = -2.0 * gap / gap.size
  first, second = (1 - beta_1) * grad, (1 - beta_2) * grad ** 2
  return -(learning_rate / (1 - beta_1)) * first / (
      np.sqrt(second) / math.sqrt(1 - beta_2) + epsilon)


@pytest.mark.e2e
def test_one_step_loss_and_score_update_equal_references_of_the_true_moment_loss():
  learning_rate, ama_learning_rate = 0.5, 1e-2
  search = _search(optimizer=keras.optimizers.SGD(learning_rate),
                   ama_learning_rate=ama_learning_rate)
  # An identical generator (same spec: same frozen weights and scores) for the references.
  twin = generators.build(_spec())
  indices = np.arange(BATCH)
  z = sampling.latents(tf.constant(indices, tf.int64), LATENT_DIM, LATENT_SEED)
  scores = [layer.kernel_scores for layer in twin.scored_layers()]
  real_mean, real_variance = (x.astype(np.float64) for x in _real_moments())
  features = _Projection()(twin(z, training=True)).numpy().astype(np.float64)
  mean_gap = real_mean - features.mean(0)
  variance_gap = real_variance - features.var(0)
  mean_weights = _numpy_first_ama_value(mean_gap, ama_learning_rate)
  variance_weights = _numpy_first_ama_value(variance_gap, ama_learning_rate)

  scores_before = [layer.kernel_scores.numpy().copy() for layer in search.generator.scored_layers()]
  history = search.fit(_indices(1), epochs=1, verbose=0, shuffle=False).history
  expected_loss = mean_weights @ mean_gap + variance_weights @ variance_gap
  np.testing.assert_allclose(history["loss"][0], expected_loss, rtol=1e-4)
  np.testing.assert_allclose(history["mean_loss"][0], np.mean(mean_gap ** 2), rtol=1e-4)
  np.testing.assert_allclose(history["ama_mean_loss"][0], np.mean(mean_gap ** 2), rtol=1e-4)
  np.testing.assert_allclose(history["variance_loss"][0], np.mean(variance_gap ** 2), rtol=1e-4)
  np.testing.assert_allclose(search.ama_mean.value.numpy(), mean_weights, rtol=1e-4)
  np.testing.assert_allclose(search.ama_variance.value.numpy(), variance_weights, rtol=1e-4)

  # The SGD step is -lr * dL/ds of the true loss on the full batch, v held constant.
  with tf.GradientTape() as tape:
    f = _Projection()(twin(z, training=True))  # (B, D)
    fake_mean = tf.reduce_mean(f, axis=0)
    fake_variance = tf.reduce_mean(tf.square(f - fake_mean), axis=0)
    loss = (tf.reduce_sum(mean_weights.astype(np.float32) * (real_mean.astype(np.float32)
                                                             - fake_mean))
            + tf.reduce_sum(variance_weights.astype(np.float32)
                            * (real_variance.astype(np.float32) - fake_variance)))
  gradients = tape.gradient(loss, scores)
  for before, layer, gradient in zip(scores_before, search.generator.scored_layers(), gradients):
    step = (before - layer.kernel_scores.numpy()) / learning_rate
    scale = np.abs(gradient.numpy()).max()
    assert scale > 0
    np.testing.assert_allclose(step, gradient.numpy(), rtol=0, atol=1e-3 * scale)


def _one_step(mode, method):
  """Scores, BN statistics, AMA values and loss after one SGD step in `mode`."""
  strategy = distribution.logical_cpu_strategy(2) if mode == "mirrored" else None
  search = _search(method, optimizer=keras.optimizers.SGD(0.5), strategy=strategy,
                   run_eagerly=mode == "eager", ama_learning_rate=1e-2)
  history = search.fit(_indices(1), epochs=1, verbose=0, shuffle=False).history
  generator = search.generator
  state = {f"{layer.name}/scores": layer.kernel_scores.numpy()
           for layer in generator.scored_layers()}
  for layer in generator.batch_norm_layers():
    state[f"{layer.name}/moving_mean"] = layer.moving_mean.numpy()
    state[f"{layer.name}/moving_variance"] = layer.moving_variance.numpy()
  state["ama_mean"] = search.ama_mean.value.numpy()
  state["ama_variance"] = search.ama_variance.value.numpy()
  state["loss"] = np.array(history["loss"])
  return state


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["edge_popup", "global_edge_popup"])
def test_one_step_is_the_same_eagerly_in_tf_function_and_mirrored_over_two_cpus(method):
  # Measured: max abs difference 1.5e-8 (tf.function) and 6e-8 (mirrored) vs eager.
  eager, graph, mirrored = (_one_step(mode, method) for mode in ("eager", "function", "mirrored"))
  initial = {layer.name: layer.kernel_scores.numpy()
             for layer in generators.build(_spec(method)).scored_layers()}
  for key, value in eager.items():
    for other in (graph, mirrored):
      np.testing.assert_allclose(other[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    if key.endswith("/scores"):  # The step is not a no-op.
      assert np.abs(value - initial[key.split("/")[0]]).max() > 1e-4, key


def test_step_flags_non_finite_updated_variables_exactly_whatever_the_network_does_with_nan():
  search = _search()
  search.optimizer.build(search.generator.trainable_variables)
  logs = search.train_step(tf.range(BATCH, dtype=tf.int64))
  assert logs["non_finite"] == 0.0
  # An Inf score gives an Inf/NaN update exactly, whatever a CPU's ReLU makes of NaN downstream.
  scores = search.generator.scored_layers()[0].kernel_scores
  scores.assign(tf.tensor_scatter_nd_update(
      tf.reshape(scores, [-1]), [[0]], [float("inf")]).numpy().reshape(scores.shape))
  logs = search.train_step(tf.range(BATCH, 2 * BATCH, dtype=tf.int64))
  assert logs["non_finite"] == 1.0


class _Trajectory(keras.callbacks.Callback):
  """float64 copies of the trained variables after each step (as the callbacks see them)."""

  def __init__(self):
    super().__init__()
    self.steps = []

  def on_train_batch_end(self, batch, logs=None):
    self.steps.append([v.numpy().astype(np.float64) for v in self.model.trainable_variables])


@pytest.mark.e2e
@pytest.mark.parametrize("method, mode", [("edge_popup", "function"), ("dense", "function"),
                                          ("edge_popup", "mirrored")])
def test_ema_run_ends_on_the_float64_moving_average_of_its_trajectory(method, mode):
  momentum, num_steps = 0.6, 5
  strategy = (distribution.logical_cpu_strategy(2) if mode == "mirrored"
              else tf.distribute.get_strategy())
  with strategy.scope():  # The optimiser's variables too.
    optimizer = keras.optimizers.Adam(0.05, beta_1=0.5, use_ema=True, ema_momentum=momentum)
  search = _search(method, strategy=strategy, optimizer=optimizer)
  trained, after = _Trajectory(), _Trajectory()  # Before / after the averaging callback.
  search.fit(_indices(num_steps), epochs=1, verbose=0, shuffle=False,
             callbacks=[trained, callbacks_lib.FinalMovingAverage(num_steps), after])
  average = trained.steps[0]  # Keras's rule: the first step starts the average.
  for step in trained.steps[1:]:
    average = [momentum * a + (1 - momentum) * v for a, v in zip(average, step)]
  for variable, expected, at_last_step in zip(search.trainable_variables, average,
                                              after.steps[-1]):
    np.testing.assert_allclose(at_last_step, expected, rtol=1e-5, atol=1e-6)  # Checkpointed.
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)  # After fit.
  assert max(np.abs(last - expected).max()  # Not a no-op (biases before BN barely move).
             for last, expected in zip(trained.steps[-1], average)) > 1e-2
  # Steps before the last are left as trained: only the last checkpoint holds the averages.
  for before, trained_step in zip(after.steps[:-1], trained.steps[:-1]):
    for a, b in zip(before, trained_step):
      assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("momentum, method, fragments", [
    (1.0, "edge_popup", ("ema_momentum", "(0, 1)", "1.0")),
    (-0.1, "dense", ("ema_momentum", "(0, 1)")),
    ("0.9", "dense", ("ema_momentum", "'0.9'")),
    (0.9, "imp", ("ema_momentum", "edge_popup", "dense", "imp")),
    (0.9, "gem_miner", ("ema_momentum", "gem_miner", "ema_momentum=0")),
])
def test_bad_ema_momentum_is_one_error_naming_what_is_allowed(momentum, method, fragments):
  with pytest.raises(errors.SltError) as error:
    callbacks_lib.validate_ema_momentum(momentum, method)
  assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
  callbacks_lib.validate_ema_momentum(0.0, method)
