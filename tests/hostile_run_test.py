"""Resume never silently restarts, Ctrl-C saves, only result-neutral keys are resumable, one
process per workdir."""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import pytest
import tensorflow as tf

from slt_tf import checkpoints
from slt_tf import train
from slt_tf import workdir_lock
from slt_tf.errors import SltError
from slt_tf import workdir as workdir_lib


def digests(directory):
  return {name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(directory))
          if os.path.isfile(os.path.join(directory, name))}


def read(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def finished(tiny_config, tmp_path_factory):
  """An uninterrupted 40-step run of configs/test.py (in this process)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "w")
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


# ------------------------------------------------------------------ resume never restarts


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["delete_index", "truncate_data"])
def test_unusable_latest_checkpoint_stops_naming_the_newest_usable_one(finished, start_find_ticket,
                                                                        tmp_path, damage):
  # Old code: "Training steps 0..40" and the intact ckpt-20/30 overwritten.
  workdir = str(tmp_path / "w")
  shutil.copytree(finished, workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if damage == "delete_index":
    os.remove(os.path.join(checkpoint_dir, "ckpt-40.index"))
  else:
    data = os.path.join(checkpoint_dir, "ckpt-40.data-00000-of-00001")
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  before = digests(checkpoint_dir)
  result = start_find_ticket(workdir).finish()
  assert re.fullmatch(r"find_ticket: error: \S+checkpoints: its latest checkpoint ckpt-40 is "
                      r"missing or unreadable; not starting over \(that would overwrite the older "
                      r"checkpoints\): resume from the newest usable one with "
                      r"--resume_from=ckpt-30, or use a new --workdir", result.error_line())
  assert "Training steps" not in result.stderr
  assert digests(checkpoint_dir) == before


@pytest.mark.e2e
def test_resume_from_sets_newer_checkpoints_aside_and_ends_with_the_same_ticket(
    finished, start_find_ticket, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished, workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  os.remove(os.path.join(checkpoint_dir, "ckpt-40.index"))
  os.remove(os.path.join(workdir, workdir_lib.TICKET_FILE))
  kept = read(os.path.join(checkpoint_dir, "ckpt-40.data-00000-of-00001"))
  stderr = start_find_ticket(workdir, "--resume_from=ckpt-30").finish().check().stderr
  assert "Resumed from" in stderr and "at step 30" in stderr
  aside = [d for d in os.listdir(checkpoint_dir) if d.startswith("superseded-")]
  assert len(aside) == 1
  assert read(os.path.join(checkpoint_dir, aside[0], "ckpt-40.data-00000-of-00001")) == kept
  assert read(os.path.join(workdir, workdir_lib.TICKET_FILE)) == read(
      os.path.join(finished, workdir_lib.TICKET_FILE))


def test_checkpoints_without_state_file_are_not_overwritten(tmp_path):
  directory = str(tmp_path)
  for name in ("ckpt-10.index", "ckpt-10.data-00000-of-00001"):
    (tmp_path / name).write_bytes(b"x")
  with pytest.raises(SltError, match=r"state file is missing or damaged and no checkpoint "
                     r"there is usable; use a new --workdir"):
    checkpoints.resume_point(directory, None, 40, adopt=True)


@pytest.mark.e2e
def test_unusable_resume_from_names_the_usable_ones(finished):
  with pytest.raises(SltError, match=r"--resume_from=ckpt-25: no usable checkpoint of that "
                     r"name in \S+; usable: ckpt-40, ckpt-30, ckpt-20"):
    checkpoints.resume_point(os.path.join(finished, "checkpoints"), "ckpt-25", 40, adopt=False)


@pytest.mark.e2e
def test_smaller_num_steps_on_resume_is_refused_before_config_json_changes(finished):
  before = read(os.path.join(finished, workdir_lib.CONFIG_FILE))
  with pytest.raises(SltError, match=r"holds step 40 \(ckpt-40\) but num_steps=30; num_steps "
                     r"can only grow on resume \(use >= 40\)"):
    checkpoints.resume_point(os.path.join(finished, "checkpoints"), None, 30, adopt=True)
  assert read(os.path.join(finished, workdir_lib.CONFIG_FILE)) == before


# ------------------------------------------------------------------------- resumable keys


def test_num_steps_is_not_resumable_under_cosine(tiny_config, tmp_path):
  # Old code: accepted; a resumed 40-then-50 run is another ticket than a 50-step run.
  workdir = str(tmp_path / "w")
  train.prepare_workdir(tiny_config(lr_schedule="cosine", num_steps=40), workdir)
  with pytest.raises(SltError, match=r"num_steps: 40 there, 50 now\) \(num_steps sets the "
                     r"length of lr_schedule=cosine, so it cannot change on resume\)"):
    train.prepare_workdir(tiny_config(lr_schedule="cosine", num_steps=50), workdir,
                          write=False)
  train.prepare_workdir(tiny_config(num_steps=40), str(tmp_path / "c"))
  train.prepare_workdir(tiny_config(num_steps=50), str(tmp_path / "c"), write=False)
  assert "num_steps" not in train.resumable_keys(tiny_config(lr_schedule="cosine"))


def test_num_steps_is_not_resumable_with_ema_momentum(tiny_config, tmp_path):
  workdir = str(tmp_path / "w")
  train.prepare_workdir(tiny_config(ema_momentum=0.9, num_steps=40), workdir)
  with pytest.raises(SltError, match=r"num_steps: 40 there, 50 now\) \(at step num_steps the "
                     r"moving averages of ema_momentum replace the variables, so it cannot "
                     r"change on resume\)"):
    train.prepare_workdir(tiny_config(ema_momentum=0.9, num_steps=50), workdir, write=False)
  with pytest.raises(SltError, match=r"ema_momentum: 0.9 there, 0.0 now"):
    train.prepare_workdir(tiny_config(num_steps=40), workdir, write=False)


@pytest.mark.e2e
def test_resumed_run_equals_uninterrupted_whatever_every_resumable_key_was(finished, tiny_config,
                                                                          tmp_path):
  """Every key RESUMABLE_KEYS names, set otherwise for the first 20 steps."""
  first = {"num_steps": 20, "checkpoint_every_steps": 7, "log_every_steps": 3,
           "sample_every_steps": 6, "num_sample_images": 4, "eval.every_steps": 10,
           "eval.num_samples": 32, "eval.weights": "none", "eval.network": "digits_eval_cnn"}
  unvaried = {"eval.split"}  # digits has only a test split.
  flat = train._flatten(tiny_config().to_dict())  # pylint: disable=protected-access
  resumable = [k for k in flat if train._resumable(k)]  # pylint: disable=protected-access
  assert sorted(resumable) == sorted(k for k in set(first) | unvaried if k in flat)
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny_config(**{k: v for k, v in first.items()
                                                      if k in flat}), workdir)
  summary = train.train_and_evaluate(tiny_config(), workdir)
  assert summary["step"] == 40
  assert read(os.path.join(workdir, workdir_lib.TICKET_FILE)) == read(
      os.path.join(finished, workdir_lib.TICKET_FILE))


# -------------------------------------------------- one process per workdir, Ctrl-C saves


@pytest.mark.e2e
def test_second_process_is_refused_and_ctrl_c_saves_the_current_step(start_find_ticket, tmp_path):
  # Old code: the second process trained too; Ctrl-C gave a KeyboardInterrupt traceback.
  workdir = str(tmp_path / "w")
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  first = start_find_ticket(workdir, "--config.num_steps=5000")
  first.wait_for_file(os.path.join(checkpoint_dir, "ckpt-10.index"))
  line = start_find_ticket(workdir, "--config.num_steps=5000").finish().error_line()
  assert re.fullmatch(rf"find_ticket: error: workdir \S+ is in use by PID {first.pid} on this "
                      r"host \(lock \S+\.lock\); wait for that run to end or use another "
                      r"--workdir", line)
  assert first.poll() is None
  first.send_signal(signal.SIGINT)
  line = first.finish().error_line(returncode=130)
  stopped = re.fullmatch(r"find_ticket: error: preempted \(SIGINT\) at step (\d+); checkpoint "
                         r"\S+ saved; rerun the same command with the same --workdir to resume",
                         line)
  assert stopped, line
  step = int(stopped.group(1))
  assert tf.train.latest_checkpoint(checkpoint_dir).endswith(f"ckpt-{step}")
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_path = tmp_path / workdir_lib.LOCK_FILE
  lock_path.write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}}}')
  with workdir_lock.WorkdirLock(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in lock_path.read_text()
    with pytest.raises(SltError, match=rf"is in use by PID {os.getpid()} on this host"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert "Taking over the stale lock" in caplog.text
  assert not lock_path.exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
  (tmp_path / workdir_lib.LOCK_FILE).write_text('{"host": "elsewhere", "pid": 1}')
  with pytest.raises(SltError, match=r"in use by PID 1 on host elsewhere .*delete the lock only "
                     r"if that run is gone"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
