"""The prompt-based HHH baselines: hhh_alignment, TruthfulQA MC and the alignment tax (HellaSwag, LAMBADA-style
last words) for a model with no prompt, with the HHH prompt, and context-distilled without it.

  hhh distill experiments/context_distill.py --out runs/distill     # the distilled student first
  python sweeps/hhh_baselines.py [--set limits=truthfulqa_mc=0,hellaswag=0] [--set model=...]

Writes runs/baselines/CONDITION/TASK.json and runs/baselines/baselines.md; re-running skips finished results.
"""

import argparse
import pathlib
import sys

from hhh import config as config_lib
from hhh.evals import baselines


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a BaselinesConfig field")
  args = p.parse_args(argv)
  try:
    cfg = config_lib.apply_overrides(baselines.BaselinesConfig(), args.set)
    records = baselines.run(cfg)
  except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  md = baselines.table(records)
  (pathlib.Path(cfg.out) / "baselines.md").write_text(md + "\n")
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
