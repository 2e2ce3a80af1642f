"""Reward bundles, the Python API and the pure JAX reward function."""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest

import hhh.reward
from hhh.data.schema import write_jsonl
from hhh.data.toy import generate_comparisons
from hhh.reward import export as export_lib
from hhh.train import checkpoint as ckpt_lib
from tests.conftest import TINY_EXPERIMENT, run_hhh


@pytest.fixture(scope="module")
def pm_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("pm")
  exp = root / "exp.py"
  exp.write_text(TINY_EXPERIMENT)
  run_hhh("train", exp, "--workdir", root / "run", "--set", "steps=3")
  proc = run_hhh("export", root / "run", "--out", root / "bundle")
  assert "wrote reward bundle" in proc.stdout
  return root


@pytest.fixture(scope="module")
def rm(pm_run):
  return hhh.reward.load(pm_run / "bundle", batch_size=4)


def _pairs(n=23, seed=5):
  cs = generate_comparisons(n, k=2, seed=seed)
  return [c.context for c in cs for _ in c.responses], [r for c in cs for r in c.responses]


def test_bundle_round_trip(pm_run, rm):
  info = json.loads((pm_run / "bundle" / "bundle.json").read_text())
  assert info["objective"] == "ranked" and info["format_version"] == 1
  assert info["end_of_context"]["token_id"] == 257 and info["end_of_context"]["pad_id"] == 256
  assert info["tokenizer"] == {"kind": "byte"} and info["max_len"] == 64
  ck, _ = ckpt_lib.load_params(pm_run / "run")
  # Keys compared as text: a checkpoint read without a target gives "0" where the model's own tree has 0.
  flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                    for path, v in jax.tree_util.tree_leaves_with_path(t)}
  a, b = flat(ck), flat(rm.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Normalization: mean/std of the raw rewards of every held-out response (32 toy comparisons of 2), recomputed.
  norm = info["normalization"]
  assert norm["n"] == 64
  cs = generate_comparisons(32, k=2, seed=1)
  raw = rm.score([c.context for c in cs for _ in c.responses], [r for c in cs for r in c.responses])
  np.testing.assert_allclose([norm["mean"], norm["std"]], [raw.mean(), raw.std()], rtol=1e-5)
  np.testing.assert_allclose(rm.score(["a"], ["b"], normalize=True),
                             (rm.score(["a"], ["b"]) - norm["mean"]) / norm["std"], rtol=1e-6)


def test_rewards_do_not_depend_on_batching(pm_run, rm):
  ctx, resp = _pairs()
  ref = rm.score(ctx, resp)
  for batch_size in (1, 7, 16):
    np.testing.assert_allclose(hhh.reward.load(pm_run / "bundle", batch_size=batch_size).score(ctx, resp), ref,
                               atol=1e-5, err_msg=f"batch_size={batch_size}")
  for i in (0, 5, 17):
    np.testing.assert_allclose(rm.score([ctx[i]], [resp[i]]), ref[i:i + 1], atol=1e-5)
  perm = np.random.default_rng(0).permutation(len(ctx))
  np.testing.assert_allclose(rm.score([ctx[i] for i in perm], [resp[i] for i in perm]), ref[perm], atol=1e-5)
  assert len(set(np.round(ref, 6))) > 10  # real, varied rewards


def test_pure_function_matches_score(rm):
  ctx, resp = _pairs(6)
  seqs, _ = rm.encode(ctx, resp)
  L = max(map(len, seqs))
  tokens = np.full((len(seqs), L), rm.tokenizer.pad_id, np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  lengths = np.asarray([len(s) for s in seqs], np.int32)
  fn = jax.jit(rm.reward_fn())
  np.testing.assert_allclose(np.asarray(fn(rm.params, tokens, lengths)), rm.score(ctx, resp), atol=1e-5)


def test_compare_ranks_and_gives_probabilities(rm):
  out = rm.compare("Human: hi\n\nAssistant:", [" Hello!", " Ugh.", " I can't help with that."])
  r = np.asarray(out["rewards"])
  assert out["ranking"] == list(np.argsort(-r, kind="stable"))
  p = np.asarray(out["preference_probabilities"])
  np.testing.assert_allclose(p + p.T, 1.0, atol=1e-6)
  np.testing.assert_allclose(p[0, 1], 1 / (1 + np.exp(-(r[0] - r[1]))), rtol=1e-6)


def test_long_context_is_truncated_from_the_left_with_a_counted_warning(rm):
  before = rm.truncated
  long_ctx = "x" * 500 + "Human: hi\n\nAssistant:"
  with pytest.warns(UserWarning, match="1 of 2 sequences were longer than max_len=64"):
    r = rm.score([long_ctx, "short"], [" yes", " yes"])
  assert rm.truncated == before + 1
  # Only the last 64 - len(" yes") - 1 context bytes survive, so any longer prefix gives the same reward.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    np.testing.assert_allclose(rm.score(["y" * 900 + long_ctx[-59:]], [" yes"]), r[:1], atol=1e-6)


def test_truncation_warning_counts_pairs_not_cuts(rm):
  # max_len 64 bytes. A response of 100 bytes is cut to 63 and leaves no room for its context either: that is one
  # truncated pair, not two (counting both cuts once gave "62 of 58 sequences").
  contexts = ["Human: hi", "x" * 100, "short", ""]
  responses = ["y" * 100, " yes", " yes", "z" * 100]
  seqs, cut = rm.encode(contexts, responses)
  assert [len(s) for s in seqs] == [64, 64, 10, 64] and cut == 3
  assert list(seqs[0][:-1]) == [ord("y")] * 63  # the context is gone entirely
  before = rm.truncated
  with pytest.warns(UserWarning, match=r"^3 of 4 sequences were longer than max_len=64 tokens") as record:
    rm.score(contexts, responses)
  assert len(record) == 1 and rm.truncated == before + 3
  assert str(record[0].message).endswith(f"; {before + 3} so far")


def test_export_refuses_an_lm_run(tmp_path, tiny_experiment):
  run_hhh("train", tiny_experiment, "--workdir", tmp_path / "lm", "--set", "objective=lm")
  proc = run_hhh("export", tmp_path / "lm", "--out", tmp_path / "b", check=False)
  assert proc.returncode == 1
  assert [l for l in proc.stderr.splitlines() if l.startswith("hhh: error:")][0].endswith(
      "only a preference model (ranked or binary) has a reward head worth exporting")
  assert not (tmp_path / "b").exists()


def test_export_with_a_reference_file(pm_run, tmp_path):
  ref = tmp_path / "ref.jsonl"
  write_jsonl(ref, generate_comparisons(5, k=3, seed=9))
  info = export_lib.export(pm_run / "run", tmp_path / "b2", reference=str(ref))
  assert info["normalization"]["n"] == 15 and info["normalization"]["reference"] == str(ref)
