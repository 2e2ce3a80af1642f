"""TruthfulQA multiple choice: true against false answers to questions that invite imitative falsehoods (test split).

Input, either of:
- TruthfulQA's mc_task.json: a list of `{"question", "mc1_targets": {answer: 0|1}, "mc2_targets": {answer: 0|1}}`
  (mc1: one true answer among 4-13; mc2: several true and several false);
- BIG-bench's truthful_qa/task_mc.json: `{"examples": [{"input": question, "target_scores": {answer: 0|1}}]}`,
  which is the mc1 variant (its items get an empty mc2);
- `hf:` (truthful_qa, config "multiple_choice"), whose targets are `{"choices": [...], "labels": [...]}`.

`read_mc(path)` returns `MCItem`s for evaluation (ValueError on a bad file). The loader emits, per question,
context "Q: {question}\\nA:" and the answers with a leading space (context + response is the answered question),
in the file's answer order: with --targets mc1 (default) or mc2, one ranking with true answers scored 1 and false
0, or with --no-ranking one pair per (true, false) answer. Everything is split "test": TruthfulQA is an evaluation
set. Group key: the question. Skipped, counted: questions without a true or without a false answer among the
chosen targets ("no_true_answer", "no_false_answer"). Ids: "truthfulqa/<targets>/<item index>[/<true>-<false>]".
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator

from hhh.data import load as load_lib
from hhh.data.mine.common import MAX_LINE_BYTES as MAX_FILE_BYTES, MineStats, decompress_errors, open_binary
from hhh.data.schema import Comparison

SOURCE = "truthfulqa"
HUB = "truthful_qa"
HUB_CONFIG = "multiple_choice"
TARGETS = ("mc1", "mc2")


@dataclasses.dataclass(frozen=True)
class MCItem:
  question: str
  mc1: tuple[tuple[str, int], ...]  # (answer, 1 if true else 0), in the file's order
  mc2: tuple[tuple[str, int], ...]  # empty for BIG-bench's task_mc.json


@dataclasses.dataclass(frozen=True)
class Options:
  limit: int = 0  # read at most this many questions (0: all)
  targets: str = "mc1"  # mc1 (one true answer) or mc2 (several true answers)
  ranking: bool = True  # one ranking per question; --no-ranking: each true answer vs each false one

  def __post_init__(self):
    if self.targets not in TARGETS:
      raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")


def targets_of(value: Any, where: str) -> tuple[tuple[str, int], ...]:
  """{answer: label} (TruthfulQA, BIG-bench) or {"choices": [...], "labels": [...]} (hub) -> ((answer, 0|1), ...)."""
  if isinstance(value, dict) and set(value) == {"choices", "labels"}:
    if not isinstance(value["choices"], list) or not isinstance(value["labels"], list):
      raise ValueError(f"{where}: choices/labels are not lists")
    if len(value["choices"]) != len(value["labels"]):
      raise ValueError(f"{where}: {len(value['choices'])} choices but {len(value['labels'])} labels")
    pairs = list(zip(value["choices"], value["labels"]))
  elif isinstance(value, dict):
    pairs = list(value.items())
  else:
    raise ValueError(f"{where}: targets are not an object")
  out = []
  for answer, label in pairs:
    if not isinstance(answer, str) or isinstance(label, bool) or label not in (0, 1):
      raise ValueError(f"{where}: bad target {answer!r}: {label!r} (want answer text: 0 or 1)")
    out.append((answer, int(label)))
  return tuple(out)


def item_from_row(row: Any, where: str) -> MCItem:
  """One TruthfulQA / hub row ({question, mc1_targets, mc2_targets}) or BIG-bench example ({input, target_scores})."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: not an object")
  if "target_scores" in row:
    question, mc1, mc2 = row.get("input"), targets_of(row["target_scores"], where), ()
  else:
    question = row.get("question")
    if "mc1_targets" not in row:
      raise ValueError(f"{where}: neither mc1_targets (TruthfulQA) nor target_scores (BIG-bench)")
    mc1 = targets_of(row["mc1_targets"], where)
    mc2 = targets_of(row["mc2_targets"], where) if row.get("mc2_targets") is not None else ()
  if not isinstance(question, str) or not question.strip():
    raise ValueError(f"{where}: no question text")
  return MCItem(question=question, mc1=mc1, mc2=mc2)


def read_mc(path) -> list[MCItem]:
  """The items of mc_task.json (TruthfulQA) or task_mc.json (BIG-bench), in file order."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"truthfulqa file not found: {path}")
  try:
    with open_binary(path) as f:
      # A whole-file JSON, so one cap on the decompressed size stands in for the line cap.
      raw = f.read(MAX_FILE_BYTES + 1)
  except decompress_errors() as e:
    raise ValueError(f"{path}: unreadable ({' '.join(str(e).split())[:200]})") from None
  if len(raw) > MAX_FILE_BYTES:
    raise ValueError(f"{path}: over {MAX_FILE_BYTES} bytes (decompressed); TruthfulQA's file is under 1 MB")
  try:
    data = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{path}: not a JSON file ({' '.join(str(e).split())[:200]})") from None
  if isinstance(data, dict) and isinstance(data.get("examples"), list):
    rows = data["examples"]
  elif isinstance(data, list):
    rows = data
  else:
    raise ValueError(f"{path}: neither a list of questions (mc_task.json) nor a BIG-bench task with examples")
  return [item_from_row(row, f"{path}: item {i}") for i, row in enumerate(rows)]


def comparisons(item: MCItem, index: int, targets: str, ranking: bool) -> list[Comparison]:
  """The ranking or pairs of one question; raises load.Skip when it has no true or no false answer."""
  answers = item.mc1 if targets == "mc1" else item.mc2
  if not any(label for _, label in answers):
    raise load_lib.Skip("no_true_answer")
  if all(label for _, label in answers):
    raise load_lib.Skip("no_false_answer")
  context = load_lib.check_text(f"Q: {item.question}\nA:")
  responses = [load_lib.check_text(" " + a) for a, _ in answers]
  base = f"{SOURCE}/{targets}/{index}"
  meta = {"targets": targets, "index": index}
  if ranking:
    return [Comparison(context, tuple(responses), tuple(float(label) for _, label in answers), SOURCE, base, meta)]
  return [Comparison(context, (responses[i], responses[j]), (1.0, 0.0), SOURCE, f"{base}/{i}-{j}", meta)
          for i, (_, good) in enumerate(answers) if good for j, (_, bad) in enumerate(answers) if not bad]


def load(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str]]:
  """Yields (question, comparison, "test"); the file is read (or the hub fetched) before this returns."""
  stats.source = SOURCE
  hf = load_lib.hf_spec(path, HUB, HUB_CONFIG)
  if hf is not None:
    ds = load_lib.hf_dataset(*hf)
    items = [item_from_row(row, f"{hf[0]}/{split}: row {i}") for split in ds for i, row in enumerate(ds[split])]
  else:
    items = read_mc(path)
  if options.targets == "mc2" and items and not any(item.mc2 for item in items):
    raise ValueError(f"{path}: has no mc2 targets (BIG-bench task_mc.json is the mc1 variant); use --targets mc1")
  return _load(items, options, stats)


def _load(items: list[MCItem], options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str]]:
  for index, item in enumerate(items):
    stats.records_read += 1
    try:
      cs = comparisons(item, index, options.targets, options.ranking)
    except load_lib.Skip as e:
      stats.skip(str(e), index)
    else:
      for c in cs:
        stats.comparisons += 1
        yield item.question, c, "test"
    if options.limit and stats.records_read >= options.limit:
      return
