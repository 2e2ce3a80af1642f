"""The objective-comparison sweep: aggregation by hand, the figure, and a 2-step end-to-end run that resumes."""

import json
import math
import subprocess
import sys

import pytest

from hhh import objective_sweep as osw
from hhh import sweep as sweep_lib
from tests.conftest import REPO, SHARED_DATA, hhh_env


def _rec(ds, size, obj, seed, acc, params):
  return {"name": f"{ds}-{size}-{obj}-s{seed}", "stage": "finetune", "dataset": ds, "size": size,
          "objective": obj, "seed": seed, "metrics": {"accuracy": acc, "pairs": 40.0}, "params": params}


def test_aggregate_mean_and_stderr_over_seeds_and_table():
  rs = [_rec("a", "100k", "ranked", 0, 0.6, 1000), _rec("a", "100k", "ranked", 1, 0.7, 1000),
        _rec("a", "100k", "imitation", 0, 0.55, 1000), {"name": "x", "stage": "finetune", "error": "exit 1"}]
  agg = osw.aggregate(rs)
  cell = agg[("a", "100k", "ranked")]
  assert cell["accuracy"] == pytest.approx(0.65)
  assert cell["stderr"] == pytest.approx(math.sqrt(((0.05 ** 2) * 2) / 1 / 2))  # sample std / sqrt(n)
  assert cell["seeds"] == 2 and agg[("a", "100k", "imitation")]["stderr"] == 0.0
  assert len(agg) == 2
  md = osw.table(rs)
  assert "| a | 100k | 1.0K | 40 | 0.550 |  | 0.650 ± 0.050 |" in md.splitlines()[2]


def test_plot_writes_one_panel_per_dataset(tmp_path):
  rs = [_rec(d, s, o, 0, 0.5 + 0.01 * i, p) for i, (d, s, p) in enumerate(
      [("a", "100k", 1e5), ("a", "1.6m", 1.6e6), ("b", "100k", 1e5)]) for o in osw.OBJECTIVES]
  out = osw.plot(rs, tmp_path / "fig.png")
  assert out.stat().st_size > 10_000
  with pytest.raises(ValueError, match="no finished"):
    osw.plot([], tmp_path / "none.png")


def test_dataset_paths_errors():
  with pytest.raises(ValueError, match="unknown dataset"):
    osw.dataset_paths(osw.SweepConfig(datasets=("nope",)))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    osw.dataset_paths(osw.SweepConfig(datasets=("hh_rlhf",), shared="/nonexistent"))
  with pytest.raises(ValueError, match="NAME=PATH"):
    osw.dataset_paths(osw.SweepConfig(datasets=("hh_rlhf",), paths=("hh_rlhf",)))


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data (TruthfulQA mc_task.json)")
def test_two_step_sweep_end_to_end_and_resume(tmp_path):
  out = tmp_path / "sweep"
  sets = [f"out={out}", f"shared={SHARED_DATA}", "datasets=truthfulqa", "corpus_datasets=truthfulqa", "sizes=100k", "base_steps=2", "steps=2",
          "max_train=24", "max_heldout=12", "wikipedia=",
          "base_set=data.tokenizer=byte,model.max_len=128,data.max_len=128,data.buckets=128,batch_size=4,"
          "eval_every=2,checkpoint_every=2",
          "finetune_set=data.max_len=128,data.buckets=128,batch_size=4,eval_every=2,checkpoint_every=2"]
  cmd = [sys.executable, str(REPO / "sweeps" / "objectives.py")] + [a for s in sets for a in ("--set", s)]
  proc = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads((out / "data" / "truthfulqa" / "info.json").read_text())
  assert (info["train"], info["heldout"]) == (24, 12)
  results = sweep_lib.read_results(out / "results.jsonl")
  assert [r["name"] for r in results] == ["base-100k"] + [f"truthfulqa-100k-{o}-s0" for o in osw.OBJECTIVES]
  for r in results[1:]:
    assert r["step"] == 2 and 0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["metrics"]["pairs"] > 0
  assert (out / "objectives.png").exists() and "| truthfulqa | 100k |" in (out / "objectives.md").read_text()
  # Re-running finds every result and trains nothing.
  proc2 = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc2.returncode == 0, proc2.stderr[-3000:]
  assert len(sweep_lib.read_results(out / "results.jsonl")) == 4
