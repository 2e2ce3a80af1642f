"""`--out DIR` for the commands that write a whole directory (export, convert, distill), without losing data.

A directory is replaced only when it is safe to: hhh never deletes what it did not write, what a run is using,
or what it reads from.

- DIR may be missing or empty. If it holds anything else, it must be an earlier output of the same command: each
  output carries `.hhh-output.json` (the command, the entries it wrote), and `force` replaces such an output
  only, and only while it holds nothing the command did not write.
- DIR may not be, contain or lie inside the command's source (`hhh export RUN --out RUN` would delete the run).
- DIR may not be a run in use: a live flock on DIR/.lock (hhh/train/workdir.py) refuses it, `force` or not.
- The output is written into a fresh staging directory beside DIR (mkdtemp: two writers never share one) and
  renamed into place when complete, so a failure or a kill leaves the earlier output as it was. The staging
  directories of killed writers on this host (their pid is gone) are removed by the next writer to DIR.

Every refusal is an `OutDirError`, a ValueError whose text is one line (the CLI prints `hhh: error: ...`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import pathlib
import shutil
import socket
import stat
import sys
import tempfile
import time
from typing import Iterable, Iterator

MARKER = ".hhh-output.json"
_MARKER_BYTES = 1 << 16
_LOCK = ".lock"  # hhh.train.workdir.LOCK_NAME, not imported: that module is for the trainer


class OutDirError(ValueError):
  """An output directory hhh will not write: one line naming it and why."""


def _read_marker(d: pathlib.Path) -> dict | None:
  """The marker of an earlier output, or None. Opened without following a symlink or blocking on a FIFO."""
  try:
    fd = os.open(d / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError:
    return None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_BYTES:
      return None
    m = json.loads(os.read(fd, _MARKER_BYTES).decode("utf-8"))
  except (OSError, ValueError):
    return None
  finally:
    os.close(fd)
  return m if isinstance(m, dict) and isinstance(m.get("written_by"), str) else None


def _lock_holder(d: pathlib.Path) -> str | None:
  """Who holds d/.lock, if a live process does (a training run in progress), else None."""
  try:
    fd = os.open(d / _LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    try:
      who = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
      who = {}
    who = who if isinstance(who, dict) else {}
    return f"pid {who.get('pid', 'unknown')} on {who.get('host', 'an unknown host')}"
  except OSError:
    return None  # no flock on this file system: nothing to tell
  finally:
    os.close(fd)  # also drops our shared lock, if we got it
  return None


def _relation(out: str, src: str) -> str | None:
  if out == src:
    return "is"
  if out.startswith(src.rstrip(os.sep) + os.sep):
    return "is inside"
  if src.startswith(out.rstrip(os.sep) + os.sep):
    return "contains"
  return None


def check(out, command: str, *, sources: Iterable = (), force: bool = False) -> pathlib.Path:
  """Raises OutDirError unless `command` may write `out` (see the module docstring); returns it, absolute."""
  out = pathlib.Path(out).absolute()
  real = os.path.realpath(out)
  for src in sources:
    rel = _relation(real, os.path.realpath(src))
    if rel:
      raise OutDirError(f"{out} {rel} the source {src}; `{command}` never writes where it reads from: choose "
                        "another --out")
  if out.is_symlink():
    raise OutDirError(f"{out} is a symbolic link; give the directory itself as --out")
  if not out.exists():
    return out
  if not out.is_dir():
    raise OutDirError(f"{out} exists and is not a directory; refusing to replace it")
  holder = _lock_holder(out)
  if holder:
    raise OutDirError(f"{out} is a training run in use ({_LOCK} held by {holder}); refusing to touch it")
  try:
    entries = set(os.listdir(out))
  except OSError as e:
    raise OutDirError(f"{out}: cannot list it ({e.strerror})") from None
  if not entries:
    return out
  marker = _read_marker(out)
  if marker is None or marker["written_by"] != command:
    raise OutDirError(f"{out} is not empty and was not written by `{command}`; refusing to delete what is there "
                      "(choose a new or empty --out)")
  if not force:
    raise OutDirError(f"{out} holds an earlier `{command}` output; pass --force to replace it")
  wrote = marker.get("entries")
  extra = sorted(entries - set(wrote if isinstance(wrote, list) else []) - {MARKER})
  if extra:
    raise OutDirError(f"{out} holds an earlier `{command}` output plus what it did not write "
                      f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); refusing to delete those")
  return out


@contextlib.contextmanager
def staged(out, command: str, *, sources: Iterable = (), force: bool = False) -> Iterator[pathlib.Path]:
  """Checks `out`, then yields a path (not yet created) in a fresh staging directory beside it: write the output
  there. On success it is marked as `command`'s and renamed to `out`; on any failure `out` is untouched."""
  sources = [str(s) for s in sources]
  out = check(out, command, sources=sources, force=force)
  fresh = not out.exists() or not os.listdir(out)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out)
    # mkdtemp: a name no other writer has, mode 0700. The output itself, one level down, gets the usual mode.
    stage = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{_stage_prefix(out)}{os.getpid()}."))
  except OSError as e:
    raise OutDirError(f"{out}: cannot write beside it ({e.strerror})") from None
  try:
    dest = stage / out.name
    yield dest
    dest.mkdir(exist_ok=True)
    entries = sorted(os.listdir(dest))
    (dest / MARKER).write_text(json.dumps({"written_by": command, "entries": entries, "sources": sources,
                                           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    _replace(out, dest, stage / ".previous", command, sources, force, fresh)
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def _stage_prefix(out: pathlib.Path) -> str:
  # The host in the name: a pid says whether its writer lives only on the host that wrote it.
  return f".{out.name}.partial-{socket.gethostname()}."


def _remove_stale_stages(out: pathlib.Path) -> None:
  prefix = _stage_prefix(out)
  for p in out.parent.glob(glob.escape(prefix) + "*"):
    pid = p.name[len(prefix):].split(".", 1)[0]
    if pid.isdigit() and not alive(int(pid)):
      shutil.rmtree(p, ignore_errors=True)


def alive(pid: int) -> bool:
  """Whether a process of this pid lives on this host (staging directories of dead writers are removed)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Swaps two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
  fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform.startswith("linux") else None
  if fn is None:
    return False
  at_fdcwd, rename_exchange = -100, 2
  if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # an old kernel, a file system without it
    return False
  raise OSError(err, os.strerror(err), str(b))


_LOST_RACE = "{} was written by another process meanwhile; kept that, discarded this output"


def _replace(out: pathlib.Path, dest: pathlib.Path, aside: pathlib.Path, command: str, sources, force,
             fresh: bool) -> None:
  try:
    check(out, command, sources=sources, force=force)  # again: what is there may have changed while we wrote
  except OutDirError:
    if fresh:  # it was missing or empty when we began
      raise OutDirError(_LOST_RACE.format(out)) from None
    raise
  moved = False
  with contextlib.suppress(FileNotFoundError):
    if out.is_dir() and os.listdir(out):  # an earlier output `force` may replace; deleted with the staging dir
      if _exchange(dest, out):
        return
      os.rename(out, aside)  # two steps where the system has no exchange: DIR is missing in between
      moved = True
  try:
    os.rename(dest, out)  # atomic; replaces an empty directory, fails on a non-empty one
  except OSError as e:
    if moved and not out.exists():
      os.rename(aside, out)
    if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
      raise OutDirError(_LOST_RACE.format(out)) from None
    raise OutDirError(f"{out}: cannot move the finished output into place ({e.strerror})") from None
