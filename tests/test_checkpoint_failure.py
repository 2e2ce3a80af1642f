"""A checkpoint save that fails mid-run (the checkpoints turn read-only, or the step dir being written is
removed) ends the run within seconds with one `hhh: error:` line, and the checkpoints written before it stay
intact. Before, orbax's save threads sat out their 300 s coordination timeout, one traceback each."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from hhh.train import checkpoint as ckpt_lib
from tests.conftest import REPO, hhh_cmd, hhh_env

# A run that would go on for hours: only the failed save can end it.
ENDLESS = ("--set", "steps=100000", "--set", "checkpoint_every=3", "--set", "log_every=100000")
EXIT_BOUND_S = 60.0   # generous for a loaded CI machine; measured about 1 s on 2 cores


def _intact(wd, steps):
  root = wd / "checkpoints"
  for step in steps:
    assert ckpt_lib.verify(root / str(step)) is None, step
    assert (root / str(step) / ckpt_lib.MANIFEST).is_file()


def _one_line(stderr: str, prefix: str):
  lines = stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(prefix), stderr[-3000:]
  assert "Traceback" not in stderr


# Runs the trainer in a private mount namespace; once step 6 is committed, a read-only bind mount goes over the
# checkpoints dir (files already open elsewhere in the workdir stay writable, as on a real remount). Prints
# the seconds from then to the trainer's exit, and its status.
_RO_SCRIPT = r'''
wd="$1"; shift
"$@" > "$wd.out" 2> "$wd.err" &
pid=$!
while [ ! -f "$wd/checkpoints/6/hhh_manifest.json" ]; do
  kill -0 $pid 2>/dev/null || break
  sleep 0.02
done
mount --bind "$wd/checkpoints" "$wd/checkpoints" && mount -o remount,bind,ro "$wd/checkpoints" || exit 90
t0=$(date +%s%N)
wait $pid; rc=$?
echo "$rc $(( ($(date +%s%N) - t0) / 1000000 ))"
'''


def test_checkpoints_turning_read_only_mid_run_exit_fast_in_one_line(tiny_experiment, tmp_path):
  wd = tmp_path / "run"
  cmd = hhh_cmd("train", tiny_experiment, "--workdir", wd, *ENDLESS)
  if os.geteuid() == 0:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], timeout=30).returncode:
      pytest.skip("running as root without mount namespaces: no way to make a directory read-only here")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", _RO_SCRIPT, "sh", str(wd), *cmd], env=hhh_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rc, ms = map(int, proc.stdout.split())
    stderr, why = (tmp_path / "run.err").read_text(), "Read-only file system"
  else:
    train = subprocess.Popen(cmd, env=hhh_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not (wd / "checkpoints" / "6" / ckpt_lib.MANIFEST).exists() and train.poll() is None:
      assert time.monotonic() < deadline
      time.sleep(0.02)
    (wd / "checkpoints").chmod(0o555)
    t0 = time.monotonic()
    try:
      stderr = train.communicate(timeout=300)[1]
    finally:
      (wd / "checkpoints").chmod(0o755)
    rc, ms, why = train.returncode, (time.monotonic() - t0) * 1000, "Permission denied"
  assert rc == 1 and ms < EXIT_BOUND_S * 1000, (rc, ms, stderr[-3000:])
  _one_line(stderr, "hhh: error: cannot save checkpoint step 9 in workdir ")
  assert stderr.rstrip().endswith(why)
  _intact(wd, (3, 6))


def test_removing_the_checkpoint_being_written_exits_fast_in_one_line(tiny_experiment, tmp_path):
  wd = tmp_path / "run"
  train = subprocess.Popen(hhh_cmd("train", tiny_experiment, "--workdir", wd, *ENDLESS), env=hhh_env(),
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  root = wd / "checkpoints"
  removed: list[int] = []
  last = exited = None
  deadline = time.monotonic() + 300
  try:
    # Catch a save in flight (its `N.orbax-checkpoint-tmp` dir); a save missed between polls is the next one's.
    # A removal can also come too late to matter (the save had finished with its files, or orbax wrote them
    # again): the run then trains on and its next save is removed too. A save that hangs makes no next save,
    # so it still fails here.
    while train.poll() is None and time.monotonic() < deadline:
      if root.is_dir():
        for name in os.listdir(root):
          step = name.split(".")[0]
          if name.endswith(".orbax-checkpoint-tmp") and int(step) not in removed:
            shutil.rmtree(root / name, ignore_errors=True)
            removed.append(int(step))
            last = time.monotonic()
            break
    exited = time.monotonic()
    stderr = train.communicate(timeout=60)[1]
  finally:
    if train.poll() is None:
      train.kill()
      train.wait()
  assert removed, stderr[-3000:]
  seconds = exited - last
  assert train.returncode == 1 and seconds < EXIT_BOUND_S, (train.returncode, seconds, removed, stderr[-3000:])
  # An earlier removal that came too late leaves orbax's warning about the metadata it could not find.
  earlier = [f"WARNING:absl:Metadata file does not exist: {root / f'{n}.orbax-checkpoint-tmp'}" for n in removed[:-1]]
  failure = "\n".join(l for l in stderr.splitlines() if not any(l.startswith(e) for e in earlier))
  _one_line(failure, f"hhh: error: cannot save checkpoint step {removed[-1]} in workdir {wd.absolute()}: ")
  assert "Traceback" not in stderr and stderr.rstrip().endswith("the earlier checkpoints are intact")
  _intact(wd, range(3, removed[0], 3))


def test_abandoned_orbax_threads_stop_waiting_at_once():
  """What made the exit take 300 s: an orbax save thread waiting for a signal from a thread that failed. Once
  abandoned, it returns within a second without running its work."""
  import threading
  from orbax.checkpoint._src.futures import future as ocp_future
  from orbax.checkpoint._src.futures import synchronization
  ran = []
  waiter = ocp_future._SignalingThread(
      target=lambda: ran.append(True), send_signals=[], operation_id="hhh-test-abandon",
      receive_signals=[synchronization.HandlerAwaitableSignal.STEP_DIRECTORY_CREATION])
  waiter.start()
  time.sleep(0.3)
  assert waiter.is_alive()   # waiting for a signal nobody will send (for up to 300 s)
  t0 = time.monotonic()
  ckpt_lib._abandon_orbax_threads()
  threading.Thread.join(waiter, 10)   # orbax's own join re-raises the cancellation
  assert not waiter.is_alive() and time.monotonic() - t0 < 2
  assert ran == []
