"""Runs untrusted Python (generated programs, mutants of reference solutions) in a contained subprocess.

`run_python(source)` writes the source to a fresh temporary directory and runs it there with a clean environment
(PATH, LANG, HOME and TMPDIR pointing into that directory, a fixed hash seed so set order and hence test outcomes
repeat; nothing inherited, so no secrets), stdin from /dev/null and stdout/stderr into unnamed temporary files
read back up to a cap. It returns a `SandboxResult`; it never raises for anything the program does. The
interpreter runs with -S (no site-packages: the stdlib only, and a fast start) and -B, but not -I: -I's -E would
ignore PYTHONHASHSEED, and the environment is already ours alone.

The layers, hardest first:

1. Identity (when the host runs as root): the program runs under a fresh, otherwise unused uid/gid with no
   supplementary groups, in its own network namespace (`unshare --net`, when available: no interface but a downed
   loopback, so no connection can be made even with the audit hook bypassed). File permissions then stop it writing
   or reading anything not world-accessible (world-writable places such as /tmp stay writable: only the hook
   guards those), it cannot signal host processes, and RLIMIT_NPROC counts only its own processes. An interpreter
   under a directory that uid cannot enter (pyenv under /root) cannot be run by it, so a system interpreter of the
   same major.minor version is used instead (probed once; stdlib-only code behaves the same). Without root the
   program runs as the host user, and only layers 2-4 apply.
2. Resource limits, set by the program's own bootstrap before a line of untrusted code runs (hard limits: the
   program cannot raise them again): RLIMIT_AS (memory_mb), RLIMIT_CPU (ceil(timeout) + 1 s), RLIMIT_NPROC (64
   for the fresh uid; without root, the host user's current task count + 64, since the limit counts all of the
   user's processes), RLIMIT_FSIZE (16 MB), RLIMIT_NOFILE (64) and RLIMIT_CORE (0). They are set in the child
   rather than in a `preexec_fn`, which is unsafe in a threaded parent (the loaders run candidates from a thread
   pool); privileges are dropped by `unshare`/Popen(user=...) in C for the same reason.
3. Wall-clock timeout and tree kill, in the parent: the program leads a new session (`start_new_session`); when it
   ends or runs past `timeout_s`, the parent SIGKILLs the whole process group and then every remaining process of
   the sandbox uid (root), or of the session, group or descendant tree (otherwise), until none is left, and reaps the
   child. This does not depend on the audit hook.
4. An audit hook (`sys.addaudithook`) installed before the program runs: it refuses opening files for writing,
   removing, renaming, creating directories, chmod/chown/utime/truncate/links and shutil writes outside the
   sandbox directory (symlinks resolved); socket connect/bind/sendto and name lookups; os.system, subprocess,
   os.exec*, os.fork/forkpty, os.posix_spawn, os.spawn*, signals to other processes; and imports of ctypes,
   _ctypes and _posixsubprocess (so subprocess cannot be imported either). An audit hook is NOT a security
   boundary: code can still reach around it (e.g. by editing the hook's helpers through gc, `os.setsid` which has
   no audit event, or C extensions), and it runs in the program's own process. It stops the ordinary ways a wrong
   program does damage; layers 1-3 are what hold against a hostile one. Without root, a process that calls
   setsid() and is orphaned before the end escapes the tree kill (only its CPU limit then bounds it).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
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


# The child's first code: rlimits, then the audit hook, then the program as __main__. argv: sandbox dir, memory
# bytes, cpu seconds, nproc, fsize, nofile, audit flag (the flag exists only so tests can check the hard layers).
_BOOTSTRAP = r'''
import os, sys, resource
def _limit(which, value):
  soft, hard = resource.getrlimit(which)
  if hard != resource.RLIM_INFINITY:
    value = min(value, hard)
  resource.setrlimit(which, (value, value))
def _setup(root, mem, cpu, nproc, fsize, nofile, audit):
  _limit(resource.RLIMIT_CORE, 0)
  _limit(resource.RLIMIT_NOFILE, nofile)
  _limit(resource.RLIMIT_FSIZE, fsize)
  _limit(resource.RLIMIT_NPROC, nproc)
  _limit(resource.RLIMIT_AS, mem)
  hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
  hard = cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)
  resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, hard), hard))  # SIGXCPU first, SIGKILL a second later
  main = os.path.join(root, "main.py")
  with open(main, encoding="utf-8") as f:
    code = compile(f.read(), main, "exec")
  if audit:
    sys.addaudithook(_hook(root))
  import builtins
  builtins.exit = builtins.quit = sys.exit  # -S leaves them out
  module = type(sys)("__main__")
  module.__file__ = main
  module.__builtins__ = builtins
  sys.modules["__main__"] = module
  sys.argv[:] = [main]
  return code, module.__dict__
def _hook(root):
  realpath, join, dirname, basename = os.path.realpath, os.path.join, os.path.dirname, os.path.basename
  fspath, fsdecode, readlink, getcwd = os.fspath, os.fsdecode, os.readlink, os.getcwd
  prefix, me = root + os.sep, os.getpid()
  writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
  allowed = frozenset({"/dev/null"})
  deny = frozenset({
      "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "subprocess.Popen",
      "pty.spawn", "os.startfile", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind",
      "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
      "socket.gethostbyname_ex", "socket.getnameinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
      "ctypes.cdata", "ctypes.call_function", "urllib.Request", "http.client.connect", "ftplib.connect",
      "smtplib.connect", "poplib.connect", "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open",
      "webbrowser.open", "os.chroot", "sys.remote_exec"})
  denied_modules = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
  # event -> (path arg, dir_fd arg or None, whether only the entry's directory must be inside: removing or
  # renaming a symlink that points outside is harmless, writing through it is not)
  paths = {
      "os.remove": ((0, 1, True),), "os.rmdir": ((0, 1, True),), "os.mkdir": ((0, 2, True),),
      "os.rename": ((0, 2, True), (1, 3, True)), "os.link": ((0, 2, False), (1, 3, True)),
      "os.symlink": ((1, 2, True),), "os.chmod": ((0, 2, False),), "os.chown": ((0, 3, False),),
      "os.utime": ((0, 3, False),), "os.truncate": ((0, None, False),), "os.setxattr": ((0, None, False),),
      "os.removexattr": ((0, None, False),), "os.chflags": ((0, None, False),), "os.lchflags": ((0, None, True),),
      "os.lchmod": ((0, None, True),), "shutil.copyfile": ((1, None, False),),
      "shutil.copymode": ((1, None, False),), "shutil.copystat": ((1, None, False),),
      "shutil.copytree": ((1, None, False),), "shutil.rmtree": ((0, 1, True),),
      "shutil.move": ((0, None, True), (1, None, False)), "shutil.make_archive": ((0, None, False),),
      "shutil.unpack_archive": ((1, None, False),)}
  def inside(path, dir_fd, entry):
    if path is None or isinstance(path, int):
      return True  # an open descriptor passed this check when it was opened; None means a default checked later
    p = fsdecode(fspath(path))
    if not p.startswith("/"):
      # Audit events pass dir_fd as -1 or AT_FDCWD (negative) when none was given.
      p = join(readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else getcwd(), p)
    r = join(realpath(dirname(p)), basename(p)) if entry else realpath(p)
    return r == root or r.startswith(prefix) or r in allowed
  def hook(event, args):
    if event in deny:
      raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import":
      if args[0] in denied_modules:
        raise ImportError(f"sandbox: importing {args[0]} is not allowed")
    elif event == "open":
      path, mode, flags = args
      if ((isinstance(flags, int) and flags & writes) or (isinstance(mode, str) and any(c in mode for c in "wax+"))) \
          and not inside(path, None, False):
        raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
    elif event == "os.kill":
      if args[0] != me:
        raise PermissionError("sandbox: os.kill of another process is not allowed")
    elif event in paths:
      for i, fd_i, entry in paths[event]:
        if i < len(args) and not inside(args[i], args[fd_i] if fd_i is not None and fd_i < len(args) else None,
                                        entry):
          raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the sandbox directory is not allowed")
  return hook
for _name in ("ctypes", "_ctypes", "_posixsubprocess"):
  sys.modules.pop(_name, None)
_code, _globals = _setup(sys.argv[1], *map(int, sys.argv[2:8]))
del _limit, _setup, _hook, _name
exec(_code, _globals)
'''


@dataclasses.dataclass(frozen=True)
class _Launch:
  python: str
  unshare: str | None  # path of util-linux unshare when the fresh uid also gets its own network namespace
  fresh_uid: bool  # run under a fresh uid (host is root)
  tmp_parent: str | None  # where sandbox directories go (one the fresh uid can enter)


_launch_lock = threading.Lock()
_launch: _Launch | None = None
_uids_lock = threading.Lock()
_uids_in_use: set[int] = set()


def run_python(source: str, *, timeout_s: float = 10.0, memory_mb: int = 512, files: dict[str, str] | None = None,
               max_output_bytes: int = MAX_OUTPUT_BYTES, _audit: bool = True) -> SandboxResult:
  """Runs `source` as __main__ in a fresh sandbox directory (also its cwd, HOME and TMPDIR) and returns the outcome.

  `files` maps relative paths to text written beside main.py first (helper modules, data). Never raises for what
  the program does; ValueError for bad arguments.
  """
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
  if memory_mb < 32:
    raise ValueError(f"memory_mb must be >= 32, got {memory_mb}")
  launch = _get_launch()
  uid = _claim_uid() if launch.fresh_uid else None
  try:
    with tempfile.TemporaryDirectory(prefix="hhh-sandbox-", dir=launch.tmp_parent, ignore_cleanup_errors=True) as tmp, \
        tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      root = os.path.realpath(tmp)
      _write_files(root, source, files or {})
      if uid is not None:  # the program owns its directory and files, whatever our umask made of them
        for dirpath, _, names in os.walk(root):
          for path in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
            os.chown(path, uid, uid)
      nproc = NPROC if uid is not None else _tasks_of(os.getuid()) + NPROC
      argv = [launch.python, "-S", "-B", "-c", _BOOTSTRAP, root, str(memory_mb << 20), str(math.ceil(timeout_s) + 1),
              str(nproc), str(FSIZE_BYTES), str(NOFILE), "1" if _audit else "0"]
      kwargs = {}
      if uid is not None and launch.unshare:
        argv = [launch.unshare, "--net", "--setuid", str(uid), "--setgid", str(uid), "--"] + argv
      elif uid is not None:
        kwargs = dict(user=uid, group=uid, extra_groups=[])
      env = dict(SECRET_FREE_ENV, HOME=root, TMPDIR=root, PYTHONHASHSEED="0", PYTHONIOENCODING="utf-8")
      start = time.monotonic()
      proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              start_new_session=True, close_fds=True, umask=0o077, **kwargs)
      timed_out = False
      try:
        try:
          proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
          timed_out = True
        wall_s = time.monotonic() - start
      finally:
        _kill_tree(proc.pid, uid)
        proc.wait()
      rc = proc.returncode
      return SandboxResult(returncode=rc, stdout=_read_capped(out, max_output_bytes),
                           stderr=_read_capped(err, max_output_bytes), timed_out=timed_out,
                           killed_by_signal=-rc if rc < 0 else None, wall_s=wall_s, pid=proc.pid)
  finally:
    if uid is not None:
      with _uids_lock:
        _uids_in_use.discard(uid)


def isolation() -> str:
  """How programs are isolated on this host: "uid+netns", "uid" (fresh uid, shared network) or "same-user"."""
  launch = _get_launch()
  return ("uid+netns" if launch.unshare else "uid") if launch.fresh_uid else "same-user"


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


def _get_launch() -> _Launch:
  global _launch
  with _launch_lock:
    if _launch is None:
      _launch = _probe()
    return _launch


def _probe() -> _Launch:
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
