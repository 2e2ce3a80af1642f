"""A real PM: SmolLM2-135M-Instruct fine-tuned in full on HH-RLHF comparisons, packed, split by conversation.

Data and start (README "A real PM" gives the whole command sequence):
    hhh data load hh_rlhf ../shared/data/hh_rlhf --out runs/hh_rlhf_conv --resplit 0.8,0.2,0
    hhh convert smollm2-135m-instruct --out runs/smollm2
The held-out set is the validation split: the comparisons of the conversations (first Human turn) not trained on.
"""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      # The architecture and tokenizer come from the converted checkpoint (init_from); max_len is a data cap.
      model=family.get("13m", max_len=1024),
      data=DataConfig(train="runs/hh_rlhf_conv", validation="runs/hh_rlhf_conv", tokenizer="byte",
                      max_len=1024, buckets=(128, 256, 512, 1024), max_k=2),
      optim=OptimConfig(lr=1e-5, warmup_steps=20, min_lr_ratio=0.1, weight_decay=0.0, b2=0.999),
      init_from="runs/smollm2",
      # 8 comparisons a step, as TRL's default batch; 400 steps see about half the training conversations once.
      batch_size=8, steps=400, log_every=5, eval_every=400, checkpoint_every=10, keep_checkpoints=2)
