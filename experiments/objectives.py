"""One cell of the objective comparison: fine-tune a base LM on one target dataset with one objective.

`sweeps/objectives.py` runs the grid (datasets x sizes x {imitation, binary, ranked} x seeds), setting
`objective`, `init_from` (the size's base LM), `data.train`/`data.validation` (the prepared
runs/objectives/data/NAME/{train,heldout}.jsonl) and `seed`. Everything else is shared by all three objectives,
so a cell differs only in its loss. Held-out pairwise accuracy is computed the same way for all: PMs by reward,
imitation by the summed log-likelihood of each option.
"""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family

DATA = "runs/objectives/data/hh_rlhf"


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      init_from="runs/objectives/runs/base-1.6m",
      model=family.get("1.6m", max_len=256),   # replaced by the base LM's architecture
      # Contexts lose tokens from the left to fit 128; a response keeps its start.
      data=DataConfig(train=f"{DATA}/train.jsonl", validation=f"{DATA}/heldout.jsonl", max_len=128,
                      buckets=(64, 128), max_k=4),
      optim=OptimConfig(lr=1e-3, warmup_steps=10),
      batch_size=8, steps=100, log_every=10, eval_every=100, checkpoint_every=100)
