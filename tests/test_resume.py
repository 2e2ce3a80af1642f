"""Exact resume: a run killed with SIGKILL after a checkpoint resumes to a bit-identical loss trajectory."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import hhh_cmd, hhh_env, read_metrics, run_hhh, REPO


def _losses(workdir):
  return [(r["step"], r["loss"], r["accuracy"]) for r in read_metrics(workdir)]


# Token-budget steps too: their plan is rebuilt from (seed, epoch) and the iterator index, never stored.
@pytest.mark.parametrize("extra", [[], ["--set", "data.batch_tokens=256", "--set", "batch_size=16"]],
                         ids=["batch_size", "batch_tokens"])
def test_sigkill_then_resume_is_bit_identical(tiny_experiment, tmp_path, extra):
  args = ["train", tiny_experiment, "--set", "steps=60", "--set", "checkpoint_every=10", "--set",
          "eval_every=1000", "--set", "keep_checkpoints=2", *extra]
  straight = tmp_path / "straight"
  run_hhh(*args[:2], "--workdir", straight, *args[2:])

  killed = tmp_path / "killed"
  proc = subprocess.Popen(hhh_cmd(*args[:2], "--workdir", killed, *args[2:]), env=hhh_env(), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 240
  first = killed / "checkpoints" / "10" / "commit_success.txt"
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  still_running = proc.poll() is None
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert first.exists(), "the run never wrote its first checkpoint"
  assert still_running, "the run finished before it could be killed; the test proves nothing"
  done_before_kill = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert done_before_kill < 60

  run_hhh(*args[:2], "--workdir", killed, *args[2:])
  a, b = _losses(straight), _losses(killed)
  assert [s for s, _, _ in a] == list(range(1, 61))
  assert a == b  # floats compared exactly: JSON keeps every bit of a float32 loss
  assert read_metrics(straight, "validation") == read_metrics(killed, "validation")


def test_rerun_of_finished_run_trains_nothing_more(tiny_experiment, tmp_path):
  wd = tmp_path / "done"
  run_hhh("train", tiny_experiment, "--workdir", wd)
  before = (wd / "metrics.jsonl").read_text()
  proc = run_hhh("train", tiny_experiment, "--workdir", wd)
  assert "resuming at step 2" in proc.stdout
  assert [r["step"] for r in read_metrics(wd)] == [1, 2]
  assert (wd / "metrics.jsonl").read_text() == before
