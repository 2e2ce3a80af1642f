"""`hhh data mine|info|dump` on the real dumps, and the PMP -> fine-tune stages on what they mine."""

from __future__ import annotations

import json

import pytest

from hhh.train import checkpoint as ckpt_lib
from tests.conftest import SHARED_DATA, read_metrics, run_hhh

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data not found: the real dumps are only in the development checkout")
SE = SHARED_DATA / "stackexchange" / "cardano.stackexchange.com"
WIKI = SHARED_DATA / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data not found: the real dumps are only in the development checkout")
  root = tmp_path_factory.mktemp("mined")
  se = run_hhh("data", "mine", "stackexchange", SE, "--out", root / "se")
  wiki = run_hhh("data", "mine", "wikipedia", WIKI, "--out", root / "wiki", "--binarize")
  return root, se, wiki


@needs_shared
def test_mine_writes_versioned_splits_and_summary(mined):
  root, se, wiki = mined
  summary = json.loads((root / "se" / "summary.json").read_text())
  # 378 questions with >= 2 answers, less the 55 whose answers all tie.
  assert summary["records_read"] == 2630 and summary["total_kept"] == 323
  assert summary["skipped"]["all_tied"] == 55
  assert sum(summary["kept"].values()) == 323 and summary["kept"]["train"] > 270
  assert summary["skipped"]["community_wiki"] == 1 and summary["first_skipped_at"]["community_wiki"] == [4327]
  assert (root / "se" / "tfds" / "comparisons" / "1.1.0" / "dataset_info.json").exists()
  assert "323 comparisons kept" in se.stdout
  # 60 reverted-edit pairs, each binarized into two GOOD:/BAD: comparisons.
  wsum = json.loads((root / "wiki" / "summary.json").read_text())
  assert wsum["total_kept"] == 120 and wsum["binarized"] is True


@needs_shared
def test_dump_and_info(mined):
  root, _, _ = mined
  out = run_hhh("data", "dump", root / "se", "--split", "train", "--limit", "3").stdout.splitlines()
  assert len(out) == 3
  for line in out:
    rec = json.loads(line)
    assert set(rec) == {"id", "source", "context", "responses", "scores"}
    assert rec["source"] == "stackexchange" and rec["id"].startswith("stackexchange/cardano.stackexchange.com/")
    assert len(rec["responses"]) == len(rec["scores"]) >= 2
    assert rec["scores"] == sorted(rec["scores"], reverse=True)
  # No --split: every split, train then validation then test.
  every = [json.loads(l)["id"] for l in run_hhh("data", "dump", root / "se").stdout.splitlines()]
  assert len(every) == len(set(every)) == 323
  wiki = [json.loads(l) for l in run_hhh("data", "dump", root / "wiki").stdout.splitlines()]
  assert len(wiki) == 120 and all(r["responses"][0].startswith(("GOOD: ", "BAD: ")) for r in wiki)
  info = run_hhh("data", "info", root / "se").stdout
  assert "2630 records read, 323 comparisons kept" in info and "score histogram (train)" in info
  assert "K=2: 213" in info


def test_mining_nothing_fails_with_reason(tmp_path):
  dump = tmp_path / "RC_empty.ndjson"
  dump.write_text('{"id": "a", "body": "[deleted]"}\nnot json\n')
  proc = run_hhh("data", "mine", "reddit", dump, "--out", tmp_path / "out", check=False)
  assert proc.returncode == 1
  err = [l for l in proc.stderr.splitlines() if l.startswith("hhh: error:")]
  assert len(err) == 1 and "no comparisons mined from 2 records read" in err[0], proc.stderr


@needs_shared
def test_pmp_then_finetune(mined, tiny_experiment, tmp_path):
  root, _, _ = mined
  pmp = tmp_path / "pmp"
  run_hhh("train", tiny_experiment, "--workdir", pmp, "--set", f"data.train={root / 'se'}:0.7,{root / 'wiki'}:0.3",
          "--set", f"data.validation={root / 'se'}", "--set", "lm_coef=0.1", "--set", "data.max_k=4")
  train = read_metrics(pmp)
  assert [r["step"] for r in train] == [1, 2] and "lm_loss" in train[0] and "pm_loss" in train[0]
  # 13 held-out Stack Exchange questions of 2-4 kept answers: all their ordered untied pairs.
  assert read_metrics(pmp, "validation")[0]["pairs"] > 13
  ft = tmp_path / "ft"
  run_hhh("train", tiny_experiment, "--workdir", ft, "--set", f"init_from={pmp}")
  assert ckpt_lib.load_meta(ft)["config"]["init_from"] == str(pmp)
  assert [r["step"] for r in read_metrics(ft)] == [1, 2]
