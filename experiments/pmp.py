"""Preference-model pre-training (PMP) on comparisons mined from Stack Exchange, Reddit and Wikipedia.

Mine the sources first (each writes a TFDS dataset with train/validation/test splits):

  hhh data mine stackexchange DUMP_DIR_OR_7Z --out runs/data/stackexchange
  hhh data mine reddit RC_YYYY-MM.zst --out runs/data/reddit
  hhh data mine wikipedia HISTORY.xml.bz2 --out runs/data/wikipedia

then `hhh train experiments/pmp.py --workdir runs/pmp`. Each source is binarized
(GOOD:/BAD:, the form the paper found to transfer best); drop ":binarize" from a
source to train on its rankings instead, and change the weights to re-mix.
"""

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model import family

MIXTURE = ",".join([
    "runs/data/stackexchange:0.5:binarize",
    "runs/data/reddit:0.3:binarize",
    "runs/data/wikipedia:0.2:binarize",
])


def config() -> TrainConfig:
  return TrainConfig(
      objective="ranked",
      lm_coef=0.1,  # a little LM loss keeps the PM's language modeling intact during PMP
      model=family.get("1.6m", max_len=256),
      data=DataConfig(train=MIXTURE, validation=MIXTURE, tokenizer="bpe:4096", max_len=256,
                      buckets=(64, 128, 256), max_k=2),
      optim=OptimConfig(lr=1e-3, warmup_steps=50),
      batch_size=16, steps=1000, log_every=10, eval_every=250, checkpoint_every=250)
