"""HellaSwag commonsense endings: the labelled ending against the 3 machine-written ones, as a ranking or pairs.

Input, either of (plain or compressed; a folder of such files is read in sorted path order):
- the original JSON lines (hellaswag_{train,val,test}.jsonl): `ind`, `activity_label`, `ctx` (or `ctx_a` +
  `ctx_b`), `endings` (4), `label`, `split`, `source_id`, ...; the hub copy (`hf:` = Rowan/hellaswag) has the same
  fields, with `label` a string;
- the derived text format (hellaswag_val_full.txt.bz2): 6 lines per task, "activity_label: ctx", the label
  (0-3), then the 4 endings. It keeps no `ind`; a task's ind is its 0-based position in the file.
The format is told by the first non-blank line ("{" starts JSON lines).

Text is cleaned the way the derived file was made, so both formats give the same strings: the WikiHow markers
"[header]", "[step]" and "[substeps]" are removed, " [title]" becomes ". " (other "[title]" markers go), double
spaces collapse once, and one leading and one trailing space are dropped. Other bracketed text stays.

`read_tasks(path)` yields `HellaswagTask`s for evaluation and raises ValueError on any bad record. The loader
emits, per task, context "activity_label: ctx" and the endings with a leading space (context + response is the
finished sentence): a k=4 ranking in ending order (labelled ending 1, others 0), or with --no-ranking 3 pairs
(labelled ending first vs each other one). Split: the row's `split` field, else the file name (the derived val
file -> validation), else a hash of the row's `source_id` (tasks cut from one video or article stay together).
Skipped, counted: unlabelled rows such as the test split's ("no_label"), a labelled ending repeated as a wrong
one ("gold_duplicated"), missing or mistyped fields ("missing_field"), and bad lines.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any, Iterator

from hhh.data import load as load_lib
from hhh.data.load import Skip
from hhh.data.mine import common
from hhh.data.mine.common import MineStats, open_binary
from hhh.data.schema import Comparison

SOURCE = "hellaswag"
HUB = "Rowan/hellaswag"
SUFFIXES = (".jsonl", ".json", ".txt", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".txt.gz", ".txt.bz2", ".txt.xz")
_LINES_PER_TASK = 6
_MARKERS = (("[header]", ""), ("[step]", ""), ("[substeps]", ""), (" [title]", ". "), ("[title] ", ""),
            ("[title].", ""))


@dataclasses.dataclass(frozen=True)
class HellaswagTask:
  ctx: str  # cleaned context, without the activity label
  endings: tuple[str, ...]  # cleaned, no leading space
  label: int  # index of the human-written ending
  activity_label: str
  ind: int  # the dataset's `ind`, or the 0-based task position in the derived text file

  @property
  def context(self) -> str:
    """The evaluation prompt: "activity_label: ctx"."""
    return f"{self.activity_label}: {self.ctx}"


@dataclasses.dataclass(frozen=True)
class Options:
  limit: int = 0  # read at most this many tasks (0: all)
  ranking: bool = True  # one k=4 ranking per task; --no-ranking: 3 pairs (labelled ending vs each other)


def clean(text: str) -> str:
  """HellaSwag's WikiHow markup removed, as in the derived text file.

  Example: "[header] How to x [title] Buy y. [step] Go." -> "How to x. Buy y. Go."
  """
  for old, new in _MARKERS:
    text = text.replace(old, new)
  text = text.replace("  ", " ")
  if text.startswith(" "):
    text = text[1:]
  if text.endswith(" "):
    text = text[:-1]
  return text


def task_from_row(row: dict[str, Any]) -> tuple[HellaswagTask, str | None, str]:
  """(task, the row's split or None, group key) for one original/hub row; raises Skip(reason)."""
  ctx = row.get("ctx")
  if not isinstance(ctx, str):
    if not (isinstance(row.get("ctx_a"), str) and isinstance(row.get("ctx_b"), str)):
      raise Skip("missing_field")
    ctx = (row["ctx_a"] + " " + row["ctx_b"]).strip()
  endings = row.get("endings")
  activity_label, ind = row.get("activity_label"), _as_int(row.get("ind"))
  if (not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings)
      or not isinstance(activity_label, str) or ind is None):
    raise Skip("missing_field")
  label = row.get("label")
  if label is None or label == "":
    raise Skip("no_label")
  label = _as_int(label)
  if label is None or not 0 <= label < len(endings):
    raise Skip("bad_label")
  task = HellaswagTask(ctx=load_lib.check_text(clean(ctx)),
                       endings=tuple(load_lib.check_text(clean(e)) for e in endings), label=label,
                       activity_label=load_lib.check_text(clean(activity_label)), ind=ind)
  source_id = row.get("source_id")
  key = source_id if isinstance(source_id, str) and source_id else f"{SOURCE}/{ind}"
  return task, load_lib.split_word(row.get("split")), key


def read_tasks(path) -> Iterator[HellaswagTask]:
  """The tasks of a HellaSwag file (or folder) in either format; ValueError names the file and line of a bad one."""
  for file in load_lib.data_files(path, SUFFIXES, "hellaswag"):
    for task, _, _, _ in _read(file, None):
      yield task


def _read(file: pathlib.Path, stats: MineStats | None,
          limit: int = 0) -> Iterator[tuple[HellaswagTask, str, str | None, str]]:
  """(task, where, split or None, group key) per task; with stats, bad JSON rows are counted skips."""
  if _is_jsonl(file):
    for row, where, _ in load_lib.json_lines(file, stats, limit):
      try:
        task, split, key = task_from_row(row)
      except Skip as e:
        if stats is None:
          raise ValueError(f"{where}: {str(e).replace('_', ' ')}") from None
        stats.skip(str(e), where)
        continue
      yield task, where, split, key
  else:
    yield from _read_text(file, stats)


def _read_text(file: pathlib.Path, stats: MineStats | None) -> Iterator[tuple[HellaswagTask, str, None, str]]:
  # A malformed task shifts every later one, so the text format raises rather than skips.
  def decoded(f):
    for n, raw in enumerate(common.lines(f), 1):
      if raw is None:
        raise ValueError(f"{file}:{n}: line longer than {common.MAX_LINE_BYTES} bytes")
      try:
        yield raw.decode("utf-8").rstrip("\r")
      except UnicodeDecodeError:
        raise ValueError(f"{file}:{n}: not UTF-8 text") from None

  with open_binary(file) as f:
    lines = decoded(f)
    for ind in itertools.count():
      chunk = list(itertools.islice(lines, _LINES_PER_TASK))
      first = ind * _LINES_PER_TASK + 1
      where = f"{file}:{first}"
      if not chunk or chunk == [""]:
        return
      if len(chunk) < _LINES_PER_TASK:
        raise ValueError(f"{where}: task {ind} has {len(chunk)} of {_LINES_PER_TASK} lines (truncated file?)")
      head, label, endings = chunk[0], chunk[1], tuple(chunk[2:])
      activity_label, sep, ctx = head.partition(": ")
      if not sep:
        raise ValueError(f"{where}: expected 'activity_label: context', got {head[:80]!r}")
      if label not in ("0", "1", "2", "3"):
        raise ValueError(f"{file}:{first + 1}: label {label[:20]!r} is not 0-3 (lines out of step?)")
      if stats is not None:
        stats.records_read += 1
      yield (HellaswagTask(ctx=ctx, endings=endings, label=int(label), activity_label=activity_label, ind=ind),
             where, None, f"{SOURCE}/{ind}")


def _is_jsonl(file: pathlib.Path) -> bool:
  with open_binary(file) as f:
    for raw in common.lines(f):
      if raw is None or raw.strip():
        return raw is not None and raw.lstrip().startswith(b"{")
  return False


def _as_int(value) -> int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  return None


def comparisons(task: HellaswagTask, split_name: str, ranking: bool) -> list[Comparison]:
  """The ranking (or the pairs) of one task; ids "hellaswag/<split>/<ind>[/<other ending>]"."""
  base = f"{SOURCE}/{split_name}/{task.ind}"
  responses = tuple(" " + e for e in task.endings)
  meta = {"ind": task.ind, "label": task.label, "activity_label": task.activity_label}
  if ranking:
    scores = tuple(1.0 if i == task.label else 0.0 for i in range(len(responses)))
    return [Comparison(task.context, responses, scores, SOURCE, base, meta)]
  gold = responses[task.label]
  return [Comparison(task.context, (gold, r), (1.0, 0.0), SOURCE, f"{base}/{j}", {**meta, "other": j})
          for j, r in enumerate(responses) if j != task.label]


def load(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  """Yields (group key, comparison, split); the path is checked (or the hub read) before this returns."""
  stats.source = SOURCE
  hf = load_lib.hf_spec(path, HUB)
  if hf is not None:
    ds = load_lib.hf_dataset(*hf)
    sources = [(load_lib.split_word(split), _hf_tasks(ds[split], f"{hf[0]}/{split}", stats, options.limit))
               for split in ds]
  else:
    sources = [(load_lib.split_from_name(file), _read(file, stats, options.limit))
               for file in load_lib.data_files(path, SUFFIXES, "hellaswag")]
  return _load(sources, options, stats)


def _hf_tasks(rows, label: str, stats: MineStats,
              limit: int) -> Iterator[tuple[HellaswagTask, str, str | None, str]]:
  for row, where, _ in load_lib.hf_rows(rows, label, stats, limit):
    try:
      task, split, key = task_from_row(row)
    except Skip as e:
      stats.skip(str(e), where)
      continue
    yield task, where, split, key


def _load(sources, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  for file_split, tasks in sources:
    for task, where, row_split, key in tasks:
      gold = task.endings[task.label]
      if any(e == gold for j, e in enumerate(task.endings) if j != task.label):
        stats.skip("gold_duplicated", where)
      else:
        split = row_split or file_split
        for c in comparisons(task, split or "unsplit", options.ranking):
          stats.comparisons += 1
          yield key, c, split
      if options.limit and stats.records_read >= options.limit:
        return
