"""A dataset is built beside --out and renamed into place: a run killed mid-build leaves the old one intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from hhh import cli
from hhh.data import store
from tests.conftest import hhh_cmd, hhh_env


def write_hh(path, n: int, tag: str):
  rows = [{"chosen": f"\n\nHuman: question {tag} {i}?\n\nAssistant: A good answer {i}.",
           "rejected": f"\n\nHuman: question {tag} {i}?\n\nAssistant: A bad answer {i}."} for i in range(n)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_kill_during_rebuild_keeps_the_old_dataset(tmp_path, capsys):
  out = tmp_path / "hh"
  assert cli.main(["data", "load", "hh_rlhf", str(write_hh(tmp_path / "old.jsonl", 20, "old")), "--out", str(out)]) == 0
  assert json.loads((out / "summary.json").read_text())["total_kept"] == 20
  # Rebuild from 30 other rows, paused for good after 10 records have gone to the staging files, then SIGKILL.
  proc = subprocess.Popen(hhh_cmd("data", "load", "hh_rlhf", write_hh(tmp_path / "new.jsonl", 30, "new"),
                                  "--out", out),
                          env=hhh_env(HHH_DATA_PAUSE_AFTER="10"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  marker = tmp_path / f".hh.building-{proc.pid}" / "paused"
  try:
    for _ in range(1200):  # the bound on the wait, not a timing assertion
      if marker.exists() or proc.poll() is not None:
        break
      time.sleep(0.1)
    assert marker.read_text() == "10\n"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
  finally:
    if proc.poll() is None:
      proc.kill()
  # The old dataset is untouched and readable; the half-built one sits beside it.
  assert json.loads((out / "summary.json").read_text())["total_kept"] == 20
  kept = [c for s in store.splits_of(out) for c in store.DataSource(out, s)]
  assert len(kept) == 20 and all("question old" in c.context for c in kept)
  assert (tmp_path / f".hh.building-{proc.pid}" / "_staging").is_dir()
  capsys.readouterr()
  assert cli.main(["data", "info", str(out), "--examples", "0"]) == 0
  assert "20 comparisons kept" in capsys.readouterr().out
  # A rerun clears the dead build away and swaps the new dataset in.
  assert cli.main(["data", "load", "hh_rlhf", str(tmp_path / "new.jsonl"), "--out", str(out)]) == 0
  assert json.loads((out / "summary.json").read_text())["total_kept"] == 30
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hh", "new.jsonl", "old.jsonl"]


def test_info_on_no_finished_dataset_is_one_line(tmp_path, capsys):
  (tmp_path / ".fresh.building-999999999" / "_staging").mkdir(parents=True)  # what a killed first build leaves
  (tmp_path / "empty").mkdir()
  for name, why in [("fresh", "a build into it did not finish (.fresh.building-999999999 is its staging folder"),
                    ("empty", "(no summary.json)"), ("missing", "no such directory")]:
    assert cli.main(["data", "info", str(tmp_path / name)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hhh: error: {tmp_path / name} holds no finished hhh dataset")
    assert why in err[0]


def test_failed_run_leaves_nothing_and_other_files_are_not_replaced(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text("not json\n")
  assert cli.main(["data", "load", "hh_rlhf", str(bad), "--out", str(tmp_path / "out")]) == 1
  assert "no comparisons mined from 1 records read (invalid_json: 1)" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "mine.txt").write_text("keep me")
  with pytest.raises(ValueError, match="holds files that are not an hhh dataset"):
    store.write_dataset(tmp_path / "notes", [], store.MineStats(source="t"))
  assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
