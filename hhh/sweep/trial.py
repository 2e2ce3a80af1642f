"""One trial's directory, its process and its result: the unit both backends (local, Ray) run.

TRIALS/ID/ holds `trial.json` (what runs: stage, labels, resolved config), `attempt-N.log` (every attempt's output,
kept), `result.json` (written once, atomically, when the trial succeeds), `failed.json` (the last failure) and
`lock`. Whoever runs a trial holds an exclusive flock on `lock`, and so does the trial's process (it inherits the
descriptor), so a relaunched sweep never starts a second process on a directory some process still works in,
and `status` can tell a running trial from one a dead launcher left half done.

Trial processes die with their launcher: each starts in its own process group (a Ctrl-C to the launcher's
terminal does not reach it directly; the launcher kills the group on the way out) and, on Linux, with a
parent-death signal, so a launcher killed with SIGKILL takes its trainers with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from hhh.safeio import write_json_atomic
from hhh.selfcmd import hhh_argv
from hhh.sweep.spec import Trial

PR_SET_PDEATHSIG = 1
_libc = None


def _prctl():
  global _libc
  if _libc is None and sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
  return _libc.prctl if _libc is not None else None


# A trial's result (its metrics) and hhh's own records; a bigger file is not one of them.
MAX_RESULT_BYTES = 16 << 20


def read_json(path) -> dict | None:
  """The JSON object in `path`, or None where it is missing, not a regular file, over MAX_RESULT_BYTES, not
  JSON or not an object."""
  from hhh import safeio
  try:
    obj = safeio.read_json(path, MAX_RESULT_BYTES)
  except (OSError, ValueError):
    return None
  return obj if isinstance(obj, dict) else None


def read_result(trial_dir) -> dict | None:
  """A finished trial's result.json, or None: a trial is done only when this file is present and valid (an
  object with a `metrics` object), whatever else its directory holds."""
  rec = read_json(pathlib.Path(trial_dir) / "result.json")
  return rec if rec is not None and isinstance(rec.get("metrics"), dict) and "error" not in rec else None


def is_done(trial_dir) -> bool:
  return read_result(trial_dir) is not None


def trial_record(trial: Trial) -> dict[str, Any]:
  return {"id": trial.id, "stage": trial.stage, "labels": trial.labels, "kind": trial.kind,
          "experiment": trial.experiment, "overrides": list(trial.overrides), "argv": list(trial.argv),
          "resources": dataclasses.asdict(trial.resources), "needs": list(trial.needs), "config": trial.config}


def prepare(trial: Trial, trial_dir) -> pathlib.Path:
  d = pathlib.Path(trial_dir)
  d.mkdir(parents=True, exist_ok=True)
  if not (d / "trial.json").exists():
    write_json_atomic(d / "trial.json", trial_record(trial), default=str)
  return d


def try_lock(trial_dir) -> int | None:
  """An fd holding the trial's exclusive lock, or None while another process holds it."""
  fd = os.open(pathlib.Path(trial_dir) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES):
      return None
    raise
  return fd


def is_locked(trial_dir) -> bool:
  if not (pathlib.Path(trial_dir) / "lock").exists():
    return False
  fd = try_lock(trial_dir)
  if fd is None:
    return True
  os.close(fd)
  return False


def attempts(trial_dir) -> int:
  return len(list(pathlib.Path(trial_dir).glob("attempt-*.log")))


def command(trial: Trial, trial_dir) -> list[str]:
  if trial.kind == "train":
    # Not `-m hhh.cli`: that would import modules from the launcher's directory first (hhh/selfcmd.py).
    cmd = hhh_argv("train", trial.experiment, "--workdir", trial_dir)
    for o in trial.overrides:
      cmd += ["--set", o]
    return cmd
  return [a.replace("{workdir}", str(trial_dir)).replace("{python}", sys.executable) for a in trial.argv]


def spawn(argv: Sequence[str], log, *, env: dict[str, str], cwd=None, cpus: Sequence[int] = (),
          pass_fds: Sequence[int] = ()) -> subprocess.Popen:
  """Starts a trial process that cannot outlive the caller (see the module docstring).

  The parent-death signal is tied to the thread that forks, so call this from a thread that lives as long as
  the child (the local backend's main loop; a Ray task's worker thread).
  """
  prctl = _prctl()
  parent = os.getpid()

  def preexec():
    os.setpgrp()
    if prctl is not None:
      prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
      if os.getppid() != parent:   # the parent died before the signal was armed
        os._exit(1)
    if cpus:
      os.sched_setaffinity(0, set(cpus))

  return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                          cwd=cwd, preexec_fn=preexec, pass_fds=tuple(pass_fds))


def kill_group(proc: subprocess.Popen) -> None:
  if proc.pid is None:
    return
  with contextlib.suppress(ProcessLookupError, PermissionError):
    os.killpg(proc.pid, signal.SIGKILL)
  with contextlib.suppress(Exception):
    proc.wait(timeout=10)


def trial_env(trial: Trial, trial_dir, extra: dict[str, str] | None = None) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", HHH_TRIAL_ID=trial.id, HHH_TRIAL_DIR=str(trial_dir))
  env.update(extra or {})
  return env


@dataclasses.dataclass
class Running:
  trial: Trial
  trial_dir: pathlib.Path
  proc: subprocess.Popen
  lock_fd: int
  log: Any
  attempt: int
  t0: float
  alloc: Any = None


def start(trial: Trial, trial_dir, lock_fd: int, *, env: dict[str, str], cwd=None,
          cpus: Sequence[int] = ()) -> Running:
  """Starts the next attempt of a trial whose lock the caller holds."""
  d = pathlib.Path(trial_dir)
  attempt = attempts(d) + 1
  if trial.kind == "command":
    # The result must be this attempt's: one an earlier, failed attempt left would pass for it.
    # (Only a file: anything else there is refused as a result anyway, and is not hhh's to remove.)
    stale = d / trial.result
    if stale.is_symlink() or stale.is_file():
      with contextlib.suppress(FileNotFoundError):
        stale.unlink()
  log = open(d / f"attempt-{attempt}.log", "w", encoding="utf-8")
  argv = command(trial, d)
  log.write("$ " + " ".join(argv) + "\n")
  log.flush()
  try:
    proc = spawn(argv, log, env=env, cwd=cwd, cpus=cpus, pass_fds=(lock_fd,))
  except OSError as e:   # not executable, not found: a failed attempt, like a command that exits 127
    log.write(f"hhh: cannot start {argv[0]}: {e.strerror or e}\n")
    log.flush()
    proc = _NotStarted()
  return Running(trial, d, proc, lock_fd, log, attempt, time.time())


class _NotStarted:
  """The process of an attempt whose command could not be started (exit status 127, as a shell gives)."""
  pid = None
  returncode = 127

  def poll(self):
    return 127

  def wait(self, timeout=None):
    return 127


def finish(run: Running, returncode: int) -> dict[str, Any]:
  """Writes result.json (success) or failed.json and returns it; closes the log. The caller releases the lock."""
  run.log.close()
  seconds = round(time.time() - run.t0, 1)
  base = {"id": run.trial.id, "stage": run.trial.stage, "labels": run.trial.labels, "attempts": run.attempt}
  if returncode == 0:
    try:
      rec = {**base, **collect(run.trial, run.trial_dir), "seconds": seconds}
    except (OSError, RuntimeError, ValueError) as e:
      rec = {**base, "error": f"finished but no result: {e}", "seconds": seconds}
    else:
      write_json_atomic(run.trial_dir / "result.json", rec, default=str)
      with contextlib.suppress(FileNotFoundError):
        (run.trial_dir / "failed.json").unlink()
      return rec
  else:
    tail = log_tail(run.trial_dir / f"attempt-{run.attempt}.log")
    rec = {**base, "error": f"exit {returncode}: {tail}", "seconds": seconds}
  rec["log"] = str(run.trial_dir / f"attempt-{run.attempt}.log")
  write_json_atomic(run.trial_dir / "failed.json", rec, default=str)
  return rec


def log_tail(path, n: int = 1) -> str:
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
  except FileNotFoundError:
    return ""
  return " | ".join(lines[-n:])[-300:]


def final_metrics(workdir) -> dict[str, Any]:
  """The last held-out evaluation a run logged (its metrics.jsonl `validation` record)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  last = None
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("split") == "validation":
        last = rec
  if last is None:
    raise RuntimeError(f"{path}: no held-out evaluation was logged")
  return last


def collect(trial: Trial, trial_dir) -> dict[str, Any]:
  """The result of a finished trial: a training run's last held-out evaluation (and its non-embedding parameter
  count, the scaling plots' x), or the JSON object a command wrote in its directory (`result`)."""
  d = pathlib.Path(trial_dir)
  if trial.kind == "command":
    from hhh import safeio
    # An exit 0 without a result is a failure (retried), never a trial done with no metrics.
    try:
      metrics = safeio.read_json(d / trial.result, MAX_RESULT_BYTES)
    except FileNotFoundError:
      raise RuntimeError(f"it wrote no {trial.result}") from None
    except ValueError as e:
      raise RuntimeError(str(e).replace(f"{d}/", "")) from None
    return {"metrics": metrics}
  m = final_metrics(d)
  out = {"step": m.pop("step", None), "metrics": {k: v for k, v in m.items() if k != "split"}}
  cfg = read_json(d / "config.json")
  if cfg and "model" in cfg:
    from hhh import config as config_lib
    from hhh.model import family
    from hhh.model.config import ModelConfig
    out["params"] = family.param_counts(config_lib.from_dict(ModelConfig, cfg["model"]))["non_embedding"]
  return out


def run_blocking(trial: Trial, trial_dir, *, env_extra: dict[str, str] | None = None, cwd=None,
                 wait_lock: float = 600.0) -> dict[str, Any]:
  """Runs one attempt of a trial to the end in this thread (the Ray backend's task body). Waits for a process
  still holding the trial's lock (a killed launcher's child on its way out) and returns an existing result
  rather than run a finished trial again."""
  d = prepare(trial, trial_dir)
  deadline = time.time() + wait_lock
  fd = try_lock(d)
  while fd is None:
    if time.time() > deadline:
      return {"id": trial.id, "error": f"{d}/lock is held by another process", "busy": True}
    time.sleep(0.5)
    fd = try_lock(d)
  try:
    done = read_result(d)
    if done is not None:
      return done
    run = start(trial, d, fd, env=trial_env(trial, d, env_extra), cwd=cwd)
    try:
      rc = run.proc.wait()
    except BaseException:
      kill_group(run.proc)
      raise
    return finish(run, rc)
  finally:
    os.close(fd)
