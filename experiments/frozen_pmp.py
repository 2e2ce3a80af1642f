"""PMP sample efficiency on a frozen SmolLM2-135M-Instruct trunk: no PMP, ranked, binarized and label-shuffled PMP
on the mined Stack Exchange + Reddit + Wikipedia mixture, then fine-tuning on N = 16..1024 HH-RLHF comparisons.

    python experiments/frozen_pmp.py                       # every stage -> results/frozen_pmp/report.md
    python experiments/frozen_pmp.py --stage cache         # only mine, split and cache through the trunk
    python experiments/frozen_pmp.py --stage lora-ceiling  # LoRA on the last 2 blocks, whole pool (~1 h, 2 cores)
    python experiments/frozen_pmp.py --set seeds=0,1 --set ns=16,64,256

Every stage resumes from what is on disk. `--set` takes any `hhh.studies.frozen_pmp.PMPStudyConfig` field; the logic is
in hhh/studies/frozen_pmp.py.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  from hhh.config import add_set_argument, overrides_or_exit
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_set_argument(p, "PMPStudyConfig")
  p.add_argument("--stage", choices=("all", "cache", "lora-ceiling"), default="all")
  args = p.parse_args(argv)
  from hhh.studies import frozen_pmp as pmp
  cfg = overrides_or_exit(pmp.PMPStudyConfig(), args.set)
  pmp.main(cfg, stage=args.stage)
  if args.stage != "cache":
    print(f"report: {cfg.path('out') / 'report.md'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
