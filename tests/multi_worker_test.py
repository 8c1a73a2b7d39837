"""Two find_ticket workers on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) give the ticket
of a single process; only the chief writes to the workdir."""

import ast
import json
import os
import re
import socket

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib
from tests import conftest

pytestmark = pytest.mark.e2e  # Two bin/find_ticket processes.


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.fixture(scope="module")
def two_workers(replica_tickets, start_binary, shared_dirs, tmp_path_factory):
  del replica_tickets  # Run first: the workers reuse its prepared data.
  workdir = str(tmp_path_factory.mktemp("multi_worker") / "w")
  addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
  processes = []
  for index in range(2):
    tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    processes.append(start_binary(
        "bin.find_ticket", "--config=configs/test.py", f"--workdir={workdir}",
        "--strategy=multi_worker", "--config.features.weights=none",
        f"--config.num_steps={conftest.REPLICA_STEPS}",
        f"--config.dataset.data_dir={shared_dirs[0]}",
        f"--config.features.cache_dir={shared_dirs[1]}", TF_CONFIG=json.dumps(tf_config)))
  summaries = []
  for process in processes:
    try:
      stderr = process.finish().check().stderr
    finally:
      for other in processes:
        if other.poll() is None and process.returncode:
          other.kill()
    done = re.search(r"Done: (\{.*\})", stderr)
    assert done, stderr[-3000:]
    summaries.append(ast.literal_eval(done.group(1)))
  return workdir, summaries


def test_two_workers_end_with_identical_tickets(two_workers):
  _, (chief, worker) = two_workers
  assert chief["step"] == worker["step"] == conftest.REPLICA_STEPS
  assert chief["ticket_sha256"] == worker["ticket_sha256"]


def test_two_workers_ticket_equals_the_single_process_tickets(two_workers, replica_tickets):
  workdir, _ = two_workers
  path = os.path.join(workdir, workdir_lib.TICKET_FILE)
  with open(path, "rb") as f, open(replica_tickets[2], "rb") as g:
    assert f.read() == g.read()  # Same replica count: the same reductions, bit for bit.
  multi, single = ticket_lib.load(path), ticket_lib.load(replica_tickets[1])
  assert multi.masks.keys() == single.masks.keys()
  agreeing = sum(int(np.sum(multi.masks[k] == single.masks[k])) for k in single.masks)
  assert agreeing / single.num_weights >= 0.995  # One replica: another summation order.
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
