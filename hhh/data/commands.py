"""`hhh data mine|info|dump`: miners -> stored datasets, and looking inside them."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import sys
import typing

from tqdm import tqdm

from hhh.data import binarize as binarize_lib
from hhh.data import store
from hhh.data.mine.common import SPLITS, MineStats

MINERS = ("stackexchange", "reddit", "wikipedia")


def miner(name: str):
  return importlib.import_module(f"hhh.data.mine.{name}")


def add_option_flags(parser: argparse.ArgumentParser, options_cls) -> None:
  """One --flag per field of a miner's Options dataclass (--max-answers 8, --comment-signal/--no-...)."""
  hints = typing.get_type_hints(options_cls)
  for f in dataclasses.fields(options_cls):
    flag, tp = "--" + f.name.replace("_", "-"), hints[f.name]
    if tp is bool:
      parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
    elif typing.get_origin(tp) is tuple:
      elem = typing.get_args(tp)[0]
      parser.add_argument(flag, dest=f.name, default=f.default, metavar="A,B",
                          type=lambda s, e=elem: tuple(e(x) for x in s.split(",") if x.strip()))
    else:
      parser.add_argument(flag, dest=f.name, type=tp, default=f.default)


def add_parsers(sub) -> None:
  data = sub.add_parser("data", help="mine, inspect and dump comparison datasets")
  dsub = data.add_subparsers(dest="data_command", required=True)
  mine = dsub.add_parser("mine", help="mine comparisons from a raw public dump into a TFDS dataset")
  msub = mine.add_subparsers(dest="miner", required=True)
  for name in MINERS:
    p = msub.add_parser(name, help=(miner(name).__doc__ or "").strip().splitlines()[0])
    p.add_argument("path", help="the dump: file, folder or archive")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--binarize", action="store_true", help="store GOOD:/BAD: binary comparisons instead of rankings")
    add_option_flags(p, miner(name).Options)
    p.set_defaults(func=mine_command)
  info = dsub.add_parser("info", help="counts, score histograms and a few examples of a dataset")
  info.add_argument("dir")
  info.add_argument("--examples", type=int, default=2)
  info.set_defaults(func=info_command)
  dump = dsub.add_parser("dump", help="print comparisons as JSON lines")
  dump.add_argument("dir", help="a dataset directory, .jsonl or .parquet")
  dump.add_argument("--split", default="train", choices=SPLITS)
  dump.add_argument("--limit", type=int, default=None)
  dump.set_defaults(func=dump_command)


def mine_command(args) -> None:
  mod = miner(args.miner)
  fields = {f.name for f in dataclasses.fields(mod.Options)}
  options = mod.Options(**{k: v for k, v in vars(args).items() if k in fields})
  stats = MineStats(source=args.miner)
  keyed = mod.mine(args.path, options, stats)
  if args.binarize:
    keyed = ((key, b) for key, c in keyed for b in binarize_lib.binarize(c))
  bar = tqdm(desc=f"mine {args.miner}", unit=" records", dynamic_ncols=True, mininterval=0.5)

  def counted():
    for item in keyed:
      bar.n = stats.records_read
      bar.set_postfix(comparisons=stats.comparisons, refresh=False)
      bar.update(0)
      yield item
    bar.n = stats.records_read
    bar.close()

  summary = store.write_dataset(
      args.out, counted(), stats, description=f"hhh comparisons mined from {args.miner}: {args.path}",
      extra_summary={"input": str(args.path), "options": dataclasses.asdict(options), "binarized": args.binarize})
  print_summary(summary)


def print_summary(summary: dict) -> None:
  kept = ", ".join(f"{s} {summary['kept'][s]}" for s in SPLITS)
  print(f"{summary['source']}: {summary['records_read']} records read, {summary['total_kept']} comparisons kept "
        f"({kept})")
  if summary["skipped"]:
    print("skipped: " + ", ".join(f"{r} {n}" for r, n in summary["skipped"].items()))


def info_command(args) -> None:
  summary = store.read_summary(args.dir)
  print_summary(summary)
  print("responses per comparison: " + ", ".join(f"K={k}: {n}" for k, n in summary["responses_per_comparison"].items()))
  for split in SPLITS:
    hist = summary["score_histogram"].get(split) or {}
    if hist:
      print(f"score histogram ({split}):\n{store.score_histogram_text(hist)}")
  if summary.get("first_skipped_at"):
    print("first skipped at: " + json.dumps(summary["first_skipped_at"]))
  split = next((s for s in SPLITS if summary["kept"][s]), None)
  for c in itertools.islice(store.DataSource(args.dir, split), args.examples):
    print(f"\n--- {c.id} ({split}) ---\ncontext: {_short(c.context)}")
    for r, s in zip(c.responses, c.scores):
      print(f"  [{s:g}] {_short(r)}")


def dump_command(args) -> None:
  source = (store.DataSource(args.dir, args.split) if store.is_dataset_dir(args.dir)
            else store.load(args.dir, args.split))
  for c in itertools.islice(source, args.limit):
    sys.stdout.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")


def _short(text: str, n: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[: n - 1] + "…"
