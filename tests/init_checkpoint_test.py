"""Tickets inside a trained generator (`generator.init_checkpoint`).

A tiny dense run of configs/test.py gives the frozen weights; bin/find_ticket searches a ticket
inside them; the ticket records the checkpoint and the sha256 of those weights, rebuilds and
verifies against it, refuses a tampered source in one line, and exports to a SavedModel with
no score variables. Feature networks use random weights (features.weights=none): the pipeline,
not the loss, is under test.
"""

import os
import shutil

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import checkpoints
from slt_tf import generators
from slt_tf import init_checkpoint
from slt_tf import inspection
from slt_tf import ticket as ticket_lib
from slt_tf import train
from slt_tf.errors import SltError
from slt_tf.export import bake

_STEPS = 10
_SHORT = {"num_steps": _STEPS, "checkpoint_every_steps": _STEPS, "log_every_steps": _STEPS,
          "sample_every_steps": _STEPS}

pytestmark = pytest.mark.e2e  # Every test uses the runs of bin/find_ticket below.


@pytest.fixture(scope="module")
def runs(run_binary, shared_dirs, tiny_config, tmp_path_factory):
  """A dense run (in process) and a ticket run inside it (bin/find_ticket)."""
  base = tmp_path_factory.mktemp("init")
  dense = str(base / "dense")
  train.train_and_evaluate(tiny_config(**_SHORT, method="dense", learning_rate=1e-3), dense)
  ticket_dir = str(base / "ticket")
  run_binary(
      "bin.find_ticket", "--config=configs/test.py", f"--workdir={ticket_dir}",
      f"--config.num_steps={_STEPS}", f"--config.checkpoint_every_steps={_STEPS}",
      "--config.features.weights=none", f"--config.dataset.data_dir={shared_dirs[0]}",
      f"--config.features.cache_dir={shared_dirs[1]}",
      f"--config.generator.init_checkpoint={dense}").check()
  return {"dense": dense, "ticket_dir": ticket_dir, "base": base,
          "ticket": os.path.join(ticket_dir, "ticket.slt")}


def _dense_weights(runs):
  spec = ticket_lib.load(runs["ticket"]).spec
  return init_checkpoint.read_weights(spec, init_checkpoint.resolve(runs["dense"]))


def test_the_ticket_records_its_source_checkpoint_and_fingerprint(runs):
  ticket = ticket_lib.load(runs["ticket"])
  dense_prefix = tf.train.latest_checkpoint(os.path.join(runs["dense"], "checkpoints"))
  assert ticket.frozen_source.checkpoint == os.path.abspath(dense_prefix)
  assert ticket.frozen_source.sha256 == init_checkpoint.fingerprint(_dense_weights(runs))


def test_the_ticket_regenerates_inside_the_trained_weights_and_verifies(runs):
  ticket = ticket_lib.load(runs["ticket"])
  rebuilt = ticket_lib.build_generator(ticket)
  dense = _dense_weights(runs)
  seeded = init_checkpoint.frozen_weights(generators.build(ticket.spec))
  for key, value in init_checkpoint.frozen_weights(rebuilt).items():
    assert value.tobytes() == dense[key].tobytes(), key
  assert any(seeded[key].tobytes() != dense[key].tobytes() for key in dense)  # Trained.
  # The run's own checkpoint holds the same frozen weights, bit for bit.
  report = inspection.inspect_workdir(runs["ticket_dir"])
  assert all(layer["frozen_weights_verified"] for layer in report["layers"]), report["layers"]
  assert report["frozen_weights"]["checkpoint"] == ticket.frozen_source.checkpoint
  assert "verified" in inspection.format_table(report).splitlines()[0]
  # Its images are those of the run's checkpoint.
  restored = checkpoints.restore_generator(
      ticket.spec, tf.train.latest_checkpoint(os.path.join(runs["ticket_dir"], "checkpoints")))
  z = tf.random.stateless_normal([4, ticket.spec.latent_dim], seed=[1, 2])
  np.testing.assert_allclose(rebuilt(z), restored(z), atol=1e-6)


def _tampered_copy(runs) -> str:
  """A valid checkpoint of the dense generator with one weight changed."""
  spec = ticket_lib.load(runs["ticket"]).spec
  prefix = init_checkpoint.resolve(runs["dense"])
  generator = checkpoints.restore_generator(
      generators.GeneratorSpec(**{**spec.to_dict(), "method": "dense"}), prefix)
  kernel = generator.scored_layers()[0].kernel
  kernel.assign(kernel.numpy() + np.float32(1e-3) * (np.arange(kernel.shape[-1]) == 0))
  return tf.train.Checkpoint(generator=generator).save(str(runs["base"] / "tampered" / "ckpt"))


def test_a_tampered_source_is_refused_in_one_line(run_binary, runs):
  tampered = _tampered_copy(runs)
  ticket = ticket_lib.load(runs["ticket"])
  with pytest.raises(SltError, match=r"was modified or is another one") as error:
    ticket_lib.build_generator(ticket, tampered)
  assert "\n" not in str(error.value)
  run_binary("bin.export_saved_model", f"--ticket={runs['ticket']}",
             f"--export_dir={runs['base'] / 'never'}",
             f"--init_checkpoint={tampered}").error_line(
                 "have sha256", "was modified or is another one")
  assert not os.path.exists(runs["base"] / "never" / "slt" / "1")
  with pytest.raises(SltError, match=r"was modified or is another one"):
    inspection.inspect_workdir(runs["ticket_dir"], init_checkpoint=tampered)


def test_the_ticket_exports_to_a_saved_model_with_no_score_variables(runs):
  version_dir = bake.export(export_base=str(runs["base"] / "export"), ticket_path=runs["ticket"])
  keys = [key for key, _ in tf.train.list_variables(
      os.path.join(version_dir, "variables", "variables")) if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
  assert keys and not [key for key in keys if "score" in key.lower()], keys
  loaded = tf.saved_model.load(version_dir)
  z = tf.random.stateless_normal([3, 16], seed=[3, 4])
  served = loaded.signatures["serving_default"](z=z)
  expected = ticket_lib.build_generator(ticket_lib.load(runs["ticket"]))(z)
  np.testing.assert_allclose(next(iter(served.values())), expected, atol=1e-5)
  # The workdir export (its checkpoint holds the trained frozen weights) agrees.
  plain, _ = bake.from_workdir(runs["ticket_dir"])
  np.testing.assert_allclose(plain(z), expected, atol=1e-5)


def test_bad_init_checkpoints_are_one_line_errors(runs, tiny_config, tmp_path):
  with pytest.raises(SltError, match=r"method=dense trains the weights"):
    init_checkpoint.validate(runs["dense"], "dense")
  with pytest.raises(SltError, match=r"neither a directory nor a checkpoint prefix"):
    init_checkpoint.validate(str(tmp_path / "missing"), "edge_popup")
  with pytest.raises(SltError, match=r"is a run of method=edge_popup; pass a method=dense run"):
    init_checkpoint.validate(runs["ticket_dir"], "edge_popup")
  with pytest.raises(SltError, match=r"holds no checkpoint"):
    init_checkpoint.validate(str(tmp_path), "edge_popup")
  other = generators.GeneratorSpec(name="dcgan", image_size=8, channels=1, latent_dim=16,
                                   filters=(8, 4))  # Another architecture.
  with pytest.raises(SltError, match=r"cannot restore the generator"):
    init_checkpoint.load(other, runs["dense"])
  config = tiny_config(**_SHORT, **{"generator.init_checkpoint": str(tmp_path / "x")})
  with pytest.raises(SltError, match=r"generator.init_checkpoint="):
    train.validate_config(config)
  shutil.rmtree(tmp_path, ignore_errors=True)
