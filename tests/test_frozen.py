"""Frozen-trunk caching and tails: a cached run computes what the uncached model computes, on a tiny random trunk."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hhh import objectives as obj
from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer
from hhh.frozen import cache as cache_lib
from hhh.frozen import tail as tail_lib
from hhh.frozen import train as train_lib
from hhh.model.config import ModelConfig
from hhh.pretrained import LM
from hhh.model.params import graphdef_and_params

N_LAYERS = 4
COMPARISONS = [
    Comparison("Where is Paris?", (" In France.", " On the moon.", " Nowhere at all, really."), (2.0, 0.0, 1.0),
               "t", "c0"),
    Comparison("Name a colour.", (" Blue.", " Seven."), (1.0, 0.0), "t", "c1"),
    Comparison("hi", (" Hello!", " Go away.", " Hi, how can I help?", " ..."), (1.0, 0.0, 1.0, 0.0), "t", "c2"),
    Comparison("2+2?", (" 4", " 5"), (1.0, 0.0), "t", "c3", meta={"group": "arith"}),
]


@pytest.fixture(scope="module")
def lm() -> LM:
  cfg = ModelConfig(d_model=32, n_layers=N_LAYERS, n_heads=4, n_kv_heads=2, max_len=128)
  _, params = graphdef_and_params(cfg, jax.random.PRNGKey(0))
  params["embed"] = params["embed"] * 10.0   # sharper log-probs than a random init's near-uniform ones
  return LM(cfg, params, ByteTokenizer(), name="random-4")


@pytest.fixture(scope="module")
def cache32(lm, tmp_path_factory) -> cache_lib.Cache:
  spec = cache_lib.CacheSpec(layers=(2, N_LAYERS), max_len=64, max_k=4, dtype="float32", shard_tokens=100)
  return cache_lib.build(lm, COMPARISONS, tmp_path_factory.mktemp("cache"), spec, name="toy", progress=False)


def _uncached_states(lm, c: Comparison, layer: int) -> list[np.ndarray]:
  from hhh.data import pipeline
  from hhh.model.transformer import Transformer
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(lm.cfg, rngs=nnx.Rngs(0)))), lm.params)
  ex = pipeline.encode_comparison(c, lm.tokenizer, 64, 4)
  return [np.asarray(model.block_inputs(jnp.asarray(s)[None], jnp.ones((1, len(s)), bool), [layer])[layer][0])
          for s in ex.seqs]


def test_cache_layout_matches_the_pipeline_rows(cache32, lm):
  assert len(cache32) == 4
  assert [c["k"] for c in cache32.comparisons] == [3, 2, 4, 2]
  assert cache32.comparisons[3]["group"] == "arith"
  # Shards of ~100 tokens hold whole rows, and every row comes back as the pipeline tokenized it.
  assert len(cache32.manifest["shards"]) > 1
  ids = list(lm.tokenizer.encode("Where is Paris?")) + list(lm.tokenizer.encode(" In France.")) + [lm.tokenizer.eoc_id]
  np.testing.assert_array_equal(cache32.row_tokens(0), ids)
  assert cache32.rows_Rx4[0, 2] == len(lm.tokenizer.encode("Where is Paris?"))
  np.testing.assert_array_equal(cache32.scores_R[:3], [2.0, 0.0, 1.0])


def test_cached_states_equal_a_full_forward_per_row(cache32, lm):
  for ci in (0, 2):
    for layer in (2, N_LAYERS):
      want = _uncached_states(lm, COMPARISONS[ci], layer)
      for r, w in zip(cache32.rows_of(ci), want):
        np.testing.assert_allclose(cache32.row_states(layer, r), w, atol=1e-5, rtol=1e-5)


def test_same_inputs_same_directory_and_fingerprint_changes_with_data(cache32, lm):
  spec = cache_lib.CacheSpec(layers=(2, N_LAYERS), max_len=64, max_k=4, dtype="float32", shard_tokens=100)
  again = cache_lib.build(lm, COMPARISONS, cache32.path.parent, spec, name="toy", progress=False)
  assert again.path == cache32.path
  other = cache_lib.fingerprint(lm, COMPARISONS[:3], spec)
  assert other["data_sha256"] != cache32.fingerprint["data_sha256"]
  assert other["params_sha256"] == cache32.fingerprint["params_sha256"]
  with pytest.raises(ValueError, match="layer 1 is not cached"):
    cache32.row_states(1, 0)


def _uncached_loss(lm, run, trainable, comps):
  """The same objective through a plain depth-d Transformer with the tail merged in (no cache anywhere)."""
  from hhh.data import pipeline
  from hhh.model.transformer import Transformer
  cfg_d, params = tail_lib.merged_params(lm.params, lm.cfg, run.tail, trainable)
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg_d, rngs=nnx.Rngs(0)))), params)
  r, scores, valid = np.zeros((len(comps), 4)), np.zeros((len(comps), 4)), np.zeros((len(comps), 4), bool)
  for b, ci in enumerate(comps):
    ex = pipeline.encode_comparison(COMPARISONS[ci], lm.tokenizer, 64, 4)
    for k, s in enumerate(ex.seqs):
      h = model(jnp.asarray(s)[None], jnp.ones((1, len(s)), bool))
      r[b, k] = float(model.reward(h, jnp.ones((1, len(s)), bool))[0])
      scores[b, k], valid[b, k] = ex.scores[k], True
  return float(obj.ranked_loss(jnp.asarray(r, jnp.float32), jnp.asarray(scores), jnp.asarray(valid))[0])


@pytest.mark.parametrize("tier", ["lora", "head"])
def test_cached_and_uncached_ranked_loss_agree(cache32, lm, tier):
  run = train_lib.RunConfig(objective="ranked", depth=N_LAYERS, tier=tier, steps=2, batch_size=4, lr=1e-2)
  trainable, log = train_lib.train(lm, run, cache32, progress=False)
  assert len(log) == 2 and all(np.isfinite(l["loss"]) for l in log)
  if tier == "lora":   # b starts at 0; after two steps the adapters have moved
    assert float(jnp.abs(trainable["lora"][1]["mlp"]["w_down"]["b"]).max()) > 0
  comps = [0, 1, 2, 3]
  K, L = 4, 64
  batch = cache32.batch(comps, layer=run.tail.input_layer, K=K, L=L)
  cached = float(train_lib.loss_fn(trainable, tail_lib.frozen_params(lm.params, run.tail), batch,
                                   cfg=lm.cfg, spec=run.tail, objective="ranked", T=32)[0])
  assert cached == pytest.approx(_uncached_loss(lm, run, trainable, comps), abs=1e-5)


def test_imitation_scores_equal_the_full_models_loglik_at_full_depth(cache32, lm):
  """Depth = n_layers with the identity readout is the pretrained LM: per-token means and sums match a full
  forward's log-softmax over the response tokens and <eoc>."""
  from hhh.data import pipeline
  from hhh.model.transformer import Transformer
  run = train_lib.RunConfig(objective="imitation", depth=N_LAYERS, tier="head")
  trainable = tail_lib.init_trainable(lm.cfg, run.tail, "imitation", lora_key=None, head_key=None)
  got_mean = train_lib.score(lm, run, trainable, cache32, variant="mean", batch_size=3)
  got_sum = train_lib.score(lm, run, trainable, cache32, variant="sum", batch_size=3)
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(lm.cfg, rngs=nnx.Rngs(0)))), lm.params)
  for ci, c in enumerate(COMPARISONS):
    ex = pipeline.encode_comparison(c, lm.tokenizer, 64, 4)
    for k, (s, start) in enumerate(zip(ex.seqs, ex.starts)):
      logits = np.asarray(model.lm_logits(model(jnp.asarray(s)[None])), np.float64)[0]
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
          - logits.max(-1, keepdims=True)
      lp = [logp[t - 1, s[t]] for t in range(max(start, 1), len(s))]
      assert got_sum[ci][k] == pytest.approx(sum(lp), abs=1e-3)
      assert got_mean[ci][k] == pytest.approx(np.mean(lp), abs=1e-4)


def test_float16_cache_is_close_and_imitation_trains(lm, tmp_path):
  spec = cache_lib.CacheSpec(layers=(2, N_LAYERS), max_len=64, max_k=4)
  c16 = cache_lib.build(lm, COMPARISONS, tmp_path, spec, name="toy16", progress=False)
  assert np.load(c16.path / "shard_00000" / "h02.npy", mmap_mode="r").dtype == np.float16
  run = train_lib.RunConfig(objective="imitation", depth=N_LAYERS, tier="lora", steps=3, batch_size=2, lr=1e-2)
  trainable, log = train_lib.train(lm, run, c16, progress=False)
  assert all(np.isfinite(l["lm_loss"]) for l in log) and log[0]["tokens"] > 0
  assert float(jnp.abs(trainable["readout"] - jnp.eye(32)).max()) > 0   # imitation trains the readout too
  res = train_lib.evaluate(lm, run, trainable, c16)
  assert set(res) == {"ids", "groups", "top1_mean", "pairwise_mean", "top1_sum", "pairwise_sum"}
  assert res["ids"] == ["c0", "c1", "c2", "c3"] and len(res["top1_mean"]) == 4


@pytest.mark.parametrize("objective", ["ranked", "imitation"])
def test_head_features_give_the_scores_of_the_generic_path(cache32, lm, objective):
  """The head tier trains on precomputed <eoc> and response-window features; they must score exactly what the
  generic path (final norm over the full cached rows) scores."""
  run = train_lib.RunConfig(objective=objective, depth=N_LAYERS, tier="head")
  k = train_lib.keys(1)
  trainable = tail_lib.init_trainable(lm.cfg, run.tail, objective, lora_key=k["lora"], head_key=k["head"],
                                      readout=np.eye(32) + 0.1 * np.asarray(jax.random.normal(k["data"], (32, 32))))
  frozen = tail_lib.frozen_params(lm.params, run.tail)
  feats = train_lib.HeadFeatures(lm, cache32, N_LAYERS)
  comps = [0, 1, 2, 3]
  T = train_lib.response_window(cache32)
  full = cache32.batch(comps, layer=N_LAYERS, K=4, L=64)
  slow = train_lib.response_scores(lm.cfg, run.tail, objective, trainable, frozen, full, T)
  # Every response's score from the packed all-rows scorer (evaluation), every variant in one pass.
  rows = train_lib.head_row_scores(run, trainable, frozen, feats)
  variants = ("reward",) if objective == "ranked" else ("sum", "mean")
  for v, b in zip(variants, jax.tree.leaves(slow)):
    for i, c in enumerate(comps):
      rs = np.asarray(cache32.rows_of(c))
      np.testing.assert_allclose(rows[v][rs], np.asarray(b)[i, :len(rs)], atol=1e-4)
  # Training batches: PM features and packed imitation positions give the generic path's loss.
  fast_batch = feats.batch(comps, 4) if objective == "ranked" else feats.packed(comps, top_only=True)
  fast_loss, m = train_lib.head_loss_fn(trainable, frozen, fast_batch, objective=objective)
  slow_loss, _ = train_lib.loss_fn(trainable, frozen, full, cfg=lm.cfg, spec=run.tail, objective=objective, T=T)
  np.testing.assert_allclose(float(fast_loss), float(slow_loss), rtol=1e-5)
  if objective == "imitation":
    top = [int(np.argmax([cache32.scores_R[r] for r in cache32.rows_of(c)])) for c in comps]
    want = sum(int(cache32.rows_Rx4[r, 1] - cache32.rows_Rx4[r, 2])
               for c, t in zip(comps, top) for r in [cache32.rows_of(c)[t]])
    assert int(m["tokens"]) == want


def test_correctness_counts_ties_and_levels():
  got = train_lib.correctness([np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0]), np.array([0.0, 2.0, 1.0])],
                              [np.array([2.0, 0.0, 1.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0, 1.0])])
  np.testing.assert_array_equal(got["top1"], [1.0, 0.0, 0.0])
  # Row 2: pairs (0>1): 0 > 2 wrong; (2>1): 1 < 2 wrong -> 0. Row 1: a tie is half right.
  np.testing.assert_allclose(got["pairwise"], [1.0, 0.5, 0.0])


def test_a_lora_tail_exports_as_a_bundle_that_scores_raw_text_like_the_cache(cache32, lm, tmp_path):
  from hhh.reward import api
  run = train_lib.RunConfig(objective="ranked", depth=N_LAYERS, tier="lora", steps=2, batch_size=4, lr=1e-2)
  trainable, _ = train_lib.train(lm, run, cache32, progress=False)
  cached = train_lib.score(lm, run, trainable, cache32)
  tail_lib.write_bundle(tmp_path / "pm", lm, run.tail, trainable, objective="ranked", max_len=64)
  rm = api.RewardModel(tmp_path / "pm")
  for ci in (0, 2):
    c = COMPARISONS[ci]
    got = rm.score([c.context] * c.k, list(c.responses))
    np.testing.assert_allclose(got, cached[ci], atol=1e-4)
  with pytest.raises(ValueError, match="only a reward tail"):
    tail_lib.write_bundle(tmp_path / "lm", lm, run.tail, trainable, objective="imitation")


def test_rule_baselines_on_hand_made_options():
  from hhh.frozen import data as data_lib
  cs = [Comparison("q", (" No, it does not.", " Yes it does, always and forever."), (1.0, 0.0), "t", "a"),
        Comparison("q", (" It can't.", " It can."), (0.0, 1.0), "t", "b")]
  got = data_lib.rules_table(cs)
  assert got["negation"]["top1"] == [1.0, 0.0]       # both first options hold a negation; only 'a' is right
  assert got["no_negation"]["top1"] == [0.0, 1.0]
  assert got["longer"]["top1"] == [0.0, 0.0]         # " It can't." (10 bytes) is longer than " It can." (8)
  assert got["shorter"]["top1"] == [1.0, 1.0]
