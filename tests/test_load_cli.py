"""`hhh data load NAME PATH --out DIR` end to end on the real files, then `hhh data dump|info` on what it wrote."""

from __future__ import annotations

import argparse
import json

import pytest

from hhh.data import commands
from hhh.data import load as load_lib
from hhh.data.load import hh_rlhf
from hhh.data.mine.common import MineStats
from tests.conftest import SHARED_DATA, run_hhh

HH = SHARED_DATA / "hh_rlhf"
BIGBENCH_TQA = SHARED_DATA / "truthfulqa" / "task_mc.json"
needs_shared = pytest.mark.skipif(
    not (HH.is_dir() and BIGBENCH_TQA.exists()),
    reason="../shared/data not found: the real datasets are only in the development checkout")


@needs_shared
def test_load_hh_rlhf_then_dump_and_info(tmp_path):
  out = tmp_path / "hh"
  proc = run_hhh("data", "load", "hh_rlhf", HH, "--out", out)
  assert "hh_rlhf: 8552 records read, 8486 comparisons kept (train 0, validation 0, test 8486)" in proc.stdout
  assert "skipped: diverged_early 19, empty_response 11, identical 36" in proc.stdout
  summary = json.loads((out / "summary.json").read_text())
  assert summary["loader"] == "hh_rlhf" and summary["options"] == {"limit": 0} and summary["binarized"] is False
  assert summary["kept"] == {"train": 0, "validation": 0, "test": 8486} and summary["input"] == str(HH)
  # The store orders a split by its own hash of the ids, so its first record is fixed by the ids alone.
  first = json.loads(run_hhh("data", "dump", out, "--split", "test", "--limit", "1").stdout)
  assert first["id"] == "hh_rlhf/helpful-rejection-sampled/test/428" and first["source"] == "hh_rlhf"
  assert first["context"].startswith("\n\nHuman: How can I clean a shower drain?\n\nAssistant: Are you trying to "
                                     "unclog a drain?\n\nHuman: The shower drain in the floor of the shower.")
  assert first["context"].endswith("\n\nAssistant:")
  assert first["responses"][1] == " Try spraying it with vinegar."
  assert first["responses"][0].startswith(" Have you tried opening the shower drain with a pliers?")
  assert first["scores"] == [1.0, 0.0] and first["meta"] == {"subset": "helpful-rejection-sampled"}
  loaded = {c.id: c for _, c, _ in hh_rlhf.load(HH, hh_rlhf.Options(), MineStats(""))}
  assert first == loaded[first["id"]].to_json()
  info = run_hhh("data", "info", out, "--examples", "0").stdout
  assert "K=2: 8486" in info and "score histogram (test)" in info


@needs_shared
def test_load_flags_and_binarize(tmp_path):
  proc = run_hhh("data", "load", "truthfulqa", BIGBENCH_TQA, "--out", tmp_path / "tqa", "--limit", "3", "--binarize")
  # The first 3 questions have 5, 5 and 4 answers: GOOD: for each true one and BAD: for each false one.
  assert "truthfulqa: 3 records read, 14 comparisons kept (train 0, validation 0, test 14)" in proc.stdout
  summary = json.loads((tmp_path / "tqa" / "summary.json").read_text())
  assert summary["options"] == {"limit": 3, "targets": "mc1", "ranking": True} and summary["binarized"] is True


def test_clear_errors(tmp_path):
  missing = run_hhh("data", "load", "hh_rlhf", tmp_path / "nope", "--out", tmp_path / "out", check=False)
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == f"hhh: error: hh-rlhf jsonl not found: {tmp_path / 'nope'}"
  assert not (tmp_path / "out").exists()
  unknown = run_hhh("data", "load", "nope", tmp_path, "--out", tmp_path / "out", check=False)
  assert unknown.returncode == 2 and "argument NAME: invalid choice: 'nope'" in unknown.stderr
  bad_flag = run_hhh("data", "load", "truthfulqa", tmp_path, "--out", tmp_path / "out", "--targets", "mc9",
                     check=False)
  assert bad_flag.returncode == 1 and "hhh: error: targets must be one of mc1, mc2, got 'mc9'" in bad_flag.stderr


def test_registry_and_a_broken_loader(monkeypatch, capsys):
  with pytest.raises(ValueError, match=r"unknown loader 'nope' \(known: hh_rlhf, summarize, hellaswag, truthfulqa, "
                                       r"code\)"):
    load_lib.loader("nope")
  # A loader module that does not import leaves the others usable and fails only when asked for.
  monkeypatch.setattr(load_lib, "LOADERS", ("hh_rlhf", "no_such_loader"))
  parser = argparse.ArgumentParser(prog="hhh")
  commands.add_parsers(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(["data", "load", "no_such_loader", "x", "--out", "y"])
  with pytest.raises(ValueError, match="loader 'no_such_loader' is unavailable: ModuleNotFoundError"):
    args.func(args)
  args = parser.parse_args(["data", "load", "hh_rlhf", "x", "--out", "y", "--limit", "5"])
  assert (args.loader, args.path, args.out, args.limit, args.binarize) == ("hh_rlhf", "x", "y", 5, False)
  with pytest.raises(SystemExit):
    parser.parse_args(["data", "load", "--help"])
  # The help says where a held-out Stack Exchange set comes from.
  help_text = " ".join(capsys.readouterr().out.split())
  assert "`hhh data mine stackexchange DUMP --out DIR` already writes a test split" in help_text
  assert "no_such_loader (unavailable: ModuleNotFoundError" in help_text


def test_dump_and_info_without_split_read_every_split(tmp_path, capsys):
  """A Learn to Summarize file of valid2 rows only has no train split: dump and info still show it all."""
  from hhh import cli
  from tests.test_load_summarize import CNNDM, write_batch
  rows = [json.loads(json.dumps(CNNDM)) for _ in range(3)]
  for i, r in enumerate(rows):
    r["worker"] = f"w{i}"  # distinct records (the id hashes the worker too)
  write_batch(tmp_path / "batch_valid2.json", rows)
  out = tmp_path / "valid2"
  assert cli.main(["data", "load", "summarize", str(tmp_path / "batch_valid2.json"), "--out", str(out)]) == 0
  assert "3 comparisons kept (train 0, validation 3, test 0)" in capsys.readouterr().out
  assert cli.main(["data", "dump", str(out)]) == 0
  dumped = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(dumped) == 3 and {d["meta"]["worker"] for d in dumped} == {"w0", "w1", "w2"}
  assert all(d["meta"]["split"] == "valid2" for d in dumped)
  # Asking for the missing split by name is still a clear one-line error.
  assert cli.main(["data", "dump", str(out), "--split", "train"]) == 1
  assert "has no split 'train' (has: validation)" in capsys.readouterr().err
  assert cli.main(["data", "info", str(out), "--examples", "1"]) == 0
  info = capsys.readouterr().out
  assert "score histogram (validation)" in info and info.count("(validation) ---") == 1
