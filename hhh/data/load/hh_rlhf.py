"""Anthropic HH-RLHF helpful/harmless pairs: each row's chosen and rejected dialogues -> shared context + 2 replies.

Input: `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}` JSON lines (.jsonl or .jsonl.gz), one
file or a folder of them (e.g. helpful-base/test.jsonl.gz, harmless-base/train.jsonl.gz), or `hf:` for the hub copy
(`hf:Anthropic/hh-rlhf:helpful-base` reads one subset; the CONFIG is the hub folder).

Rules:
- Context: the longest text both dialogues share, cut just after the last "\\n\\nAssistant:" marker inside it.
  Responses: what follows the marker in each dialogue, verbatim (with its leading space), so context + response
  is the original dialogue. Chosen comes first, scored 1; rejected scored 0.
- Skipped, counted by reason: chosen == rejected ("identical"); dialogues that differ before their final Assistant
  turn, i.e. a response still holds a Human/Assistant marker ("diverged_early"); no shared Assistant marker
  ("no_assistant_turn"); a blank final turn ("empty_response"); non-string fields ("missing_field"); bad lines
  ("invalid_json", "not_object", "bad_encoding").
- Split: the file name (test.jsonl.gz -> test, train -> train; one naming no split -> hash of the first Human turn)
  or the hub split. meta["subset"] is the folder the file sits in (helpful-base, harmless-base, ...), or the hub
  CONFIG ("all" without one). Ids: "hh_rlhf/<subset>/<file or hub split>/<line or row number, from 1>".
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterator

from hhh.data import load as load_lib
from hhh.data.load import Skip
from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison

SOURCE = "hh_rlhf"
HUB = "Anthropic/hh-rlhf"
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz")


@dataclasses.dataclass(frozen=True)
class Options:
  limit: int = 0  # read at most this many rows (0: all)


def split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
  """(context, chosen reply, rejected reply); raises Skip(reason) for a pair that is not one final-turn choice.

  Example: "\\n\\nHuman: hi\\n\\nAssistant: Hello!" vs "\\n\\nHuman: hi\\n\\nAssistant: Go away." ->
  ("\\n\\nHuman: hi\\n\\nAssistant:", " Hello!", " Go away.").
  """
  if chosen == rejected:
    raise Skip("identical")
  shared = os.path.commonprefix([chosen, rejected])
  cut = shared.rfind(ASSISTANT)
  if cut < 0:
    raise Skip("no_assistant_turn")
  context = chosen[:cut + len(ASSISTANT)]
  a, b = chosen[len(context):], rejected[len(context):]
  if any(marker in reply for marker in (HUMAN, ASSISTANT) for reply in (a, b)):
    raise Skip("diverged_early")
  if not a.strip() or not b.strip():
    raise Skip("empty_response")
  return context, a, b


def row_to_comparison(row: dict, *, subset: str, part: str, number: int) -> tuple[str, Comparison]:
  """(group key, comparison) for one row; `part` names the file or hub split, `number` the row (from 1)."""
  context, a, b = split_dialogues(load_lib.text_field(row, "chosen"), load_lib.text_field(row, "rejected"))
  # The opening Human turn groups rows that start the same conversation (red-team prompts recur).
  first = context.find(ASSISTANT)
  return context[:first], Comparison(context=context, responses=(a, b), scores=(1.0, 0.0), source=SOURCE,
                                     id=f"{SOURCE}/{subset}/{part}/{number}", meta={"subset": subset})


def load(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  """Yields (group key, comparison, split); the path is checked (or the hub read) before this returns."""
  stats.source = SOURCE
  hf = load_lib.hf_spec(path, HUB)
  if hf is not None:
    name, config = hf
    ds = load_lib.hf_dataset(name, data_dir=config)
    subset = config or "all"
    parts = [(subset, split, load_lib.split_word(split),
              load_lib.hf_rows(ds[split], f"{name}/{subset}/{split}", stats, options.limit)) for split in ds]
  else:
    parts = [(file.parent.name, _stem(file), load_lib.split_from_name(file),
              load_lib.json_lines(file, stats, options.limit))
             for file in load_lib.data_files(path, SUFFIXES, "hh-rlhf jsonl")]
  return _load(parts, options, stats)


def _load(parts, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  for subset, part, split, rows in parts:
    for row, where, number in rows:
      try:
        key, c = row_to_comparison(row, subset=subset, part=part, number=number)
      except Skip as e:
        stats.skip(str(e), where)
      else:
        stats.comparisons += 1
        yield key, c, split
      if options.limit and stats.records_read >= options.limit:
        return


def _stem(file: pathlib.Path) -> str:
  """"test.jsonl.gz" -> "test"."""
  return file.name.split(".", 1)[0]
