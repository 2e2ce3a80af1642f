"""Where a run's data comes from: comparison JSONL files, text files, or the generated toy world."""

from __future__ import annotations

import json
import pathlib

from hhh.data import toy
from hhh.data.schema import Comparison, read_jsonl


def load_comparisons(spec: str, dcfg, split: str) -> list[Comparison]:
  if spec == "toy":
    n = dcfg.toy_train if split == "train" else dcfg.toy_validation
    # Distinct seeds per split so held-out comparisons are new draws, not repeats.
    return toy.generate_comparisons(n, k=dcfg.toy_k, seed=dcfg.toy_seed * 2 + (split != "train"))
  path = pathlib.Path(spec)
  if not path.is_file():
    raise FileNotFoundError(f"data.{split}: no such file {spec}")
  return read_jsonl(path)


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
