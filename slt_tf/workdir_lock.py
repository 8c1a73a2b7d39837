"""One bin/find_ticket process per workdir: a lock file naming its owner's host and PID.

`W/.lock` (`slt_tf.workdir.LOCK_FILE`) holds JSON {"host", "pid", "start_time", "created"}. A
second process on the same workdir stops with one line naming the owner. A lock left by a dead
process on this host (no such PID, or a PID reused by another process: its start time differs)
is taken over with a warning; a lock from another host is never taken over automatically
(delete the file once that run is gone).

On a local file system the lock is created with O_EXCL (atomic there and on NFSv3+). Other
file systems (gs://, ram://, ...) have no exclusive create in tf.io.gfile: there the lock is
checked, then written, so it still refuses a run started while another one is running, but
two runs started within the same moment may both take it.
"""

from __future__ import annotations

import json
import os
import socket
import time

from absl import logging
import tensorflow as tf

from slt_tf import errors
from slt_tf import workdir as workdir_lib

_FILE_ERRORS = (OSError, tf.errors.OpError)  # What os and tf.io.gfile raise.


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux /proc), or None."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start_time: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  now = _start_time(pid)
  return start_time is None or now is None or now == start_time


def is_chief_task() -> bool:
  """True unless TF_CONFIG makes this process a non-chief task (TF's convention: the task
  "chief", else worker 0 when the cluster has no chief)."""
  try:
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = config.get("task", {}), config.get("cluster", {})
    kind, index = task.get("type"), int(task.get("index", 0))
  except (ValueError, AttributeError, TypeError):
    return True  # distribution.make_strategy reports a bad TF_CONFIG.
  if not kind:
    return True
  return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


def _system_error(error: BaseException) -> str:
  text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
  return text.splitlines()[0] if text else type(error).__name__


def check_writable_directory(path: str, what: str) -> None:
  """Creates `path` if needed and checks a file can be written there; else one-line SltError."""
  created = not os.path.exists(path)
  try:
    if os.path.exists(path) and not os.path.isdir(path):
      raise errors.SltError(f"{what} {path} is a file, not a directory; pass a directory")
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test-{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    if created and os.path.isdir(path) and not os.listdir(path):
      os.rmdir(path)
    raise errors.SltError(f"{what} {path} is not a writable directory "
                          f"({_system_error(e)}); pass a directory you can write to") from None


class WorkdirLock:
  """Context manager holding `workdir`/.lock; `enabled=False` makes it a no-op (non-chief
  workers of a multi-worker run, which write nothing to the workdir)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, workdir_lib.LOCK_FILE)
    self.enabled = enabled
    self._created_workdir = False
    self._held = False

  def __enter__(self) -> "WorkdirLock":
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _owner(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "start_time": _start_time(os.getpid()), "created": time.time()})

  def _create(self) -> None:
    """Creates the lock file naming this process; FileExistsError if there is one."""
    if workdir_lib.is_local(self.path):
      descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        f.write(self._owner())
    elif tf.io.gfile.exists(self.path):
      raise FileExistsError(self.path)
    else:
      workdir_lib.atomic_write(self.path, self._owner())

  def _read_owner(self) -> dict | None:
    """The lock's JSON (None: gone meanwhile); ValueError etc. when it is damaged."""
    try:
      with tf.io.gfile.GFile(self.path) as f:
        return json.loads(f.read())
    except tf.errors.NotFoundError:
      return None

  def acquire(self) -> None:
    """Creates the workdir if needed and the lock file; SltError if another run holds it."""
    if tf.io.gfile.exists(self.workdir) and not tf.io.gfile.isdir(self.workdir):
      raise errors.SltError(f"workdir {self.workdir} is a file; pass a directory (new or of a "
                            "previous run)")
    self._created_workdir = not tf.io.gfile.exists(self.workdir)
    try:
      tf.io.gfile.makedirs(self.workdir)
    except _FILE_ERRORS as e:
      raise errors.SltError(f"cannot create workdir {self.workdir} ({_system_error(e)}); pass "
                            "a directory you can write to") from None
    for _ in range(3):
      try:
        self._create()
      except FileExistsError:
        self._take_over_if_stale()
        continue
      except _FILE_ERRORS as e:
        self._remove_created_workdir()
        raise errors.SltError(f"cannot write to workdir {self.workdir} ({_system_error(e)}); "
                              "pass a directory you can write to") from None
      self._held = True
      return
    raise errors.SltError(f"cannot take the lock {self.path}: other processes keep creating it")

  def _take_over_if_stale(self) -> None:
    try:
      owner = self._read_owner()
      if owner is None:
        return  # Released meanwhile: try again.
      host, pid = str(owner["host"]), int(owner["pid"])
      start_time = owner.get("start_time")
    except (ValueError, KeyError, TypeError, *_FILE_ERRORS):
      owner = None
    if owner is None:  # Being written right now, or damaged.
      try:
        age = time.time() - tf.io.gfile.stat(self.path).mtime_nsec / 1e9
      except tf.errors.NotFoundError:
        age = 0
      if age < 10:
        time.sleep(0.2)
        return
      raise errors.SltError(f"workdir {self.workdir} has an unreadable lock file {self.path}; "
                            "if no run uses this workdir, delete that file and rerun")
    if host != socket.gethostname():
      raise errors.SltError(
          f"workdir {self.workdir} is in use by PID {pid} on host {host} (lock {self.path}); "
          "wait for that run or use another --workdir (delete the lock only if that run is gone)")
    if _alive(pid, start_time):
      raise errors.SltError(
          f"workdir {self.workdir} is in use by PID {pid} on this host (lock {self.path}); "
          "wait for that run to end or use another --workdir")
    logging.warning("Taking over the stale lock %s of PID %d on %s (that process is gone).",
                    self.path, pid, host)
    stale = f"{self.path}.stale-{os.getpid()}"
    try:
      tf.io.gfile.rename(self.path, stale)  # Atomic: of two processes taking over, one
      # renames it.
      tf.io.gfile.remove(stale)
    except tf.errors.NotFoundError:
      pass

  def _remove_created_workdir(self) -> None:
    """Removes the workdir this lock created if it is still empty (a failed first run leaves
    nothing behind)."""
    if not self._created_workdir:
      return
    try:
      if workdir_lib.is_local(self.workdir):
        os.rmdir(self.workdir)  # Only if empty, atomically.
      elif not tf.io.gfile.listdir(self.workdir):
        tf.io.gfile.rmtree(self.workdir)
    except _FILE_ERRORS:
      pass

  def release(self) -> None:
    """Removes the lock file if this process holds it (idempotent)."""
    if not self._held:
      return
    self._held = False
    try:
      owner = self._read_owner()
      if owner is not None and owner.get("pid") == os.getpid():
        tf.io.gfile.remove(self.path)
    except (ValueError, AttributeError, *_FILE_ERRORS) as e:
      if not isinstance(e, tf.errors.NotFoundError):
        logging.warning("Could not remove the lock %s: %s", self.path, e)
    self._remove_created_workdir()
