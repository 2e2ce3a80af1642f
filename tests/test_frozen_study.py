"""A 2-step smoke run of the frozen-trunk study on a toy trunk and toy target sets: every stage, one report."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer
from hhh.frozen import data as data_lib
from hhh.studies import frozen_objectives as study
from hhh.model.config import ModelConfig
from hhh.pretrained import LM
from hhh.model.params import graphdef_and_params


def _sets(rng: np.random.Generator):
  def comp(i, split):
    good = " yes" + " really" * int(rng.integers(0, 3))
    bad = " no" + " never" * int(rng.integers(0, 3))
    return Comparison(f"Q{i}?", (good, bad, " maybe"), (1.0, 0.0, 0.0), "toy", f"toy/{split}/{i}")
  return {split: [comp(i, split) for i in range(n)] for split, n in (("train", 12), ("validation", 6), ("test", 8))}


def test_study_stages_end_to_end_on_a_toy_trunk(tmp_path):
  cfg_m = ModelConfig(d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_len=64)
  _, params = graphdef_and_params(cfg_m, jax.random.PRNGKey(0))
  lm = LM(cfg_m, params, ByteTokenizer(), name="toy-4")
  cfg = study.StudyConfig(work=str(tmp_path / "work"), cache_root=str(tmp_path / "cache"), out=str(tmp_path / "out"),
                          datasets=("truthfulqa",), depths=(2, 4), tiers=("head", "lora"), seeds=(0, 1), steps=2,
                          lora_steps=2, lr_grid=(1e-3, 1e-2), batch_size=4, readout_steps=2, max_len=64, n_boot=50)
  text = [Comparison("", (f"document {i} " * 5,), (0.0,), "text", f"text/{i}") for i in range(6)]
  counts = data_lib.write_sets({"truthfulqa": _sets(np.random.default_rng(0)),
                                "text": {"train": text[:4], "validation": text[4:]}}, tmp_path / "work" / "data")
  (tmp_path / "work" / "data" / "counts.json").write_text(json.dumps(counts))
  assert study.prepare(cfg) == counts             # a prepared set is never rebuilt
  got = study.caches(cfg, lm)
  assert got[("truthfulqa", "test")].layers == (0, 2, 4)
  ro = study.readouts(cfg, lm, got)
  assert set(ro) == {2, 4} and np.isfinite(ro[2]["lm_loss_fitted"])
  base = study.baselines(cfg, lm, got, ro)
  assert len(base["truthfulqa"]["rules"]["longer"]["top1"]) == 8
  chosen = study.runs(cfg, lm, got, ro)
  # 2 tiers x 2 depths x 3 objectives cells; each tuned over its 2 learning rates, then seed 1 at the best.
  assert len(chosen) == 12 and {tuple(sorted(c["validation"])) for c in chosen} == {(1e-3, 1e-2)}
  runs = list((tmp_path / "work" / "runs").rglob("*.json"))
  assert len(runs) == 12 * 3
  summary = study.summarize(cfg, chosen, base, ro)
  cell = next(c for c in summary["cells"] if c["tier"] == "lora" and c["depth"] == 4 and c["objective"] == "ranked")
  assert 0.0 <= cell["lo"] <= cell["mean"] <= cell["hi"] <= 1.0 and len(cell["seed_means"]) == 2
  assert {p["difference"] for p in summary["paired"]} == {"binary - imitation", "ranked - imitation",
                                                          "ranked - binary"}
  assert summary["chance"] == {"truthfulqa": 1 / 3}   # every toy comparison has 3 responses
  report = study.write_report(cfg, summary, counts, cfg.path("out"))
  text_md = report.read_text()
  assert "| lora d4 |" in text_md and "rule:negation" in text_md
  assert (cfg.path("out") / "objectives.png").stat().st_size > 1000
  # A second pass finds every run on disk and trains nothing.
  mtimes = {p: p.stat().st_mtime_ns for p in runs}
  study.runs(cfg, lm, got, ro)
  assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())


def test_entry_point_rejects_a_bad_override_in_one_line(capsys):
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "frozen_objectives.py"
  spec = importlib.util.spec_from_file_location("frozen_objectives", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  with pytest.raises(SystemExit) as exit_:
    mod.main(["--set", "depths=eight"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == "hhh: error: depths='eight': expected int\n"
