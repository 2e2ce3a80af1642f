"""The comparison record every data source produces and every objective consumes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One context with K >= 1 responses and their scores (higher is better).

  K == 1 with no meaningful score is how plain LM text travels through the same
  pipeline. Ties are allowed; the ranked objective skips tied pairs.
  """

  context: str
  responses: tuple[str, ...]
  scores: tuple[float, ...]
  source: str
  id: str
  # Per-record facts a source keeps beside the ranking (e.g. Learn to Summarize's split and worker confidence).
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    if len(self.responses) != len(self.scores):
      raise ValueError(
          f"comparison {self.id!r}: {len(self.responses)} responses but"
          f" {len(self.scores)} scores")
    if not self.responses:
      raise ValueError(f"comparison {self.id!r}: no responses")

  @property
  def k(self) -> int:
    return len(self.responses)

  def to_json(self) -> dict[str, Any]:
    d = {"id": self.id, "source": self.source, "context": self.context,
         "responses": list(self.responses), "scores": list(self.scores)}
    if self.meta:
      d["meta"] = dict(self.meta)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Comparison":
    return cls(context=d["context"], responses=tuple(d["responses"]),
               scores=tuple(float(s) for s in d["scores"]),
               source=d.get("source", ""), id=str(d["id"]), meta=dict(d.get("meta") or {}))


def write_jsonl(path, comparisons) -> int:
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for c in comparisons:
      f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
      n += 1
  return n


def read_jsonl(path, parse=None) -> list[Comparison]:
  """Comparisons from a JSONL file; `parse(row, lineno)` maps other row layouts (default: our own fields)."""
  parse = parse or (lambda row, lineno: Comparison.from_json(row))
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(parse(json.loads(line), lineno))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{lineno}: bad comparison record: {e}") from None
  return out
