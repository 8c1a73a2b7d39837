"""Two find_ticket workers on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) give the ticket
of a single process; only the chief writes to the workdir."""

import ast
import json
import os
import re
import socket
import subprocess
import sys

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from slt_tf import distribution
from slt_tf import ticket as ticket_lib
from slt_tf import train
from slt_tf import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _strategy(num_replicas):
  return distribution.logical_cpu_strategy(num_replicas)


@pytest.fixture(scope="module")
def shared_dirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("shared")
  return str(base / "tfds"), str(base / "cache")


@pytest.fixture(scope="module")
def single_process_tickets(shared_dirs, tmp_path_factory):
  """Tickets of configs/test.py in this process on 1 and on 2 replicas (prepares the data)."""
  config = test_config.get_config()
  config.features.weights = "none"
  config.dataset.data_dir, config.features.cache_dir = shared_dirs
  base = tmp_path_factory.mktemp("single")
  return {replicas: train.train_and_evaluate(config, str(base / f"r{replicas}"),
                                             strategy=_strategy(replicas))["ticket"]
          for replicas in (1, 2)}


@pytest.fixture(scope="module")
def two_workers(single_process_tickets, shared_dirs, tmp_path_factory):
  del single_process_tickets  # Run first: the workers reuse its prepared data.
  workdir = str(tmp_path_factory.mktemp("multi_worker") / "w")
  addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
  processes = []
  for index in range(2):
    tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "bin.find_ticket", "--config=configs/test.py",
               f"--workdir={workdir}", "--strategy=multi_worker",
               "--config.features.weights=none", f"--config.dataset.data_dir={shared_dirs[0]}",
               f"--config.features.cache_dir={shared_dirs[1]}"]
    processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
  summaries = []
  for process in processes:
    try:
      _, stderr = process.communicate(timeout=600)
    finally:
      for other in processes:
        if other.poll() is None and process.returncode:
          other.kill()
    assert process.returncode == 0, stderr[-5000:]
    done = re.search(r"Done: (\{.*\})", stderr)
    assert done, stderr[-3000:]
    summaries.append(ast.literal_eval(done.group(1)))
  return workdir, summaries


def test_two_workers_end_with_identical_tickets(two_workers):
  _, (chief, worker) = two_workers
  assert chief["step"] == worker["step"] == test_config.get_config().num_steps
  assert chief["ticket_sha256"] == worker["ticket_sha256"]


def test_two_workers_ticket_equals_the_single_process_tickets(two_workers,
                                                              single_process_tickets):
  workdir, _ = two_workers
  path = os.path.join(workdir, workdir_lib.TICKET_FILE)
  with open(path, "rb") as f, open(single_process_tickets[2], "rb") as g:
    assert f.read() == g.read()  # Same replica count: the same reductions, bit for bit.
  multi, single = ticket_lib.load(path), ticket_lib.load(single_process_tickets[1])
  assert multi.masks.keys() == single.masks.keys()
  for key, mask in single.masks.items():
    np.testing.assert_array_equal(multi.masks[key], mask, err_msg=key)
  for key, value in single.batch_norm.items():  # Summation order differs: float tolerance.
    np.testing.assert_allclose(multi.batch_norm[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_only_the_chief_writes_the_workdir_and_the_other_worker_cleans_up(two_workers):
  workdir, (chief, worker) = two_workers
  assert chief["ticket"] == os.path.join(workdir, workdir_lib.TICKET_FILE)
  assert not worker["ticket"].startswith(workdir)
  assert not os.path.exists(os.path.dirname(worker["ticket"]))
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "generator.json", "samples",
                                         "tensorboard", workdir_lib.TICKET_FILE]
  events = os.listdir(os.path.join(workdir, "tensorboard", "train"))
  assert len([name for name in events if name.startswith("events.out.tfevents")]) == 1
