"""The objective-comparison sweep: aggregation by hand, the figure, and a 2-step end-to-end run that resumes."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from hhh.studies import objective_sweep as osw
from hhh import sweep as sweep_lib
from hhh.sweep.report import status as sweep_status
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


def _small_objectives_file(tmp_path):
  """sweeps/objectives.yaml cut down to TruthfulQA, the 100k size and 2 steps of 128-byte windows."""
  doc = yaml.safe_load((REPO / "sweeps" / "objectives.yaml").read_text())
  data, base, ft = doc["stages"]
  cmd = data["command"]
  sets = {"shared": str(SHARED_DATA), "datasets": "truthfulqa", "corpus_datasets": "truthfulqa", "max_train": "24",
          "max_heldout": "12", "wikipedia": ""}
  for i, a in enumerate(cmd):
    if cmd[i - 1] == "--set" and a.split("=")[0] in sets:
      cmd[i] = f"{a.split('=')[0]}={sets.pop(a.split('=')[0])}"
  cmd += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
  small = {"data.max_len": 128, "data.buckets": 128, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2,
           "steps": 2}
  base["set"].update(small, **{"data.tokenizer": "byte", "model.max_len": 128})
  ft["set"].update(small)
  base["experiment"], ft["experiment"] = (str(REPO / "experiments" / "base_lm.py"),
                                          str(REPO / "experiments" / "objectives.py"))
  base["axes"] = {"size": ["100k"]}
  ft["axes"] = {"dataset": {"truthfulqa": None}, "size": ["100k"], "objective": list(osw.OBJECTIVES), "seed": [0]}
  doc["out"] = str(tmp_path / "sweep")
  path = tmp_path / "objectives.yaml"
  path.write_text(yaml.safe_dump(doc, sort_keys=False))
  return path


def test_objectives_file_expands_to_the_readme_grid():
  spec = sweep_lib.load(REPO / "sweeps" / "objectives.yaml")
  stages = [t.stage for t in spec.trials]
  assert stages.count("data") == 1 and stages.count("base") == 2 and stages.count("finetune") == 5 * 2 * 3
  ft = next(t for t in spec.trials if t.labels == {"dataset": "code", "size": "1.6m", "objective": "binary",
                                                     "seed": "0"})
  base = next(t for t in spec.trials if t.labels == {"size": "1.6m"})
  cfg = ft.config["config"]
  assert cfg["init_from"] == f"runs/objectives/trials/{base.id}" and cfg["objective"] == "binary"
  assert cfg["data"]["train"] == "runs/objectives/data/code/train.jsonl" and cfg["steps"] == 100
  assert base.config["config"]["model"]["d_model"] == 256 and base.config["config"]["steps"] == 400


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data (TruthfulQA mc_task.json)")
def test_two_step_sweep_end_to_end_and_resume(tmp_path):
  path = _small_objectives_file(tmp_path)
  out = tmp_path / "sweep"
  cmd = [sys.executable, str(REPO / "sweeps" / "objectives.py"), str(path), "--max-parallel", "2"]
  proc = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads((out / "data" / "truthfulqa" / "info.json").read_text())
  assert (info["train"], info["heldout"]) == (24, 12)
  spec = sweep_lib.load(path)
  results = osw.records(spec)
  assert [r["stage"] for r in results] == ["data", "base", "finetune", "finetune", "finetune"]
  assert results[0]["metrics"] == {"truthfulqa_train": 24, "truthfulqa_heldout": 12}
  assert [r["objective"] for r in results[2:]] == list(osw.OBJECTIVES)
  for r in results[2:]:
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["metrics"]["pairs"] > 0 and r["params"] > 0
  assert (out / "objectives.png").exists() and "| truthfulqa | 100k |" in (out / "objectives.md").read_text()
  assert "![objectives](objectives.png)" in (out / "report.md").read_text()
  # Re-running finds every result and trains nothing.
  proc2 = subprocess.run(cmd, env=hhh_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc2.returncode == 0, proc2.stderr[-3000:]
  assert [r["attempts"] for r in sweep_status(spec)["trials"]] == [1] * 5
