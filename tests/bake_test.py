"""Tests for slt_tf/export/bake.py: masks baked into the plain twin, from a workdir or a ticket."""

import json
import os
import shutil

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras  # pylint: disable=g-bad-import-order
import ml_collections
import numpy as np
import pytest

from slt_tf import checkpoints
from slt_tf import errors
from slt_tf import generators
from slt_tf import layers
from slt_tf import masking
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib
from slt_tf.export import bake

NUM_STEPS = 4  # Of short_run (tests/conftest.py).


@pytest.fixture(scope="module")
def ticket_run(short_run):
  workdir = short_run("edge_popup")
  return workdir, ticket_lib.load(os.path.join(workdir, "ticket.slt"))


@pytest.fixture(scope="module")
def dense_run(short_run):
  return short_run("dense")


@pytest.fixture(scope="module")
def baked(ticket_run):
  workdir, _ = ticket_run
  return bake.from_workdir(workdir)


def latents(num: int, latent_dim: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal([num, latent_dim]).astype(np.float32)


def variables_by_path(generator) -> dict[str, np.ndarray]:
  return {v.path: np.asarray(v) for v in generator.variables}


def assert_one_line(error):
  assert "\n" not in str(error.value), str(error.value)


def tiny_spec(**overrides) -> generators.GeneratorSpec:
  values = dict(name="dcgan", image_size=8, channels=3, latent_dim=6, filters=(16, 8), seed=3)
  values.update(overrides)
  return generators.GeneratorSpec(**values)


def with_random_scores(generator, seed: int = 0):
  rng = np.random.default_rng(seed)
  for layer in generator.scored_layers():
    layer.kernel_scores.assign(rng.standard_normal(layer.kernel_scores.shape))
    if layer.bias_scores is not None:
      layer.bias_scores.assign(rng.standard_normal(layer.bias_scores.shape))
  return generator


# -------------------------------------------------------------------------- the baked weights


@pytest.mark.e2e
def test_baked_kernels_are_seed_weights_times_ticket_masks_and_bn_statistics_are_the_tickets(
    ticket_run, baked):
  _, ticket = ticket_run
  plain, _ = baked
  regenerated = generators.build(ticket.spec)  # Frozen weights from the seed alone.
  for layer in regenerated.scored_layers():
    mask = ticket.masks[f"{layer.name}/kernel"]
    twin = plain.body.get_layer(layer.name)
    expected = np.asarray(layer.kernel, np.float64) * mask
    np.testing.assert_array_equal(np.asarray(twin.kernel, np.float64), expected)
    if layer.bias is not None:
      np.testing.assert_array_equal(np.asarray(twin.bias), np.asarray(layer.bias))
  for layer in plain.batch_norm_layers():
    np.testing.assert_array_equal(np.asarray(layer.moving_mean),
                                  ticket.batch_norm[f"{layer.name}/moving_mean"])
    np.testing.assert_array_equal(np.asarray(layer.moving_variance),
                                  ticket.batch_norm[f"{layer.name}/moving_variance"])
  # Four steps moved the statistics away from their initial values (0 and 1).
  assert any(np.abs(v).max() > 0 for k, v in ticket.batch_norm.items() if "mean" in k)


@pytest.mark.e2e
def test_baked_generator_computes_the_checkpointed_ticket_generator(ticket_run, baked):
  workdir, ticket = ticket_run
  plain, _ = baked
  path, _ = workdir_lib.latest_checkpoint(workdir)
  scored = checkpoints.restore_generator(ticket.spec, path)
  z = latents(5, ticket.spec.latent_dim)
  expected = scored(z, training=False).numpy()
  assert expected.std() > 1e-3  # Not a constant image.
  np.testing.assert_allclose(plain(z, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_baked_generator_has_only_plain_keras_layers_and_no_score_variables(baked):
  plain, _ = baked
  assert plain.plain and plain.mask_rule is None
  assert not plain.scored_layers()
  for layer in plain.weight_layers():
    assert type(layer) in (keras.layers.Dense, keras.layers.Conv2D,
                           keras.layers.Conv2DTranspose), type(layer)
    assert not isinstance(layer, layers.ScoredLayer)
  paths = [v.path for v in plain.variables]
  assert paths and not [p for p in paths if "score" in p]


@pytest.mark.e2e
def test_kept_fraction_of_every_baked_kernel_equals_the_tickets(ticket_run, baked):
  _, ticket = ticket_run
  plain, metadata = baked
  counts = bake.kept_counts(plain)
  assert set(counts) == {key.split("/")[0] for key in ticket.masks}
  for name, (nonzero, total) in counts.items():
    mask = ticket.masks[f"{name}/kernel"]
    assert (nonzero, total) == (int(mask.sum()), mask.size), name
    # Per-layer edge-popup keeps exactly k = round(keep_fraction * n) of every kernel.
    assert nonzero == masking.num_kept(total, ticket.spec.keep_fraction), name
  assert metadata["num_kernel_nonzero"] == ticket.num_kept
  assert metadata["num_kernel_weights"] == ticket.num_weights


@pytest.mark.e2e
def test_ticket_file_alone_bakes_exactly_the_checkpoints_weights(ticket_run, baked):
  workdir, _ = ticket_run
  from_checkpoint, checkpoint_metadata = baked
  from_ticket, ticket_metadata = bake.from_ticket_file(os.path.join(workdir, "ticket.slt"))
  expected = variables_by_path(from_checkpoint)
  actual = variables_by_path(from_ticket)
  assert sorted(actual) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(actual[path], value, err_msg=path)
  assert ticket_metadata["source"] == "ticket" and checkpoint_metadata["source"] == "checkpoint"
  assert ticket_metadata["step"] == checkpoint_metadata["step"] == NUM_STEPS


@pytest.mark.e2e
def test_metadata_names_method_keep_fraction_seed_spec_and_step(ticket_run, baked):
  workdir, ticket = ticket_run
  _, metadata = baked
  assert metadata["method"] == "edge_popup"
  assert metadata["keep_fraction"] == ticket.spec.keep_fraction == 0.1
  assert metadata["seed"] == ticket.spec.seed
  assert metadata["spec"] == ticket.spec.to_dict()
  assert metadata["step"] == NUM_STEPS
  assert metadata["source_path"] == os.path.join(os.path.abspath(workdir), "checkpoints",
                                                 f"ckpt-{NUM_STEPS}")
  json.dumps(metadata)  # Stored in slt_metadata.json.


@pytest.mark.e2e
def test_workdir_spec_comes_from_generator_json_or_in_older_workdirs_from_the_ticket(
    ticket_run, tmp_path):
  workdir, ticket = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  os.rename(os.path.join(copy, "ticket.slt"), os.path.join(copy, "ticket.keep"))
  assert workdir_lib.generator_spec(copy) == ticket.spec  # generator.json alone.
  os.remove(os.path.join(copy, workdir_lib.GENERATOR_FILE))  # A workdir of older slt_tf:
  with pytest.raises(errors.SltError, match="has no generator.json .*rerun bin/find_ticket"):
    workdir_lib.generator_spec(copy)
  assert workdir_lib.generator_spec(copy, fallback_channels=lambda name: 1) == ticket.spec
  os.rename(os.path.join(copy, "ticket.keep"), os.path.join(copy, "ticket.slt"))
  plain, _ = bake.from_workdir(copy)  # Export takes the ticket's channels, not the dataset's.
  assert plain.spec == ticket.spec


@pytest.mark.e2e
def test_dense_checkpoint_bakes_its_trained_kernels_unmasked(dense_run):
  plain, metadata = bake.from_workdir(dense_run)
  spec = workdir_lib.generator_spec(dense_run)
  assert spec.method == "dense"
  dense = checkpoints.restore_generator(spec, workdir_lib.latest_checkpoint(dense_run)[0])
  initial = generators.build(spec)
  for layer in dense.scored_layers():
    twin = plain.body.get_layer(layer.name)
    np.testing.assert_array_equal(np.asarray(twin.kernel), np.asarray(layer.kernel))
    # Trained: the kernels moved away from their seeded initial values.
    assert not np.array_equal(np.asarray(layer.kernel),
                              np.asarray(initial.body.get_layer(layer.name).kernel))
  z = latents(4, spec.latent_dim)
  np.testing.assert_allclose(plain(z, training=False).numpy(),
                             dense(z, training=False).numpy(), rtol=1e-5, atol=1e-6)
  assert metadata["method"] == "dense" and metadata["keep_fraction"] == 1.0
  assert metadata["num_kernel_nonzero"] == metadata["num_kernel_weights"]


def test_global_edge_popup_bakes_one_global_threshold():
  spec = tiny_spec(method="global_edge_popup", keep_fraction=0.2)
  generator = with_random_scores(generators.build(spec))
  plain = bake.bake(generator)
  masks = ticket_lib.current_masks(generator)
  counts = bake.kept_counts(plain)
  for name, (nonzero, total) in counts.items():
    assert (nonzero, total) == (int(masks[f"{name}/kernel"].sum()), masks[f"{name}/kernel"].size)
  total = sum(t for _, t in counts.values())
  assert sum(n for n, _ in counts.values()) == masking.num_kept(total, 0.2)
  # A global threshold keeps different fractions in different layers.
  assert len({round(n / t, 3) for n, t in counts.values()}) > 1
  z = latents(3, spec.latent_dim)
  np.testing.assert_allclose(plain(z, training=False).numpy(),
                             generator(z, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_mask_bias_bakes_masked_biases():
  generator = with_random_scores(generators.build(tiny_spec(mask_bias=True, keep_fraction=0.5)))
  plain = bake.bake(generator)
  masks = ticket_lib.current_masks(generator)
  biased = [layer for layer in generator.scored_layers() if layer.bias is not None]
  assert biased
  for layer in biased:
    bias_mask = masks[f"{layer.name}/bias"]
    np.testing.assert_array_equal(np.asarray(plain.body.get_layer(layer.name).bias),
                                  np.asarray(layer.bias) * bias_mask)
  z = latents(3, 6)
  np.testing.assert_allclose(plain(z, training=False).numpy(),
                             generator(z, training=False).numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- errors


def test_plain_generator_cannot_be_baked_again():
  with pytest.raises(errors.SltError, match="already plain"):
    bake.bake(generators.build(tiny_spec(), plain=True))


def test_missing_workdir_or_config_json_is_a_one_line_error(tmp_path):
  with pytest.raises(errors.SltError, match="does not exist") as e:
    bake.from_workdir(str(tmp_path / "nope"))
  assert_one_line(e)
  with pytest.raises(errors.SltError, match="config.json does not exist: .* not a run directory "
                     "of bin/find_ticket") as e:
    bake.from_workdir(str(tmp_path))
  assert_one_line(e)


@pytest.mark.e2e
def test_workdir_without_checkpoint_suggests_exporting_the_ticket(ticket_run, tmp_path):
  workdir, _ = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints"))
  with pytest.raises(errors.SltError, match=r"no checkpoint in .*; export its ticket alone with "
                     r"--ticket=.*ticket\.slt") as e:
    bake.from_workdir(copy)
  assert_one_line(e)


@pytest.mark.e2e
def test_truncated_checkpoint_is_a_one_line_error(ticket_run, tmp_path):
  workdir, _ = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  path, _ = workdir_lib.latest_checkpoint(copy)
  data = f"{path}.data-00000-of-00001"
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  with pytest.raises(errors.SltError, match=r"cannot restore the generator from checkpoint "
                     r".*ckpt-4 .*corrupt or from another generator") as e:
    bake.from_workdir(copy)
  assert_one_line(e)


@pytest.mark.e2e
def test_checkpoint_of_another_generator_is_a_one_line_error(ticket_run, tmp_path):
  workdir, _ = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, "ticket.slt"))
  config_path = os.path.join(copy, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["generator"]["filters"] = [24, 16]
  with open(config_path, "w") as f:
    json.dump(config, f)
  with pytest.raises(errors.SltError, match="generator.json holds generator .* the workdir is "
                     "inconsistent") as e:
    bake.from_workdir(copy)
  assert_one_line(e)
  spec = workdir_lib.spec_from_config(ml_collections.ConfigDict(config), channels=1)
  workdir_lib.write_generator_spec(copy, spec)
  with pytest.raises(errors.SltError, match="corrupt or from another generator") as e:
    bake.from_workdir(copy)
  assert_one_line(e)


@pytest.mark.e2e
def test_ticket_that_disagrees_with_config_json_is_refused(ticket_run, tmp_path):
  workdir, _ = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  config_path = os.path.join(copy, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["seed"] = 7
  with open(config_path, "w") as f:
    json.dump(config, f)
  with pytest.raises(errors.SltError, match="the workdir is inconsistent") as e:
    bake.from_workdir(copy)
  assert_one_line(e)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["flip_payload_byte", "flip_header_byte", "truncate"])
def test_tampered_ticket_file_is_a_checksum_error(ticket_run, tmp_path, damage):
  workdir, _ = ticket_run
  with open(os.path.join(workdir, "ticket.slt"), "rb") as f:
    blob = bytearray(f.read())
  if damage == "flip_payload_byte":
    blob[-100] ^= 0x01
  elif damage == "flip_header_byte":
    blob[40] ^= 0x20
  else:
    blob = blob[:len(blob) - 10]
  path = str(tmp_path / "ticket.slt")
  with open(path, "wb") as f:
    f.write(bytes(blob))
  with pytest.raises(errors.SltError, match="failed its SHA-256 checksum") as e:
    bake.from_ticket_file(path)
  assert_one_line(e)


@pytest.mark.e2e
def test_tampered_ticket_in_a_workdir_is_a_checksum_error(ticket_run, tmp_path):
  workdir, _ = ticket_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  path = os.path.join(copy, "ticket.slt")
  with open(path, "r+b") as f:
    f.seek(-50, os.SEEK_END)
    byte = f.read(1)
    f.seek(-50, os.SEEK_END)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(errors.SltError, match="failed its SHA-256 checksum"):
    bake.from_workdir(copy)


def test_missing_ticket_file_is_a_one_line_error(tmp_path):
  with pytest.raises(errors.SltError, match="does not exist"):
    bake.from_ticket_file(str(tmp_path / "missing.slt"))


def test_export_needs_exactly_one_source(tmp_path):
  for sources in ({}, {"workdir": "w", "ticket_path": "t"}):
    with pytest.raises(errors.SltError, match="give exactly one source: --workdir=W"):
      bake.export(export_base=str(tmp_path), **sources)
