"""The real-PM study (hhh/studies/hh_rlhf_pm.py) end to end on a tiny model: HH-RLHF split by conversation,
3 training steps, then the report: export, packed scoring of the held-out pairs, the HF directory read back by
transformers, length rules and the training clock."""

from __future__ import annotations

import json

import pytest

from hhh.studies import hh_rlhf_pm
from tests.conftest import SHARED_DATA, run_hhh

HH = SHARED_DATA / "hh_rlhf" / "helpful-base"

EXPERIMENT = '''
from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model.config import ModelConfig

def config():
  return TrainConfig(
      objective="ranked", model=ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=512),
      data=DataConfig(train="{data}", validation="{data}", max_len=512, buckets=(256, 512)),
      optim=OptimConfig(lr=3e-3, warmup_steps=1), batch_size=4, steps=3, log_every=1, eval_every=100,
      checkpoint_every=3, progress=False)
'''


def test_conversation_is_the_opening_human_turn():
  ctx = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
  assert hh_rlhf_pm.conversation(ctx) == "\n\nHuman: hi there"


def test_length_rules_by_hand():
  from hhh.data.tokenizer import ByteTokenizer
  r = hh_rlhf_pm.length_rules([("ab", "a"), ("a", "ab"), ("a", "b")], ByteTokenizer())
  assert r["longer"].tolist() == [1.0, 0.0, 0.5] and r["shorter"].tolist() == [0.0, 1.0, 0.5]


def test_split_train_report_end_to_end(tmp_path):
  if not HH.is_dir():
    pytest.skip("../shared/data/hh_rlhf not found: the real HH-RLHF files are only in the development checkout")
  data = tmp_path / "hh"
  run_hhh("data", "load", "hh_rlhf", HH, "--out", data, "--limit", "120", "--resplit", "0.5,0.5,0")
  summary = json.loads((data / "summary.json").read_text())
  assert summary["resplit"] == {"train": 0.5, "validation": 0.5, "test": 0.0}
  from hhh.data import store
  train = list(store.DataSource(str(data), "train"))
  held = list(store.DataSource(str(data), "validation"))
  assert len(train) + len(held) == summary["kept"]["train"] + summary["kept"]["validation"] > 100
  # Split by conversation: no opening Human turn is on both sides.
  assert not {hh_rlhf_pm.conversation(c.context) for c in train} & {hh_rlhf_pm.conversation(c.context) for c in held}
  exp = tmp_path / "exp.py"
  exp.write_text(EXPERIMENT.format(data=data))
  run = tmp_path / "run"
  run_hhh("train", exp, "--workdir", run)
  s = hh_rlhf_pm.report(run, data, tmp_path / "out", limit=20, hf_pairs=4)
  assert s["held_out"] == 20 and 0.0 <= s["accuracy"]["mean"] <= 1.0
  lr = s["length_rules"]
  assert lr["longer"]["mean"] + lr["shorter"]["mean"] == pytest.approx(1.0)
  h = s["hf_check"]
  assert h["pairs"] >= 2 and h["same_decisions"] == h["pairs"] and h["max_abs_diff"] < 1e-4
  assert s["training"]["steps_done"] == 3 and s["training"]["timed_steps"] == 2
  assert s["training"]["comparisons_per_s"] > 0
  assert (tmp_path / "out" / "report.md").read_text().startswith("# A real PM")
