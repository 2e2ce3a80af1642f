"""The PMP sample-efficiency study on the frozen trunk: its pair cutting, label shuffling, data multiplier, and a
2-step smoke run of every stage on a toy trunk and toy sets."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer
from hhh.frozen import data as data_lib
from hhh.studies import frozen_pmp as pmp
from hhh.frozen import train as train_lib
from hhh.model.config import ModelConfig
from hhh.pretrained import LM
from hhh.model.params import graphdef_and_params


def test_best_worst_keeps_the_extremes_and_drops_a_full_tie():
  c = Comparison("q", ("a", "b", "c", "d"), (2.0, 5.0, -1.0, 0.0), "se", "se/1")
  p = pmp.best_worst(c, "thread-1")
  assert p.responses == ("b", "c") and p.scores == (5.0, -1.0) and p.meta["group"] == "thread-1"
  assert pmp.best_worst(Comparison("q", ("a", "b"), (1.0, 1.0), "se", "se/2"), "t") is None


def test_equivalent_n_interpolates_in_log_n_and_flags_the_ends():
  ns = np.asarray([16, 64, 256])
  acc_none = np.asarray([0.55, 0.60, 0.58])      # running max: 0.55, 0.60, 0.60
  n, flag = pmp.equivalent_n(acc_none, ns, 0.575)   # halfway from 16 to 64 in log2 N
  assert n == pytest.approx(32.0) and flag == "="
  assert pmp.equivalent_n(acc_none, ns, 0.60) == (64.0, "=")
  assert pmp.equivalent_n(acc_none, ns, 0.70) == (256.0, ">")
  assert pmp.equivalent_n(acc_none, ns, 0.50) == (16.0, "<=")


def test_multiplier_point_estimate_against_hand_values():
  # Two conditions x 2 N x 2 contexts x 1 seed: none 0.5 then 1.0; the other 0.75 at both N.
  A = np.asarray([[[[0.0], [1.0]], [[1.0], [1.0]]],
                  [[[1.0], [0.5]], [[0.5], [1.0]]]])
  m = pmp.multipliers(A, [16, 64], n_boot=20)
  assert m.shape == (2, 2, 21)
  assert m[0, :, 0].tolist() == [1.0, 1.0]
  assert m[1, 0, 0] == pytest.approx(32.0 / 16)   # 0.75 is halfway from 0.5 to 1.0: 2^5 comparisons
  assert m[1, 1, 0] == pytest.approx(32.0 / 64)


def _toy(i, split, k=2):
  good, bad = " yes" + " really" * (i % 3), " no" + " never" * (i % 2)
  return Comparison(f"Q{i}?", (good, bad), (1.0, 0.0), "toy", f"toy/{split}/{i}", {"group": f"{split}{i}"})


@pytest.fixture()
def toy(tmp_path):
  cfg_m = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64)
  _, params = graphdef_and_params(cfg_m, jax.random.PRNGKey(0))
  lm = LM(cfg_m, params, ByteTokenizer(), name="toy-2")
  cfg = pmp.PMPStudyConfig(work=str(tmp_path / "work"), cache_root=str(tmp_path / "cache"),
                           out=str(tmp_path / "out"), depth=2, ns=(4, 8), seeds=(0, 1), lr_grid=(1e-3, 1e-2),
                           steps=2, batch_size=4, pmp_steps=2, pmp_batch_size=4, pmp_lr_grid=(1e-2,),
                           target_sizes=(8, 4, 6), max_len=64, n_boot=30)
  sets = {"pmp": {"train": [_toy(i, "p") for i in range(10)], "validation": [_toy(i, "pv") for i in range(4)]},
          "hh_rlhf": {"train": [_toy(i, "t") for i in range(8)], "validation": [_toy(i, "v") for i in range(4)],
                      "test": [_toy(i, "x") for i in range(6)]}}
  counts = data_lib.write_sets(sets, tmp_path / "work" / "data")
  counts["pmp_sources"] = {"toy": {"mined": 14, "kept": 14}}
  (tmp_path / "work" / "data" / "counts.json").write_text(json.dumps(counts))
  return lm, cfg


def test_shuffled_swaps_labels_within_comparisons_only(toy):
  lm, cfg = toy
  got = pmp.caches(cfg, lm)
  f = train_lib.HeadFeatures(lm, got[("pmp", "train")], 2, need_windows=False)
  s = pmp.shuffled(f, seed=0)
  assert s.e_RxD is f.e_RxD                        # the inputs are shared, not copied
  pairs = s.scores_R.reshape(-1, 2)
  assert sorted(map(tuple, pairs)) != [(1.0, 0.0)] * 10 and set(map(tuple, pairs)) <= {(1.0, 0.0), (0.0, 1.0)}
  assert f.scores_R.reshape(-1, 2).tolist() == [[1.0, 0.0]] * 10   # the original is untouched
  b = s.batch([0, 1, 2], 2)
  assert b["scores_BxK"].tolist() == pairs[:3].tolist()


def test_study_stages_end_to_end_on_a_toy_trunk(toy):
  lm, cfg = toy
  counts = pmp.prepare(cfg)                        # prepared sets are found, never rebuilt
  assert counts["hh_rlhf"] == {"train": 8, "validation": 4, "test": 6}
  got = pmp.caches(cfg, lm)
  assert got[("hh_rlhf", "test")].layers == (2,)
  feats = {k: train_lib.HeadFeatures(lm, c, 2, need_windows=False) for k, c in got.items()}
  heads = pmp.pmp_heads(cfg, lm, feats)
  assert set(heads) == {"ranked", "binarized", "shuffled"}
  assert heads["shuffled"]["info"]["lr"] == heads["ranked"]["info"]["lr"] == 1e-2
  assert len(heads["ranked"]["info"]["target_test_zero_shot"]) == 6
  chosen = pmp.finetune(cfg, lm, feats, heads)
  assert len(chosen) == 4 * 2                      # conditions x N
  runs = list((cfg.path("work") / "finetune").glob("*.json"))
  assert len(runs) == 8 * 3                        # 2 tuning runs (seed 0) + 1 other seed per cell
  # Seeds draw nested subsets of the pool; fine-tuning from a PMP head starts at that head.
  assert set(pmp.subset(8, 4, 1)) <= set(pmp.subset(8, 8, 1))
  summary = pmp.summarize(cfg, chosen, heads, counts)
  summary["ceiling"] = pmp.ceiling(cfg, lm, feats, steps=60)
  # 8 pool comparisons, 60 steps: the head fits its own pool, whatever it does on held-out dialogues.
  assert summary["ceiling"]["n"] == 8 and set(summary["ceiling"]["by_lr"]) == {str(x) for x in cfg.lr_grid}
  assert max(r["train"] for r in summary["ceiling"]["by_lr"].values()) == 1.0
  # One tier up: LoRA on blocks 0-1 (depth 2) reads its own cache of their input, and fits the pool too.
  lcfg = dataclasses.replace(cfg, lora_ceiling_steps=40, lora_ceiling_lrs=(3e-2,))
  lgot = pmp.target_lora_caches(lcfg, lm)
  assert lgot["train"].layers == (0,) and len(lgot["test"]) == 6
  lres = pmp.lora_ceiling(lcfg, lm, lgot, cache_seconds=1.5)
  r = lres["by_lr"]["0.03"]
  assert lres["n"] == 8 and lres["cache_seconds"] == 1.5
  assert r["train"] == 1.0 and r["loss_last20"] < r["loss_first"]
  assert pmp.lora_ceiling(lcfg, lm, lgot) == lres                       # found on disk, not retrained
  more = pmp.lora_ceiling(dataclasses.replace(lcfg, lora_ceiling_lrs=(3e-2, 1e-2)), lm, lgot)
  assert more["by_lr"]["0.03"] == r and set(more["by_lr"]) == {"0.03", "0.01"}   # only the new rate trains
  with pytest.raises(ValueError, match="holds a ceiling of 40 steps"):
    pmp.lora_ceiling(dataclasses.replace(lcfg, lora_ceiling_steps=41), lm, lgot)
  lres = more
  summary["lora_ceiling"] = lres
  assert {c["condition"] for c in summary["cells"]} == set(pmp.CONDITIONS)
  m = next(x for x in summary["multiplier"] if x["condition"] == "ranked" and x["n"] == 4)
  assert m["lo"] <= m["hi"] and m["censored"] in ("=", ">", "<=")
  report = pmp.write_report(cfg, summary, cfg.path("out")).read_text()
  assert "| 8 |" in report and "Data multiplier" in report and "## Ceiling" in report
  assert "## LoRA ceiling: rank-16 LoRA on blocks 0-1" in report and "| 0.03 |" in report and "| 0.01 |" in report
  assert (cfg.path("out") / "pmp.png").stat().st_size > 1000
  before = sorted(p.stat().st_mtime_ns for p in runs)
  pmp.finetune(cfg, lm, feats, heads)              # a second pass trains nothing
  assert sorted(p.stat().st_mtime_ns for p in runs) == before


def test_config_rejects_an_n_beyond_the_pool():
  with pytest.raises(ValueError, match="exceeds the training pool"):
    pmp.PMPStudyConfig(ns=(16, 2048))


def test_entry_point_rejects_a_bad_override_in_one_line(capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location("frozen_pmp", "experiments/frozen_pmp.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  with pytest.raises(SystemExit) as exit_:
    mod.main(["--set", "conditions=ranked"])
  assert exit_.value.code == 2
  assert "conditions must include 'none'" in capsys.readouterr().err
