"""PMP sample efficiency on a frozen SmolLM2-135M-Instruct trunk: no PMP, ranked, binarized and label-shuffled PMP
on the mined Stack Exchange + Reddit + Wikipedia mixture, then fine-tuning on N = 16..1024 HH-RLHF comparisons.

    python experiments/frozen_pmp.py                       # every stage -> results/frozen_pmp/report.md
    python experiments/frozen_pmp.py --stage cache         # only mine, split and cache through the trunk
    python experiments/frozen_pmp.py --stage lora-ceiling  # LoRA on the last 2 blocks, whole pool (~1 h, 2 cores)
    python experiments/frozen_pmp.py --set seeds=0,1 --set ns=16,64,256

Every stage resumes from what is on disk. `--set` takes any `hhh.frozen.pmp.PMPStudyConfig` field; the logic is
in hhh/frozen/pmp.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a PMPStudyConfig field")
  p.add_argument("--stage", choices=("all", "cache", "lora-ceiling"), default="all")
  args = p.parse_args(argv)
  from hhh.config import ConfigError, apply_overrides
  from hhh.frozen import pmp
  try:
    cfg = apply_overrides(pmp.PMPStudyConfig(), args.set)
  except (ConfigError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  pmp.main(cfg, stage=args.stage)
  if args.stage != "cache":
    print(f"report: {cfg.path('out') / 'report.md'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
