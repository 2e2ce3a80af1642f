"""The objective comparison on a frozen SmolLM2-135M-Instruct trunk (imitation, binary, ranked; depths 8/16/30).

    python experiments/frozen_objectives.py                         # every stage -> results/frozen/report.md
    python experiments/frozen_objectives.py --stage cache           # only prepare the data and build the caches
    python experiments/frozen_objectives.py --set datasets=truthfulqa --set seeds=0,1

Every stage resumes: prepared sets, caches, readouts and finished runs are found on disk and never redone.
`--set` takes any `hhh.studies.frozen_objectives.StudyConfig` field. The logic is in hhh/studies/frozen_objectives.py.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  from hhh.config import add_set_argument, overrides_or_exit
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_set_argument(p, "StudyConfig")
  p.add_argument("--stage", choices=("all", "cache"), default="all")
  args = p.parse_args(argv)
  from hhh.studies import frozen_objectives as study
  cfg = overrides_or_exit(study.StudyConfig(), args.set)
  if args.stage == "cache":
    study.main_cache(cfg)
  else:
    study.main(cfg)
    print(f"report: {cfg.path('out') / 'report.md'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
