"""Two-step smoke runs of every stage through the `hhh train` entry point, init_from, the NaN stop, and learning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hhh.train import checkpoint as ckpt_lib
from tests.conftest import read_metrics, run_hhh

PM_METRICS = {"accuracy", "margin", "reward_mean", "reward_std", "ece", "loss", "grad_norm", "lr"}


@pytest.mark.parametrize("objective", ["lm", "imitation", "binary", "ranked"])
def test_two_step_run_per_objective(tiny_experiment, tmp_path, objective):
  wd = tmp_path / objective
  proc = run_hhh("train", tiny_experiment, "--workdir", wd, "--set", f"objective={objective}")
  train = read_metrics(wd)
  assert [r["step"] for r in train] == [1, 2]
  assert all(math.isfinite(r["loss"]) for r in train)
  if objective in ("binary", "ranked"):
    assert PM_METRICS <= set(train[0])
    assert train[0]["pairs"] == 8.0  # 8 comparisons of k=2 with distinct scores: one ordered pair each
  if objective == "binary":
    assert "binary_accuracy" in train[0]
  valid = read_metrics(wd, "validation")
  assert [r["step"] for r in valid] == [2]
  if objective == "lm":
    assert 0 < valid[0]["loss"] < 6.0  # byte-level NLL of a barely trained model: near log(259) = 5.56
  else:
    assert valid[0]["pairs"] == 32.0 and 0.0 <= valid[0]["accuracy"] <= 1.0
  assert "held-out" in proc.stdout
  # Checkpoints: the last N kept, each self-describing (config + tokenizer as JSON).
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [1, 2]
  meta = ckpt_lib.load_meta(wd)
  assert meta["tokenizer"] == {"kind": "byte"} and meta["objective"] == objective
  assert (wd / "tb").is_dir() and any((wd / "tb").iterdir())


def test_keep_last_n_and_bpe_tokenizer_saved(tiny_experiment, tmp_path):
  wd = tmp_path / "bpe"
  run_hhh("train", tiny_experiment, "--workdir", wd, "--set", "steps=4", "--set", "keep_checkpoints=2",
          "--set", "data.tokenizer=bpe:300")
  assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [3, 4]
  meta = ckpt_lib.load_meta(wd)
  tok = ckpt_lib.tokenizer_from_meta(meta)
  assert meta["tokenizer"]["kind"] == "bpe"
  assert meta["config"]["model"]["vocab_size"] == tok.vocab_size
  params, _ = ckpt_lib.load_params(wd)
  assert params["embed"].shape == (tok.vocab_size, 32)


def test_init_from_lm_checkpoint(tiny_experiment, tmp_path):
  """PMP -> fine-tune: a PM run starts from another run's parameters (here with lr=0, so they stay put)."""
  lm = tmp_path / "lm"
  run_hhh("train", tiny_experiment, "--workdir", lm, "--set", "objective=lm")
  pm = tmp_path / "pm"
  run_hhh("train", tiny_experiment, "--workdir", pm, "--set", f"init_from={lm}", "--set", "optim.lr=0",
          "--set", "optim.weight_decay=0")
  lm_params, _ = ckpt_lib.load_params(lm)
  pm_params, pm_meta = ckpt_lib.load_params(pm)
  flat = lambda t: {str(k): np.asarray(v) for k, v in __import__("jax").tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(lm_params), flat(pm_params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert pm_meta["objective"] == "ranked"


def test_pm_from_a_headless_lm_starts_with_a_fresh_head():
  """A converted LM has an all-zero reward head: a PM run draws a fresh one (normal, std 0.02, as transformers
  draws a new `score`); a trained head, and every other parameter, are kept as they are."""
  import jax
  import jax.numpy as jnp
  from hhh import config as config_lib
  from hhh.train import loop
  trunk = jnp.arange(6.0)
  params = {"reward_head": {"kernel": jnp.zeros((4096, 1)), "bias": jnp.zeros((1,))}, "trunk": trunk}
  cfg = config_lib.TrainConfig(objective="ranked", init_from="lm")
  out = loop._fresh_reward_head(cfg, params, jax.random.key(0), lead=False)
  kernel = np.asarray(out["reward_head"]["kernel"])
  assert kernel.shape == (4096, 1) and abs(kernel.std() - 0.02) < 0.001 and abs(kernel.mean()) < 0.001
  np.testing.assert_array_equal(out["trunk"], trunk)
  np.testing.assert_array_equal(out["reward_head"]["bias"], 0.0)
  # The same key draws the same head: a run stays a pure function of its seed.
  again = loop._fresh_reward_head(cfg, params, jax.random.key(0), lead=False)
  np.testing.assert_array_equal(again["reward_head"]["kernel"], kernel)
  assert loop._fresh_reward_head(cfg, out, jax.random.key(1), lead=False) is out   # a trained head is kept
  lm_cfg = config_lib.TrainConfig(objective="lm", init_from="lm")
  assert loop._fresh_reward_head(lm_cfg, params, jax.random.key(0), lead=False) is params


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_experiment, tmp_path):
  wd = tmp_path / "nan"
  # An absurd learning rate overflows the parameters within a few steps.
  proc = run_hhh("train", tiny_experiment, "--workdir", wd, "--set", "steps=8", "--set", "optim.lr=1e30",
                 "--set", "optim.clip_norm=1e30", "--set", "optim.warmup_steps=0", check=False)
  assert proc.returncode == 1
  err = [l for l in proc.stderr.splitlines() if l.startswith("hhh: error:")]
  assert len(err) == 1 and "Last good checkpoint: step" in err[0], proc.stderr[-2000:]
  latest = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  params, _ = ckpt_lib.load_params(wd)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(params))
  assert all(math.isfinite(r["loss"]) and r["step"] <= latest + 1 for r in read_metrics(wd))


def _tiny_pm_accuracy(workdir, steps: int) -> float:
  proc = run_hhh("train", "experiments/tiny_pm.py", "--workdir", workdir, "--set", f"steps={steps}", "--set",
                 f"eval_every={steps}", "--set", "progress=false", timeout=900)
  valid = read_metrics(workdir, "validation")
  # 500 held-out 4-way rankings: up to 6 ordered pairs each, fewer where scores tie.
  assert valid[-1]["step"] == steps and 2500 < valid[-1]["pairs"] <= 3000
  printed = json.loads(proc.stdout.rsplit("held-out ", 1)[1].split(" at step")[0])["accuracy"]
  assert abs(printed - valid[-1]["accuracy"]) < 1e-4
  return valid[-1]["accuracy"]


def test_tiny_pm_learns_above_chance(tmp_path):
  """The smoke experiment's promise, on a shortened run: held-out pairwise accuracy clearly above 0.5
  (50 steps reach 0.725 on the development machine)."""
  assert _tiny_pm_accuracy(tmp_path / "tiny_pm", 50) > 0.65


@pytest.mark.slow
def test_tiny_pm_full_run(tmp_path):
  """The full 300-step smoke run, as docs/guide/training.md runs it."""
  assert _tiny_pm_accuracy(tmp_path / "tiny_pm", 300) > 0.72


def test_bf16_compute_keeps_fp32_parameters(tiny_experiment, tmp_path):
  wd = tmp_path / "bf16"
  run_hhh("train", tiny_experiment, "--workdir", wd, "--set", "model.dtype=bfloat16", "--set", "lm_coef=0.5")
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["lm_loss"]) for r in read_metrics(wd))
  params, meta = ckpt_lib.load_params(wd)
  assert meta["config"]["model"]["dtype"] == "bfloat16"
  assert {str(x.dtype) for x in __import__("jax").tree.leaves(params)} == {"float32"}


def test_log_shows_steady_state_throughput_and_mfu_against_a_measured_peak(tiny_experiment, tmp_path):
  wd = tmp_path / "mfu"
  proc = run_hhh("train", tiny_experiment, "--workdir", wd, "--set", "steps=6", "--set", "log_every=2",
                 "--set", "checkpoint_every=100", "--set", "eval_every=100")
  assert "MFU is read against" in proc.stdout and "GFLOP/s per device, measured now (jnp.dot 2048x2048" in proc.stdout
  train = read_metrics(wd)
  assert [r["step"] for r in train] == [2, 4, 6]
  for r in train:  # step 1 (the compile) only opens the window; every logged window has run steps in it
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1


def test_step_tokens_count_what_the_step_computes():
  from hhh.train.loop import _step_tokens
  local = {"lengths": np.array([[10, 7], [5, 9], [4, 0]]), "scores": np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])}
  assert _step_tokens(local, "ranked") == 35.0
  assert _step_tokens(local, "imitation") == 10 + 9 + 4  # only the preferred sequence of each comparison
