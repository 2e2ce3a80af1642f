"""`hhh quickstart`: the offline one-command tour of hhh on a generated world (see `pipeline`)."""

from __future__ import annotations


def add_cli(sub) -> None:
  from hhh import config as config_lib
  p = sub.add_parser(
      "quickstart", help="offline tour: generate dumps, mine, pretrain, PMP, fine-tune, evaluate, report",
      description="Runs the whole hhh pipeline on data it generates itself (no downloads) and writes "
                  "DIR/report.md with the objective-scaling and PMP sample-efficiency plots. Re-running the "
                  "same command resumes; finished runs are kept.")
  p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
  p.add_argument("--fast", action="store_true", help="reduced mode: one size, one target set, fewer steps")
  p.add_argument("--seed", type=int, default=0, help="seed of the generated world and of every run")
  p.add_argument("--workers", type=int, default=0,
                 help="trainings run in parallel processes (default 0: one per CPU core up to 4 on a CPU-only "
                      "machine, else 1); the results do not depend on it")
  config_lib.add_set_argument(p, "QuickstartConfig", "sizes=20k,100k or finetune_ns=8,64")
  p.set_defaults(func=_cli)


def _cli(args) -> None:
  import dataclasses
  from hhh import config as config_lib
  from hhh.studies.quickstart import pipeline
  pipeline.fast_compile_env()
  base = (pipeline.fast_config(args.out, args.seed) if args.fast
          else dataclasses.replace(pipeline.QuickstartConfig(), out=args.out, seed=args.seed))
  workers = args.workers if args.workers > 0 else pipeline.auto_workers()
  pipeline.run(config_lib.apply_overrides(base, args.set), workers=workers)
