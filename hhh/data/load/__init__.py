"""Loaders for published preference and evaluation datasets: a public file, folder or `hf:` name -> comparisons.

Every loader module has the same interface, which `hhh data load NAME PATH --out DIR` drives:

    __doc__    first line = the CLI help
    HUB        the HF hub dataset read when PATH is `hf:` without a name
    Options    a frozen dataclass; its fields become --flags (`limit` = at most this many source records, 0 = all)
    load(path, options, stats) -> Iterator[(group_key, Comparison, split or None)]

PATH is a local file or folder in the dataset's public format, or `hf:` / `hf:NAME` / `hf:NAME:CONFIG` to read
through HF `datasets` (online). A split of None means "hash the group key" (`split_of`), so related comparisons
(the same post, question or problem) never straddle splits. `load` checks the path before it returns: a missing
one raises FileNotFoundError at once, not at the first item.

Modules are imported lazily by name, so one that is missing or broken does not take the others down.
"""

from __future__ import annotations

import importlib
import pathlib
import re
from types import ModuleType
from typing import Any, Iterator

from hhh.data.mine import common
from hhh.data.mine.common import MineStats

LOADERS = ("hh_rlhf", "summarize", "hellaswag", "truthfulqa", "code")

# File-name words that name a split; the first such word in a name wins (e.g. "hellaswag_val_full.txt.bz2").
_SPLIT_WORDS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                "valid1": "validation", "valid2": "validation", "validation": "validation", "dev": "validation",
                "test": "test"}


def loader(name: str) -> ModuleType:
  """The loader module `name`; ValueError for a name that is not one of LOADERS."""
  if name not in LOADERS:
    raise ValueError(f"unknown loader {name!r} (known: {', '.join(LOADERS)})")
  return importlib.import_module(f"{__name__}.{name}")


def split_word(text: str | None) -> str | None:
  """"valid2" -> "validation", "test" -> "test"; None for anything that names no split."""
  if not isinstance(text, str):
    return None
  return _SPLIT_WORDS.get(text.strip().lower())


def split_from_name(path) -> str | None:
  """The split a file name names ("test.jsonl.gz" -> "test", "hellaswag_val_full.txt.bz2" -> "validation")."""
  for word in re.split(r"[^a-z0-9]+", pathlib.Path(path).name.lower()):
    if word in _SPLIT_WORDS:
      return _SPLIT_WORDS[word]
  return None


def hf_spec(path, default_name: str, default_config: str | None = None) -> tuple[str, str | None] | None:
  """`hf:` -> (default_name, default_config); `hf:NAME[:CONFIG]` -> (NAME, CONFIG or default_config); None if local."""
  text = str(path)
  if not text.startswith("hf:"):
    return None
  name, _, config = text[3:].partition(":")
  return name or default_name, config or default_config


def hf_dataset(name: str, config: str | None = None, **kwargs):
  """All splits of a hub dataset as a DatasetDict (downloads: online only, or from the local HF cache)."""
  import datasets
  try:
    try:
      return datasets.load_dataset(name, config, **kwargs)
    except RuntimeError as e:
      if "scripts are no longer supported" not in str(e):
        raise
      # A hub dataset still defined by a loading script (openai/summarize_from_feedback) is read from the
      # hub's own parquet export of it, which keeps the config and split names.
      return datasets.load_dataset(name, config, revision="refs/convert/parquet", **kwargs)
  except ConnectionError as e:
    raise ValueError(f"hf:{name}: cannot reach the HF hub ({e})") from None


def data_files(path, suffixes: tuple[str, ...], what: str) -> list[pathlib.Path]:
  """The file itself, or a folder's files (recursively) whose names end in one of `suffixes`, in sorted path order."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{what} not found: {path}")
  if path.is_file():
    return [path]
  if not path.is_dir():
    from hhh.safeio import kind
    raise ValueError(f"{path}: is {kind(path.stat().st_mode)}, not a {what} file or folder")
  files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                 and p.name.lower().endswith(suffixes))
  if not files:
    raise ValueError(f"{path}: folder holds no {what} files (names ending in {', '.join(suffixes)})")
  return files


class Skip(Exception):
  """A record-level skip in a loader: the reason travels as the message."""


def json_lines(file: pathlib.Path, stats: MineStats | None,
               limit: int = 0) -> Iterator[tuple[dict[str, Any], str, int]]:
  """(object, "file:line", line) for each JSON-object line: `hhh.data.mine.common.json_lines`, the one reader of
  JSON lines (lines over MAX_LINE_BYTES are skipped as "oversize_line" without being held)."""
  return common.json_lines(file, stats, limit=limit)


def hf_rows(rows, label: str, stats: MineStats, limit: int = 0) -> Iterator[tuple[dict[str, Any], str, int]]:
  """(row, "label:number", number) for the rows of one hub split, numbered from 1, each counted as a record read
  (up to `limit` records in all, when given)."""
  for number, row in enumerate(rows, 1):
    if limit and stats.records_read >= limit:
      return
    stats.records_read += 1
    yield row, f"{label}:{number}", number


def text_field(obj: dict[str, Any], name: str) -> str:
  """A required string field; Skip("missing_field") when absent or not a string, Skip("bad_encoding") for one
  holding lone surrogates (JSON "\\ud800" escapes), which could not be written out as UTF-8 later."""
  value = obj.get(name)
  if not isinstance(value, str):
    raise Skip("missing_field")
  return check_text(value)


def check_text(text: str) -> str:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise Skip("bad_encoding") from None
  return text
