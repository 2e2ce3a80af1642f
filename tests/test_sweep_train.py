"""A tiny sweep of a real `hhh train` trial end to end on the local backend, through the CLI: the trainer's
held-out metrics and parameter count as the result, a report, a re-run that trains nothing. (The scheduler
itself is tested on millisecond command trials in tests/test_sweep.py; one trainer process is what this adds.)"""

import json
import subprocess
import sys

import yaml

from hhh import sweep
from hhh.sweep import report
from tests.conftest import REPO, TINY_EXPERIMENT, hhh_env


def test_tiny_train_sweep_end_to_end(tmp_path):
  (tmp_path / "exp.py").write_text(TINY_EXPERIMENT)
  doc = {"out": str(tmp_path / "out"), "resources": {"devices": 0, "cpus": 1},
         "experiment": str(tmp_path / "exp.py"), "set": {"eval_every": 2},
         "axes": {"objective": ["ranked"]},
         "report": [{"name": "acc", "stage": "main", "metric": "accuracy", "x": "objective", "chance": 0.5}]}
  path = tmp_path / "tiny.yaml"
  path.write_text(yaml.safe_dump(doc))
  proc = subprocess.run([sys.executable, "-m", "hhh.cli", "sweep", "run", str(path), "--device-kind", "cpu"],
                        env=hhh_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 done, 0 running, 0 failed, 0 pending" in proc.stdout
  s = sweep.load(path)
  res = sweep.results(s)
  assert [r["labels"]["objective"] for r in res] == ["ranked"]
  for r, t in zip(res, s.trials):
    # 32 toy validation comparisons of 2 responses: 32 pairs; d_model 32, 1 layer: 12,673 non-embedding params
    assert r["step"] == 2 and r["metrics"]["pairs"] == 32.0 and 0.0 <= r["metrics"]["accuracy"] <= 1.0
    assert r["params"] == 12673 and r["attempts"] == 1
    cfg = json.loads((s.trial_dir(t) / "config.json").read_text())
    assert cfg["objective"] == t.labels["objective"] and cfg["progress"] is False
  md = (tmp_path / "out" / "report.md").read_text()
  assert "|  |  | ranked | " in md and (tmp_path / "out" / "acc.png").stat().st_size > 5000
  assert sweep.run_sweep(s, progress=False, device_kind="cpu") == []
  assert [r["attempts"] for r in report.status(s)["trials"]] == [1]
