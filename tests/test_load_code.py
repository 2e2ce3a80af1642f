"""The code-correctness loader: mutants, sandboxed per-test scores, rankings and splits.

Sandboxed runs cost ~30-50 ms each; this file makes about 55 of them (counted per test below).
"""

from __future__ import annotations

import ast
import gzip
import json

import pytest

from hhh.data.load import code
from hhh.data.load.code import Options, Problem, mutants, problem_from_row, run_tests
from hhh.data.mine.common import MineStats
from tests.conftest import SHARED_DATA

HUMANEVAL = SHARED_DATA / "code" / "HumanEval.jsonl.gz"
MBPP = SHARED_DATA / "code" / "mbpp.jsonl"

COUNT_POS = """def count_pos(xs):
    n = 0
    for x in xs:
        if x > 0:
            n += 1
    return n
"""
COUNT_POS_TESTS = ["assert count_pos([1, 2]) == 2", "assert count_pos([0, 3]) == 1",
                   "assert count_pos([-1, -2]) == 0", "assert count_pos([]) == 0"]
# Every mutant of COUNT_POS, with its pass fraction on the four tests worked out by hand.
COUNT_POS_SCORES = {
    "reference": 1.0,
    "cmp:Gt->GtE@4": 0.75,  # [0, 3] -> 2
    "const:0->1@4": 0.75,  # x > 1: [1, 2] -> 1
    "const:0->-1@4": 0.75,  # x > -1: [0, 3] -> 2
    "if:drop-body@4": 0.5,  # always 0: only the two zero cases pass
    "augop:Add->Sub@5": 0.5,
    "const:1->0@5": 0.5,
    "const:1->2@5": 0.5,
    "const:0->1@2": 0.0,  # n starts at 1: every count is off
    "const:0->-1@2": 0.0,
}


def need(path):
  if not path.exists():
    pytest.skip(f"{path} not found: the real HumanEval/MBPP files are only in the development checkout")


def run(path, options: Options) -> tuple[list, MineStats]:
  stats = MineStats("")
  return list(code.load(path, options, stats)), stats


def write_jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def mbpp_row(task_id: int, code_text: str, tests: list[str], text: str = "Count the positive numbers.") -> dict:
  return {"text": text, "code": code_text, "task_id": task_id, "test_setup_code": "", "test_list": tests,
          "challenge_test_list": []}


@pytest.fixture(scope="module")
def humaneval():
  # 2 problems x (reference + 6 mutants) = 14 sandboxed runs.
  need(HUMANEVAL)
  return run(HUMANEVAL, Options(limit=2, timeout_s=3))


@pytest.fixture(scope="module")
def mbpp():
  # 2 problems: 7 + 2 runs (task 2 has a single mutation site).
  need(MBPP)
  return run(MBPP, Options(limit=2, timeout_s=3))


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: no sandbox.


def test_mbpp_split_ranges():
  assert [code.mbpp_split(t) for t in (1, 10, 11, 510, 511, 600, 601, 974)] == [
      ("train", "prompt"), ("train", "prompt"), ("test", "test"), ("test", "test"),
      ("validation", "validation"), ("validation", "validation"), ("train", "train"), ("train", "train")]
  with pytest.raises(code.Skip, match="bad_task_id"):
    code.mbpp_split(0)


def test_mutants_of_a_small_function():
  labels = {label for label, _ in mutants(COUNT_POS, 100, seed=0)}
  assert labels == set(COUNT_POS_SCORES) - {"reference"}
  by_label = dict(mutants(COUNT_POS, 100, seed=0))
  assert by_label["cmp:Gt->GtE@4"] == COUNT_POS.replace("x > 0", "x >= 0").rstrip("\n")
  assert by_label["if:drop-body@4"] == COUNT_POS.replace("n += 1", "pass").rstrip("\n")
  reference = ast.unparse(ast.parse(COUNT_POS))
  assert reference == COUNT_POS.rstrip("\n")
  assert all(src != reference for src in by_label.values()) and len(set(by_label.values())) == 9
  # Deterministic in the seed; another seed picks another first three.
  assert mutants(COUNT_POS, 3, seed=0) == mutants(COUNT_POS, 3, seed=0)
  assert [label for label, _ in mutants(COUNT_POS, 3, seed=0)] != [label for label, _ in mutants(COUNT_POS, 3, seed=1)]
  # Kinds take turns: three mutants from three different kinds.
  assert len({label.split(":")[0] for label, _ in mutants(COUNT_POS, 3, seed=0)}) == 3


def test_mutation_kinds():
  src = ("def f(xs, flag):\n"
         "    if flag and xs[0] < 2:\n"
         "        return xs[1:3]\n"
         "    elif not flag:\n"
         "        return [x * 2 for x in range(1, len(xs))]\n"
         "    return xs[-1]\n")
  labels = {label for label, _ in mutants(src, 100, seed=0)}
  for expected in ["boolop:And->Or@2", "cmp:Lt->LtE@2", "index:+1@2", "slice:lower+1@3", "slice:upper-1@3",
                   "not:drop@4", "binop:Mult->Add@5", "range:start+1@5", "range:stop-1@5", "return:swap->6@3",
                   "if:drop-else@2", "if:drop-body@4", "const:2->3@2"]:
    assert expected in labels, expected
  by_label = dict(mutants(src, 100, seed=0))
  assert "range(1, len(xs) - 1)" in by_label["range:stop-1@5"]
  assert "return xs[-1]\n    elif" in by_label["return:swap->6@3"]
  # The annotation-free signature is never touched, nor are string constants.
  sig = "def g(a: list[int], b: int=3) -> dict[str, int]:\n    return {'k': a[b]}\n"
  assert all(s.startswith("def g(a: list[int], b: int=") and "'k'" in s for _, s in mutants(sig, 100, seed=0))


def test_humaneval_check_split_into_tests():
  need(HUMANEVAL)
  with gzip.open(HUMANEVAL, "rt") as f:
    rows = {r["task_id"]: r for r in map(json.loads, f)}
  assert len(rows) == 164
  p = problem_from_row(rows["HumanEval/0"])
  assert p.bind == ("candidate", "has_close_elements") and p.n_tests == 7 and p.split == "test"
  assert p.units[0] == (True, "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True")
  assert p.solution.endswith("                    return True\n\n    return False\n")
  # HumanEval/100 ends with `assert True, ...`: run, but not a test.
  p = problem_from_row(rows["HumanEval/100"])
  assert p.n_tests == 5 and len(p.units) == 6 and p.units[-1][0] is False
  # A check that cannot be split is one all-or-nothing test.
  bind, units = code.check_units("def check(candidate):\n    return candidate(1) == 1\n", "f")
  assert (bind, units) == (None, ((True, "check(f)"),))


def test_hub_row_layouts():
  # The hub's "sanitized" MBPP config names the text `prompt` and adds `test_imports`.
  p = problem_from_row({"task_id": 602, "prompt": "Find the first repeated character.", "code": "def f(s): pass",
                        "test_imports": ["import math"], "test_list": ["assert f('aa') == 'a'"]})
  assert p.task_id == "mbpp/602" and p.split == "train" and p.setup == ("import math",)
  assert p.statement == "Find the first repeated character.\nYour code should pass this test:\nassert f('aa') == 'a'"
  for row, reason in [({"task_id": 1, "question": "?"}, "unknown_format"),
                      (mbpp_row(11, "x = 1", []), "no_tests"),
                      (mbpp_row("11", "x = 1", ["assert x"]), "missing_field"),
                      (mbpp_row(975, "x = 1", ["assert x"]), "bad_task_id")]:
    with pytest.raises(code.Skip, match=reason):
      problem_from_row(row)


def test_bad_paths_and_options(tmp_path):
  with pytest.raises(FileNotFoundError, match="code problems jsonl not found"):
    code.load(tmp_path / "missing.jsonl", Options(), MineStats(""))
  for bad in [dict(mutants=0), dict(timeout_s=0), dict(workers=0), dict(limit=-1), dict(memory_mb=8)]:
    with pytest.raises(ValueError, match=next(iter(bad))):
      Options(**bad)


# ---------------------------------------------------------------------------------------------------------------
# Sandboxed scores.


def test_hand_made_problem_scores_exactly(tmp_path):
  # reference + 9 mutants = 10 runs.
  path = write_jsonl(tmp_path / "tiny.jsonl", [mbpp_row(700, COUNT_POS, COUNT_POS_TESTS)])
  out, stats = run(path, Options(mutants=20, timeout_s=3))
  assert stats.records_read == 1 and stats.comparisons == 1 and not stats.skipped
  [(key, c, split)] = out
  assert (key, split, c.id, c.source) == ("mbpp/700", "train", "code/mbpp/700", "code")
  assert c.meta["mbpp_split"] == "train" and c.meta["tests"] == 4
  assert dict(zip(c.meta["mutations"], c.scores)) == COUNT_POS_SCORES
  assert c.meta["mutations"][0] == "reference" and list(c.scores) == sorted(c.scores, reverse=True)
  assert c.responses[0] == COUNT_POS.rstrip("\n")
  assert c.context == "Count the positive numbers.\nYour code should pass this test:\nassert count_pos([1, 2]) == 2"
  # --no-ranking: every pair of distinct scores, better first: 1 x 9 + 3 x 6 + 4 x 2 = 35 (no sandbox re-run
  # needed to count them: same candidates, same outcomes).
  outcomes = [code.Outcome(round(s * 4), 4, "ok") for s in c.scores]
  candidates = list(zip(c.meta["mutations"], c.responses))
  problem = problem_from_row(mbpp_row(700, COUNT_POS, COUNT_POS_TESTS))
  pairs = code.comparisons(problem, candidates, outcomes, ranking=False)
  assert len(pairs) == 35 and all(p.scores[0] > p.scores[1] and p.k == 2 for p in pairs)
  assert pairs[0].id == "code/mbpp/700/0-1" and pairs[0].meta["mutations"] == ["reference", c.meta["mutations"][1]]


def test_partial_credit_survives_hangs_crashes_and_prints():
  # 5 runs; the hanging one costs one per-test alarm (0.5 s).
  problem = problem_from_row(mbpp_row(700, COUNT_POS, COUNT_POS_TESTS))
  body = "def count_pos(xs):\n    {}\n    return sum(1 for x in xs if x > 0)\n"
  hang = body.format("while xs == [0, 3]: pass")
  crash = body.format("import os\n    if not xs: os._exit(3)")
  forge = body.format("print('test 1 1'); print('done')")
  broken = "def count_pos(xs):\n    return undefined_name\nraise RuntimeError('at import')\n"
  assert run_tests(problem, hang, timeout_s=2) == code.Outcome(3, 4, "ok")
  assert run_tests(problem, crash, timeout_s=2) == code.Outcome(3, 4, "crashed")  # the last test never reports
  assert run_tests(problem, forge, timeout_s=2) == code.Outcome(4, 4, "ok")
  assert run_tests(problem, broken, timeout_s=2) == code.Outcome(0, 4, "setup_error")
  # Sandbox rules hold inside tests: a test that tries to write outside fails, the others still count.
  escape = body.format("if xs == [1, 2]: open('/etc/hhh_escape', 'w')")
  assert run_tests(problem, escape, timeout_s=2) == code.Outcome(3, 4, "ok")


def test_humaneval_format_scores_per_assert(tmp_path):
  # The same problem in HumanEval layout: check() split into its asserts. 2 runs.
  row = {"task_id": "Tiny/0", "prompt": "def count_pos(xs):\n    \"\"\"Counts positives.\"\"\"\n",
         "canonical_solution": "    return sum(1 for x in xs if x > 0)\n",
         "test": "\n\ndef check(candidate):\n    " + "\n    ".join(t.replace("count_pos", "candidate")
                                                        for t in COUNT_POS_TESTS) + "\n",
         "entry_point": "count_pos"}
  p = problem_from_row(row)
  assert p.n_tests == 4 and p.bind == ("candidate", "count_pos")
  reference = ast.unparse(ast.parse(p.solution))
  assert run_tests(p, reference, timeout_s=2) == code.Outcome(4, 4, "ok")
  assert run_tests(p, reference.replace("x > 0", "x >= 0"), timeout_s=2) == code.Outcome(3, 4, "ok")


def test_skips_and_ties(tmp_path):
  # 1 (failing reference) + 2 (tied problem) runs.
  path = write_jsonl(tmp_path / "mixed.jsonl", [
      mbpp_row(601, "def f(x):\n    return x + 1", ["assert f(1) == 2", "assert f(2) == 4"]),  # reference fails
      mbpp_row(602, "def f(x:\n    return x", ["assert f(1) == 1"]),
      {"task_id": 603, "question": "not a code problem"},
      "{broken json",
      mbpp_row(604, "def f(x):\n    return x if True else x", ["assert f(1) == 1"]),  # one mutant, equivalent
      mbpp_row(605, "def f():\n    return 'a'", ["assert f() == 'a'"]),  # no mutation site
  ])
  out, stats = run(path, Options(timeout_s=3))
  assert stats.records_read == 6
  # 604's one mutant (True -> False in an unreachable branch) passes too: both score 1.0, a tie-only ranking.
  assert dict(stats.skipped) == {"reference_fails": 1, "reference_syntax_error": 1, "unknown_format": 1,
                                 "invalid_json": 1, "all_tied": 1, "no_mutants": 1}
  assert stats.first_offsets["reference_fails"] == [f"{path}:1"]
  assert stats.first_offsets["all_tied"] == [f"{path}:5"]
  assert out == []
  # Without ranking a tied problem gives no pair either.
  out, stats = run(path, Options(timeout_s=3, ranking=False, limit=0))
  assert out == [] and stats.skipped["all_tied"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Real files.


def test_humaneval_real(humaneval):
  out, stats = humaneval
  assert stats.records_read == 2 and stats.comparisons == 2 and not stats.skipped
  assert [(key, split, c.id) for key, c, split in out] == [
      ("HumanEval/0", "test", "code/HumanEval/0"), ("HumanEval/1", "test", "code/HumanEval/1")]
  c0, c1 = out[0][1], out[1][1]
  assert c0.context.startswith("from typing import List\n\n\ndef has_close_elements(numbers: List[float], "
                               "threshold: float) -> bool:\n")
  assert "separate_paren_groups" in c1.context and (c0.meta["tests"], c1.meta["tests"]) == (7, 4)
  for c in (c0, c1):
    assert c.k == 7 and c.meta["mutations"][0] == "reference" and c.scores[0] == 1.0
    assert list(c.scores) == sorted(c.scores, reverse=True) and min(c.scores) < 1.0
    assert len(set(c.responses)) == 7 and all(r != c.responses[0] for r in c.responses[1:])
  assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in c0.responses[0]
  assert "distance = abs(elem - elem2)" in c0.responses[0]
  # Fractions of 7 asserts; this seed's mutants and their scores (the Lt->LtE boundary is never hit by the tests).
  assert dict(zip(c0.meta["mutations"], c0.scores)) == {
      "reference": 1.0, "cmp:Lt->LtE@16": 1.0, "const:False->True@19": 4 / 7, "binop:Sub->Add@15": 3 / 7,
      "if:drop-body@14": 3 / 7, "return:swap->19@17": 3 / 7, "if:drop-body@16": 3 / 7}


def test_mbpp_real(mbpp):
  out, stats = mbpp
  assert stats.records_read == 2 and stats.comparisons == 2 and not stats.skipped
  assert [(key, split, c.meta["mbpp_split"]) for key, c, split in out] == [
      ("mbpp/1", "train", "prompt"), ("mbpp/2", "train", "prompt")]
  c1, c2 = out[0][1], out[1][1]
  assert c1.context == ("Write a function to find the minimum cost path to reach (m, n) from (0, 0) for the given "
                        "cost matrix cost[][] and a position (m, n) in cost[][].\nYour code should pass this test:\n"
                        "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8")
  assert c1.k == 7 and c1.meta["tests"] == 3 and c1.scores[0] == 1.0 and min(c1.scores) < 1.0
  assert c1.responses[0].startswith("R = 3\nC = 3\n\ndef min_cost(cost, m, n):\n    tc = [[0 for x in range(C)]")
  assert all(s * 3 == round(s * 3) for s in c1.scores)  # thirds: per-assert granularity
  assert c2.meta["mutations"] == ["reference", "binop:BitAnd->BitOr@2"] and c2.scores == (1.0, 0.0)
  assert "res = tuple(set(test_tup1) & set(test_tup2))" in c2.responses[0]


def test_same_seed_same_comparisons(mbpp):
  # 7 runs: the first MBPP problem again, alone.
  again, _ = run(MBPP, Options(limit=1, timeout_s=3))
  assert [c.to_json() for _, c, _ in again] == [mbpp[0][0][1].to_json()]
