"""Where a run's data comes from: comparison JSONL files, text files, or the generated toy world."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from hhh.data import binarize as binarize_lib
from hhh.data import store, toy
from hhh.data.schema import Comparison


def parse_mixture(spec: str) -> list[tuple[str, float, bool]]:
  """"A:0.6,B:0.4:binarize" -> [("A", 0.6, False), ("B", 0.4, True)]; weight defaults to 1."""
  out = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    path, weight, binarize = part, 1.0, False
    if path.endswith(":binarize"):
      path, binarize = path[: -len(":binarize")], True
    head, sep, tail = path.rpartition(":")
    if sep and head:
      try:
        path, weight = head, float(tail)
      except ValueError:
        pass  # a colon that is part of the path (hf:NAME)
    if weight < 0:
      raise ValueError(f"data source {part!r}: negative weight")
    out.append((path, weight, binarize))
  if not out:
    raise ValueError("no data source given")
  return out


def _one_source(path: str, dcfg, split: str) -> list[Comparison]:
  if path == "toy":
    n = dcfg.toy_train if split == "train" else dcfg.toy_validation
    # Distinct seeds per split so held-out comparisons are new draws, not repeats.
    return toy.generate_comparisons(n, k=dcfg.toy_k, seed=dcfg.toy_seed * 2 + (split != "train"))
  if split != "train" and store.is_dataset_dir(path) and split not in store.splits_of(path):
    # Splits are by hash of a group (a page, a thread): a small source can have no held-out group at all.
    print(f"hhh: note: {path} has no {split} split; it is not evaluated")
    return []
  return store.load(path, split)


def load_comparisons(spec: str, dcfg, split: str, seed: int = 0) -> list[Comparison]:
  """One source, or a weighted mixture "PATH[:WEIGHT][:binarize],..." (the PMP stage).

  Training mixtures hold as many examples as all sources together, each source
  contributing in proportion to its weight (a small source is repeated, a large
  one subsampled, both in a seeded order). Held-out splits are concatenated
  unweighted, so each source is evaluated on all of its held-out data.
  """
  sources = parse_mixture(spec)
  loaded = []
  for path, weight, binarize in sources:
    cs = _one_source(path, dcfg, split)
    loaded.append((list(binarize_lib.binarize_all(cs)) if binarize else cs, weight))
  if len(loaded) == 1 or split != "train":
    return [c for cs, _ in loaded for c in cs]
  total_n, total_w = sum(len(cs) for cs, _ in loaded), sum(w for _, w in loaded)
  rng = np.random.default_rng(seed)
  out = []
  for cs, w in loaded:
    if not cs or not w:
      continue
    n = round(total_n * w / total_w)
    order = np.concatenate([rng.permutation(len(cs)) for _ in range(-(-n // len(cs)))])[:n]
    out.extend(cs[i] for i in order)
  return out


def load_texts(spec: str, dcfg, split: str) -> list[str]:
  """A .jsonl of {"text": ...} records, a .txt file (one document), or "toy" (the toy world's dialogues)."""
  if spec == "toy":
    n = dcfg.toy_train if split == "train" else dcfg.toy_validation
    return toy.generate_corpus(n, seed=dcfg.toy_seed * 2 + (split != "train"))
  path = pathlib.Path(spec)
  if not path.is_file():
    raise FileNotFoundError(f"data.{split}: no such file {spec}")
  if path.suffix == ".jsonl":
    out = []
    for lineno, line in enumerate(path.open(encoding="utf-8"), 1):
      if line.strip():
        try:
          out.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
          raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field") from None
    return out
  return [path.read_text(encoding="utf-8")]


def texts_of(comparisons: list[Comparison]) -> list[str]:
  """Training text for a tokenizer: every context and response."""
  return [t for c in comparisons for t in (c.context, *c.responses)]
