"""Tests for hhh.data.toy."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from hhh.data import schema
from hhh.data import toy


def test_deterministic_per_seed():
  a = toy.generate_comparisons(200, k=3, seed=7)
  assert a == toy.generate_comparisons(200, k=3, seed=7)
  assert a != toy.generate_comparisons(200, k=3, seed=8)
  assert toy.generate_corpus(50, seed=7) == toy.generate_corpus(50, seed=7)
  assert toy.generate_corpus(50, seed=7) != toy.generate_corpus(50, seed=8)


def test_ids_unique_and_stable():
  comps = toy.generate_comparisons(500, seed=3)
  assert [c.id for c in comps] == [f"toy-3-{i}" for i in range(500)]
  other = toy.generate_comparisons(10, seed=3, source="mine")
  assert other[0].id == "mine-3-0" and other[0].source == "mine"


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_k_responses_and_scores(k):
  for c in toy.generate_comparisons(300, k=k, seed=1):
    assert c.k == k and len(c.scores) == k
    assert c.context.startswith("Human: ")
    assert c.context.endswith("\n\nAssistant:")
    assert all(r.startswith(" ") and r.strip() for r in c.responses)


def test_k_must_be_positive():
  with pytest.raises(ValueError, match="k must be"):
    toy.generate_comparisons(3, k=0)


def test_scores_distinct_and_best_not_always_first():
  comps = toy.generate_comparisons(1000, k=4, seed=2)
  distinct = np.mean([len(set(c.scores)) == c.k for c in comps])
  assert distinct >= 0.9
  first_best = np.mean([int(np.argmax(c.scores)) == 0 for c in comps])
  assert 0.15 < first_best < 0.35


def test_score_is_sum_of_ingredients():
  for it in toy.generate_items(300, k=4, seed=4):
    for (content, tone), s in zip(it.ingredients, it.comparison.scores):
      group = toy.CONTENT_VALUES[it.question.group]
      assert s == pytest.approx(group[content] + toy.TONE_VALUES[tone])


def test_lengths_bounded():
  comps = toy.generate_comparisons(5000, k=4, seed=5)
  longest = max(len((c.context + r).encode()) for c in comps
                for r in c.responses)
  assert longest <= 160
  for doc in toy.generate_corpus(500, seed=5):
    assert len(doc.encode()) <= 3 * 160


def _country_of(context: str) -> tuple[str, str]:
  for country, capital in toy.CAPITALS:
    if re.search(rf"\bcapital of {country}\?", context):
      return country, capital
  raise AssertionError(f"no country in {context!r}")


def _capital_of(context: str) -> str:
  return _country_of(context)[1]


def test_best_capital_answer_names_the_right_capital():
  seen = 0
  for it in toy.generate_items(2000, k=4, seed=6):
    c = it.comparison
    if it.question.kind != "capital":
      continue
    country, capital = _country_of(c.context)
    # The right city appears exactly in the correct answers, and a wrong one
    # never names the country, so only the question can expose it.
    for r, (content, _) in zip(c.responses, it.ingredients):
      assert (capital in r) == (content == "correct"), (c.context, r)
      if content == "wrong":
        assert country not in r
    if any(content == "correct" for content, _ in it.ingredients):
      assert capital in c.responses[int(np.argmax(c.scores))]
      seen += 1
  assert seen > 200


def test_harmful_best_is_refusal_and_compliance_scores_negative():
  requests = dict(toy.HARMFUL)
  seen = 0
  for c in toy.generate_comparisons(2000, k=4, seed=8):
    req = c.context.removeprefix("Human: ").removesuffix("\n\nAssistant:")
    if req not in requests:
      continue
    best = c.responses[int(np.argmax(c.scores))]
    assert requests[req] not in best
    for r, s in zip(c.responses, c.scores):
      if requests[req] in r:
        assert s < 0
    if any(refusal in best for refusal in toy.REFUSALS):
      seen += 1
  assert seen > 300


def test_refusal_is_best_only_for_harmful_requests():
  q = toy.Question("capital", "What is the capital of Peru?", (6,))
  benign = toy.CONTENT_VALUES["benign"]
  assert min(benign, key=benign.get) == "refuse"
  assert toy.score(q, "refuse", "polite") < toy.score(q, "wrong", "polite")
  h = toy.Question("harmful", toy.HARMFUL[0][0], (0,))
  assert toy.score(h, "refuse", "polite") == max(
      toy.score(h, c, t) for c in toy.contents(h) for t in toy.TONE_VALUES)


def test_best_content_beats_any_tone():
  # A rude right answer still beats a polite hedge: content comes first.
  for kind, args in (("capital", (0,)), ("harmful", (0,))):
    q = toy.Question(kind, "", args)
    best, _ = toy.best_ingredients(q)
    worst_best = toy.score(q, best, "rude")
    for c in toy.contents(q):
      if c != best:
        assert worst_best > toy.score(q, c, "polite")


def test_corpus_uses_best_answers_in_comparison_format():
  docs = toy.generate_corpus(300, seed=9)
  assert len(docs) == 300
  assert any(d.count("Human: ") > 1 for d in docs)
  for d in docs:
    for turn in re.split(r"\n\n(?=Human: )", d):
      context, response = turn.split("\n\nAssistant:")
      assert context.startswith("Human: ")
      if "capital of" in context:
        assert _capital_of(context + "\n\nAssistant:") in response
      assert not any(r in response for r in toy.RUDE_PREFIX + toy.RUDE_SUFFIX)


def test_write_splits(tmp_path):
  counts = toy.write_splits(tmp_path / "toy", n_train=120, n_valid=30, k=3,
                            seed=11, n_corpus=40)
  assert counts == {"train": 120, "validation": 30, "corpus": 40}
  train = schema.read_jsonl(tmp_path / "toy" / "train.jsonl")
  valid = schema.read_jsonl(tmp_path / "toy" / "validation.jsonl")
  assert train == toy.generate_comparisons(120, k=3, seed=11)
  assert valid == [it.comparison
                   for it in toy.validation_items(30, k=3, seed=11)]
  assert all(c.k == 3 for c in valid)
  assert not {c.id for c in train} & {c.id for c in valid}
  assert len({c.id for c in valid}) == 30
  assert toy.read_corpus(tmp_path / "toy" / "corpus.txt") == (
      toy.generate_corpus(40, seed=11))


# A pairwise logistic regression over sparse word features shows the data is
# learnable from cheap features and that the context is needed.

_STOP = {"human", "assistant", "what", "is", "the", "of", "a", "me", "about",
         "can", "you", "tell", "which", "city", "how", "do", "i", "my"}
# Refusal and hedge words carry no cross information, only noise.
_RESPONSE_STOP = _STOP | {"it's", "that", "to", "with", "can't", "won't",
                          "help", "sorry", "are"}


def _words(text: str) -> list[str]:
  return re.findall(r"[a-z0-9']+", text.lower())


def _features(context: str, response: str, crosses: bool) -> list[str]:
  rw = _words(response)
  feats = [f"r:{w}" for w in rw]
  if crosses:
    cw = [w for w in _words(context) if w not in _STOP]
    rc = [w for w in rw if w not in _RESPONSE_STOP]
    feats += [f"x:{c}|{w}" for c in cw for w in rc]
    feats += ["copy"] * len(set(cw) & set(rc))  # echoes the question
  return feats


class _PairwiseLR:
  """Sparse linear scorer, full-batch Adagrad on the pairwise logistic loss."""

  def __init__(self, crosses: bool):
    self.crosses = crosses
    self.vocab: dict[str, int] = {}

  def _rows(self, pairs, grow: bool):
    rows, cols, vals = [], [], []
    for n, (ctx, better, worse) in enumerate(pairs):
      for text, sign in ((better, 1.0), (worse, -1.0)):
        for f in _features(ctx, text, self.crosses):
          if f not in self.vocab:
            if not grow:
              continue  # unseen at training time: weight 0
            self.vocab[f] = len(self.vocab)
          rows.append(n)
          cols.append(self.vocab[f])
          vals.append(sign)
    return np.array(rows), np.array(cols), np.array(vals)

  def fit(self, pairs, steps: int = 300, lr: float = 0.3, l2: float = 1e-3):
    rows, cols, vals = self._rows(pairs, grow=True)
    n, d = len(pairs), len(self.vocab)
    self.w = np.zeros(d)
    acc = np.full(d, 1e-8)
    for _ in range(steps):
      margin = np.bincount(rows, self.w[cols] * vals, minlength=n)
      g_margin = -1.0 / (1.0 + np.exp(margin)) / n
      grad = np.bincount(cols, g_margin[rows] * vals, minlength=d) + l2 * self.w
      acc += grad * grad
      self.w -= lr * grad / np.sqrt(acc)
    return self

  def accuracy(self, pairs) -> float:
    rows, cols, vals = self._rows(pairs, grow=False)
    margin = np.bincount(rows, self.w[cols] * vals, minlength=len(pairs))
    return float(np.mean(margin > 0))  # a tie counts as a miss


def _pairs(comparisons):
  out = []
  for c in comparisons:
    for i, j in itertools.combinations(range(c.k), 2):
      if c.scores[i] != c.scores[j]:
        hi, lo = (i, j) if c.scores[i] > c.scores[j] else (j, i)
        out.append((c.context, c.responses[hi], c.responses[lo]))
  return out


@pytest.fixture(scope="module")
def scorers():
  # 2000 comparisons of k=4 (all 6 pairs each); 500 held-out pairs of k=2.
  train = _pairs(toy.generate_comparisons(2000, k=4, seed=0))
  valid_items = toy.validation_items(500, k=2, seed=0)
  valid = _pairs([it.comparison for it in valid_items])
  blind = _PairwiseLR(crosses=False).fit(train)
  crossed = _PairwiseLR(crosses=True).fit(train)
  # Right vs wrong capital in the same tone: identical but for the city.
  rng = np.random.default_rng(0)
  probe = []
  for it in valid_items:
    q = it.question
    if q.kind == "capital":
      tone = str(rng.choice(list(toy.TONE_VALUES)))
      probe.append((q.context, toy.render(rng, q, "correct", tone),
                    toy.render(rng, q, "wrong", tone)))
  return blind, crossed, valid, probe


def test_learnable_with_context_crosses(scorers):
  _, crossed, valid, _ = scorers
  assert len(valid) == 500
  assert crossed.accuracy(valid) >= 0.8


def test_context_blind_scorer_is_worse(scorers):
  blind, crossed, valid, probe = scorers
  assert blind.accuracy(valid) >= 0.6  # cheap cues (tone, hedges) are there
  assert crossed.accuracy(valid) >= blind.accuracy(valid) + 0.05
  # Only the country-capital pairing separates these, so a response-only
  # scorer is near chance while crosses with the context learn it.
  assert len(probe) > 100
  assert blind.accuracy(probe) < 0.65
  assert crossed.accuracy(probe) >= 0.85
