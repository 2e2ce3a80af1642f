"""One run per workdir, and storage failures (read-only, full disk) reported in one line.

`locked(workdir)` holds an flock on WORKDIR/.lock for the life of a run. The kernel drops
the lock when the holder exits, however it exits (SIGKILL included), so a stale lock file
never blocks a resume; its content (pid, host) only names the holder in the error.

Deliberately free of JAX imports: a second trainer is turned away before it pays for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import socket
import time

LOCK_NAME = ".lock"

# Errnos that mean "this storage cannot take our writes", as opposed to a bug or bad input.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# Only counted when the refused path is inside the workdir: elsewhere they are some input's problem.
_DENIED = {errno.EACCES, errno.EPERM}
# tensorstore (under orbax) reports the errno inside a ValueError's text.
_TS_ERRNO = re.compile(r"os_error_code='?(\d+)")


class WorkdirBusy(ValueError):
  """Another live process holds the workdir's lock."""


class WorkdirUnwritable(ValueError):
  """The workdir's storage refused a write (read-only, full, over quota)."""


def storage_errno(exc: BaseException, workdir=None) -> int | None:
  """The write-refusal errno behind `exc` (an OSError, or orbax's ValueError around tensorstore), else None."""
  root = None if workdir is None else str(pathlib.Path(workdir).absolute())
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in _FULL_OR_READ_ONLY:
      return e.errno
    if isinstance(e, OSError) and e.errno in _DENIED and root and e.filename is not None:
      if str(pathlib.Path(os.fsdecode(e.filename)).absolute()).startswith(root):
        return e.errno
    m = _TS_ERRNO.search(str(e)) if isinstance(e, (ValueError, RuntimeError)) else None
    if m and int(m.group(1)) in _FULL_OR_READ_ONLY:
      return int(m.group(1))
  return None


def unwritable(workdir, exc: BaseException, doing: str = "write to") -> WorkdirUnwritable:
  code = storage_errno(exc, workdir)
  why = os.strerror(code) if code else (str(exc).splitlines() or [type(exc).__name__])[0]
  return WorkdirUnwritable(f"cannot {doing} workdir {workdir}: {why}")


def _chain(exc: BaseException | None):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def _holder(fd: int) -> dict:
  # The holder writes its pid right after taking the lock: give it a moment if we read in between.
  for _ in range(20):
    raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if raw:
      try:
        return json.loads(raw)
      except json.JSONDecodeError:
        pass
    time.sleep(0.05)
  return {}


class WorkdirLock:
  """An exclusive, non-blocking flock on WORKDIR/.lock; raises WorkdirBusy naming the holder."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise unwritable(self.workdir, e) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      who = _holder(fd)
      os.close(fd)
      pid, host = who.get("pid", "unknown"), who.get("host", "unknown host")
      raise WorkdirBusy(f"workdir {self.workdir} is in use by another run (pid {pid} on {host}, since "
                        f"{who.get('since', '?')}); wait for it to finish or stop it first") from None
    except OSError as e:
      # Some network file systems have no flock; running unlocked beats not running.
      os.close(fd)
      print(f"hhh: warning: cannot lock {self.path} ({e.strerror}); another run on this workdir would not be "
            "stopped", flush=True)
      self._fd = None
      return
    self._fd = fd
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError as e:
      self.release()
      raise unwritable(self.workdir, e) from None

  def release(self):
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    with contextlib.suppress(OSError):
      os.ftruncate(fd, 0)  # a later reader must not name a finished run as the holder
    os.close(fd)  # closing the last descriptor drops the flock


@contextlib.contextmanager
def locked(workdir, enabled: bool = True):
  """Holds the workdir for the block; a storage refusal inside it becomes one WorkdirUnwritable line.

  `enabled=False` (processes other than 0 of a multi-process run) takes no lock: process 0's
  lock already keeps other runs out, and the processes share the workdir on purpose.
  """
  lock = WorkdirLock(workdir) if enabled else None
  try:
    yield lock
  except OSError as e:
    if storage_errno(e, workdir) is None:
      raise
    raise unwritable(workdir, e) from None
  finally:
    if lock is not None:
      lock.release()
