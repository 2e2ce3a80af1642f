"""Shared-context packing: a packed row scores exactly what the separate sequences score.

One tiny random-init bundle (no training) with every parameter perturbed, so
activations and rewards are O(1) and 1e-5 is a real tolerance. Shapes are kept
to a few buckets (32..256 slots, 4 rows), since XLA compiles dominate on CPU.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from orbax.checkpoint import v1 as ocp

from hhh import config as config_lib
from hhh.data.pipeline import collate, encode_all
from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer
from hhh.model import bundle as bundle_lib
from hhh.reward.api import RewardModel
from hhh.reward import packed as pk
from hhh.train.step import loss_fn

ATOL = 1e-5
CFG = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=128)
TOK = ByteTokenizer()


def _params(cfg: ModelConfig, seed: int = 0, noise: float = 0.1):
  # Zero biases, unit norm scales and the 0.02-std init would let a misplaced term hide under 1e-5.
  state = nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + noise * rng.standard_normal(x.shape, np.float32)),
                      nnx.to_pure_dict(state))


def write_bundle(path: pathlib.Path, cfg: ModelConfig, params) -> pathlib.Path:
  """A bundle as `hhh.reward.export.export` lays it out, from in-memory params (no training run)."""
  path = pathlib.Path(path).absolute()  # orbax wants absolute paths
  path.mkdir(parents=True)
  ocp.save_pytree(path / "params", params)
  info = {
      "format_version": bundle_lib.FORMAT_VERSION, "model": config_lib.to_dict(cfg), "tokenizer": TOK.to_json(),
      "objective": "ranked",
      "end_of_context": {"token_id": TOK.eoc_id, "appended": True, "pad_id": TOK.pad_id},
      "max_len": cfg.max_len, "source_checkpoint": None,
      "normalization": {"mean": 0.5, "std": 2.0, "n": 0, "reference": None}}
  (path / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
  return path


@pytest.fixture(scope="module")
def params():
  return _params(CFG)


@pytest.fixture(scope="module")
def rm(tmp_path_factory, params):
  return RewardModel(write_bundle(tmp_path_factory.mktemp("pk") / "bundle", CFG, params), batch_size=4)


def _text(rng, n: int) -> str:
  return "".join(rng.choice(list("abcdefgh ijklmnop\nqrstuvwxyz.,?"), n))


def test_pack_and_mask_hand_example():
  # Context c0 c1, response a = a0 a1, response b = b0; each response gets an <eoc> (E); one padding slot.
  row = pk.pack([10, 11], [[20, 21], [30]], eoc_id=TOK.eoc_id)
  np.testing.assert_array_equal(row["tokens_L"], [10, 11, 20, 21, TOK.eoc_id, 30, TOK.eoc_id])
  np.testing.assert_array_equal(row["positions_L"], [0, 1, 2, 3, 4, 2, 3])
  np.testing.assert_array_equal(row["segment_L"], [0, 0, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(row["eoc_index_K"], [4, 6])
  segment = np.concatenate([row["segment_L"], [pk.PAD_SEGMENT]])[None]
  valid = segment != pk.PAD_SEGMENT
  #          c0 c1 a0 a1 Ea b0 Eb pad   (keys)
  expect = [[1, 0, 0, 0, 0, 0, 0, 0],   # c0
            [1, 1, 0, 0, 0, 0, 0, 0],   # c1
            [1, 1, 1, 0, 0, 0, 0, 0],   # a0
            [1, 1, 1, 1, 0, 0, 0, 0],   # a1
            [1, 1, 1, 1, 1, 0, 0, 0],   # Ea
            [1, 1, 0, 0, 0, 1, 0, 0],   # b0: the context and itself, not response a
            [1, 1, 0, 0, 0, 1, 1, 0],   # Eb
            [1, 1, 0, 0, 0, 0, 0, 0]]   # pad query: the context only, never read
  mask = np.asarray(pk.packed_mask(segment, valid))
  np.testing.assert_array_equal(mask[0], np.asarray(expect, bool))
  np.testing.assert_array_equal(np.asarray(pk.packed_mask(segment)), mask)  # valid defaults to segment != pad


def test_transformer_overrides_default_and_cache_guard(params):
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))), params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 9)), jnp.int32)
  valid = jnp.asarray([[True] * 9, [True] * 6 + [False] * 3])
  positions = jnp.maximum(jnp.cumsum(valid, -1) - 1, 0)
  mask = (jnp.arange(9)[:, None] >= jnp.arange(9)[None, :])[None] & valid[:, None, :]
  # The overrides, given what the model builds itself, reproduce its default output bit for bit.
  np.testing.assert_array_equal(np.asarray(model(tokens, valid)),
                                np.asarray(model(tokens, valid, positions_BxL=positions, mask_BxLxL=mask)))
  with pytest.raises(ValueError, match="cache"):
    model(tokens, valid, cache=model.init_cache(2, 16), mask_BxLxL=mask)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_shared_context_matches_separate(rm, k):
  rng = np.random.default_rng(k)
  context = _text(rng, 5 + 7 * k)
  responses = [_text(rng, int(n)) for n in rng.integers(0, 20, k)]
  separate = rm.score([context] * k, responses)
  packed = pk.score_shared_context(rm, context, responses, pack="always")
  assert packed.shape == (k,) and packed.dtype == np.float32
  np.testing.assert_allclose(packed, separate, atol=ATOL, rtol=0)
  np.testing.assert_allclose(pk.score_shared_context(rm, context, responses, normalize=True),
                             rm.score([context] * k, responses, normalize=True), atol=ATOL, rtol=0)


def test_many_shared_in_batches_with_fallback(rm):
  rng = np.random.default_rng(7)
  contexts, responses = [], []
  for i in range(11):  # 11 comparisons over 4-row batches: a short last batch in some bucket
    k = 1 + i % 5
    contexts.append(_text(rng, int(rng.integers(0, 50))))
    responses.append([_text(rng, int(n)) for n in rng.integers(0, 25, k)])
  # Each separate sequence fits max_len=128, the packed row (50 + 3 * 36 = 158) does not: a 256-slot bucket.
  contexts.append(_text(rng, 50))
  responses.append([_text(rng, 35) for _ in range(3)])
  # Context cut per response (130 + r > 127): scored separately, by the fallback.
  contexts.append(_text(rng, 130))
  responses.append([_text(rng, 10), _text(rng, 3)])
  # A packed row over max_packed_len falls back too.
  contexts.append(_text(rng, 40))
  responses.append([_text(rng, 60) for _ in range(5)])
  contexts.append("no responses")
  responses.append([])
  flat_c = [c for c, rs in zip(contexts, responses) for _ in rs]
  flat_r = [r for rs in responses for r in rs]
  with pytest.warns(UserWarning, match="truncated"):
    want = rm.score(flat_c, flat_r)
  assert np.std(want) > 0.05  # rewards differ enough that a wrong read position would show
  always = pk.PackStats()
  with pytest.warns(UserWarning, match="truncated"):
    got = pk.score_many_shared(rm, contexts, responses, pack="always", stats=always)
  assert (always.comparisons, always.packed, always.truncated, always.too_long) == (14, 12, 1, 1)
  assert max(always.bucket_rows) == 256  # rows longer than max_len=128 (the 158-token one) ran past it
  assert [len(g) for g in got] == [len(rs) for rs in responses]
  np.testing.assert_allclose(np.concatenate(got), want, atol=ATOL, rtol=0)
  # Default: K = 1 rows, and rows whose bucket is no shorter than their separate sequences', go separately.
  cheaper = pk.PackStats()
  with pytest.warns(UserWarning, match="truncated"):
    got = pk.score_many_shared(rm, contexts, responses, stats=cheaper)
  assert cheaper.not_cheaper >= 3 and cheaper.packed == 12 - cheaper.not_cheaper > 0
  np.testing.assert_allclose(np.concatenate(got), want, atol=ATOL, rtol=0)


def _comparisons(rng, n: int):
  out = []
  for i in range(n):
    k = 1 + i % 4
    scores = tuple(float(s) for s in rng.integers(0, 3, k))  # ties included: they form no pair
    out.append(Comparison(_text(rng, int(rng.integers(3, 40))), tuple(_text(rng, int(m)) for m in
                                                                       rng.integers(0, 20, k)), scores, "t", str(i)))
  return out


@pytest.mark.parametrize("objective", ["ranked", "binary"])
def test_packed_loss_and_grads_match_unpacked(params, objective):
  rng = np.random.default_rng(3)
  examples, _ = encode_all(_comparisons(rng, 6), TOK, CFG.max_len, 4)
  examples = examples + [None]  # a padding row
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
  unpacked = {k: jnp.asarray(v) for k, v in collate(examples, 64, 4, TOK.pad_id).items()}
  packed = {k: jnp.asarray(v) for k, v in pk.collate_packed(examples, 128, 4, TOK.pad_id).items()}
  ref_fn = jax.value_and_grad(lambda p: loss_fn(p, graphdef, unpacked, None, objective, 0.0), has_aux=True)
  new_fn = jax.value_and_grad(lambda p: pk.packed_loss_fn(p, graphdef, packed, objective), has_aux=True)
  (ref_loss, ref_m), ref_g = ref_fn(params)
  (loss, m), g = new_fn(params)
  assert float(ref_m["pairs"]) > 3
  np.testing.assert_allclose(loss, ref_loss, atol=ATOL, rtol=0)
  for key in ref_m:
    np.testing.assert_allclose(m[key], ref_m[key], atol=ATOL, rtol=0, err_msg=key)
  flat_ref, flat_new = jax.tree.leaves_with_path(ref_g), jax.tree.leaves(g)
  assert len(flat_ref) == len(flat_new)
  for (path, a), b in zip(flat_ref, flat_new):
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0, err_msg=jax.tree_util.keystr(path))
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(ref_g)) > 1e-3  # gradients are not all ~0


def test_collate_packed_rejects_truncated_context():
  rng = np.random.default_rng(0)
  c = Comparison(_text(rng, 120), (_text(rng, 2), _text(rng, 20)), (1.0, 0.0), "t", "0")
  examples, stats = encode_all([c], TOK, CFG.max_len, 2)
  assert stats.contexts_truncated == 1 and not pk.packable(examples[0])
  with pytest.raises(ValueError, match="truncated"):
    pk.collate_packed(examples, 256, 2, TOK.pad_id)
