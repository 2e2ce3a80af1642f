"""The PMP sample-efficiency experiment (the paper's transfer figure), sized for accelerators.

For each model size, fine-tune a ranked PM from {no PMP, ranked PMP, binarized PMP} on the first 2^k target
comparisons and plot held-out accuracy against 2^k, one panel per target dataset. It is the quickstart's
pipeline (`hhh.studies.quickstart.pipeline`) with family sizes, more data and more steps:

  python experiments/sample_efficiency.py --out runs/sample_efficiency          # the generated world
  python experiments/sample_efficiency.py --set sizes=1.6m,5m --set finetune_ns=16,64,256

On real data: point the targets at prepared sets (DIR/train.jsonl + DIR/heldout.jsonl, e.g. what
`sweeps/objectives.py` writes to runs/objectives/data/NAME) and the PMP mixture at mined datasets:

  python experiments/sample_efficiency.py --set targets=hh_rlhf,truthfulqa \\
      --set target_dirs=hh_rlhf=runs/objectives/data/hh_rlhf,truthfulqa=runs/objectives/data/truthfulqa \\
      --set mined_dirs=se=runs/data/stackexchange,reddit=runs/data/reddit,wiki=runs/data/wikipedia \\
      --set corpus=runs/objectives/corpus

Writes OUT/report.md, OUT/sample_efficiency.png, OUT/objectives.png and OUT/results.jsonl; re-running resumes.
All runs share one process and its devices (the default mesh over every visible device).
"""

import argparse
import dataclasses
import sys

from hhh import config as config_lib
from hhh.studies.quickstart import pipeline, synth


def config() -> pipeline.QuickstartConfig:
  return pipeline.QuickstartConfig(
      out="runs/sample_efficiency", sizes=("1.6m", "5m", "13m"), finetune_ns=(16, 64, 256, 1024, 4096),
      world=synth.WorldSize(se_questions=20000, reddit_threads=20000, wiki_revisions=200, target_train=4096,
                            target_heldout=1000, eval_per_category=100, corpus_docs=100000),
      vocab=4096, max_len=128, lm_steps=2000, pmp_steps=2000, finetune_steps=400, batch_size=64,
      finetune_batch=32)


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="output directory (default: runs/sample_efficiency)")
  config_lib.add_set_argument(p, "QuickstartConfig")
  args = p.parse_args(argv)
  cfg = config_lib.overrides_or_exit(config(), args.set)
  if args.out:
    cfg = dataclasses.replace(cfg, out=args.out)
  try:
    pipeline.run(cfg)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
