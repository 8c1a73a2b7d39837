"""The run directory (slt_tf.workdir): atomic writes, config.json, generator spec, latest
checkpoint, and a whole run, evaluated, inspected and exported, on TF's ram:// filesystem."""

import json
import os
import uuid

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np  # pylint: disable=g-bad-import-order
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import errors
from slt_tf import images
from slt_tf import inspection
from slt_tf import sampling
from slt_tf import ticket as ticket_lib
from slt_tf import train
from slt_tf import workdir as workdir_lib
from slt_tf import workdir_evaluation
from slt_tf import workdir_lock
from slt_tf.export import bake


@pytest.mark.parametrize("scheme", ["local", "ram"])
def test_atomic_write_replaces_the_file_and_a_failed_write_leaves_it_untouched(tmp_path, scheme):
  base = str(tmp_path) if scheme == "local" else f"ram://atomic-{uuid.uuid4().hex}"
  path = os.path.join(base, "sub", "values.json")
  workdir_lib.write_json(path, {"a": 1})
  workdir_lib.atomic_write(path, b"[2]")
  assert workdir_lib.read_json(path) == [2]
  with pytest.raises(RuntimeError):
    with workdir_lib.atomic_path(path) as temporary:
      with tf.io.gfile.GFile(temporary, "w") as f:
        f.write("half")
      raise RuntimeError("writer failed")
  assert workdir_lib.read_json(path) == [2]
  assert tf.io.gfile.listdir(os.path.dirname(path)) == ["values.json"]
  assert workdir_lib.read_json(os.path.join(base, "missing.json")) is None


@pytest.mark.parametrize("content,message", [
    (None, r"config.json does not exist: \S+ is not a run directory of bin/find_ticket; advice"),
    ("{", r"config.json is not valid JSON \(JSONDecodeError\); advice"),
    ("[1]", r"config.json holds a JSON list, not a slt_tf config object; advice"),
])
def test_broken_config_json_is_one_line_naming_the_file(tmp_path, content, message):
  if content is not None:
    (tmp_path / workdir_lib.CONFIG_FILE).write_text(content)
  with pytest.raises(errors.SltError, match=message):
    workdir_lib.read_config(str(tmp_path), advice="advice")
  if content is None:
    assert workdir_lib.read_config(str(tmp_path), required=False) is None


def test_a_workdir_written_before_native_size_existed_still_resolves_and_resumes(tmp_path):
  workdir = str(tmp_path / "w")
  config = test_config.get_config()
  train.prepare_workdir(config, workdir)
  spec = workdir_lib.spec_from_config(config, channels=1)
  workdir_lib.write_generator_spec(workdir, spec)
  for name in (workdir_lib.CONFIG_FILE, workdir_lib.GENERATOR_FILE):  # As older slt_tf wrote them.
    path = os.path.join(workdir, name)
    with open(path) as f:
      values = json.load(f)
    (values["generator"] if name == workdir_lib.CONFIG_FILE else values).pop("native_size")
    if name == workdir_lib.CONFIG_FILE:
      values.pop("ema_momentum")  # Added later too.
    with open(path, "w") as f:
      json.dump(values, f)
  assert workdir_lib.generator_spec(workdir) == spec and spec.native_size == 0
  train.prepare_workdir(config, workdir, write=False)  # Resumes with the default.
  config.generator.native_size = 4
  with pytest.raises(errors.SltError, match="generator.native_size: None there, 4 now"):
    train.prepare_workdir(config, workdir, write=False)


def test_latest_checkpoint_is_none_or_the_newest_with_its_step(tmp_path):
  assert workdir_lib.latest_checkpoint(str(tmp_path)) is None
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                       workdir_lib.checkpoint_dir(str(tmp_path)), max_to_keep=2)
  for step in (10, 200):
    manager.save(checkpoint_number=step)
  latest = workdir_lib.latest_checkpoint(str(tmp_path))
  assert latest == (os.path.join(str(tmp_path), "checkpoints", "ckpt-200"), 200)
  with pytest.raises(errors.SltError, match=r"no checkpoint in \S+ \(missing, or its files are "
                     r"gone\); train first"):
    workdir_lib.restore_generator(str(tmp_path / "empty"), None)


def test_lock_on_a_filesystem_without_exclusive_create_still_refuses_a_second_run():
  workdir = f"ram://lock-{uuid.uuid4().hex}/w"
  lock_path = os.path.join(workdir, workdir_lib.LOCK_FILE)
  with workdir_lock.WorkdirLock(workdir):
    assert workdir_lib.read_json(lock_path)["pid"] == os.getpid()
    with pytest.raises(errors.SltError, match=rf"is in use by PID {os.getpid()} on this host"):
      workdir_lock.WorkdirLock(workdir).acquire()
  assert not tf.io.gfile.exists(lock_path)


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory):
  """The default tiny search (configs/test.py, random feature network) with W on ram://; the
  dataset and caches stay local."""
  local = tmp_path_factory.mktemp("ram_run")
  config = test_config.get_config()
  config.features.weights = "none"
  config.eval.weights = "none"  # A random eval network: no classifier to train.
  config.dataset.data_dir = str(local / "tfds")
  config.features.cache_dir = str(local / "cache")
  workdir = f"ram://slt-{uuid.uuid4().hex}/run"
  summary = train.train_and_evaluate(config, workdir)
  return workdir, summary, config, local


def test_search_writes_every_file_of_the_run_through_gfile(ram_run):
  workdir, summary, config, _ = ram_run
  assert summary["ticket"] == workdir_lib.ticket_path(workdir)
  with tf.io.gfile.GFile(summary["ticket"], "rb") as f:
    blob = f.read()
  assert len(blob) == summary["ticket_bytes"]
  assert ticket_lib.from_bytes(blob).spec == workdir_lib.generator_spec(workdir)
  assert workdir_lib.read_config(workdir).to_dict() == json.loads(json.dumps(config.to_dict()))
  assert workdir_lib.latest_checkpoint(workdir).step == config.num_steps == summary["step"]
  for step in (config.sample_every_steps, None):
    with tf.io.gfile.GFile(workdir_lib.sample_path(workdir, step), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert tf.io.gfile.glob(os.path.join(workdir_lib.tensorboard_dir(workdir, "train"),
                                       "events.out.tfevents.*"))
  assert not tf.io.gfile.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))  # Released.


def test_ticket_is_inspected_and_evaluated_on_ram(ram_run):
  workdir, summary, _, local = ram_run
  report = inspection.inspect_workdir(workdir)
  assert report["num_kept"] == summary["num_kept"]
  assert all(layer["frozen_weights_verified"] for layer in report["layers"])
  metrics = workdir_evaluation.evaluate_workdir(workdir, num_samples=32, batch_size=32,
                                                cache_dir=str(local / "cache"))
  assert metrics["step"] == summary["step"] and np.isfinite(metrics["fid"])
  assert workdir_lib.read_json(workdir_lib.metrics_path(workdir))["fid"] == metrics["fid"]
  assert tf.io.gfile.glob(os.path.join(workdir_lib.tensorboard_dir(workdir, "eval"),
                                       "events.out.tfevents.*"))


def test_export_from_ram_serves_the_tickets_images(ram_run):
  workdir, summary, _, local = ram_run
  with pytest.raises(errors.SltError, match=r"ram:// moves no directory contents\); export to "
                     "a local or gs:// directory"):  # Its rename of a directory: names only.
    bake.export(export_base=os.path.dirname(workdir) + "/export", workdir=workdir)
  version_dir = bake.export(export_base=str(local / "export"), workdir=workdir)
  assert os.listdir(os.path.dirname(version_dir)) == ["1"]  # No temporary left.
  served = tf.saved_model.load(version_dir).signatures["generate_uint8"]
  seeds = tf.range(4, dtype=tf.int64)
  ticket = ticket_lib.load(summary["ticket"])
  z = sampling.latents(seeds, ticket.spec.latent_dim, stream=0)
  expected = images.to_uint8(ticket_lib.build_generator(ticket)(z, training=False)).numpy()
  np.testing.assert_array_equal(served(seeds=seeds)["images"].numpy(), expected)
