"""Stored datasets (TFDS ArrayRecord without TensorFlow), binarization, and PMP mixtures."""

from __future__ import annotations

import collections
import json

import pytest

from hhh.config import DataConfig
from hhh.data import binarize, sources, store
from hhh.data.mine.common import MineStats, split_of
from hhh.data.schema import Comparison, write_jsonl


def _cmp(i: int, k: int = 2) -> Comparison:
  return Comparison(f"context {i} é", tuple(f"resp {i}.{j}" for j in range(k)),
                    tuple(float(k - j) for j in range(k)), "test", f"t/{i}")


def test_split_of_is_stable_and_roughly_proportional():
  assert split_of("q123") == split_of("q123")
  counts = collections.Counter(split_of(f"q{i}") for i in range(20000))
  assert abs(counts["train"] / 20000 - 0.9) < 0.01
  assert abs(counts["validation"] / 20000 - 0.05) < 0.01 and abs(counts["test"] / 20000 - 0.05) < 0.01


def test_write_and_read_back(tmp_path):
  stats = MineStats(source="test", records_read=250)
  keyed = [(f"group{i // 2}", _cmp(i, k=2 + i % 3)) for i in range(200)] + [("g", _cmp(5))]  # one duplicate id
  summary = store.write_dataset(tmp_path / "ds", keyed, stats)
  assert summary["total_kept"] == 200 and summary["skipped"] == {"duplicate_id": 1}
  assert summary["records_read"] == 250
  assert summary["responses_per_comparison"] == {"2": 67, "3": 67, "4": 66}
  assert json.loads((tmp_path / "ds" / "summary.json").read_text()) == summary
  assert not (tmp_path / "ds" / "_staging").exists()
  back = {}
  for split in store.SPLITS:
    if summary["kept"][split]:
      src = store.DataSource(tmp_path / "ds", split)
      assert len(src) == summary["kept"][split]
      back.update({c.id: (split, c) for c in src})
  assert len(back) == 200
  # Both comparisons of a group land in the same split, the one its key hashes to.
  for i in range(200):
    split, c = back[f"t/{i}"]
    assert split == split_of(f"group{i // 2}")
    assert c == _cmp(i, k=2 + i % 3)
  assert sum(summary["score_histogram"]["train"].values()) == sum(
      c.k for s, c in back.values() if s == "train")


def test_nothing_mined_is_an_error(tmp_path):
  stats = MineStats(source="test", records_read=7)
  stats.skip("too_short", 3, n=7)
  with pytest.raises(store.NothingMined, match="no comparisons mined from 7 records read .too_short: 7"):
    store.write_dataset(tmp_path / "empty", [], stats)


def test_binarize_pair_and_ranking():
  pair = Comparison("Q", ("yes", "no"), (2.0, 1.0), "s", "c")
  assert binarize.binarize(pair) == [
      Comparison("Q", ("GOOD: yes", "BAD: yes"), (1.0, 0.0), "s", "c/good0"),
      Comparison("Q", ("BAD: no", "GOOD: no"), (1.0, 0.0), "s", "c/bad1")]
  ranking = Comparison("Q", ("mid", "top", "low", "top2"), (1.0, 3.0, 0.0, 3.0), "s", "r")
  assert [(c.responses[0], c.id) for c in binarize.binarize(ranking)] == [
      ("GOOD: top", "r/good1"), ("BAD: low", "r/bad2"), ("GOOD: top2", "r/good3")]
  assert binarize.binarize(Comparison("Q", ("a", "b"), (1.0, 1.0), "s", "tie")) == []


def test_mixture_weights_and_binarize(tmp_path):
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  write_jsonl(a, [_cmp(i) for i in range(100)])
  write_jsonl(b, [Comparison("c", ("x", "y"), (1.0, 0.0), "b", f"b/{i}") for i in range(20)])
  assert sources.parse_mixture(f"{a}:3,{b}:1:binarize") == [(str(a), 3.0, False), (str(b), 1.0, True)]
  mixed = sources.load_comparisons(f"{a}:3,{b}:1:binarize", DataConfig(), "train", seed=0)
  # 100 + 2 * 20 = 140 examples in all, split 3:1 -> 105 from a, 35 from binarized b (40, so subsampled).
  by_source = collections.Counter(c.source for c in mixed)
  assert by_source == {"test": 105, "b": 35}
  assert all(c.responses[0].startswith(("GOOD: ", "BAD: ")) for c in mixed if c.source == "b")
  assert mixed == sources.load_comparisons(f"{a}:3,{b}:1:binarize", DataConfig(), "train", seed=0)
  held_out = sources.load_comparisons(f"{a}:3,{b}:1", DataConfig(), "validation")
  assert len(held_out) == 120  # held-out data is concatenated, unweighted


def test_hf_datasets_bridge_reads_local_files(tmp_path):
  path = tmp_path / "x.jsonl"
  write_jsonl(path, [_cmp(i, 3) for i in range(5)])
  got = list(store.from_hf(str(path)))
  assert [c.responses for c in got] == [_cmp(i, 3).responses for i in range(5)]
  import datasets
  datasets.load_dataset("json", data_files=str(path), split="train").to_parquet(str(tmp_path / "x.parquet"))
  assert store.load(str(tmp_path / "x.parquet")) == got


def test_hf_rows_in_shp_and_h4_schemas(tmp_path):
  shp = {"post_id": "p1", "domain": "askscience_train", "upvote_ratio": 0.9, "history": "Why is the sky blue?",
         "c_root_id_A": "ca", "c_root_id_B": "cb", "created_at_utc_A": 2, "created_at_utc_B": 1, "score_A": 5,
         "score_B": 9, "human_ref_A": "Rayleigh scattering.", "human_ref_B": "Because.", "labels": 1,
         "seconds_difference": 1.0, "score_ratio": 0.55}
  h4 = {"qid": 7, "question": "How do I exit vim?", "date": "2020", "metadata": [],
        "answers": [{"answer_id": 1, "author": "a", "author_id": 1, "author_profile": "", "pm_score": 1,
                     "selected": False, "text": "Reboot."},
                    {"answer_id": 2, "author": "b", "author_id": 2, "author_profile": "", "pm_score": 4,
                     "selected": True, "text": ":q"}]}
  (tmp_path / "shp.jsonl").write_text(json.dumps(shp) + "\n")
  (tmp_path / "h4.jsonl").write_text(json.dumps(h4) + "\n")
  assert store.load(str(tmp_path / "shp.jsonl")) == [Comparison(
      "Why is the sky blue?", ("Rayleigh scattering.", "Because."), (1.0, 0.0), "shp", "shp/p1/ca/cb")]
  assert store.load(str(tmp_path / "h4.jsonl")) == [Comparison(
      "How do I exit vim?", (":q", "Reboot."), (4.0, 1.0), "stackexchange", "h4-stackexchange/7")]
  with pytest.raises(ValueError, match="neither our fields"):
    store.row_to_comparison({"text": "x"}, 0, "bad")


def test_meta_and_a_sources_own_split_survive_the_store_and_binarization(tmp_path):
  meta = {"split": "valid1", "confidence": 7, "policies": ["sup2", "ref"], "note": None}
  c = Comparison("ctx", ("a", "b"), (1.0, 0.0), "summarize", "s/1", meta)
  plain = _cmp(2)
  items = [("k1", c, "validation"), ("k2", plain, "test")]
  summary = store.write_dataset(tmp_path / "ds", items, MineStats(source="summarize", records_read=2))
  assert summary["kept"] == {"train": 0, "validation": 1, "test": 1}
  (back,) = store.DataSource(tmp_path / "ds", "validation")
  assert back == c and back.meta == meta
  (back_plain,) = store.DataSource(tmp_path / "ds", "test")
  assert back_plain.meta == {} and back_plain == plain
  assert [b.meta for b in binarize.binarize(c)] == [meta, meta]
  write_jsonl(tmp_path / "c.jsonl", [c])
  assert json.loads((tmp_path / "c.jsonl").read_text())["meta"] == meta
  with pytest.raises(ValueError, match="split"):
    store.write_dataset(tmp_path / "bad", [("k", c, "dev")], MineStats(source="x"))
