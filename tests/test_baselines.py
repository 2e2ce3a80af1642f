"""The baselines runner end to end on a tiny model (2 items per task), `hhh convert` and `hhh distill` smoke runs."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from hhh import sweep
from hhh.data.tokenizer import ByteTokenizer
from hhh.studies import baselines
from hhh.model.config import ModelConfig
from hhh.pretrained import LM, load_lm
from hhh.pretrained.convert import save_checkpoint
from hhh.model.params import graphdef_and_params
from tests.conftest import REPO, SHARED_DATA, hhh_env, run_hhh

CFG = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, max_len=2048)


def _tiny(tmp_path):
  _, params = graphdef_and_params(CFG, jax.random.PRNGKey(0))
  save_checkpoint(LM(CFG, params, ByteTokenizer(), name="tiny"), tmp_path / "tiny")
  return tmp_path / "tiny", params


def test_table_from_records():
  recs = [{"condition": "no_prompt", "task": "hhh_alignment", "n": 4, "accuracy": 0.5,
           "per_category": {"harmless": {"accuracy": 1.0, "n": 2}, "helpful": {"accuracy": 0.0, "n": 2}}},
          {"condition": "prompt", "task": "hhh_alignment", "n": 4, "accuracy": 0.75, "per_category": {}},
          {"condition": "prompt", "task": "truthfulqa_mc", "n": 100, "mc1": 0.25}]
  lines = baselines.table(recs).splitlines()
  assert lines[0] == "| task (metric, items) | no_prompt | prompt |"
  assert lines[2] == "| hhh_alignment (accuracy, 4) | 0.500 ± 0.250 | 0.750 ± 0.217 |"
  assert lines[3] == "| &nbsp;&nbsp;harmless (2) | 1.000 |  |"
  assert lines[-1] == "| truthfulqa_mc (mc1, 100) |  | 0.250 ± 0.043 |"
  with pytest.raises(ValueError, match="TASK=N"):
    baselines._limits(baselines.BaselinesConfig(limits=("hellaswag",)))


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data (the four tasks' files)")
def test_baselines_entry_point_two_items_per_task_and_resume(tmp_path):
  model, _ = _tiny(tmp_path)
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("Human: Hi.\n\nAssistant: Hello! How can I help?\n-----\n")
  out = tmp_path / "out"
  # sweeps/hhh_baselines.yaml with the tiny model in every condition, our prompt and 2 items per task.
  doc = yaml.safe_load((REPO / "sweeps" / "hhh_baselines.yaml").read_text())
  doc["out"] = str(out)
  doc["resources"] = {"devices": 0, "cpus": 1}
  doc["set"].update(model=str(model), distilled=str(model), prompt=str(prompt), shared=str(SHARED_DATA),
                    limits=[f"{t}=2" for t in baselines.LOCAL_DATA], batch_size=4)
  path = tmp_path / "baselines.yaml"
  path.write_text(yaml.safe_dump(doc, sort_keys=False))
  cmd = [sys.executable, str(REPO / "sweeps" / "hhh_baselines.py"), str(path), "--max-parallel", "2"]
  proc = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  spec = sweep.load(path)
  recs = {(r["condition"], r["task"]): r for r in baselines.records_from_sweep(spec)}
  assert sorted(recs) == sorted((c, t) for c in ("no_prompt", "prompt", "distilled") for t in baselines.LOCAL_DATA)
  for (cond, task), rec in recs.items():
    assert rec["n"] == 2 and rec["limit"] == 2
    assert rec["prompt_tokens"] == (len(prompt.read_text().encode()) if cond == "prompt" else 0)
  tqa = {c: recs[(c, "truthfulqa_mc")]["query_format"] for c in ("no_prompt", "prompt", "distilled")}
  assert "Q: " in tqa["no_prompt"] and "Human: " in tqa["prompt"] and "Human: " in tqa["distilled"]
  table = (out / "baselines.md").read_text()
  assert "| hhh_alignment (accuracy, 2) |" in table
  # A re-run finds every result and recomputes nothing.
  t = next(t for t in spec.trials if t.labels == {"condition": "prompt"})
  stamp = (spec.trial_dir(t) / "result.json").stat().st_mtime_ns
  proc = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0 and (spec.trial_dir(t) / "result.json").stat().st_mtime_ns == stamp


def test_convert_hf_dir_then_load_and_distill_cli(tmp_path):
  from hhh.pretrained import hf
  _, params = graphdef_and_params(CFG, jax.random.PRNGKey(3))
  hf.save_hf(LM(CFG, params, ByteTokenizer(), name="tiny"), tmp_path / "hfdir", "llama")
  run_hhh("convert", tmp_path / "hfdir", "--out", tmp_path / "conv")
  back = load_lm(str(tmp_path / "conv"))
  assert back.cfg.d_model == 32 and back.cfg.mlp == "swiglu"
  same = jax.tree.map(lambda a, b: bool(np.allclose(np.asarray(a), np.asarray(b))), back.params, params)
  assert all(jax.tree.leaves(same))
  (tmp_path / "p.txt").write_text("Human: hi\n\nAssistant: hello\n-----\n")
  (tmp_path / "exp.py").write_text(
      "from hhh.studies.distill import DistillConfig\n"
      f"def config():\n  return DistillConfig(model={str(tmp_path / 'conv')!r}, prompt={str(tmp_path / 'p.txt')!r}, "
      "samples=4, sample_tokens=8, steps=2, batch_size=2)\n")
  proc = run_hhh("distill", tmp_path / "exp.py", "--out", tmp_path / "d", "--set", "lr=1e-3")
  assert "KL" in proc.stdout and (tmp_path / "d" / "student").exists()
  summary = json.loads((tmp_path / "d" / "summary.json").read_text())
  assert summary["texts"] == 4 and summary["last"]["step"] == 2
  bad = run_hhh("distill", tmp_path / "exp.py", "--out", tmp_path / "e", "--set", "nope=1", check=False)
  assert bad.returncode == 2 and "unknown config key 'nope'" in bad.stderr


def test_conditions_and_only():
  cfg = baselines.BaselinesConfig(model="m", distilled="d", prompt="hhh")
  assert baselines.conditions(cfg) == [("no_prompt", "m", "none"), ("prompt", "m", "hhh"), ("distilled", "d", "none")]
  assert baselines.conditions(baselines.BaselinesConfig(distilled="", only=("prompt",)))[0][0] == "prompt"
  with pytest.raises(ValueError, match="conditions are"):
    baselines.conditions(baselines.BaselinesConfig(distilled="", only=("distilled",)))
