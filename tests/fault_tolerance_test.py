"""Long runs survive crashes: SIGKILL + rerun = uninterrupted run, SIGTERM saves, NaN stops."""

import os
import re
import signal
import time

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import callbacks as callbacks_lib
from slt_tf import sampling
from slt_tf import train
from slt_tf import workdir as workdir_lib

pytestmark = pytest.mark.e2e  # Runs of bin/find_ticket, killed and resumed.


def read(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def uninterrupted(start_find_ticket, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "w")
  start_find_ticket(workdir).finish().check()
  return workdir


def test_run_killed_mid_way_and_rerun_ends_with_the_bit_identical_ticket(
    uninterrupted, start_find_ticket, tmp_path):
  workdir = str(tmp_path / "w")
  checkpoints = os.path.join(workdir, "checkpoints")
  process = start_find_ticket(workdir)
  process.wait_for_file(os.path.join(checkpoints, "ckpt-20.index"))  # Maybe mid-save: fine too.
  process.send_signal(signal.SIGKILL)
  process.finish()
  assert not os.path.exists(os.path.join(workdir, workdir_lib.TICKET_FILE))
  # A save cut short by a crash (files on disk, not in the `checkpoint` state) is never loaded.
  with open(os.path.join(checkpoints, "ckpt-35.index"), "wb") as f:
    f.write(b"half written")
  with open(os.path.join(checkpoints, "ckpt-35.data-00000-of-00001"), "wb") as f:
    f.write(b"\0" * 7)
  stderr = start_find_ticket(workdir).finish().check().stderr
  resumed = re.search(r"Resumed from \S+ckpt-(\d+) at step (\d+)", stderr)
  assert resumed and resumed.group(1) in ("10", "20"), stderr[-3000:]
  assert read(os.path.join(workdir, workdir_lib.TICKET_FILE)) == read(
      os.path.join(uninterrupted, workdir_lib.TICKET_FILE))


def test_ema_run_killed_mid_way_and_rerun_ends_with_the_bit_identical_averaged_ticket(
    uninterrupted, start_find_ticket, tmp_path):
  ema = "--config.ema_momentum=0.9"  # The averages are checkpointed and resumed too.
  whole = str(tmp_path / "whole")
  start_find_ticket(whole, ema).finish().check()
  workdir = str(tmp_path / "w")
  process = start_find_ticket(workdir, ema)
  process.wait_for_file(os.path.join(workdir, "checkpoints", "ckpt-20.index"))
  process.send_signal(signal.SIGKILL)
  process.finish()
  stderr = start_find_ticket(workdir, ema).finish().check().stderr
  assert re.search(r"Resumed from \S+ckpt-(10|20) at step", stderr), stderr[-3000:]
  assert "now hold their moving averages (ema_momentum 0.9)" in stderr
  ticket = read(os.path.join(workdir, workdir_lib.TICKET_FILE))
  assert ticket == read(os.path.join(whole, workdir_lib.TICKET_FILE))
  assert ticket != read(os.path.join(uninterrupted, workdir_lib.TICKET_FILE))


def test_sigterm_saves_a_checkpoint_of_the_step_it_stopped_at(start_find_ticket, tmp_path):
  workdir = str(tmp_path / "w")
  checkpoints = os.path.join(workdir, "checkpoints")
  process = start_find_ticket(workdir, "--config.num_steps=5000")
  process.wait_for_file(os.path.join(checkpoints, "ckpt-10.index"))
  time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  last = process.finish().error_line("preempted (SIGTERM)")
  stopped = re.fullmatch(r"find_ticket: error: preempted \(SIGTERM\) at step (\d+); checkpoint "
                         r"\S+ saved; rerun the same command with the same --workdir to resume",
                         last)
  assert stopped, last
  step = int(stopped.group(1))
  assert 10 <= step < 400
  assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{step}")
  assert os.path.exists(os.path.join(checkpoints, f"ckpt-{step}.index"))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.TICKET_FILE))
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoints))
  assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == step


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    uninterrupted, tiny_config, tmp_path, monkeypatch):
  del uninterrupted  # Only for the prepared data and cached real moments it leaves.
  config = tiny_config()
  poisoned_from = 25 * config.batch_size  # Latents of step 26 onwards are NaN.
  clean_latents = sampling.latents

  def poisoned_latents(seeds, latent_dim, stream=0):
    z = clean_latents(seeds, latent_dim, stream)  # (N, latent_dim)
    poisoned = tf.cast(tf.reshape(seeds, [-1]), tf.int64) >= poisoned_from
    return tf.where(poisoned[:, None], tf.fill(tf.shape(z), float("nan")), z)

  monkeypatch.setattr(sampling, "latents", poisoned_latents)
  workdir = str(tmp_path / "w")
  with pytest.raises(callbacks_lib.NonFiniteError, match=r"at step 26; stopped\. The last good "
                     r"checkpoint is kept: \S+ckpt-20"):
    train.train_and_evaluate(config, workdir)
  latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  assert latest.endswith("ckpt-20")
  reader = tf.train.load_checkpoint(latest)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      assert np.all(np.isfinite(value)), name
  assert not os.path.exists(os.path.join(workdir, workdir_lib.TICKET_FILE))
