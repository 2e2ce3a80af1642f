"""The objective comparison sweep: imitation vs binary vs ranked preference, per dataset, across model sizes.

  python sweeps/objectives.py                         # the CPU-scale defaults (see SweepConfig)
  python sweeps/objectives.py --set sizes=100k,1.6m --set seeds=0,1,2 --set devices=0,1,2,3

Writes runs/objectives/{results.jsonl, objectives.png, objectives.md}. Re-running resumes: finished runs are
kept, unfinished ones continue from their checkpoints.
"""

import argparse
import sys

from hhh import config as config_lib
from hhh import objective_sweep


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SweepConfig field")
  args = p.parse_args(argv)
  try:
    cfg = config_lib.apply_overrides(objective_sweep.SweepConfig(), args.set)
    report = objective_sweep.run(cfg)
  except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  print(report.get("table", ""))
  if report["failed"]:
    print(f"hhh: {len(report['failed'])} runs failed: {', '.join(report['failed'])}", file=sys.stderr)
    return 1
  print(f"hhh: figure {report['plot']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
