"""Fixtures shared by the tests: prepared TFDS data, tiny runs, running a binary.

The repository's top-level conftest.py sets TensorFlow up (CPU only, two logical CPUs); this
file holds what several test files need, prepared once per session:

  digits_data_dir      a TFDS data_dir with `digits` prepared (offline, from scikit-learn).
  shared_dirs          (data_dir, cache_dir) for configs/test.py runs: digits prepared, and
                       one cache (real statistics, classifiers) for the whole session.
  tiny_config          `tiny_config(**overrides)`: configs/test.py with random feature
                       weights and those dirs.
  replica_tickets      tickets of tiny_config() trained in process on 1 and on 2 replicas.
  short_run            `short_run(method)`: the workdir of a 4-step tiny_config() run.
  mock_tfds            a data_dir where tfds.testing.mock_data serves a dataset's splits.
  run_binary           runs `python -m bin.X ...`; its result asserts a one-line user error.
  start_binary         the same, not waited for (a subprocess.Popen), for signals and races.

Tests marked `e2e` (pytest.ini) are the slow end-to-end tier: `pytest -m "not e2e"` is the
fast tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import time
from typing import Iterator

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines the TensorFlow runtime writes to stderr before the program runs (C++ logging set-up),
# and absl/glog log records ("I1127 16:30:45.396940 1403 train.py:453] ...", or from C++
# "I0000 00:00:1795798136.624092 26006 cudart_stub.cc:31] ..."): not the program's error output.
_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                       r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


# A Python warning: "path.py:74: UserWarning: ...", followed by its indented source line.
_WARNING_LINE = re.compile(r"^\S+\.py:\d+: \w*Warning: ")


def _program_lines(stderr: str) -> list[str]:
  """The non-empty lines of `stderr` that are neither log records nor library warnings."""
  lines, in_warning = [], False
  for line in stderr.splitlines():
    if _WARNING_LINE.match(line):
      in_warning = True
    elif not (in_warning and line.startswith(" ")):
      in_warning = False
      if line.strip() and not _LOG_LINE.match(line):
        lines.append(line)
  return lines


def binary_command(module: str, *flags: str) -> list[str]:
  """`python -m module flags...` with this interpreter."""
  return [sys.executable, "-m", module, *flags]


def binary_env(**overrides: str) -> dict[str, str]:
  """The environment a binary runs in: CPU only, TensorFlow's C++ logging quiet."""
  return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **overrides}


@dataclasses.dataclass(frozen=True)
class BinaryResult:
  """What `python -m module flags...` did."""
  module: str
  command: list[str]
  returncode: int
  stdout: str
  stderr: str

  def check(self) -> BinaryResult:
    """Asserts exit code 0 (the stderr's tail is the failure message); returns self."""
    assert self.returncode == 0, f"{' '.join(self.command)}\n{self.stderr[-5000:]}"
    return self

  def error_line(self, *fragments: str, returncode: int = 1) -> str:
    """Asserts a one-line user error and returns that line.

    The binary exited with `returncode`, printed no traceback, and its stderr holds exactly one
    non-empty line besides log records and library warnings: "<binary>: error: ..." containing
    every one of `fragments` (say, what is allowed).
    """
    assert "Traceback" not in self.stderr, self.stderr[-3000:]
    assert self.returncode == returncode, (self.returncode, self.stderr[-3000:])
    lines = _program_lines(self.stderr)
    assert len(lines) == 1, self.stderr[-3000:]
    binary = self.module.rsplit(".", 1)[-1]
    assert lines[0].startswith(f"{binary}: error: "), lines[0]
    for fragment in fragments:
      assert fragment in lines[0], lines[0]
    return lines[0]


def run_binary(module: str, *flags: str, timeout: float = 600, **env: str) -> BinaryResult:
  """Runs `python -m module flags...` from the repository root and waits for it."""
  command = binary_command(module, *flags)
  result = subprocess.run(command, cwd=REPO_ROOT, env=binary_env(**env), capture_output=True,
                          text=True, timeout=timeout, check=False)
  return BinaryResult(module, command, result.returncode, result.stdout, result.stderr)


class StartedBinary(subprocess.Popen):
  """`python -m module flags...` started from the repository root, not waited for.

  stdout is dropped and stderr piped; `finish()` waits and gives the BinaryResult.
  """

  def __init__(self, module: str, *flags: str, **env: str):
    self.module = module
    super().__init__(binary_command(module, *flags), cwd=REPO_ROOT, env=binary_env(**env),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

  def finish(self, timeout: float = 600) -> BinaryResult:
    _, stderr = self.communicate(timeout=timeout)
    return BinaryResult(self.module, list(self.args), self.returncode, "", stderr)

  def wait_for_file(self, path: str, timeout: float = 600) -> None:
    """Waits until `path` exists, failing if the binary ends first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
      assert self.poll() is None, f"ended before {path} appeared: {self.finish().stderr[-3000:]}"
      assert time.monotonic() < deadline, f"{path} did not appear"
      time.sleep(0.01)


def start_binary(module: str, *flags: str, **env: str) -> StartedBinary:
  """Starts `python -m module flags...` (see StartedBinary)."""
  return StartedBinary(module, *flags, **env)


@pytest.fixture(name="run_binary", scope="session")
def run_binary_fixture():
  return run_binary


@pytest.fixture(name="start_binary", scope="session")
def start_binary_fixture():
  return start_binary


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with `digits` prepared (1497 train, 300 test images)."""
  from slt_tf import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits", data_dir)
  return data_dir


@pytest.fixture(scope="session")
def shared_dirs(digits_data_dir, tmp_path_factory) -> tuple[str, str]:
  """(data_dir, cache_dir) for configs/test.py runs: the session's digits and its one cache.

  Every entry of the cache is keyed by what it depends on, so runs of any test share it.
  """
  return digits_data_dir, str(tmp_path_factory.mktemp("cache"))


def tiny_config(shared_dirs: tuple[str, str], **overrides):
  """configs/test.py with random feature weights and the session's dirs; "a.b" keys override."""
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.features.weights = "none"
  config.dataset.data_dir, config.features.cache_dir = shared_dirs
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope="session")
def start_find_ticket(shared_dirs):
  """`start_find_ticket(workdir, *flags)`: starts bin/find_ticket on configs/test.py with random
  feature weights and the session's data and cache (a StartedBinary)."""
  def start(workdir, *flags):
    return start_binary("bin.find_ticket", "--config=configs/test.py", f"--workdir={workdir}",
                        "--config.features.weights=none",
                        f"--config.dataset.data_dir={shared_dirs[0]}",
                        f"--config.features.cache_dir={shared_dirs[1]}", *flags)
  return start


@pytest.fixture(name="tiny_config", scope="session")
def tiny_config_fixture(shared_dirs):
  """`tiny_config(**overrides)`: configs/test.py, random feature weights, the session's dirs."""
  return lambda **overrides: tiny_config(shared_dirs, **overrides)


# Steps of the replica tickets. Float summation order differs between 1 and 2 replicas and the
# top-k amplifies it step after step: with configs/test.py the masks agree on 99.99% after 10
# steps, 96.6% after 20 and 92.5% after 40.
REPLICA_STEPS = 10


@pytest.fixture(scope="session")
def replica_tickets(tiny_config, tmp_path_factory) -> dict[int, str]:
  """{replicas: ticket path} of tiny_config() trained in this process on 1 and 2 replicas."""
  from slt_tf import distribution  # pylint: disable=g-import-not-at-top
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("replicas")
  return {replicas: train.train_and_evaluate(
      tiny_config(num_steps=REPLICA_STEPS), str(base / f"r{replicas}"),
      strategy=distribution.logical_cpu_strategy(replicas))["ticket"] for replicas in (1, 2)}


@pytest.fixture(scope="session")
def short_run(tiny_config, tmp_path_factory):
  """`short_run(method="edge_popup")`: the workdir of a 4-step tiny_config() run.

  Checkpoints, logs and samples every 2 steps; trained once per method in this session, in
  this process on the default strategy. Tests copy it before changing anything in it.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from slt_tf import train  # pylint: disable=g-import-not-at-top
  workdirs = {}

  def run(method: str = "edge_popup") -> str:
    if method not in workdirs:
      workdir = str(tmp_path_factory.mktemp(f"short_{method}") / "run")
      config = tiny_config(method=method, num_steps=4, checkpoint_every_steps=2,
                           log_every_steps=2, sample_every_steps=2)
      train.train_and_evaluate(config, workdir, strategy=tf.distribute.get_strategy())
      workdirs[method] = workdir
    return workdirs[method]

  return run


@pytest.fixture
def mock_tfds(tmp_path):
  """`with mock_tfds(name, {split: size}, num_examples) as data_dir:` serves random examples.

  Writes `name`'s metadata (the split sizes, no records) into a fresh data_dir and serves
  `num_examples` random examples per split through tfds.testing.mock_data.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  @contextlib.contextmanager
  def mock(name: str, split_sizes: dict[str, int], num_examples: int) -> Iterator[str]:
    data_dir = tmp_path / f"mock_{name.replace('/', '_')}"
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0)
        for split, size in split_sizes.items()]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir),
                                policy=tfds.testing.MockPolicy.USE_FILES):
      yield str(data_dir)

  return mock
