"""A real PM: SmolLM2-135M-Instruct fine-tuned in full on HH-RLHF comparisons, packed, split by conversation.

    python experiments/hh_rlhf_pm.py                      # data, start point, training, report (resumes)
    python experiments/hh_rlhf_pm.py --stage report --limit 400
    hhh train experiments/hh_rlhf_pm.py --workdir runs/hh_rlhf_pm     # the training stage alone

Data: the four HH-RLHF test files in ../shared/data/hh_rlhf, split by conversation (opening Human turn) into 80%
train and 20% held-out (`hhh data load hh_rlhf ... --resplit 0.8,0.2,0`); the start point is SmolLM2-135M-Instruct
converted to an hhh checkpoint (`hhh convert smollm2-135m-instruct`). The report (hhh/studies/hh_rlhf_pm.py)
goes to results/hh_rlhf_pm/.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family

DATA, INIT, RUN, OUT = "runs/hh_rlhf_conv", "runs/smollm2", "runs/hh_rlhf_pm", "results/hh_rlhf_pm"
SOURCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf"


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      # The architecture and tokenizer come from the converted checkpoint (init_from); max_len is a data cap.
      # remat: each block's activations are recomputed in the backward pass; without it the run holds about 20 GB.
      model=dataclasses.replace(family.get("13m", max_len=512), remat=True),
      # 512 tokens (contexts cut from the left): a packed step's XLA:CPU temporaries grow with row length squared,
      # and at 1024 tokens the run was killed for memory on a 24 GB host.
      # Steps of one shape, 8 rows of 512 tokens holding up to batch_size comparisons: one compiled program. In
      # the few shapes of batch_size steps, the run's host memory grew past 21 GB on a 24 GB host.
      data=DataConfig(train=DATA, validation=DATA, tokenizer="byte", max_len=512, buckets=(128, 256, 512),
                      max_k=2, batch_tokens=4096,
                      # The committed results (and a resume of their checkpoints) were trained with contexts cut per
                      # response and rows of 512, before "shared" cuts and CPU's one long row a step became defaults.
                      context_cut="each", pack_len=512),
      optim=OptimConfig(lr=2e-5, warmup_steps=20, min_lr_ratio=0.1, weight_decay=0.0, b2=0.999),
      # The converted checkpoint has no reward head: training draws a fresh one (hhh/train/loop.py).
      init_from=INIT,
      # 8 comparisons a step, as TRL's default batch; 300 steps see about a third of the training comparisons once.
      batch_size=8, steps=300, log_every=5, eval_every=300, checkpoint_every=10, keep_checkpoints=2)


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  from hhh.config import add_set_argument, overrides_or_exit
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--stage", choices=("all", "report"), default="all")
  p.add_argument("--limit", type=int, default=0, help="report on the first N held-out comparisons (0: all)")
  add_set_argument(p, "TrainConfig")
  args = p.parse_args(argv)
  from hhh import cli
  from hhh.studies import hh_rlhf_pm
  if args.stage == "all":
    if not pathlib.Path(DATA, "summary.json").exists():
      if rc := cli.main(["data", "load", "hh_rlhf", str(SOURCE), "--out", DATA, "--resplit", "0.8,0.2,0"]):
        return rc
    if not pathlib.Path(INIT, "checkpoints").exists():
      if rc := cli.main(["convert", "smollm2-135m-instruct", "--out", INIT]):
        return rc
    from hhh.train import loop
    loop.train(overrides_or_exit(config(), args.set), RUN)
  s = hh_rlhf_pm.report(RUN, DATA, OUT, limit=args.limit)
  print(f"hh_rlhf_pm: held-out accuracy {s['accuracy']['mean']:.3f}; report: {OUT}/report.md")
  return 0


if __name__ == "__main__":
  sys.exit(main())
