"""LM pretraining of the 100k model on the toy world's dialogue corpus: the base LM for `tiny_pm_from_lm`."""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family


def config() -> TrainConfig:
  return TrainConfig(
      objective="lm",
      model=family.get("100k", max_len=160),
      data=DataConfig(train="toy", validation="toy", toy_train=4000, toy_validation=400, max_len=160, buckets=(160,)),
      optim=OptimConfig(lr=3e-3, warmup_steps=20),
      batch_size=16, steps=300, log_every=10, eval_every=100, checkpoint_every=100)
