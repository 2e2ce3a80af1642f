"""The sandboxed child's first code (hhh/data/load/sandbox.py runs it with `python -S -B -c`, not as an import):
the namespace jail (when argv[8], its spec, is not empty), rlimits, then the audit hook, then the program as
__main__. argv: sandbox dir, memory bytes, cpu seconds, nproc, fsize, nofile, audit flag (the flag exists only so
tests can check the hard layers), jail spec. It uses nothing but the standard library: site is off in the child.
"""
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
def _jail(root, spec):
  # As root, in fresh mount, pid, network, IPC and UTS namespaces (unshare(1) made them; this process is pid 1 of
  # the new pid namespace): builds the program's view of the filesystem on a tmpfs, pivots into it, drops to the
  # fresh uid with no capabilities and forks the program. This process stays as the namespace's init: it reaps
  # orphans until the program ends, reports how it ended on the status fd and exits, and the kernel then kills
  # whatever is left in the namespace. Only the program's process returns.
  # _ctypes and _signal, the C halves of ctypes and signal, not those modules nor json: their imports (enum, re
  # and all) would cost more CPU than the rest of the setup together. A libc function is called the way
  # ctypes.CDLL(None, use_errno=True) would call it.
  import _ctypes, _signal
  uid, status, pivot_root, ro, masks = spec.split("\t")
  uid, status, pivot_root = int(uid), int(status), int(pivot_root)
  try:
    class c_int(_ctypes._SimpleCData):
      _type_ = "i"
    class c_ulong(_ctypes._SimpleCData):
      _type_ = "L"
    class Function(_ctypes.CFuncPtr):
      _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
      _restype_ = c_int
    class libc:
      _handle = _ctypes.dlopen(None, os.RTLD_NOW | os.RTLD_LOCAL)
    libc.mount, libc.umount2, libc.syscall, libc.prctl = (
        Function((name, libc)) for name in ("mount", "umount2", "syscall", "prctl"))
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND = 1, 2, 4, 8, 32, 4096
    def call(ret, what):
      if ret != 0:
        e = _ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    def mount(src, dst, fstype, flags, data=None):
      enc = lambda s: None if s is None else os.fsencode(s)
      call(libc.mount(enc(src), enc(dst), enc(fstype), c_ulong(flags), enc(data)), f"mount {dst}")
    def bind(src, dst, flags):
      mount(src, dst, None, BIND)
      mount(None, dst, None, BIND | REMOUNT | flags)
    os.umask(0o022)
    box = os.open(root, os.O_PATH | os.O_DIRECTORY)  # the real directory, still reachable once covered
    new = root  # the new root is a tmpfs over the sandbox directory: no other host path is touched
    mount("tmpfs", new, "tmpfs", NOSUID | NODEV, "mode=755,size=1m")
    def place(path):  # mirrors the host's symlinks along `path` in the new root; returns its real path
      cur = "/"
      for part in path.strip("/").split("/"):
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
          if not os.path.lexists(new + nxt):
            os.makedirs(new + cur, exist_ok=True)
            os.symlink(os.readlink(nxt), new + nxt)
          nxt = os.path.realpath(nxt)
        cur = nxt
      os.makedirs(new + cur, exist_ok=True)
      return cur
    for path in ro.split("\n"):  # the stdlib and the shared libraries its extension modules load
      real = place(path)
      bind(real, new + real, RDONLY | NOSUID | NODEV)
    for path in filter(None, masks.split("\n")):  # site-packages inside the stdlib directory: not part of the stdlib
      mount("tmpfs", new + path, "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, "size=4k")
    bind(f"/proc/self/fd/{box}", new + place(root), NOSUID | NODEV | NOEXEC)  # the one writable place
    os.close(box)
    os.makedirs(new + "/dev", exist_ok=True)
    os.makedirs(new + "/tmp", exist_ok=True)  # private and empty (and read-only, as is all but the sandbox dir)
    for name in ("null", "zero", "full", "random", "urandom"):
      open(new + "/dev/" + name, "w").close()
      bind("/dev/" + name, new + "/dev/" + name, NOSUID | NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
      os.symlink(target, new + "/dev/" + name)
    os.makedirs(new + "/proc")
    mount("proc", new + "/proc", "proc", NOSUID | NODEV | NOEXEC)  # this pid namespace's processes only
    os.chdir(new)
    call(libc.syscall(pivot_root, b".", b"."), "pivot_root")
    call(libc.umount2(b".", 2), "detaching the host's root")  # MNT_DETACH: the host tree leaves the namespace
    os.chdir("/")
    mount(None, "/", None, BIND | REMOUNT | RDONLY | NOSUID | NODEV)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to another uid: every capability goes
    call(libc.prctl(38, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    with open("/proc/self/status") as f:
      caps = [line.split()[1] for line in f if line.startswith(("CapPrm:", "CapEff:", "CapAmb:"))]
    if len(caps) != 3 or any(int(c, 16) for c in caps):
      raise OSError(f"capabilities left after dropping root: {caps}")
    os.chdir(root)
    os.umask(0o077)
    pid = os.fork()
  except BaseException as e:
    os.write(status, f"setup {type(e).__name__}: {e}".encode())
    os._exit(125)
  if pid == 0:
    os.close(status)
    for name in [n for n in sys.modules if n.startswith(("ctypes", "_ctypes"))]:
      del sys.modules[name]
    return
  libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the program (same uid) cannot ptrace this process
  _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # init ignores default-handled signals from inside the namespace
  for fd in (0, 1, 2):
    os.close(fd)
  while True:
    try:
      p, st = os.waitpid(-1, 0)
    except ChildProcessError:
      os._exit(125)
    if p == pid:
      os.write(status, f"exit {os.waitstatus_to_exitcode(st)}".encode())
      os._exit(0)
if __name__ == "__main__":  # run as `python -c` by the sandbox; importing this file does nothing
  if sys.argv[8]:
    _jail(sys.argv[1], sys.argv[8])
  for _name in ("ctypes", "_ctypes", "_posixsubprocess"):
    sys.modules.pop(_name, None)
  _code, _globals = _setup(sys.argv[1], *map(int, sys.argv[2:8]))
  del _limit, _setup, _hook, _jail, _name
  exec(_code, _globals)
