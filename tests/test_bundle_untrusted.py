"""Reward bundles from strangers: each fault a crafted bundle once caused is a one-line ValueError now."""

from __future__ import annotations

import json
import os
import shutil
import threading

import jax
import numpy as np
import pytest

import hhh.reward
from hhh.model.config import ModelConfig
from hhh.model import bundle as bundle_lib
from hhh.model import validate
from hhh.model.params import graphdef_and_params
from tests.conftest import run_hhh

CFG = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """An untrained (random) but complete bundle: enough to load, score and break."""
  out = tmp_path_factory.mktemp("untrusted") / "bundle"
  _, params = graphdef_and_params(CFG, jax.random.key(0))
  bundle_lib.write(out, CFG, params, {"kind": "byte"}, objective="ranked", max_len=64,
                   normalization={"mean": 0.5, "std": 2.0, "n": 10, "reference": "made up"})
  return out


@pytest.fixture
def bundle(pristine, tmp_path):
  return shutil.copytree(pristine, tmp_path / "bundle", symlinks=True)


def _edit(bundle, fn) -> None:
  info = json.loads((bundle / "bundle.json").read_text())
  fn(info)
  (bundle / "bundle.json").write_text(json.dumps(info))


def _refused(bundle, match: str) -> str:
  with pytest.raises(ValueError, match=match) as e:
    hhh.reward.load(bundle)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_the_pristine_bundle_loads_and_scores(bundle):
  rm = hhh.reward.load(bundle)
  assert (rm.max_len, rm.mean, rm.std) == (64, 0.5, 2.0)
  raw = rm.score(["Human: hi\n\nAssistant:"], [" Hello!"])
  np.testing.assert_allclose(rm.score(["Human: hi\n\nAssistant:"], [" Hello!"], normalize=True),
                             (raw - 0.5) / 2.0, rtol=1e-6)


def test_bundle_json_symlinked_to_dev_zero(bundle):
  # Read as a file, /dev/zero never ends: this once grew past 3 GB of RSS.
  os.remove(bundle / "bundle.json")
  os.symlink("/dev/zero", bundle / "bundle.json")
  msg = _refused(bundle, "is a symlink; it must be a regular file")
  assert msg == f"{bundle / 'bundle.json'}: is a symlink; it must be a regular file"


def test_bundle_json_that_is_a_fifo(bundle):
  # Opening a FIFO for reading blocks until a writer comes: this once hung. A thread, so a regression fails.
  os.remove(bundle / "bundle.json")
  os.mkfifo(bundle / "bundle.json")
  errors = []
  reader = threading.Thread(target=lambda: errors.append(pytest.raises(ValueError, hhh.reward.load, bundle)),
                            daemon=True)
  reader.start()
  reader.join(30)
  assert not reader.is_alive(), "reading a FIFO bundle.json hung"
  assert str(errors[0].value) == f"{bundle / 'bundle.json'}: is a FIFO, not a regular file"


def test_bundle_json_that_is_a_directory_or_too_big(bundle, monkeypatch):
  size = (bundle / "bundle.json").stat().st_size
  monkeypatch.setattr(bundle_lib, "MAX_INFO_BYTES", size - 1)
  _refused(bundle, f"bundle.json: is {size} bytes, over the limit of {size - 1}$")
  monkeypatch.undo()
  os.remove(bundle / "bundle.json")
  (bundle / "bundle.json").mkdir()
  _refused(bundle, "bundle.json: is a directory, not a regular file$")


@pytest.mark.parametrize("max_len", [0, -3, 1, 65, "64", 64.0, True, None])
def test_bad_max_len(bundle, max_len):
  # 0 or negative once ended in a StopIteration traceback from the bucket search.
  _edit(bundle, lambda info: info.update(max_len=max_len))
  _refused(bundle, rf"bundle.json: max_len must be an integer from 2 to model.max_len=64, not {json.dumps(max_len)}$")


@pytest.mark.parametrize("field,value,message", [
    ("d_model", "32", 'model.d_model must be an integer from 1 to 32768, not "32"'),  # once a TypeError deep in the model
    ("d_model", 0, "model.d_model must be an integer from 1 to 32768, not 0"),
    ("n_layers", 1.5, "model.n_layers must be an integer from 1 to 512, not 1.5"),
    # 2000 layers once hung `hhh export` and `hhh serve` tracing the model, before any shape check.
    ("n_layers", 2000, "model.n_layers must be an integer from 1 to 512, not 2000"),
    ("max_len", 10**12, "model.max_len must be an integer from 1 to 1048576, not 1000000000000"),
    ("vocab_size", 1 << 22, "model.vocab_size must be an integer from 1 to 2097152, not 4194304"),
    ("n_kv_heads", -1, "model.n_kv_heads must be an integer from 0 to 1024, not -1"),
    ("norm", "batch", "model.norm must be one of rms, layer, not \"batch\""),
    ("tie_embeddings", 1, "model.tie_embeddings must be true or false, not 1"),
    ("norm_eps", 0, "model.norm_eps must be a finite number > 0 and <= 1, not 0"),
    ("rotary_pct", 2.0, "model.rotary_pct must be a finite number > 0 and <= 1, not 2.0"),
    ("d_model", 33, "model.d_model=33 must be a positive multiple of model.n_heads=2"),
    ("flavour", "x", "model.flavour is not a model config field"),
])
def test_bad_model_fields(bundle, field, value, message):
  _edit(bundle, lambda info: info["model"].update({field: value}))
  msg = _refused(bundle, "bundle.json: model")
  assert msg == f"{bundle / 'bundle.json'}: {message}"


@pytest.mark.parametrize("std", [0, 0.0, -1.0, float("nan"), float("inf"), "1", None])
def test_bad_normalization_std(bundle, std):
  # std 0 once made /get_reward answer -Infinity, which is not JSON.
  _edit(bundle, lambda info: info["normalization"].update(std=std))
  _refused(bundle, rf"bundle.json: normalization.std must be a finite number > 0, not ")


def test_other_bad_fields(bundle):
  cases = [(lambda i: i.update(format_version=2), "format_version 2 is not 1"),
           (lambda i: i.update(objective="lm"), 'objective must be one of ranked, binary, not "lm"'),
           (lambda i: i.pop("tokenizer"), "missing field 'tokenizer'"),
           (lambda i: i.update(tokenizer={"kind": "sentencepiece"}), "tokenizer: unknown tokenizer kind"),
           (lambda i: i["model"].update(vocab_size=100), "the tokenizer has 259 ids but model.vocab_size is 100"),
           (lambda i: i["end_of_context"].update(token_id=3), "end_of_context.token_id is 3 but the tokenizer's is 257"),
           (lambda i: i["normalization"].update(mean=float("-inf")), "normalization.mean must be a finite number"),
           (lambda i: i.update(normalization=[0, 1]), "normalization must be an object, not list")]
  original = (bundle / "bundle.json").read_text()
  for edit, message in cases:
    (bundle / "bundle.json").write_text(original)
    _edit(bundle, edit)
    assert message in _refused(bundle, "bundle.json: "), message
  (bundle / "bundle.json").write_text("[1, 2")
  _refused(bundle, "bundle.json: not valid JSON: ")
  (bundle / "bundle.json").write_bytes(b"\xff\xfe\x00")
  _refused(bundle, "bundle.json: not valid JSON: ")


def test_too_many_parameters_is_refused_before_any_allocation(bundle):
  # Every dimension within its own bound, but 1M positions x 32768 wide x 512 layers is far past MAX_PARAMS.
  _edit(bundle, lambda info: info["model"].update(d_model=1 << 15, n_heads=2, n_layers=512, max_len=1 << 20))
  msg = _refused(bundle, "bundle.json: the model would have ")
  assert msg.endswith(f"parameters, over the limit of {validate.MAX_PARAMS:,}")


def test_write_refuses_what_read_would_refuse(tmp_path):
  # `hhh convert --as-bundle` once wrote bundles the reader then refused (std 0, max_len 1e12).
  _, params = graphdef_and_params(CFG, jax.random.key(0))
  for kwargs, message in [
      (dict(max_len=64, normalization={"mean": 0.0, "std": 0.0, "n": 1, "reference": None}),
       "refusing to write a reward bundle: normalization.std must be a finite number > 0, not 0.0"),
      (dict(max_len=10**12, normalization=None),
       "refusing to write a reward bundle: max_len must be an integer from 2 to model.max_len=64, not 1000000000000")]:
    with pytest.raises(ValueError) as e:
      bundle_lib.write(tmp_path / "b", CFG, params, {"kind": "byte"}, objective="ranked", **kwargs)
    assert str(e.value) == message
    assert not (tmp_path / "b").exists()


def test_params_symlink_outside_the_bundle(bundle, tmp_path):
  shutil.move(bundle / "params", tmp_path / "elsewhere")
  os.symlink(tmp_path / "elsewhere", bundle / "params")
  _refused(bundle, rf"params: points outside the bundle \(to {tmp_path / 'elsewhere'}\)")
  # One file inside params/ that leads out is refused too.
  os.remove(bundle / "params")
  shutil.copytree(tmp_path / "elsewhere", bundle / "params")
  victim = next(p for p in sorted((bundle / "params").rglob("*")) if p.is_file())
  os.remove(victim)
  os.symlink("/etc/hostname", victim)
  _refused(bundle, "points outside the bundle")
  # A symlink that stays inside the bundle is fine.
  shutil.rmtree(bundle / "params")
  shutil.copytree(tmp_path / "elsewhere", bundle / "params.v1")
  os.symlink("params.v1", bundle / "params")
  assert hhh.reward.load(bundle).score(["a"], ["b"]).shape == (1,)


def test_params_that_do_not_match_the_config(bundle):
  _edit(bundle, lambda info: info["model"].update(d_model=64))
  _refused(bundle, "params: not the parameters of the model bundle.json describes: ")


def test_bucket_and_batch_size_checks(bundle):
  with pytest.raises(ValueError, match=r"buckets \(16, 32\) must be positive and reach max_len=64"):
    hhh.reward.load(bundle, buckets=(32, 16))
  with pytest.raises(ValueError, match="batch_size must be a positive integer, not 0"):
    hhh.reward.load(bundle, batch_size=0)


def test_cli_refuses_a_bad_bundle_in_one_line(bundle):
  _edit(bundle, lambda info: info["normalization"].update(std=0))
  proc = run_hhh("serve", bundle, "--port", "0", check=False, timeout=120)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.strip().splitlines()[-1] == \
      f"hhh: error: {bundle / 'bundle.json'}: normalization.std must be a finite number > 0, not 0"
