"""Tests for hhh.config and the `hhh` command's config handling."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from hhh import config as C
from hhh.model import family
from hhh.model.config import ModelConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_PM = REPO / "experiments" / "tiny_pm.py"


def apply(*overrides, cfg=None):
  return C.apply_overrides(cfg if cfg is not None else C.TrainConfig(), list(overrides))


def config_error(*overrides, cfg=None) -> str:
  with pytest.raises(C.ConfigError) as info:
    apply(*overrides, cfg=cfg)
  msg = str(info.value)
  assert "\n" not in msg
  return msg


# --- apply_overrides ----------------------------------------------------------------------------


def test_overrides_produce_typed_values():
  cfg = C.TrainConfig()
  new = apply("optim.lr=0.01", "model.n_layers=3", "data.max_len=64", "data.buckets=32,64", "progress=false",
              "objective=binary", cfg=cfg)
  assert new.optim.lr == 0.01 and type(new.optim.lr) is float
  assert new.model.n_layers == 3 and type(new.model.n_layers) is int
  assert new.data.buckets == (32, 64) and type(new.data.buckets) is tuple
  assert new.data.max_len == 64
  assert new.progress is False
  assert new.objective == "binary"
  # Everything else keeps its default.
  assert dataclasses.replace(new, optim=cfg.optim, model=cfg.model, data=cfg.data, progress=True,
                             objective="ranked") == cfg
  assert (new.optim.warmup_steps, new.model.d_model, new.data.max_k) == (20, 64, 2)


def test_overrides_leave_the_original_unchanged():
  cfg = C.TrainConfig()
  apply("optim.lr=0.5", "model.n_layers=7", "progress=no", "data.train=x.jsonl", cfg=cfg)
  assert cfg == C.TrainConfig()
  assert (cfg.optim.lr, cfg.model.n_layers, cfg.progress, cfg.data.train) == (1e-3, 2, True, "toy")
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.optim.lr = 1.0
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 1
  assert C.apply_overrides(cfg, []) is cfg


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("1", True), ("0", False),
                                        ("YES", True), ("no", False)])
def test_bool_spellings(text, value):
  assert apply(f"progress={text}").progress is value


def test_more_value_types():
  new = apply("optim.lr=1e-4", "seed= 7 ", "model.norm=layer", "data.train=/a/b=c.jsonl", "mesh.data=-1",
              "lm_coef=2")
  assert new.optim.lr == 1e-4
  assert new.seed == 7
  assert new.model.norm == "layer"
  assert new.data.train == "/a/b=c.jsonl"  # only the first '=' splits
  assert new.mesh.data == -1
  assert new.lm_coef == 2.0 and type(new.lm_coef) is float
  assert apply("data.buckets= 16 , 32,", "data.max_len=32").data.buckets == (16, 32)


def test_later_override_wins():
  assert apply("optim.lr=0.1", "optim.lr=0.2").optim.lr == 0.2


def test_overrides_are_validated_together_in_any_order():
  # Each pair is invalid one field at a time (max_len 128 > buckets 64; 64 % 3 != 0) but valid together.
  for pair in (["data.buckets=32,64", "data.max_len=64"], ["data.max_len=64", "data.buckets=32,64"]):
    new = apply(*pair)
    assert (new.data.buckets, new.data.max_len) == ((32, 64), 64)
  for pair in (["model.n_heads=3", "model.d_model=96"], ["model.d_model=96", "model.n_heads=3"]):
    new = apply(*pair)
    assert (new.model.d_model, new.model.n_heads, new.model.head_dim) == (96, 3, 32)


def test_overrides_apply_to_an_experiment():
  cfg = C.load_experiment(str(TINY_PM))
  new = C.apply_overrides(cfg, ["batch_size=8", "data.max_k=3"])
  assert (new.batch_size, new.data.max_k, new.data.buckets) == (8, 3, (64, 96, 160))
  assert (cfg.batch_size, cfg.data.max_k) == (16, 4)


# --- one-line errors ----------------------------------------------------------------------------


def test_unknown_key():
  msg = config_error("optim.lrr=1")
  assert "'optim.lrr'" in msg and "unknown config key" in msg
  assert "lr" in msg.split("valid here:")[1]
  assert "'nope'" in config_error("nope=1")
  assert "'optim.lr.x'" in config_error("optim.lr.x=1")


@pytest.mark.parametrize("override,expected", [
    ("optim.lr=abc", "optim.lr='abc': expected float"),
    ("model.n_layers=2.5", "model.n_layers='2.5': expected int"),
    ("objective=foo", "objective='foo': expected one of lm, imitation, binary, ranked"),
    ("progress=maybe", "progress='maybe': expected true or false"),
    ("model.norm=batch", "model.norm='batch': expected one of rms, layer"),
    ("data.buckets=32,x", "data.buckets='x': expected int"),
])
def test_bad_value(override, expected):
  assert config_error(override) == expected


def test_section_as_a_value():
  assert config_error("optim=3") == "'optim' is a section; set one of its keys, e.g. optim.lr=..."


def test_missing_equals():
  assert config_error("optim.lr") == "override 'optim.lr' must look like key=value"


def test_model_validation_names_the_key():
  msg = config_error("model.n_heads=3")
  assert msg == "model.n_heads='3': model.d_model=64 must be a positive multiple of model.n_heads=3"
  msg = config_error("model.n_kv_heads=3")
  assert msg.startswith("model.n_kv_heads='3': ") and "model.n_heads=4 must be a multiple" in msg


def test_cross_section_validation():
  assert config_error("data.buckets=32,64") == "data.max_len=128 exceeds the largest bucket 64"
  assert config_error("data.buckets=64,1024") == "data.buckets reach 1024 > model.max_len=512"
  assert config_error("batch_size=0") == "batch_size must be >= 1 and steps >= 0"
  assert config_error("data.batch_tokens=200") == ("data.batch_tokens=200 must be a multiple of the row length 128 "
                                                   "(data.pack_len, or the largest bucket)")
  assert config_error("data.batch_tokens=256", "data.pack=false") == (
      "data.batch_tokens needs packed rows: data.pack=true and a ranked or binary objective")
  assert apply("data.batch_tokens=384").data.batch_tokens == 384
  assert config_error("data.context_cut=left") == "data.context_cut='left' must be 'shared' or 'each'"
  assert apply("data.context_cut=each").data.context_cut == "each" and C.TrainConfig().data.context_cut == "shared"


# --- load_experiment, to_dict / from_dict -------------------------------------------------------


def test_load_experiment():
  cfg = C.load_experiment(str(TINY_PM))
  assert isinstance(cfg, C.TrainConfig)
  assert cfg.objective == "ranked"
  assert cfg.model == dataclasses.replace(family.FAMILY["100k"], max_len=160)
  assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (64, 2, 2)
  assert cfg.data.buckets == (64, 96, 160)
  assert (cfg.optim.lr, cfg.optim.warmup_steps) == (3e-3, 20)
  assert (cfg.batch_size, cfg.steps, cfg.eval_every) == (16, 300, 100)


def test_load_experiment_errors(tmp_path):
  with pytest.raises(C.ConfigError, match="not found"):
    C.load_experiment(str(tmp_path / "missing.py"))
  with pytest.raises(C.ConfigError, match="neither a file nor an importable module"):
    C.load_experiment("hhh_no_such_experiment_module")
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(C.ConfigError, match="defines no config"):
    C.load_experiment(str(empty))


def test_dict_round_trip():
  cfg = apply("optim.lr=0.25", "model.n_kv_heads=2", "data.max_len=96", "data.buckets=32,96", "progress=false",
              cfg=C.load_experiment(str(TINY_PM)))
  d = C.to_dict(cfg)
  assert d["data"]["buckets"] == (32, 96)
  assert d["optim"]["lr"] == 0.25 and d["model"]["n_kv_heads"] == 2
  assert C.from_dict(C.TrainConfig, d) == cfg
  # Through JSON, tuples come back as lists and are turned back into tuples.
  back = C.from_dict(C.TrainConfig, json.loads(C.dumps(cfg)))
  assert back == cfg and back.data.buckets == (32, 96)
  assert C.from_dict(C.TrainConfig, C.to_dict(C.TrainConfig())) == C.TrainConfig()
  assert C.from_dict(ModelConfig, {"d_model": 32, "n_heads": 2}) == ModelConfig(d_model=32, n_heads=2)


def test_from_dict_rejects_unknown_keys():
  d = C.to_dict(C.TrainConfig())
  d["optim"]["lrr"] = 1
  with pytest.raises(C.ConfigError, match="unknown OptimConfig keys: lrr"):
    C.from_dict(C.TrainConfig, d)


# --- the `hhh` command --------------------------------------------------------------------------

CLI_CASES = {
    "unknown_key": ["train", str(TINY_PM), "--workdir", "{tmp}/a", "--set", "optim.lrr=1"],
    "bad_value": ["train", str(TINY_PM), "--workdir", "{tmp}/b", "--set", "optim.lr=abc"],
    "model_list": ["model", "list"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Runs the CLI cases concurrently (each pays for the jax import once); returns {case: (rc, out, err, tmp)}."""
  tmp = tmp_path_factory.mktemp("cli")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  procs = {name: subprocess.Popen([sys.executable, "-m", "hhh.cli", *(a.format(tmp=tmp) for a in args)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, args in CLI_CASES.items()}
  results = {}
  for name, p in procs.items():
    out, err = p.communicate(timeout=120)
    results[name] = (p.returncode, out, err)
  return results, tmp


def test_cli_unknown_key_is_one_line(cli):
  results, tmp = cli
  rc, out, err = results["unknown_key"]
  assert rc == 2
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("hhh: error: unknown config key 'optim.lrr'")
  assert out == ""
  assert not (tmp / "a").exists()  # failed before training touched the workdir


def test_cli_bad_value_is_one_line(cli):
  results, tmp = cli
  rc, out, err = results["bad_value"]
  assert rc == 2
  assert err.splitlines() == ["hhh: error: optim.lr='abc': expected float"]
  assert out == ""
  assert not (tmp / "b").exists()


def test_cli_model_list(cli):
  rc, out, err = cli[0]["model_list"]
  assert rc == 0, err
  lines = out.splitlines()
  assert lines[0].split() == ["name", "layers", "d_model", "heads", "kv", "d_ff", "ctx", "non-emb", "total",
                              "train", "FLOPs/tok"]
  assert len(lines) == 1 + len(family.FAMILY)
  assert [line.split()[0] for line in lines[1:]] == list(family.FAMILY)
  assert list(family.FAMILY)[:3] == ["100k", "1.6m", "5m"]
  # 100k: 2 layers, d_model 64, 2 heads (MHA), SwiGLU d_ff = 8 * ceil(8 * 64 / 3 / 8) = 176, ctx 512.
  assert lines[1].split()[:7] == ["100k", "2", "64", "2", "2", "176", "512"]
