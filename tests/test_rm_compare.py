"""Tests for `hhh eval rm-compare` (hhh.evals.rm_compare): two judges' results paired item by item."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hhh import cli, stats
from hhh.evals import rm_compare


def results(path, suite, rows, model="m"):
  """rows: (id, subset, labels, rewards)."""
  path.mkdir(parents=True, exist_ok=True)
  items = [{"id": i, "subset": s, "labels": lab, "rewards": r} for i, s, lab, r in rows]
  (path / "results.json").write_text(json.dumps({"suite": suite, "model": model, "items": items}))
  return path


# Per item (A correct, B correct). Ties are wrong, as in `hhh eval rm`; item "t" is a tie for B.
A_ROWS = [("p", "x", [1, 0], [2.0, 1.0]), ("q", "x", [1, 0], [0.0, 1.0]), ("r", "y", [0, 1], [0.0, 3.0]),
          ("s", "y", [0, 1, 0], [1.0, 2.0, 0.5]), ("t", "y", [1, 0], [5.0, 4.0]), ("onlyA", "y", [1, 0], [1.0, 0.0])]
B_ROWS = [("t", "y", [1, 0], [3.0, 3.0]), ("s", "y", [0, 1, 0], [1.0, 0.9, 0.0]), ("r", "y", [0, 1], [0.0, 1.0]),
          ("q", "x", [1, 0], [2.0, 1.0]), ("p", "x", [1, 0], [1.0, 2.0])]
# A: p 1, q 0, r 1, s 1, t 1.  B: p 0, q 1, r 1, s 0, t 0 (tie).


def test_compare_by_hand(tmp_path):
  a = rm_compare.load(results(tmp_path / "a", "pairs", A_ROWS, "judge A"))
  b = rm_compare.load(results(tmp_path / "b", "pairs", B_ROWS, "judge B"))
  rec = rm_compare.compare(a, b)
  assert (rec["n_common"], rec["only_a"], rec["only_b"]) == (5, 1, 0)
  g = rec["groups"]
  assert list(g) == ["all", "x", "y"]
  assert (g["all"]["n"], g["all"]["a"], g["all"]["b"]) == (5, 0.8, 0.4)
  assert g["all"]["mcnemar"] == {"b01": 1, "b10": 3, "p": 0.625}  # 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16
  assert g["all"]["diff"]["mean"] == pytest.approx(0.4)
  ca, cb = np.array([1, 0, 1, 1, 1.0]), np.array([0, 1, 1, 0, 0.0])
  want = stats.paired_difference(ca[:, None], cb[:, None], seed=0)
  assert g["all"]["diff"] == {k: want[k] for k in ("mean", "lo", "hi", "p_two_sided")}
  assert (g["x"]["a"], g["x"]["b"], g["y"]["a"], g["y"]["b"]) == (0.5, 0.5, 1.0, 1 / 3)
  assert g["x"]["mcnemar"] == {"b01": 1, "b10": 1, "p": 1.0}


def test_cli_prints_one_line_per_group_and_writes_json(tmp_path, capsys):
  a, b = results(tmp_path / "a", "pairs", A_ROWS), results(tmp_path / "b", "pairs", B_ROWS)
  assert cli.main(["eval", "rm-compare", str(a), str(b / "results.json"), "--out", str(tmp_path / "c.json")]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[2] == "pairs: 5 items in both (1 only in A, 0 only in B, left out)"
  assert out[3].startswith("all                          n=5     A 0.800  B 0.400  A-B +0.400 [")
  assert out[3].endswith("McNemar A-only 3 B-only 1 p=0.625")
  assert json.loads((tmp_path / "c.json").read_text())["groups"]["y"]["n"] == 3


@pytest.mark.parametrize("b_rows,suite,message", [
    (B_ROWS, "llmbar", "is suite 'pairs'"),
    ([("zz", "x", [1, 0], [1.0, 0.0])], "pairs", "share no item id"),
    ([("p", "x", [0, 1], [1.0, 0.0])], "pairs", "disagree on which response is preferred"),
    ([("p", "x", [1, 1], [1.0, 0.0])], "pairs", "item 0 is not"),
    ([("p", "x", [1, 0], [1.0, "2"])], "pairs", "item 0 is not"),
])
def test_unpairable_results_are_one_line_errors(tmp_path, capsys, b_rows, suite, message):
  a, b = results(tmp_path / "a", "pairs", A_ROWS), results(tmp_path / "b", suite, b_rows)
  assert cli.main(["eval", "rm-compare", str(a), str(b)]) != 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("hhh: error: ") and message in err[0]
