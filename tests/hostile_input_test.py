"""Careless input gives one line naming what is allowed, and leaves nothing."""

import json
import os

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import checkpoints
from slt_tf import train
from slt_tf import workdir_lock
from slt_tf.errors import SltError
from slt_tf import workdir as workdir_lib


def config_for(tmp_path, **generator):
  config = test_config.get_config()
  config.features.weights = "none"
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.features.cache_dir = str(tmp_path / "cache")
  for key, value in generator.items():
    if key == "seed":
      config.seed = value
    else:
      config.generator[key] = value
  return config


@pytest.mark.parametrize("overrides,message", [
    ({"latent_dim": 0}, r"generator.latent_dim must be an integer in \[1, 65536\], got 0"),
    ({"latent_dim": -3}, r"generator.latent_dim must be an integer in \[1, 65536\], got -3"),
    ({"latent_dim": 10**9}, r"generator.latent_dim must be an integer in \[1, 65536\]"),
    ({"filters": (0, 0)}, r"each of generator.filters must be an integer in \[1, 16384\], got 0"),
    ({"filters": (16384, 16384)}, r"the generator would have \d+ weights; at most"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2147483647\], got -1"),
])
def test_bad_generator_values_are_refused_before_anything_runs(tmp_path, overrides, message):
  # Old code: tracebacks (seed=-1 only after training and caching a CNN).
  workdir = tmp_path / "w"
  with pytest.raises(SltError, match=message):
    train.train_and_evaluate(config_for(tmp_path, **overrides), str(workdir))
  assert not workdir.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", r"holds a JSON list, not a slt_tf config object; use a new --workdir"),
    ('"text"', r"holds a JSON str, not a slt_tf config object"),
    ("{", r"is not valid JSON \(JSONDecodeError\); use a new --workdir"),
])
def test_config_json_of_the_wrong_type_is_one_line(tmp_path, content, message):
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(content)
  with pytest.raises(SltError, match=message):
    train.prepare_workdir(config_for(tmp_path), str(tmp_path), write=False)


def test_workdir_that_is_a_file_or_unwritable_is_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(SltError, match=r"workdir \S+ is a file; pass a directory"):
    train.train_and_evaluate(config_for(tmp_path), str(path))
  with pytest.raises(SltError, match=r"cannot create workdir /proc/slt_w \(.*\); pass a "
                     r"directory you can write to"):
    workdir_lock.WorkdirLock("/proc/slt_w").acquire()
  assert not os.path.exists("/proc/slt_w")


def test_unwritable_cache_dir_is_refused_before_training(tmp_path):
  (tmp_path / "file").write_text("x")
  config = config_for(tmp_path)
  config.features.cache_dir = str(tmp_path / "file" / "cache")
  with pytest.raises(SltError, match=r"features.cache_dir \S+ is not a writable directory"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_checkpoints_without_config_json_are_refused(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "checkpoints" / "checkpoint").write_text("x")
  with pytest.raises(SltError, match=r"holds checkpoints but no config.json"):
    train.prepare_workdir(config_for(tmp_path), str(tmp_path), write=False)


def test_disk_full_during_a_checkpoint_is_one_line(tmp_path, monkeypatch):
  variable = tf.Variable(1.0)
  manager = checkpoints.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 3)
  manager.save(checkpoint_number=10)

  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(tf.train.Checkpoint, "_write", full)
  with pytest.raises(SltError, match=r"cannot write a checkpoint to \S+ \(.*No space left on "
                     r"device\); free space or fix permissions there, then rerun the same "
                     r"command to resume from ckpt-10"):
    manager.save(checkpoint_number=20)


@pytest.mark.e2e
def test_config_file_with_a_syntax_error_is_one_line(run_binary, tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n  pass\n")
  line = run_binary("bin.find_ticket", f"--config={bad}",
                    f"--workdir={tmp_path / 'w'}").error_line()
  assert line.startswith("find_ticket: error: cannot load the config file: SyntaxError: ")
  assert f"({bad}, line 1)" in line and not (tmp_path / "w").exists()


@pytest.mark.e2e
def test_negative_cpu_replicas_is_refused(run_binary, tmp_path):
  run_binary("bin.find_ticket", "--config=configs/test.py", f"--workdir={tmp_path / 'w'}",
             "--cpu_replicas=-2").error_line("--cpu_replicas=-2: -2 is not a non-negative integer")


@pytest.mark.e2e
def test_generate_samples_refuses_negative_seed_and_a_missing_output_directory(run_binary,
                                                                               tmp_path):
  run_binary("bin.generate_samples", f"--saved_model={tmp_path}", "--seed=-1").error_line(
      "--seed=-1: -1 is not a non-negative integer")
  line = run_binary("bin.generate_samples", f"--saved_model={tmp_path}",
                    f"--out={tmp_path / 'no' / 'grid.png'}").error_line("does not exist")
  assert line.startswith("generate_samples: error: output ")
