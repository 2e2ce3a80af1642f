"""Fine-tuning a PM on preference data, starting from the PMP run (runs/pmp, see experiments/pmp.py).

The paper's PMP -> fine-tune. The default fine-tuning data is the generated toy assistant world; point
`data.train`/`data.validation` at a human-preference dataset directory or .jsonl instead. Compare against
the same run with `--set init_from=` (no PMP) for the sample-efficiency gap.
"""

import dataclasses

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      init_from="runs/pmp",
      model=family.get("1.6m", max_len=256),
      data=DataConfig(train="toy", validation="toy", toy_train=2000, toy_validation=500, toy_k=2,
                      tokenizer="bpe:4096", max_len=256, buckets=(64, 128, 256), max_k=2),
      optim=OptimConfig(lr=3e-4, warmup_steps=20),
      batch_size=16, steps=300, log_every=10, eval_every=100, checkpoint_every=100)
