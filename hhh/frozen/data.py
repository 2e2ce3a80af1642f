"""The frozen-trunk study's comparison sets, their fixed splits, offline text, and the rule baselines.

Target sets (relative labels, one comparison per context, every option kept):
  truthfulqa  TruthfulQA mc1: "Q: {question}\\nA:" and each answer, the one true answer scored 1. Expected in
              advance: binary ~ ranked, since with one true answer per question "top vs rest" labels and the
              ranked pairs (true vs each false) carry the same information.
  hellaswag   HellaSwag validation: "{activity}: {ctx}" and the 4 endings, the gold one scored 1.
  mbpp        MBPP problems: the reference solution and AST mutants, scored by the fraction of tests they pass
              in the sandbox (`hhh.data.load.code`), so a comparison can have several levels.
Splits are fixed by a hash of the group key (question, task, problem), never by position: test, validation
(for tuning the learning rate) and train; MBPP keeps its official task-id ranges.

Rule baselines score options without a model: "longer"/"shorter" by UTF-8 bytes, and "negation" by whether an
option contains a negation word (TruthfulQA's true answers often deny a misconception).
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison, write_jsonl

NEGATION = re.compile(r"\b(no|not|never|none|nobody|nothing|neither|nor|cannot|can't|won't|doesn't|don't|isn't|"
                      r"aren't|wasn't|weren't|didn't|haven't|hasn't|shouldn't|wouldn't|couldn't|n't)\b", re.I)
SPLITS = ("train", "validation", "test")


def hash_unit(key: str) -> float:
  return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)


def hash_split(key: str, test: float, validation: float) -> str:
  u = hash_unit(key)
  return "test" if u < test else "validation" if u < test + validation else "train"


def truthfulqa(path) -> dict[str, list[Comparison]]:
  from hhh.data.load import truthfulqa as tqa
  out = {s: [] for s in SPLITS}
  for key, c, _ in tqa.load(path, tqa.Options(targets="mc1", ranking=True), MineStats("frozen")):
    c = Comparison(c.context, c.responses, c.scores, c.source, c.id, {**c.meta, "group": key})
    out[hash_split(key, 0.5, 0.12)].append(c)
  return out


def hellaswag(path, *, n_train: int, n_validation: int, n_test: int, seed: int = 0) -> dict[str, list[Comparison]]:
  """A seeded subset of the validation file, split by task into the three parts (sizes capped)."""
  from hhh.data.load import hellaswag as hs
  pools = {s: [] for s in SPLITS}
  for key, c, _ in hs.load(path, hs.Options(), MineStats("frozen")):
    c = Comparison(c.context, c.responses, c.scores, c.source, c.id, {**c.meta, "group": key})
    pools[hash_split(key, 0.4, 0.1)].append(c)
  rng = np.random.default_rng(seed)
  caps = {"train": n_train, "validation": n_validation, "test": n_test}
  return {s: [pools[s][i] for i in sorted(rng.permutation(len(pools[s]))[:caps[s]])] for s in SPLITS}


def mbpp(path, *, mutants: int = 3, limit: int = 0, workers: int = 2) -> dict[str, list[Comparison]]:
  from hhh.data.load import code
  out = {s: [] for s in SPLITS}
  opts = code.Options(limit=limit, mutants=mutants, workers=workers)
  for key, c, split in code.load(path, opts, MineStats("frozen")):
    c = Comparison(c.context, c.responses, c.scores, c.source, c.id, {**c.meta, "group": key})
    out["train" if split in ("train", "prompt") else split].append(c)
  return out


def write_sets(sets: dict[str, dict[str, list[Comparison]]], out_dir) -> dict[str, dict[str, int]]:
  counts = {}
  for name, splits in sets.items():
    d = pathlib.Path(out_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    counts[name] = {s: write_jsonl(d / f"{s}.jsonl", cs) for s, cs in splits.items()}
  return counts


def read_set(out_dir, name: str, split: str) -> list[Comparison]:
  from hhh.data.schema import read_jsonl
  return list(read_jsonl(pathlib.Path(out_dir) / name / f"{split}.jsonl"))


def offline_text(shared_data, *, max_docs: int = 400, max_chars: int = 2000) -> list[Comparison]:
  """Text the readouts train on, as K=1 comparisons with an empty context: the Wikipedia article's paragraphs
  and Stack Exchange questions and answers (plain text), each cut to max_chars, at most max_docs in all."""
  from hhh.data import wikitext
  from hhh.data.mine import stackexchange as se
  docs: list[str] = []
  root = pathlib.Path(shared_data)
  wiki = root / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"
  if wiki.exists():
    docs += wikitext.article_paragraphs(wiki)
  site = root / "stackexchange" / "cardano.stackexchange.com"
  if site.exists():
    for _, c in se.mine(site, se.Options(), MineStats("frozen")):
      docs += [c.context, *c.responses]
  docs = list(dict.fromkeys(d.strip()[:max_chars] for d in docs if len(d.strip()) > 80))
  rng = np.random.default_rng(0)
  docs = [docs[i] for i in rng.permutation(len(docs))[:max_docs]]   # a mix of both sources
  return [Comparison("", (d,), (0.0,), "text", f"text/{i}") for i, d in enumerate(docs)]


def rule_scores(c: Comparison, rule: str) -> np.ndarray:
  if rule == "longer":
    return np.asarray([len(r.encode()) for r in c.responses], np.float64)
  if rule == "shorter":
    return -rule_scores(c, "longer")
  if rule == "negation":
    return np.asarray([1.0 if NEGATION.search(r) else 0.0 for r in c.responses])
  if rule == "no_negation":
    return -rule_scores(c, "negation")
  raise ValueError(f"unknown rule {rule!r}")


RULES = ("longer", "shorter", "negation", "no_negation")


def rules_table(comparisons: Sequence[Comparison]) -> dict[str, dict[str, list[float]]]:
  """Per rule, per-comparison top1 and pairwise correctness (ties count wrong for top1, half for pairwise)."""
  from hhh.frozen.train import correctness
  y = [np.asarray(c.scores) for c in comparisons]
  return {rule: {m: v.tolist() for m, v in correctness([rule_scores(c, rule) for c in comparisons], y).items()}
          for rule in RULES}
