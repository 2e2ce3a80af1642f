"""No source yields a tie-only comparison: on the real files, every mined or loaded comparison has two distinct scores."""

from __future__ import annotations

import pytest

from hhh.data import load as load_lib
from hhh.data import store
from hhh.data.mine import wikipedia
from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison
from tests.conftest import SHARED_DATA

CASES = [  # (loader, path under shared/data, options, comparisons expected)
    ("hh_rlhf", "hh_rlhf/helpful-base/test.jsonl.gz", {}, 2339),
    ("hh_rlhf", "hh_rlhf/harmless-base/test.jsonl.gz", {}, 2303),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2", {}, 10042),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2", {"ranking": False}, 3 * 10042),
    ("truthfulqa", "truthfulqa/mc_task.json", {}, 817),
    ("truthfulqa", "truthfulqa/mc_task.json", {"ranking": False}, 3369),
    ("truthfulqa", "truthfulqa/mc_task.json", {"targets": "mc2", "ranking": False}, 12343),
    ("truthfulqa", "truthfulqa/task_mc.json", {}, 299),
]


def _need(path):
  if not path.exists():
    pytest.skip(f"{path} not found: the real files are only in the development checkout")


@pytest.mark.parametrize("name,rel,options,expected", CASES)
def test_loaders_on_real_files_yield_no_tie(name, rel, options, expected):
  path = SHARED_DATA / rel
  _need(path)
  mod = load_lib.loader(name)
  stats = MineStats(source=name)
  out = [item[1] for item in mod.load(path, mod.Options(**options), stats)]
  assert len(out) == stats.comparisons == expected
  assert all(len(set(c.scores)) >= 2 for c in out)


def test_wikipedia_excerpt_yields_no_tie():
  path = SHARED_DATA / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"
  _need(path)
  out = [c for _, c in wikipedia.mine(path, wikipedia.Options(), MineStats(source="wikipedia"))]
  assert len(out) == 60 and all(c.scores == (1.0, 0.0) for c in out)


def test_store_refuses_a_tie_only_comparison(tmp_path):
  tied = Comparison("q", ("a", "b", "c"), (1.0, 1.0, 1.0), "test", "t/tied")
  ok = Comparison("q", ("a", "b"), (1.0, 0.0), "test", "t/ok")
  stats = MineStats(source="test", records_read=2)
  summary = store.write_dataset(tmp_path / "ds", [("g1", tied), ("g2", ok)], stats)
  assert summary["total_kept"] == 1 and summary["skipped"] == {"all_tied": 1}
  assert summary["first_skipped_at"] == {"all_tied": ["t/tied"]}
