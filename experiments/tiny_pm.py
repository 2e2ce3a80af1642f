"""A tiny ranked preference model on 4-way rankings from the generated toy assistant world: the smoke run."""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      model=family.get("100k", max_len=160),
      data=DataConfig(train="toy", validation="toy", toy_train=4000, toy_validation=500, toy_k=4,
                      max_len=160, buckets=(64, 96, 160), max_k=4),
      optim=OptimConfig(lr=3e-3, warmup_steps=20),
      batch_size=16, steps=300, log_every=10, eval_every=100, checkpoint_every=100)
