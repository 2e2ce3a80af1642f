"""The objective comparison on a frozen SmolLM2-135M-Instruct trunk (imitation, binary, ranked; depths 8/16/30).

    python experiments/frozen_objectives.py                         # every stage -> results/frozen/report.md
    python experiments/frozen_objectives.py --stage cache           # only prepare the data and build the caches
    python experiments/frozen_objectives.py --set datasets=truthfulqa --set seeds=0,1

Every stage resumes: prepared sets, caches, readouts and finished runs are found on disk and never redone.
`--set` takes any `hhh.frozen.study.StudyConfig` field. The logic is in hhh/frozen/study.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a StudyConfig field")
  p.add_argument("--stage", choices=("all", "cache"), default="all")
  args = p.parse_args(argv)
  from hhh.config import ConfigError, apply_overrides
  from hhh.frozen import study
  try:
    cfg = apply_overrides(study.StudyConfig(), args.set)
  except ConfigError as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  if args.stage == "cache":
    study.main_cache(cfg)
  else:
    study.main(cfg)
    print(f"report: {cfg.path('out') / 'report.md'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
