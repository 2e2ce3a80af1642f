"""The `hhh` command: a thin dispatcher; the work lives in the library modules."""

from __future__ import annotations

import argparse
import sys


def _train(args):
  from hhh import config as config_lib
  from hhh.train import loop
  cfg = config_lib.apply_overrides(config_lib.load_experiment(args.config), args.set)
  loop.train(cfg, args.workdir)


def _model_list(args):
  from hhh.model import family
  print(family.format_table(family.table(vocab_size=args.vocab_size)))


def _export(args):
  from hhh.reward import export as export_lib
  if args.format == "hf":
    from hhh.reward import hf_export
    meta = hf_export.export_run(args.ckpt, args.out, reference=args.reference, max_reference=args.max_reference,
                                force=args.force)
    print(f"hhh: wrote HF sequence-classification directory {args.out} (reward read at "
          f"{meta['end_of_context']['token']!r}, appended; transformers logits = raw reward - "
          f"{meta['reward_bias']:.6g}, the head's bias; see {args.out}/README.md)")
    return
  info = export_lib.export(args.ckpt, args.out, reference=args.reference, max_reference=args.max_reference,
                       force=args.force)
  norm = info["normalization"]
  print(f"hhh: wrote reward bundle {args.out} ({info['objective']} PM; normalization over {norm['n']} responses "
        f"of {norm['reference']}: mean {norm['mean']:.4f}, std {norm['std']:.4f})")


def main(argv=None) -> int:
  if argv is None:  # the console command, not a caller's own process: choose the allocator first (cpu_malloc)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc()
  parser = argparse.ArgumentParser(prog="hhh", description="Preference modeling and HHH alignment baselines.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train an LM or a preference model from an experiment config")
  p.add_argument("config", help="experiment file (e.g. experiments/tiny_pm.py) or module name")
  p.add_argument("--workdir", required=True, help="run directory: metrics.jsonl, checkpoints; reused to resume")
  from hhh import config as config_lib
  config_lib.add_set_argument(p)
  p.set_defaults(func=_train)
  m = sub.add_parser("model", help="model family")
  msub = m.add_subparsers(dest="model_command", required=True)
  ml = msub.add_parser("list", help="print the size family: shapes, parameters, training FLOPs per token")
  ml.add_argument("--vocab-size", type=int, default=259)
  ml.set_defaults(func=_model_list)
  e = sub.add_parser("export", help="write a self-contained reward-model bundle from a PM checkpoint")
  e.add_argument("ckpt", help="a training workdir (its latest checkpoint) or a checkpoint step dir "
                 "(with --format hf also a bundle)")
  e.add_argument("--out", required=True, help="bundle directory: new, empty, or (with --force) an earlier export")
  e.add_argument("--force", action="store_true", help="replace --out if it holds an earlier output of this export")
  e.add_argument("--format", choices=("bundle", "hf"), default="bundle",
                 help="bundle: hhh's own; hf: a transformers AutoModelForSequenceClassification directory")
  e.add_argument("--reference", default=None,
                 help="data for the normalization statistics (default: the run's validation data)")
  e.add_argument("--max-reference", type=int, default=2000, help="at most this many reference comparisons")
  e.set_defaults(func=_export)
  from hhh import generate
  from hhh.reward import bestofn, server as reward_server
  reward_server.add_cli(sub)
  generate.add_cli(sub)
  bestofn.add_cli(sub)
  from hhh.data import commands as data_commands
  data_commands.add_parsers(sub)
  from hhh.studies import distill
  from hhh.evals import commands as eval_commands
  from hhh.pretrained import convert
  distill.add_cli(sub)
  from hhh.reward import hf_export
  convert.add_cli(sub, bundle_command=hf_export.convert_command)
  eval_commands.add_cli(sub)
  from hhh.studies import quickstart
  quickstart.add_cli(sub)
  from hhh import sweep
  sweep.add_cli(sub)
  args = parser.parse_args(argv)
  from hhh.config import ConfigError
  from hhh.data.store import NothingMined
  from hhh.train.loop import NonFiniteLoss
  try:
    args.func(args)
  except (ConfigError, FileNotFoundError, NonFiniteLoss, NothingMined, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2 if isinstance(e, ConfigError) else 1
  except BrokenPipeError:
    # `hhh data dump ... | head`: the reader left; that is not an error.
    sys.stderr.close()
    return 0
  except KeyboardInterrupt:
    print("hhh: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
