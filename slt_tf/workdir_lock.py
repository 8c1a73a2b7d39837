"""One bin/find_ticket process per workdir: a lock file naming its owner's host and PID.

`W/.lock` is created with O_EXCL (atomic on local file systems and NFSv3+) and holds JSON
{"host", "pid", "start_time", "created"}. A second process on the same workdir stops with one
line naming the owner. A lock left by a dead process on this host (no such PID, or a PID reused
by another process: its start time differs) is taken over with a warning; a lock from another
host is never taken over automatically (delete the file once that run is gone).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

from absl import logging

from slt_tf import errors

LOCK_FILE = ".lock"


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
  return getattr(error, "strerror", None) or str(error).splitlines()[0]


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
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self._created_workdir = False
    self._held = False

  def __enter__(self) -> "WorkdirLock":
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def _owner(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_time": _start_time(os.getpid()), "created": time.time()}

  def acquire(self) -> None:
    """Creates the workdir if needed and the lock file; SltError if another run holds it."""
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise errors.SltError(f"workdir {self.workdir} is a file; pass a directory (new or of a "
                            "previous run)")
    self._created_workdir = not os.path.exists(self.workdir)
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise errors.SltError(f"cannot create workdir {self.workdir} ({_system_error(e)}); pass "
                            "a directory you can write to") from None
    for _ in range(3):
      try:
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      except OSError as e:
        self._remove_created_workdir()
        raise errors.SltError(f"cannot write to workdir {self.workdir} ({_system_error(e)}); "
                              "pass a directory you can write to") from None
      with os.fdopen(descriptor, "w", encoding="utf-8") as f:
        json.dump(self._owner(), f)
      self._held = True
      return
    raise errors.SltError(f"cannot take the lock {self.path}: other processes keep creating it")

  def _take_over_if_stale(self) -> None:
    try:
      with open(self.path, encoding="utf-8") as f:
        owner = json.load(f)
      host, pid = str(owner["host"]), int(owner["pid"])
      start_time = owner.get("start_time")
    except FileNotFoundError:
      return  # Released meanwhile: try again.
    except (OSError, ValueError, KeyError, TypeError):
      owner = None
    if owner is None:  # Being written right now, or damaged.
      age = time.time() - os.path.getmtime(self.path) if os.path.exists(self.path) else 0
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
      os.rename(self.path, stale)  # Atomic: of two processes taking over, one renames it.
      os.remove(stale)
    except FileNotFoundError:
      pass

  def _remove_created_workdir(self) -> None:
    if self._created_workdir:
      try:
        os.rmdir(self.workdir)  # Only if empty: a failed first run leaves nothing behind.
      except OSError:
        pass

  def release(self) -> None:
    """Removes the lock file if this process holds it (idempotent)."""
    if not self._held:
      return
    self._held = False
    try:
      with open(self.path, encoding="utf-8") as f:
        mine = json.load(f).get("pid") == os.getpid()
      if mine:
        os.remove(self.path)
    except (OSError, ValueError) as e:
      if getattr(e, "errno", None) != errno.ENOENT:
        logging.warning("Could not remove the lock %s: %s", self.path, e)
    self._remove_created_workdir()
