"""Runs untrusted Python (generated programs, mutants of reference solutions) in a contained subprocess.

`run_python(source)` writes the source to a fresh temporary directory and runs it there with a clean environment
(PATH, LANG, HOME and TMPDIR pointing into that directory, a fixed hash seed so set order and hence test outcomes
repeat; nothing inherited, so no secrets), stdin from /dev/null and stdout/stderr into unnamed temporary files
read back up to a cap. It returns a `SandboxResult`; it never raises for anything the program does. The
interpreter (this one, sys.executable) runs with -S (no site-packages: the stdlib only, and a fast start) and -B,
but not -I: -I's -E would ignore PYTHONHASHSEED, and the environment is already ours alone.

The layers, hardest first:

1. The namespace jail, the boundary (Linux, run as root, util-linux `unshare`): the program runs in fresh mount,
   pid, network, IPC and UTS namespaces. Its filesystem is a read-only tmpfs holding only the interpreter's stdlib
   (sys.path under -S, with site-packages inside it covered by an empty tmpfs), the shared-library directories its
   extension modules load from, /dev/{null,zero,full,random,urandom}, a /proc of its own pid namespace, an empty
   /tmp, and the sandbox directory at its host path, the one writable place (nosuid, nodev, noexec). The host's
   tree is detached after pivot_root, so /etc/passwd, the project and every dataset are simply not there, and no
   path, dir_fd, fifo or unix socket reaches outside; the network namespace has only a downed loopback and its own
   abstract unix socket names. The setup runs in the trusted bootstrap (as root, through _ctypes) before any
   untrusted code; then the process drops to a fresh, otherwise unused uid/gid with no groups, no capabilities and
   no_new_privs, and forks the program. The bootstrap stays as the namespace's init (pid 1): it reaps orphans and
   reports how the program ended; when it exits the kernel kills everything left in the namespace, so no orphan
   or zombie survives a run, whatever the program does. The program can still make a user namespace of its own
   (where the host allows that), but its mounts are locked: it can neither remount the view writable nor uncover
   the host. Cost: 5-15 ms more CPU per run than a bare fresh uid (35-50 ms in all for `pass`, parent included),
   and one at a time about 1.5x the wall time (namespace teardown waits on the kernel).
   Where the jail cannot be had (not root, no unshare, namespaces refused; a probe program must run in it), the
   sandbox fails closed: run_python raises SandboxUnavailable, one line. Setting HHH_SANDBOX_ALLOW_WEAK=1 accepts
   the older, weaker mode instead (with a warning): as root a fresh uid in its own network namespace (world-
   readable files stay readable, world-writable ones such as /tmp writable: only the hook guards them), otherwise
   the host user itself, where only layers 2-4 apply and a setsid() orphan escapes the tree kill.
2. Resource limits, set by the program's own bootstrap before a line of untrusted code runs (hard limits: the
   program cannot raise them again): RLIMIT_AS (memory_mb), RLIMIT_CPU (ceil(timeout) + 1 s), RLIMIT_NPROC (64
   for the fresh uid; without root, the host user's current task count + 64, since the limit counts all of the
   user's processes), RLIMIT_FSIZE (16 MB), RLIMIT_NOFILE (64) and RLIMIT_CORE (0). They are set in the child
   rather than in a `preexec_fn`, which is unsafe in a threaded parent (the loaders run candidates from a thread
   pool); namespaces and privileges are handled by `unshare` and the child for the same reason.
3. Wall-clock timeout and kill, in the parent: the program leads a new session (`start_new_session`); when it
   runs past `timeout_s` the parent SIGKILLs every process of the sandbox uid but the jail's init, which then
   ends the namespace (or, in the weak modes, the whole process group and then every remaining process of the
   uid, or of the session, group or descendant tree, until none is left), and reaps the child.
4. An audit hook (`sys.addaudithook`) installed before the program runs, a tripwire that turns the ordinary ways a
   wrong program does damage into clear errors: it refuses opening files for writing, removing, renaming,
   creating directories, chmod/chown/utime/truncate/links and shutil writes outside the sandbox directory
   (symlinks resolved); socket connect/bind/sendto and name lookups; os.system, subprocess, os.exec*,
   os.fork/forkpty, os.posix_spawn, os.spawn*, signals to other processes; and imports of ctypes, _ctypes and
   _posixsubprocess (so subprocess cannot be imported either). It is NOT a security boundary: it runs in the
   program's own process, and code reaches around it (os.open with dir_fd, os.mkfifo and unix sockets pass it;
   gc hands back its closure, whose deny sets can be emptied to import ctypes). Layers 1-3 are what hold against
   a hostile program, and tests/test_sandbox.py runs each of those escapes against them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import marshal
import math
import os
import pathlib
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings

MAX_OUTPUT_BYTES = 1 << 16  # per stream; more is cut and marked
FSIZE_BYTES = 16 << 20  # largest file the program may write (stdout/stderr files included)
NOFILE = 64
NPROC = 64  # processes (threads count too) the program may have at once, beyond what its user already runs
# Fresh uids come from this range (above any real account, below 2^31 for tools that read uids as signed).
UID_BASE, UID_SPAN = 0x70000000, 1 << 24
SECRET_FREE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
TRUNCATED = "\n[... output truncated]"


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  returncode: int  # Popen convention: negative = killed by that signal
  stdout: str  # at most max_output_bytes of it, decoded as UTF-8 with replacement
  stderr: str
  timed_out: bool  # ran past timeout_s and was killed by the parent
  killed_by_signal: int | None  # the signal that ended the program, if one did
  wall_s: float  # from start to exit (or to the timeout)
  pid: int  # the program's pid, which was also its session and process group id; gone once run_python returns

  @property
  def ok(self) -> bool:
    return self.returncode == 0 and not self.timed_out


# The child's first code, passed as `-c` text: see sandbox_bootstrap.py.
_BOOTSTRAP = (pathlib.Path(__file__).parent / "sandbox_bootstrap.py").read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class _Launch:
  python: str
  unshare: str | None  # path of util-linux unshare when the fresh uid also gets its own network namespace
  fresh_uid: bool  # run under a fresh uid (host is root)
  tmp_parent: str | None  # where sandbox directories go (one the fresh uid can enter)
  jail: _Jail | None = None  # the namespace jail; None only in the opt-in weak modes


@dataclasses.dataclass(frozen=True)
class _Jail:
  ro: tuple[str, ...]  # host directories the program sees read-only, at the same paths
  masks: tuple[str, ...]  # directories inside those hidden under an empty tmpfs
  pivot_root: int  # the syscall's number on this machine (glibc has no wrapper)


class SandboxUnavailable(ValueError):
  """The kernel boundary cannot be set up on this host and the weak mode was not asked for (a ValueError so that
  the CLI reports it as one line)."""


# Opt-in for the weaker modes where namespaces are unavailable; see the module docstring.
ALLOW_WEAK_ENV = "HHH_SANDBOX_ALLOW_WEAK"
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217}
# Modules the probe imports inside the jail: their extension modules and shared libraries must be in the view.
_PROBE_SOURCE = ("import bisect, collections, datetime, decimal, fractions, functools, hashlib, heapq, itertools, "
                 "json, math, random, re, statistics, string, struct, zlib\n"
                 "print(hashlib.md5(b'hhh').hexdigest()[:8], json.dumps(decimal.Decimal('1.5') + 1, default=str))")
_PROBE_STDOUT = f"{__import__('hashlib').md5(b'hhh').hexdigest()[:8]} \"2.5\"\n"

_launch_lock = threading.Lock()
_launch: _Launch | None = None
_uids_lock = threading.Lock()
_uids_in_use: set[int] = set()


def run_python(source: str, *, timeout_s: float = 10.0, memory_mb: int = 512, files: dict[str, str] | None = None,
               max_output_bytes: int = MAX_OUTPUT_BYTES, _audit: bool = True) -> SandboxResult:
  """Runs `source` as __main__ in a fresh sandbox directory (also its cwd, HOME and TMPDIR) and returns the outcome.

  `files` maps relative paths to text written beside main.py first (helper modules, data). Never raises for what
  the program does; ValueError for bad arguments, SandboxUnavailable (also a ValueError) when this host cannot
  give the kernel boundary and HHH_SANDBOX_ALLOW_WEAK is not set.
  """
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
  if memory_mb < 32:
    raise ValueError(f"memory_mb must be >= 32, got {memory_mb}")
  return _run(_get_launch(), source, timeout_s=timeout_s, memory_mb=memory_mb, files=files or {},
              max_output_bytes=max_output_bytes, audit=_audit)


def _run(launch: _Launch, source: str, *, timeout_s: float, memory_mb: int, files: dict[str, str],
         max_output_bytes: int, audit: bool) -> SandboxResult:
  uid = _claim_uid() if launch.fresh_uid else None
  status_r = status_w = -1
  try:
    with tempfile.TemporaryDirectory(prefix="hhh-sandbox-", dir=launch.tmp_parent, ignore_cleanup_errors=True) as tmp, \
        tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      root = os.path.realpath(tmp)
      _write_files(root, source, files)
      if uid is not None:  # the program owns its directory and files, whatever our umask made of them
        for dirpath, _, names in os.walk(root):
          for path in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
            os.chown(path, uid, uid)
      nproc = NPROC if uid is not None else _tasks_of(os.getuid()) + NPROC
      jail = ""
      kwargs = {}
      if launch.jail is not None:
        status_r, status_w = os.pipe()
        jail = "\t".join([str(uid), str(status_w), str(launch.jail.pivot_root), "\n".join(launch.jail.ro),
                          "\n".join(launch.jail.masks)])
        kwargs = dict(pass_fds=(status_w,))
      argv = [launch.python, "-S", "-B", "-c", _BOOTSTRAP, root, str(memory_mb << 20), str(math.ceil(timeout_s) + 1),
              str(nproc), str(FSIZE_BYTES), str(NOFILE), "1" if audit else "0", jail]
      if launch.jail is not None:  # the jail runs our own interpreter, so it can take the bootstrap compiled
        argv[4:5] = [_LOAD_COMPILED, _compiled_bootstrap()]
      if launch.jail is not None:
        # --kill-child: if unshare dies, so does the namespace's init, and with it every process in the namespace.
        argv = [launch.unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--"] + argv
      elif uid is not None and launch.unshare:
        argv = [launch.unshare, "--net", "--setuid", str(uid), "--setgid", str(uid), "--"] + argv
      elif uid is not None:
        kwargs = dict(user=uid, group=uid, extra_groups=[])
      env = dict(SECRET_FREE_ENV, HOME=root, TMPDIR=root, PYTHONHASHSEED="0", PYTHONIOENCODING="utf-8")
      start = time.monotonic()
      try:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True, umask=0o077, **kwargs)
      finally:
        if status_w >= 0:
          os.close(status_w)
      timed_out = False
      try:
        try:
          proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
          timed_out = True
        wall_s = time.monotonic() - start
      finally:
        # In the jail, unshare's end means its init's, and the init ends only once the kernel has killed and
        # reaped every other process of the pid namespace: nothing can be left to look for.
        if launch.jail is None or not _kill_jail(proc, uid):
          _kill_tree(proc.pid, uid)
        proc.wait()
      rc = proc.returncode
      if status_r >= 0:  # every writer is dead by now, so this read cannot block
        report = os.read(status_r, 4096).decode("utf-8", "replace")
        if report.startswith("setup "):
          raise SandboxUnavailable(f"sandbox: setting up the namespace jail failed: {report[6:]}")
        if timed_out:
          rc = -signal.SIGKILL  # as the program's own status says when the kill reached it first
        elif report.startswith("exit "):
          rc = int(report[5:])  # the program's own status (the init above it exits 0)
      return SandboxResult(returncode=rc, stdout=_read_capped(out, max_output_bytes),
                           stderr=_read_capped(err, max_output_bytes), timed_out=timed_out,
                           killed_by_signal=-rc if rc < 0 else None, wall_s=wall_s, pid=proc.pid)
  finally:
    if status_r >= 0:
      os.close(status_r)
    if uid is not None:
      with _uids_lock:
        _uids_in_use.discard(uid)


def isolation() -> str:
  """How programs are isolated on this host: "namespaces" (the kernel boundary: fresh uid in its own mount, pid and
  network namespaces), or one of the opt-in weak modes: "uid+netns", "uid" (fresh uid, shared network) or
  "same-user". Raises SandboxUnavailable where none of these may be used."""
  launch = _get_launch()
  if launch.jail is not None:
    return "namespaces"
  return ("uid+netns" if launch.unshare else "uid") if launch.fresh_uid else "same-user"


# Compiling the bootstrap costs each run more CPU than the whole jail setup; unmarshalling it costs next to none.
_LOAD_COMPILED = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"


@functools.cache
def _compiled_bootstrap() -> str:
  return marshal.dumps(compile(_BOOTSTRAP, "<hhh sandbox bootstrap>", "exec")).hex()


def _write_files(root: str, source: str, files: dict[str, str]):
  if any(os.path.normpath(name) == "main.py" for name in files):
    raise ValueError("sandbox file name 'main.py' is taken by the program itself")
  for name, text in [("main.py", source), *files.items()]:
    rel = os.path.normpath(name)
    if os.path.isabs(name) or rel == "." or rel.startswith(".."):
      raise ValueError(f"sandbox file name must be a relative path inside the sandbox: {name!r}")
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def _read_capped(f, cap: int) -> str:
  f.seek(0)
  data = f.read(cap + 1)
  text = data[:cap].decode("utf-8", errors="replace")
  return text + TRUNCATED if len(data) > cap else text


def _claim_uid() -> int:
  rng = random.SystemRandom()
  with _uids_lock:
    while True:
      uid = UID_BASE + rng.randrange(UID_SPAN)
      if uid not in _uids_in_use:
        _uids_in_use.add(uid)
        return uid


def _proc_table() -> list[tuple[int, str, int, int, int, int | None]]:
  """(pid, state, ppid, pgrp, session, real uid) of every process now visible in /proc."""
  table = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat", "rb") as f:
        stat_text = f.read().decode("ascii", "replace")
      with open(f"/proc/{name}/status", "rb") as f:
        uid_line = next((line for line in f if line.startswith(b"Uid:")), b"")
    except OSError:
      continue  # gone meanwhile
    fields = stat_text[stat_text.rfind(")") + 2:].split()
    uid = int(uid_line.split()[1]) if uid_line else None
    table.append((int(name), fields[0], int(fields[1]), int(fields[2]), int(fields[3]), uid))
  return table


def _tasks_of(uid: int) -> int:
  """Tasks (threads) of `uid` now, which is what RLIMIT_NPROC counts."""
  total = 0
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/status", "rb") as f:
        fields = dict(line.split(b":", 1) for line in f if line.startswith((b"Uid:", b"Threads:")))
    except (OSError, ValueError):
      continue
    if b"Uid" in fields and int(fields[b"Uid"].split()[0]) == uid:
      total += int(fields.get(b"Threads", b"1").strip() or 1)
  return total


def _members(pid: int, uid: int | None) -> list[int]:
  """Live processes that belong to the sandbox started as `pid` (not yet reaped, so its descendants still hang
  under it): every process of the sandbox uid, or without one its session, group and descendant tree."""
  table = _proc_table()
  if uid is not None:
    return [p for p, state, _, _, _, u in table if u == uid and state not in ("Z", "X")]
  children: dict[int, list[int]] = {}
  for p, _, ppid, _, _, _ in table:
    children.setdefault(ppid, []).append(p)
  tree, todo = set(), [pid]
  while todo:
    p = todo.pop()
    if p not in tree:
      tree.add(p)
      todo.extend(children.get(p, ()))
  return [p for p, state, _, pgrp, sid, _ in table
          if state not in ("Z", "X") and (p in tree or pgrp == pid or sid == pid)]


def _kill_tree(pid: int, uid: int | None):
  """SIGKILLs the sandbox's process group and every other process of it, repeating until none is alive (a fork
  loop keeps making new ones until its parents are dead)."""
  for attempt in itertools.count():
    try:
      os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    victims = [p for p in _members(pid, uid) if p != os.getpid()]
    if not victims:
      return
    for p in victims:
      try:
        os.kill(p, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
    if attempt > 1000:
      warnings.warn(f"sandbox: processes of sandbox {pid} survive SIGKILL: {victims[:10]}")
      return
    time.sleep(0.001 if attempt < 10 else 0.01)


def _kill_jail(proc: subprocess.Popen, uid: int) -> bool:
  """Kills the jailed program from inside out (True once unshare has ended): every process of the sandbox uid but
  the namespace's init, which then reports the program's end and exits (the kernel kills whatever else is in the
  namespace), and unshare reaps it. Killing unshare or the init first would orphan the init's zombie to the host's
  pid 1, not ours to count on for reaping (and unshare(1) cannot re-raise SIGKILL: it would print an error into
  the program's stderr)."""
  for attempt in itertools.count():
    if proc.poll() is not None:
      return True
    table = _proc_table()
    inits = {p for p, _, ppid, _, _, _ in table if ppid == proc.pid}
    spare = inits if attempt < 200 else set()  # an init still setting up (root) or stuck: the group kill follows
    for p, state, _, _, _, u in table:
      if u == uid and state not in ("Z", "X") and p not in spare:
        try:
          os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
          pass
    try:
      proc.wait(timeout=0.005)
      return True
    except subprocess.TimeoutExpired:
      if attempt >= 200:
        return False


def _get_launch() -> _Launch:
  global _launch
  with _launch_lock:
    if _launch is None:
      _launch = _probe()
    return _launch


def _probe() -> _Launch:
  """The jail if this host can give it (a probe program must run in it), else a weak mode if the user opted in."""
  why = _probe_jail_unavailable()
  if isinstance(why, _Launch):
    return why
  if os.environ.get(ALLOW_WEAK_ENV, "") not in ("1", "true", "yes"):
    raise SandboxUnavailable(f"sandbox: cannot isolate untrusted code here ({why}); run as root on Linux with "
                             f"util-linux unshare, or set {ALLOW_WEAK_ENV}=1 to accept the weaker mode (rlimits, "
                             f"timeouts and an audit hook; hhh.data.load.sandbox's docstring says what it misses)")
  warnings.warn(f"sandbox: {why}; {ALLOW_WEAK_ENV} is set, so untrusted code runs without the namespace jail")
  return _probe_weak()


def _probe_jail_unavailable() -> _Launch | str:
  """The jailed launch, after a probe program ran in it, or why there is none."""
  if not sys.platform.startswith("linux"):
    return "namespaces need Linux"
  if os.geteuid() != 0:
    return "not running as root"
  unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
  if unshare is None:
    return "util-linux unshare not found"
  machine = os.uname().machine
  if machine not in _PIVOT_ROOT:
    return f"no pivot_root syscall number known for {machine}"
  try:
    view = json.loads(subprocess.run(
        [sys.executable, "-S", "-c", _VIEW_PROBE], env=dict(SECRET_FREE_ENV), capture_output=True, text=True,
        timeout=30, check=True).stdout)
  except (OSError, subprocess.SubprocessError, ValueError) as e:
    return f"cannot list the interpreter's stdlib: {e}"
  launch = _Launch(python=sys.executable, unshare=unshare, fresh_uid=True, tmp_parent=None,
                   jail=_Jail(ro=tuple(view["ro"]), masks=tuple(view["masks"]), pivot_root=_PIVOT_ROOT[machine]))
  try:
    r = _run(launch, _PROBE_SOURCE, timeout_s=30, memory_mb=512, files={}, max_output_bytes=MAX_OUTPUT_BYTES,
             audit=True)
  except (OSError, SandboxUnavailable) as e:
    return str(e)
  if r.returncode != 0 or r.stdout != _PROBE_STDOUT:
    last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    return f"the probe program failed in the namespace jail: {last}"
  return launch


# Run by the sandbox's interpreter with -S: the directories the jail must show it, as JSON. sys.path is the stdlib
# (and lib-dynload); the shared libraries are the directories of those now mapped (libc, libpython) and the
# multiarch library directories, where the loader finds what extension modules link (libz, libssl, libffi).
_VIEW_PROBE = r'''
import json, os, sys
ro = [p for p in sys.path[1:] if os.path.isdir(p)]
with open("/proc/self/maps") as f:
  files = [line.split()[-1] for line in f]
mapped = {os.path.dirname(p) for p in files if p.startswith("/") and ".so" in p}
arch = getattr(sys.implementation, "_multiarch", "")
libs = [f"/lib/{arch}", f"/usr/lib/{arch}"] if arch else ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
ro += sorted(mapped) + [p for p in libs if os.path.isdir(p)]
# The spec travels tab- and newline-separated: a path holding either is left out (the probe then fails closed).
ro = [p for p in dict.fromkeys(os.path.realpath(p) for p in ro) if "\t" not in p and "\n" not in p]
ro.sort(key=lambda p: (p.count("/"), p))  # parents are mounted before what lies inside them
masks = [os.path.join(p, n) for p in ro for n in ("site-packages", "dist-packages")
         if os.path.isdir(os.path.join(p, n))]
print(json.dumps({"ro": ro, "masks": masks}))
'''


def _probe_weak() -> _Launch:
  if os.geteuid() != 0:
    return _Launch(python=sys.executable, unshare=None, fresh_uid=False, tmp_parent=None)
  tmp_parent = tempfile.gettempdir() if _enterable(tempfile.gettempdir()) else "/tmp"
  version = f"{sys.version_info[0]}.{sys.version_info[1]}"
  candidates = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", "/usr/bin/python3"]
  unshare = shutil.which("unshare", path="/usr/bin:/bin")
  uid = _claim_uid()
  try:
    for python in dict.fromkeys(c for c in candidates if c and os.path.isfile(c)):
      for use_unshare in ([unshare, None] if unshare else [None]):
        argv = [python, "-S", "-c", "import sys, resource; print('%d.%d' % sys.version_info[:2])"]
        kwargs = {}
        if use_unshare:
          argv = [use_unshare, "--net", "--setuid", str(uid), "--setgid", str(uid), "--"] + argv
        else:
          kwargs = dict(user=uid, group=uid, extra_groups=[])
        try:
          proc = subprocess.run(argv, cwd="/", env=dict(SECRET_FREE_ENV), capture_output=True, text=True,
                                timeout=30, **kwargs)
        except (OSError, subprocess.SubprocessError):
          continue
        if proc.returncode == 0 and proc.stdout.strip() == version:
          return _Launch(python=python, unshare=use_unshare, fresh_uid=True, tmp_parent=tmp_parent)
  finally:
    with _uids_lock:
      _uids_in_use.discard(uid)
  warnings.warn("sandbox: running as root but no Python interpreter is usable by an unprivileged uid; "
                "untrusted programs will run as root, contained only by rlimits, timeouts and the audit hook")
  return _Launch(python=sys.executable, unshare=None, fresh_uid=False, tmp_parent=None)


def _enterable(path: str) -> bool:
  """Whether a user with no rights of its own can reach into `path` (every directory on the way is o+x)."""
  path = os.path.realpath(path)
  while True:
    try:
      if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    except OSError:
      return False
    parent = os.path.dirname(path)
    if parent == path:
      return True
    path = parent
