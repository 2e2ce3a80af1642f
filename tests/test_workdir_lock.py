"""One trainer per workdir, and a read-only or full workdir reported in one line instead of a traceback."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, hhh_cmd, hhh_env, run_hhh

from hhh.train import workdir as workdir_lib

_TRY_LOCK = "import sys; from hhh.train import workdir; workdir.WorkdirLock(sys.argv[1]); print('locked')"


def _try_lock(wd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(wd)], env=hhh_env(), capture_output=True,
                        text=True, timeout=60, cwd=REPO)


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
  wd = tmp_path / "run"
  lock = workdir_lib.WorkdirLock(wd)
  held = json.loads((wd / ".lock").read_text())
  assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
  proc = _try_lock(wd)
  assert proc.returncode == 1
  assert (f"hhh.train.workdir.WorkdirBusy: workdir {wd} is in use by another run (pid {os.getpid()} on "
          f"{socket.gethostname()}, since {held['since']})") in proc.stderr
  lock.release()
  assert (wd / ".lock").read_text() == ""
  assert _try_lock(wd).stdout == "locked\n"  # the child's lock went with the child


_HOLD_LOCK = ("import sys, time; from hhh.train import workdir; workdir.WorkdirLock(sys.argv[1]); print('locked', "
              "flush=True); time.sleep(600)")


def _second_trainer_is_turned_away(tiny_experiment, wd, first: subprocess.Popen):
  try:
    deadline = time.time() + 240
    while first.poll() is None and time.time() < deadline:
      if (wd / ".lock").exists() and (wd / ".lock").read_text().strip():
        break
      time.sleep(0.05)
    holder = json.loads((wd / ".lock").read_text())
    assert holder["pid"] == first.pid
    second = run_hhh("train", tiny_experiment, "--workdir", wd, check=False)
    assert first.poll() is None, "the first process ended early; the test proves nothing"
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
  assert second.returncode == 1
  assert second.stderr.splitlines() == [
      f"hhh: error: workdir {wd} is in use by another run (pid {first.pid} on {socket.gethostname()}, since "
      f"{holder['since']}); wait for it to finish or stop it first"]


def test_second_trainer_on_a_held_workdir_is_turned_away(tiny_experiment, tmp_path):
  """The holder takes the lock exactly as `hhh train` does, without paying for a training run."""
  wd = tmp_path / "run"
  first = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(wd)], env=hhh_env(), cwd=REPO,
                           stdout=subprocess.DEVNULL, start_new_session=True)
  _second_trainer_is_turned_away(tiny_experiment, wd, first)
  assert sorted(p.name for p in wd.iterdir()) == [".lock"]  # turned away before writing anything


@pytest.mark.slow
def test_second_trainer_next_to_a_training_run_is_turned_away(tiny_experiment, tmp_path):
  wd = tmp_path / "run"
  first = subprocess.Popen(hhh_cmd("train", tiny_experiment, "--workdir", wd, "--set", "steps=100000", "--set",
                                   "checkpoint_every=100000", "--set", "log_every=100000"),
                           env=hhh_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
  _second_trainer_is_turned_away(tiny_experiment, wd, first)


def _in_private_tmpfs(mount_dir, options: str) -> list[str] | None:
  """A command prefix that runs its command with a fresh tmpfs (`options`) mounted on `mount_dir`, in a
  private mount namespace, so the mount vanishes with the command; None where this machine forbids it."""
  if shutil.which("unshare") is None:
    return None
  prefix = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"', str(mount_dir)]
  probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
  return prefix if probe.returncode == 0 else None


def _train_in(prefix, tiny_experiment, wd, *sets, preexec_fn=None) -> subprocess.CompletedProcess:
  cmd = [*prefix, *hhh_cmd("train", tiny_experiment, "--workdir", wd, *sets)]
  return subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=300, cwd=REPO,
                        preexec_fn=preexec_fn)


def test_read_only_workdir_is_a_one_line_error(tiny_experiment, tmp_path):
  mnt = tmp_path / "ro"
  mnt.mkdir()
  if os.geteuid() != 0:
    mnt.chmod(0o555)  # enough where permissions bind (not for root)
    prefix, why = [], "Permission denied"
  else:
    prefix, why = _in_private_tmpfs(mnt, "ro,size=1m"), "Read-only file system"
    if prefix is None:
      pytest.skip("running as root without mount namespaces: no way to make a read-only directory here")
  proc = _train_in(prefix, tiny_experiment, mnt / "run")
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [f"hhh: error: cannot write to workdir {mnt / 'run'}: {why}"]


def _file_size_limit(limit: int):
  def set_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return set_limit


def test_full_workdir_is_a_one_line_error(tiny_experiment, tmp_path):
  """The tiny run's first checkpoint holds a ~190 KB file: a 150 KB disk (or, without mount namespaces, a
  150 KB file-size limit) refuses it after the run has started."""
  mnt = tmp_path / "full"
  mnt.mkdir()
  prefix = _in_private_tmpfs(mnt, "size=150k")
  preexec, why = None, "No space left on device"
  if prefix is None:
    prefix, preexec, why = [], _file_size_limit(150_000), "File too large"
  proc = _train_in(prefix, tiny_experiment, mnt / "run", "--set", "steps=4", "--set", "checkpoint_every=2",
                   preexec_fn=preexec)
  assert proc.returncode == 1
  assert proc.stderr.splitlines() == [f"hhh: error: cannot save checkpoint step 2 in workdir "
                                      f"{(mnt / 'run').absolute()}: {why}"]
