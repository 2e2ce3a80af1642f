"""Scoring rules (hand-computed picks and margins), the shared-context scorer against `Scorer`, the tax analysis."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hhh.data.tokenizer import ByteTokenizer
from hhh.evals import rules
from hhh.studies import scoring_report
from hhh.evals import score as score_lib
from hhh.evals.score import Scorer, Scores
from hhh.model.config import ModelConfig
from hhh.pretrained import LM
from hhh.model.params import graphdef_and_params


def _s(loglik, n_tokens, n_bytes, n_chars=None) -> Scores:
  """Scores of options whose continuation is " " + an ASCII choice: choice bytes = characters = n_bytes - 1."""
  n_chars = np.asarray(n_bytes) - 1 if n_chars is None else np.asarray(n_chars)
  return Scores(np.asarray(loglik, np.float64), np.asarray(n_tokens), np.asarray(n_bytes), np.zeros(len(loglik), bool),
                n_chars=n_chars, choice_bytes=np.asarray(n_bytes) - 1)


def test_each_rule_picks_as_computed_by_hand():
  s = _s([-4.0, -6.0], [2, 4], [5, 12])
  unc = _s([-3.0, -8.0], [2, 4], [5, 12])
  # acc -4 > -6; acc_norm and acc_bytes -4/4 = -1 < -6/11 = -0.55; per token -2 < -1.5; PMI -1 < +2;
  # longer 12 > 5.
  assert rules.RULES == ("acc", "acc_norm", "acc_bytes", "per_token", "pmi", "longer", "shorter")
  assert [rules.choice(r, s, unc) for r in rules.RULES] == [0, 1, 1, 1, 1, 1, 0]
  assert rules.margin("acc", s, [1, 0]) == 2.0
  assert rules.margin("sum", s, [1, 0]) == 2.0  # the old name, as older results spell it
  assert rules.margin("per_token", s, [1, 0]) == -0.5
  assert rules.margin("pmi", s, [0, 1], unc) == 3.0
  # A tied top score is no choice, and counts as wrong.
  assert rules.choice("longer", _s([-1.0, -2.0], [1, 1], [4, 4])) == -1
  np.testing.assert_array_equal(rules.choices("acc", [s, _s([-9.0, -1.0], [1, 1], [2, 2])]), [0, 1])
  with pytest.raises(ValueError, match="unconditional"):
    rules.rule_scores("pmi", s)
  with pytest.raises(ValueError, match="unknown scoring rule"):
    rules.rule_scores("median", s)
  with pytest.raises(ValueError, match="no longer a rule"):
    rules.rule_scores("per_byte", s)
  with pytest.raises(ValueError, match="lengths without the leading space"):
    rules.rule_scores("acc_norm", Scores(s.loglik, s.n_tokens, s.n_bytes, s.greedy))
  with pytest.raises(ValueError, match="preferred and other"):
    rules.margin("acc", s, [1, 1])


def lm_eval_multiple_choice(lls, choices, gold):
  """lm-evaluation-harness's process_results for output_type multiple_choice (lm_eval/api/task.py), restated:
  `choices` are doc_to_choice's strings, the target delimiter " " not included."""
  lls = np.asarray(lls)
  completion_len = np.array([float(len(i)) for i in choices])
  byte_length = np.array([float(len(i.encode("utf-8"))) for i in choices])
  return {"acc": float(np.argmax(lls) == gold), "acc_norm": float(np.argmax(lls / completion_len) == gold),
          "acc_bytes": float(np.argmax(lls / byte_length) == gold)}


def test_rules_are_lm_evals_formulas():
  """Non-ASCII choices, where characters, bytes and bytes-with-the-space all rank differently."""
  choices = ["Zürich ist schön", "Zurich is nice!!"]  # 16 characters each; 18 and 16 bytes
  options = [" " + c for c in choices]
  lls = [-16.5, -16.2]
  s = Scores(np.asarray(lls), np.asarray([5, 5]), greedy=np.zeros(2, bool), **score_lib.option_lengths(options))
  np.testing.assert_array_equal(s.n_chars, [16, 16])
  np.testing.assert_array_equal(s.choice_bytes, [18, 16])
  np.testing.assert_array_equal(s.n_bytes, [19, 17])
  # By hand: acc -16.5 < -16.2 picks 1; acc_norm -1.031 < -1.0125 picks 1; acc_bytes -0.917 > -1.0125 picks 0.
  assert [rules.choice(r, s) for r in ("acc", "acc_norm", "acc_bytes")] == [1, 1, 0]
  np.testing.assert_allclose(rules.rule_scores("acc_norm", s), [-16.5 / 16, -16.2 / 16])
  np.testing.assert_allclose(rules.rule_scores("acc_bytes", s), [-16.5 / 18, -16.2 / 16])
  for gold in (0, 1):
    want = lm_eval_multiple_choice(lls, choices, gold)
    got = {r: float(rules.choice(r, s) == gold) for r in want}
    assert got == want
  # The old "acc_norm" (per byte of " " + option) -16.5/19 = -0.868 > -16.2/17 = -0.953 picks 0: lm-eval's picks 1.
  assert int(np.argmax(np.asarray(lls) / s.n_bytes)) == 0


@pytest.fixture(scope="module")
def tiny_lm():
  cfg = ModelConfig(vocab_size=ByteTokenizer().vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    max_len=96)
  _, params = graphdef_and_params(cfg, jax.random.PRNGKey(3))
  return LM(cfg, params, ByteTokenizer(), name="random-2")


@pytest.mark.parametrize("prompt", ["", "Be helpful.\n\n"])
def test_shared_context_scorer_equals_scorer(tiny_lm, prompt):
  items = [("Human: hi\nAssistant:", [" hello there", " no"]),
           ("Human: hi\nAssistant:", [" no", " go away now"]),        # a shared context, one option in common
           ("Q: 2+2?\nA:", [" 4", " five", " 22"]),
           ("", [" empty context"]),
           ("x" * 80, [" the context is cut from the left to fit"])]
  want = Scorer(tiny_lm, prompt=prompt, batch_size=4).score_many(items)
  shared = scoring_report.SharedContextScorer(Scorer(tiny_lm, prompt=prompt), contexts_per_batch=2, rows_per_batch=3)
  got = shared.score_many(items)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g.loglik, w.loglik, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(g.n_tokens, w.n_tokens)
    np.testing.assert_array_equal(g.n_bytes, w.n_bytes)
    np.testing.assert_array_equal(g.n_chars, w.n_chars)
  assert shared.truncated == 1


def test_score_conditions_resume_from_partial_chunks(tiny_lm, tmp_path):
  queries = [("Q: 2+2?\nA:", [" 4", " five"]), ("Human: hi\nAssistant:", [" hello", " no"]),
             ("Q: sky?\nA:", [" blue", " green", " red"]), ("x", [" y"]), ("Q: 1?\nA:", [" one", " two"])]
  conds = [("no_prompt", ""), ("prompt", "Be helpful.\n\n")]
  straight = scoring_report.score_conditions(tiny_lm, conds, queries, "Q:", chunk_items=2)
  part = tmp_path / "partial"
  scoring_report.score_conditions(tiny_lm, conds, queries, "Q:", chunk_items=2, partial_dir=part)
  # Killed after the first chunk of the prompted condition: a rerun scores the rest and returns everything.
  lines = (part / "prompt.jsonl").read_text().splitlines()
  assert len(lines) == 1 + 3  # the key, then chunks of 2, 2 and 1 items
  (part / "prompt.jsonl").write_text("\n".join(lines[:2]) + "\n")
  resumed = scoring_report.score_conditions(tiny_lm, conds, queries, "Q:", chunk_items=2, partial_dir=part)
  assert len((part / "prompt.jsonl").read_text().splitlines()) == 4
  for cond, _ in conds:
    for key in ("scores", "unconditional"):
      assert len(resumed[cond][key]) == 5
      for a, b in zip(resumed[cond][key], straight[cond][key]):
        np.testing.assert_allclose(a["loglik"], b["loglik"], rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="other queries"):
    scoring_report.score_conditions(tiny_lm, [("prompt", "Another prompt.\n")], queries, "Q:", chunk_items=2,
                                    partial_dir=part)


def test_tax_analysis_on_hand_made_scores():
  # Three 2-option tasks, label 0 each. Without the prompt: acc right on 1 and 2, acc_norm right on 1 only.
  # With it: acc right on 1 only, acc_norm right on all three. ASCII choices: acc_bytes = acc_norm.
  sc = lambda ll, nc: {"loglik": ll, "n_tokens": [1, 1], "n_bytes": [n + 1 for n in nc], "n_chars": nc,
                       "choice_bytes": nc}
  raw = {"no_prompt": {"scores": [sc([-1, -2], [1, 1]), sc([-1, -2], [1, 4]), sc([-3, -2], [1, 1])]},
         "prompt": {"scores": [sc([-1, -2], [1, 1]), sc([-3, -2], [6, 1]), sc([-3, -2], [6, 1])]}}
  res = scoring_report.analyse_tax([0, 0, 0], raw)
  assert res["conditions"]["no_prompt"]["acc"]["correct"] == 2
  assert res["conditions"]["no_prompt"]["acc_norm"]["correct"] == 1
  assert res["conditions"]["prompt"]["acc"]["correct"] == 1
  assert res["conditions"]["prompt"]["acc_norm"]["correct"] == 3
  d = res["prompt_minus_no_prompt"]
  assert d["acc"]["mean"] == pytest.approx(-1 / 3) and d["acc"]["mcnemar"] == {"b01": 0, "b10": 1, "p": 1.0}
  assert d["acc_norm"]["mean"] == pytest.approx(2 / 3)
  assert d["acc_norm"]["mcnemar"] == {"b01": 2, "b10": 0, "p": 0.5}
  assert res["conditions"]["prompt"]["acc_bytes"]["correct"] == 3
  # Raw scores written before n_chars: read with the options' text (" a" and " bbbb": 1 and 4 characters).
  old = {"no_prompt": {"scores": [{"loglik": [-1, -2], "n_tokens": [1, 1], "n_bytes": [2, 5]}]}}
  r = scoring_report.analyse_tax([0], old, options=[[" a", " bbbb"]])
  assert r["conditions"]["no_prompt"]["acc_norm"]["correct"] == 0  # -1/1 < -2/4
