"""Base LM pretraining for the objective comparison: one family size on the offline corpus.

`sweeps/objectives.py` builds the corpus (runs/objectives/corpus, see `hhh.studies.objective_sweep.corpus_texts`) and
runs this once per size, setting the shape with `--set model.d_model=... model.n_layers=... model.n_heads=...`.
By hand: `hhh train experiments/base_lm.py --workdir runs/objectives/runs/base-1.6m`.
"""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family

CORPUS = "runs/objectives/corpus"


def config() -> TrainConfig:
  return TrainConfig(
      objective="lm",
      model=family.get("1.6m", max_len=256),
      # One BPE vocabulary for every size (trained on the same corpus, so all sizes share it): ~4x shorter
      # sequences than bytes. 128-token windows keep CPU steps cheap; the fine-tunes use 128 too.
      data=DataConfig(train=f"{CORPUS}/train.jsonl", validation=f"{CORPUS}/validation.jsonl", tokenizer="bpe:4096",
                      max_len=128, buckets=(128,)),
      optim=OptimConfig(lr=2e-3, warmup_steps=40),
      batch_size=16, steps=400, log_every=25, eval_every=200, checkpoint_every=200)
