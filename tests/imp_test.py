"""Tests for slt_tf.imp: magnitude pruning against a NumPy reference, bit-exact rewinding, the
schedule, and method=imp end to end on configs/test.py with its SavedModel export."""

import json
import os
import shutil
import types

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import errors
from slt_tf import generators
from slt_tf import imp
from slt_tf import masking
from slt_tf import train
from slt_tf.export import bake
from slt_tf import checkpoints
from slt_tf import workdir as workdir_lib


# ------------------------------------------------------------------ NumPy reference pruning.

def _reference_keep(values, previous, keep_fraction):
  """Python reference: rank the still-kept entries by (|value| descending, index ascending)
  with `sorted` on exact float64 keys and keep the first k = round(keep_fraction * n)."""
  flat, kept = values.reshape(-1).astype(np.float64), previous.reshape(-1)
  k = masking.num_kept(flat.size, keep_fraction)
  order = sorted((i for i in range(flat.size) if kept[i]), key=lambda i: (-abs(flat[i]), i))
  mask = np.zeros(flat.size, bool)
  mask[order[:k]] = True
  return mask


def _kernels(seed=0, ties=False):
  rng = np.random.default_rng(seed)
  shapes = {"dense_in": (6, 20), "up0": (4, 4, 3, 5), "conv_out": (3, 3, 3, 1)}
  kernels = {}
  for name, shape in shapes.items():
    values = rng.standard_normal(shape).astype(np.float32)
    if ties:  # Few distinct magnitudes, both signs: ties must go by index.
      values = (rng.choice([-0.5, 0.25, 0.5, 1.0], shape)).astype(np.float32)
    kernels[name] = values
  return kernels


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("keep_fraction", [0.9, 0.5, 0.1, 0.01])
def test_layer_scope_keeps_exactly_the_largest_magnitudes_of_each_layer(ties, keep_fraction):
  kernels = _kernels(ties=ties)
  # A previous round kept a random 95% subset: a pruned weight is never kept again.
  rng = np.random.default_rng(1)
  previous = {n: rng.random(k.shape) < 0.95 for n, k in kernels.items()}
  masks = imp.magnitude_masks(kernels, previous, keep_fraction, "layer")
  for name, kernel in kernels.items():
    expected = _reference_keep(kernel, previous[name], keep_fraction)
    np.testing.assert_array_equal(masks[name].reshape(-1), expected, err_msg=name)
    assert masks[name].shape == kernel.shape and masks[name].dtype == bool
    assert not np.any(masks[name] & ~previous[name])
    smallest_kept = np.abs(kernel[masks[name]]).min()
    assert np.all(np.abs(kernel[previous[name] & ~masks[name]]) <= smallest_kept)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("keep_fraction", [0.5, 0.1])
def test_global_scope_keeps_exactly_the_largest_magnitudes_over_all_layers(ties, keep_fraction):
  kernels = _kernels(seed=3, ties=ties)
  previous = {n: np.ones(k.shape, bool) for n, k in kernels.items()}
  masks = imp.magnitude_masks(kernels, previous, keep_fraction, "global")
  flat = np.concatenate([k.reshape(-1) for k in kernels.values()])
  expected = _reference_keep(flat, np.ones(flat.size, bool), keep_fraction)
  got = np.concatenate([masks[n].reshape(-1) for n in kernels])
  np.testing.assert_array_equal(got, expected)
  fractions = [masks[n].mean() for n in kernels]
  assert not ties or len(set(np.round(fractions, 6))) > 1  # Layers keep different fractions.


def test_schedule_boundaries_fractions_and_total_updates():
  schedule = imp.Schedule(num_steps=100, rounds=3, rewind_step=10, keep_fraction=0.1)
  assert schedule.boundaries() == [100, 190, 280]
  assert schedule.total_steps == 370
  np.testing.assert_allclose(schedule.keep_fractions(), [1.0, 0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1])


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(rounds=0), "imp.rounds must be an integer >= 1"),
    (dict(rewind_step=100), "imp.rewind_step must be below num_steps (100)"),
    (dict(rewind_step=-1), "imp.rewind_step must be an integer >= 0"),
    (dict(scope="per_channel"), "choose layer or global"),
    (dict(keep_fraction=0.0), "keep_fraction must be in (0, 1]"),
])
def test_schedule_rejects_bad_values_in_one_line(kwargs, fragment):
  values = dict(num_steps=100, rounds=2, rewind_step=5, keep_fraction=0.2, scope="layer")
  values.update(kwargs)
  with pytest.raises(errors.SltError) as error:
    imp.Schedule(**values)
  assert fragment in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------ rewinding, through the callback.

def _dense_generator():
  spec = generators.GeneratorSpec("dcgan", 8, 1, latent_dim=6, filters=(8, 4), method="imp",
                                  keep_fraction=0.25)
  return generators.build(spec)


def _perturb(generator, rng):
  """Stands in for training: new kernel, bias and batch-norm values."""
  for layer in generator.weight_layers():
    layer.kernel.assign(rng.standard_normal(layer.kernel.shape).astype(np.float32))
    if layer.bias is not None:
      layer.bias.assign(rng.standard_normal(layer.bias.shape).astype(np.float32))
  for layer in generator.batch_norm_layers():
    layer.moving_mean.assign(rng.standard_normal(layer.moving_mean.shape).astype(np.float32))
    layer.moving_variance.assign(rng.random(layer.moving_variance.shape).astype(np.float32))


def _values(generator):
  return {v.path: np.array(v.numpy()) for v in generator.variables}


def test_prune_and_rewind_go_back_bit_exactly_to_the_rewind_steps_values():
  generator = _dense_generator()
  assert generator.mask_rule is None and all(l.kernel.trainable for l in generator.weight_layers())
  state = imp.make_state(generator, [])
  schedule = imp.Schedule(num_steps=6, rounds=2, rewind_step=2, keep_fraction=0.25)
  iterations = tf.Variable(0, dtype=tf.int64)
  callback = imp.IterativePruning(state, schedule)
  callback.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=iterations),
                                           generator=generator))
  rng = np.random.default_rng(0)
  callback.on_train_begin()
  recorded = None
  masks = {l.name: np.ones(l.kernel.shape, bool) for l in generator.weight_layers()}
  for step in range(1, schedule.total_steps + 1):
    _perturb(generator, rng)
    before = {l.name: np.array(l.kernel.numpy()) for l in generator.weight_layers()}
    iterations.assign(step)
    callback.on_train_batch_end(step - 1)
    # Every other step: kernels masked (exact zeros where pruned), nothing else touched.
    for layer in generator.weight_layers():
      if step not in schedule.boundaries():
        np.testing.assert_array_equal(layer.kernel.numpy(),
                                      before[layer.name] * masks[layer.name])
    if step == schedule.rewind_step:
      recorded = _values(generator)
    if step in schedule.boundaries():
      r = schedule.boundaries().index(step) + 1
      keep = schedule.keep_fractions()[r]
      masked_before = {n: k * masks[n] for n, k in before.items()}
      masks = {n: _reference_keep(k, masks[n], keep).reshape(k.shape)
               for n, k in masked_before.items()}
      for name, mask in state.numpy_masks().items():
        np.testing.assert_array_equal(mask, masks[name], err_msg=name)
      rewound = _values(generator)
      for layer in generator.weight_layers():
        expected = recorded[layer.kernel.path] * masks[layer.name]
        assert rewound[layer.kernel.path].tobytes() == expected.tobytes(), layer.name
        if layer.bias is not None:
          assert rewound[layer.bias.path].tobytes() == recorded[layer.bias.path].tobytes()
      for layer in generator.batch_norm_layers():
        for v in (layer.moving_mean, layer.moving_variance):
          assert rewound[v.path].tobytes() == recorded[v.path].tobytes(), v.path
      assert int(state.round.numpy()) == r
  total = sum(m.size for m in masks.values())
  assert sum(int(m.sum()) for m in masks.values()) == sum(
      masking.num_kept(m.size, 0.25) for m in masks.values()) < total


def test_pruning_without_a_recording_is_an_error():
  state = imp.make_state(_dense_generator(), [])
  with pytest.raises(errors.SltError, match="no recorded state"):
    state.prune_and_rewind(0.5, "layer")


# ------------------------------------------------------------------------ end to end + export

def _config(tmp_path_factory, **overrides):
  shared = tmp_path_factory.getbasetemp()
  config = test_config.get_config()
  config.method = "imp"
  config.num_steps = 8
  config.keep_fraction = 0.3
  config.imp.rounds = 2
  config.imp.rewind_step = 2
  config.checkpoint_every_steps = config.log_every_steps = config.sample_every_steps = 4
  config.features.weights = "none"
  config.dataset.data_dir = os.path.join(shared, "tfds")
  config.features.cache_dir = os.path.join(shared, "cache")
  for key, value in overrides.items():
    setattr(config.imp, key, value)
  return config


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("imp_run"))
  config = _config(tmp_path_factory)
  summary = train.train_and_evaluate(config, workdir, strategy=tf.distribute.get_strategy())
  return config, workdir, summary


@pytest.mark.e2e
def test_imp_run_trains_all_rounds_and_keeps_exactly_k_per_layer(imp_run):
  config, workdir, summary = imp_run
  schedule = train.imp_schedule(config)
  assert summary["step"] == summary["weight_updates"] == schedule.total_steps == 8 + 2 * 6
  assert "ticket" not in summary and not os.path.exists(os.path.join(workdir, "ticket.slt"))
  masks = imp.load_masks(summary["imp_masks"])
  assert summary["num_kept"] == sum(int(m.sum()) for m in masks.values()) == sum(
      masking.num_kept(m.size, 0.3) for m in masks.values())
  # The checkpoint's kernels are zero exactly where the masks prune.
  checkpoint, _ = workdir_lib.latest_checkpoint(workdir)
  generator = checkpoints.restore_generator(workdir_lib.generator_spec(workdir), checkpoint)
  for layer in generator.weight_layers():
    kernel = layer.kernel.numpy()
    assert np.all(kernel[~masks[layer.name]] == 0), layer.name
    assert np.count_nonzero(kernel) == masks[layer.name].sum(), layer.name
  rounds = json.load(open(os.path.join(workdir, workdir_lib.IMP_ROUNDS_FILE)))
  assert [r["after_step"] for r in rounds] == schedule.boundaries()


@pytest.mark.e2e
def test_resuming_across_a_round_boundary_gives_the_uninterrupted_run(imp_run, tmp_path):
  config, workdir, _ = imp_run
  final = os.path.join(workdir, "checkpoints", "ckpt-20")
  expected = tf.train.load_checkpoint(final)
  copy = str(tmp_path / "resumed")
  shutil.copytree(workdir, copy)
  # ckpt-12 lies between the boundaries after steps 8 and 14: the resumed run prunes and
  # rewinds at 14 from the checkpointed masks and recorded state.
  train.train_and_evaluate(config, copy, strategy=tf.distribute.get_strategy(),
                           resume_from="ckpt-12")
  got = tf.train.load_checkpoint(os.path.join(copy, "checkpoints", "ckpt-20"))
  names = [n for n in expected.get_variable_to_shape_map() if "CHECKPOINTABLE" not in n]
  assert any(n.startswith("imp/") for n in names), names
  for name in names:
    np.testing.assert_array_equal(got.get_tensor(name), expected.get_tensor(name), err_msg=name)


@pytest.mark.e2e
def test_imp_run_exports_a_saved_model_without_score_variables(imp_run, tmp_path):
  _, workdir, summary = imp_run
  version_dir = bake.export(export_base=str(tmp_path), workdir=workdir, num_warmup_records=0)
  keys = [k for k, _ in tf.train.list_variables(os.path.join(version_dir, "variables",
                                                             "variables"))]
  assert keys and not [k for k in keys if "score" in k.lower()], keys
  model = tf.saved_model.load(version_dir)
  nonzero = sum(int(np.count_nonzero(v.numpy())) for v in model.generator_variables
                if "kernel" in v.name)
  assert nonzero == summary["num_kept"]
  images = model.signatures["serving_default"](z=tf.zeros([2, 16]))["images"].numpy()
  assert images.shape == (2, 8, 8, 1) and np.all(np.isfinite(images))


def test_imp_config_errors_are_one_line(tmp_path_factory):
  config = _config(tmp_path_factory, rewind_step=8)
  with pytest.raises(errors.SltError, match=r"imp.rewind_step must be below num_steps \(8\)"):
    train.validate_config(config)
  config = _config(tmp_path_factory)
  config.lr_schedule = "cosine"
  with pytest.raises(errors.SltError, match="method=imp needs lr_schedule=constant"):
    train.validate_config(config)


def test_workdirs_written_before_the_imp_and_gem_miner_keys_still_resume(tmp_path):
  config = test_config.get_config()
  older = {k: v for k, v in config.to_dict().items() if k not in ("imp", "gem_miner")}
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(older))
  train.prepare_workdir(config, str(tmp_path), write=False)  # Same config: resumes.
  config.imp.rounds = 5  # Not the default: the older run did not have it.
  with pytest.raises(errors.SltError, match=r"different config \(imp.rounds: None there, 5 now"):
    train.prepare_workdir(config, str(tmp_path), write=False)
  del older["keep_fraction"]  # Only the later keys are matched at their defaults.
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(older))
  with pytest.raises(errors.SltError, match=r"different config \(keep_fraction: None there"):
    train.prepare_workdir(test_config.get_config(), str(tmp_path), write=False)
