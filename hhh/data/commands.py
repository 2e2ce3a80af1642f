"""`hhh data mine|load|info|dump`: miners and dataset loaders -> stored datasets, and looking inside them."""

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
from hhh.data import load as load_lib
from hhh.data import store
from hhh.data.mine.common import SPLITS, MineStats, split_of

MINERS = ("stackexchange", "reddit", "wikipedia")
LOAD_EPILOG = ("A held-out Stack Exchange set needs no loader: `hhh data mine stackexchange DUMP --out DIR` already "
               "writes a test split (questions hashed by id), which `hhh data dump DIR --split test` prints.")


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
  data = sub.add_parser("data", help="mine or load, inspect and dump comparison datasets")
  dsub = data.add_subparsers(dest="data_command", required=True)
  mine = dsub.add_parser("mine", help="mine comparisons from a raw public dump into a TFDS dataset")
  msub = mine.add_subparsers(dest="miner", required=True)
  for name in MINERS:
    p = msub.add_parser(name, help=(miner(name).__doc__ or "").strip().splitlines()[0])
    p.add_argument("path", help="the dump (file, folder or archive), or a folder of dumps mined into one dataset")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--binarize", action="store_true", help="store GOOD:/BAD: binary comparisons instead of rankings")
    p.add_argument("--workers", type=int, default=1, help="inputs mined at once (processes, or Ray tasks)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: a process pool; ray: Ray tasks (a local instance, or --address)")
    p.add_argument("--address", default=None, help="with --backend ray: join this cluster (HOST:PORT or auto)")
    add_option_flags(p, miner(name).Options)
    p.set_defaults(func=mine_command)
  load = dsub.add_parser(
      "load", help="load a published preference or evaluation dataset into a TFDS dataset",
      description="Load a published dataset (a local file or folder in its public format, or hf:[NAME[:CONFIG]] "
                  "to read the HF hub copy) into the same store and summary.json as `hhh data mine`.",
      epilog=LOAD_EPILOG)
  lsub = load.add_subparsers(dest="loader", required=True, metavar="NAME")
  for name in load_lib.LOADERS:
    try:
      mod = load_lib.loader(name)
    except Exception as e:  # a missing or broken loader must not take `hhh` (or the other loaders) down
      p = lsub.add_parser(name, help=f"(unavailable: {type(e).__name__}: {e})", add_help=False)
      p.add_argument("rest", nargs=argparse.REMAINDER)
      p.set_defaults(func=_unavailable(name, e))
      continue
    p = lsub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0], epilog=LOAD_EPILOG)
    p.add_argument("path", help=f"the dataset: file or folder in its public format, or hf: (= {mod.HUB}), "
                                "hf:NAME or hf:NAME:CONFIG")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--binarize", action="store_true", help="store GOOD:/BAD: binary comparisons instead of rankings")
    p.add_argument("--resplit", default=None, metavar="TRAIN,VALIDATION,TEST",
                   help="ignore the source's own splits: split by a hash of each comparison's group (e.g. "
                        "HH-RLHF's first Human turn) in these fractions, e.g. 0.8,0.2,0")
    add_option_flags(p, mod.Options)
    p.set_defaults(func=load_command)
  info = dsub.add_parser("info", help="counts, score histograms and a few examples of a dataset")
  info.add_argument("dir")
  info.add_argument("--examples", type=int, default=2)
  info.set_defaults(func=info_command)
  dump = dsub.add_parser("dump", help="print comparisons as JSON lines")
  dump.add_argument("dir", help="a dataset directory, .jsonl or .parquet")
  dump.add_argument("--split", default=None, choices=SPLITS, help="one split (default: every split the dataset has)")
  dump.add_argument("--limit", type=int, default=None)
  dump.set_defaults(func=dump_command)


def mine_command(args) -> None:
  from hhh.data.mine import many
  options = _options(miner(args.miner).Options, args)
  items, stats, per_input = many.mine_many(args.miner, args.path, options, args.out, workers=args.workers,
                                           backend=args.backend, address=args.address)
  _write(args, items, stats, options, f"mine {args.miner}", f"hhh comparisons mined from {args.miner}: {args.path}",
         {"inputs": many.per_input_summary(per_input)})
  many.finish(args.out)


def _fractions(text: str) -> tuple[float, float, float]:
  try:
    parts = tuple(float(x) for x in text.split(","))
  except ValueError:
    parts = ()
  if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
    raise ValueError(f"--resplit {text!r}: expected three fractions for train,validation,test that sum to 1")
  return parts


def load_command(args) -> None:
  mod = load_lib.loader(args.loader)
  options = _options(mod.Options, args)
  stats = MineStats(source=args.loader)
  items = mod.load(args.path, options, stats)
  extra = {"loader": args.loader}
  if getattr(args, "resplit", None):
    # A group (one conversation's opening) never straddles splits: train on some conversations, test on others.
    fractions = _fractions(args.resplit)
    items = ((key, c, split_of(key, fractions)) for key, c, *_ in items)
    extra["resplit"] = dict(zip(SPLITS, fractions))
  _write(args, items, stats, options, f"load {args.loader}",
         f"hhh comparisons loaded from {args.loader}: {args.path}", extra)


def _unavailable(name: str, error: Exception):
  def fail(args) -> None:
    raise ValueError(f"loader {name!r} is unavailable: {type(error).__name__}: {error}")
  return fail


def _options(options_cls, args):
  fields = {f.name for f in dataclasses.fields(options_cls)}
  return options_cls(**{k: v for k, v in vars(args).items() if k in fields})


def _write(args, keyed, stats: MineStats, options, desc: str, description: str, extra: dict) -> None:
  """Streams (key, comparison[, split]) items, binarized on request, into the store with a progress bar."""
  if args.binarize:
    keyed = ((item[0], b, *item[2:]) for item in keyed for b in binarize_lib.binarize(item[1]))
  bar = tqdm(desc=desc, unit=" records", dynamic_ncols=True, mininterval=0.5)

  def counted():
    for item in keyed:
      bar.n = stats.records_read
      bar.set_postfix(comparisons=stats.comparisons, refresh=False)
      bar.update(0)
      yield item
    bar.n = stats.records_read
    bar.close()

  summary = store.write_dataset(
      args.out, counted(), stats, description=description,
      extra_summary={"input": str(args.path), **extra, "options": dataclasses.asdict(options),
                     "binarized": args.binarize})
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
  # Every split the dataset has: a source may ship only one (a Learn to Summarize file of valid2 rows).
  for split in [s for s in SPLITS if s in store.splits_of(args.dir)]:
    for c in itertools.islice(store.DataSource(args.dir, split), args.examples):
      print(f"\n--- {c.id} ({split}) ---\ncontext: {_short(c.context)}")
      for r, s in zip(c.responses, c.scores):
        print(f"  [{s:g}] {_short(r)}")


def dump_command(args) -> None:
  if store.is_dataset_dir(args.dir):
    splits = [args.split] if args.split else [s for s in SPLITS if s in store.splits_of(args.dir)]
    source = itertools.chain.from_iterable(store.DataSource(args.dir, s) for s in splits)
  else:
    source = store.load(args.dir, args.split or "train")
  for c in itertools.islice(source, args.limit):
    sys.stdout.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")


def _short(text: str, n: int = 160) -> str:
  text = " ".join(text.split())
  return text if len(text) <= n else text[: n - 1] + "…"
