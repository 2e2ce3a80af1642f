"""The attention core: causal query blocks and the hand-written backward against plain masked softmax attention.

The blocked path only runs at L >= 128 (blocks of at least 64 queries), which the model tests' short rows never
reach, so it is checked here directly: values and gradients against `jax.grad` of the textbook formula, with GQA,
padded keys, a packed tree mask and bf16 matmuls.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hhh.model.transformer import SegmentIds, _query_blocks, attention_core, row_layout, tiled_attention
from hhh.reward.packed import packed_mask


def _reference(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS):
  logits = jnp.einsum("bkgld,bksd->bkgls", q_BxKxGxLxDh, k_BxKxSxDh) / math.sqrt(q_BxKxGxLxDh.shape[-1])
  logits = jnp.where(mask_BxLxS[:, None, None], logits, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bkgls,bksd->bkgld", jax.nn.softmax(logits, axis=-1), v_BxKxSxDh)


def _inputs(B, K, G, L, Dh, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((B, K, G, L, Dh)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((B, K, L, Dh)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((B, K, L, Dh)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((B, K, G, L, Dh)), jnp.float32)  # a random cotangent, through the loss
  return q, k, v, w


def _masks(B, L):
  lengths = np.array([L, L - 37, 70][:B])
  valid_BxL = jnp.asarray(np.arange(L)[None] < lengths[:, None])
  _, row_BxLxS = row_layout(valid_BxL)
  # Context of 40 tokens, then two responses, then padding: the layout of shared-context PM training.
  seg = np.zeros((B, L), np.int32)
  seg[:, 40:80], seg[:, 80:L - 10], seg[:, L - 10:] = 1, 2, -1
  return {"rows": (row_BxLxS, valid_BxL), "packed": (packed_mask(jnp.asarray(seg)), jnp.asarray(seg >= 0))}


def test_query_blocks_need_64_queries_each():
  assert [_query_blocks(L) for L in (7, 64, 127, 128, 192, 256, 300, 2048)] == [1, 1, 1, 2, 2, 4, 4, 4]


@pytest.mark.parametrize("layout", ["rows", "packed"])
@pytest.mark.parametrize("n_blocks", [1, 2, 4])
def test_blocks_and_backward_match_plain_attention(n_blocks, layout):
  B, K, G, L, Dh = 3, 2, 2, 256, 16  # GQA: 4 query heads on 2 kv heads
  q, k, v, w = _inputs(B, K, G, L, Dh)
  mask_BxLxS, valid_BxL = _masks(B, L)[layout]
  # Queries with no valid key (padding) differ by design (uniform over fewer keys) and are never read.
  keep = valid_BxL[:, None, None, :, None]

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.where(keep, fn(q, k, v), 0.0) * w)

  ours = lambda q, k, v: attention_core(q, k, v, mask_BxLxS, n_blocks)
  ref = lambda q, k, v: _reference(q, k, v, mask_BxLxS)
  np.testing.assert_allclose(np.where(keep, ours(q, k, v), 0), np.where(keep, ref(q, k, v), 0), atol=2e-6)
  g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
  g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
  for name, a, b in zip("qkv", g_ours, g_ref):
    scale = float(jnp.abs(b).max())
    assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, name


def test_bf16_matmuls_stay_close_and_return_float32():
  B, K, G, L, Dh = 2, 2, 1, 128, 16
  q, k, v, w = _inputs(B, K, G, L, Dh, seed=1)
  mask_BxLxS, _ = _masks(B, L)["rows"]
  out32 = attention_core(q, k, v, mask_BxLxS, 2)
  out16 = attention_core(q, k, v, mask_BxLxS, 2, jnp.bfloat16)
  assert out16.dtype == jnp.float32
  assert float(jnp.abs(out16 - out32).max()) < 0.05
  g = jax.grad(lambda q: jnp.sum(attention_core(q, k, v, mask_BxLxS, 2, jnp.bfloat16) * w))(q)
  g32 = jax.grad(lambda q: jnp.sum(attention_core(q, k, v, mask_BxLxS, 2) * w))(q)
  assert g.dtype == jnp.float32
  assert float(jnp.abs(g - g32).max()) < 0.05 * float(jnp.abs(g32).max())


def test_blocks_refuse_a_cache_shaped_key_axis():
  q, k, v, _ = _inputs(1, 1, 1, 128, 8)
  with pytest.raises(ValueError, match="S == L"):
    attention_core(q, jnp.concatenate([k, k], 2), jnp.concatenate([v, v], 2), jnp.ones((1, 128, 256), bool), 2)


def _packed_ids(B, L):
  """Two rows of packed comparisons (hhh.data.packing's ids): row 0 holds two comparisons (a context, then two
  responses; then a context and one response) and padding; row 1 is one plain sequence of L - 5 tokens."""
  seg, ctx = np.full((B, L), -1), np.full((B, L), -2)
  for a, e, s, c in ((0, 50, 0, 0), (50, 100, 1, 0), (100, 130, 2, 0), (130, 200, 3, 3), (200, 240, 4, 3)):
    seg[0, a:e], ctx[0, a:e] = s, c
  seg[1, :L - 5], ctx[1, :L - 5] = 0, 0
  return SegmentIds(jnp.asarray(seg), jnp.asarray(ctx), jnp.asarray(seg))


@pytest.mark.parametrize("tile,skip", [(64, False), (128, False), (64, True)])
def test_tiled_attention_matches_plain_attention(tile, skip):
  B, K, G, L, Dh = 2, 2, 3, 256, 16
  q, k, v, w = _inputs(B, K, G, L, Dh, seed=3)
  ids = _packed_ids(B, L)
  dense_BxLxS = ids.dense()
  assert dense_BxLxS.shape == (B, L, L) and int(dense_BxLxS[0, 60, 10]) == 1 and int(dense_BxLxS[0, 110, 60]) == 0
  # Only queries with a key count (padding queries' outputs are read by nothing).
  has_key = np.asarray(dense_BxLxS.any(-1))[:, None, None, :, None]
  w = w * has_key

  def loss(f):
    return lambda q, k, v: jnp.sum(f(q, k, v) * w)
  tiled = jax.jit(lambda q, k, v: tiled_attention(q, k, v, ids, tile=tile, skip=skip))
  ref = lambda q, k, v: _reference(q, k, v, dense_BxLxS)
  np.testing.assert_allclose(np.asarray(tiled(q, k, v)) * has_key, np.asarray(ref(q, k, v)) * has_key,
                             atol=1e-5, rtol=0)
  assert np.isfinite(np.asarray(tiled(q, k, v))).all()   # padding queries too: no NaN to poison a sum
  for a, b in zip(jax.grad(loss(tiled), argnums=(0, 1, 2))(q, k, v), jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)):
    assert float(jnp.abs(b).max()) > 0.1
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_tiled_model_matches_dense_model_on_packed_rows():
  """The whole model, packed rows: hidden states and every parameter gradient, model.attention tiled vs dense."""
  from flax import nnx
  from hhh.model.config import ModelConfig
  from hhh.model.transformer import Transformer
  cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=256)
  ids = _packed_ids(2, 256)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 50, (2, 256)), jnp.int32)
  pos = np.zeros((2, 256), np.int32)
  pos[0, :50], pos[0, 50:100], pos[0, 100:130] = np.arange(50), np.arange(50, 100), np.arange(50, 80)
  pos[0, 130:200], pos[0, 200:240], pos[1, :251] = np.arange(70), np.arange(70, 110), np.arange(251)
  valid = ids.seg_q >= 0
  out = {}
  for attention in ("dense", "tiled"):
    c = dataclasses.replace(cfg, attention=attention)
    graphdef, params = nnx.split(Transformer(c, rngs=nnx.Rngs(0)))

    def f(p):
      h = nnx.merge(graphdef, p)(tokens, valid, positions_BxL=jnp.asarray(pos), segments_BxL=ids.seg_q,
                                 contexts_BxL=ids.ctx_q)
      return jnp.sum(jnp.where(valid[..., None], h, 0.0) ** 2), h
    (_, h), g = jax.value_and_grad(f, has_aux=True)(params)
    out[attention] = (np.asarray(h)[np.asarray(valid)], jax.tree.leaves(g))
  np.testing.assert_allclose(out["tiled"][0], out["dense"][0], atol=1e-5, rtol=0)
  for a, b in zip(out["tiled"][1], out["dense"][1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-5)


def test_tile_work_list_keeps_every_visible_tile_of_real_packed_rows():
  """Skipping tiled attention runs a tile when the ranges of its ids meet: never fewer tiles than hold a visible
  key (checked key by key), and on a long row that collate_rows lays out (12 comparisons end to end) barely
  more."""
  from hhh.data import packing
  from hhh.data.pipeline import Encoded
  from hhh.model.transformer import _pairs
  rng = np.random.default_rng(0)
  exs = []
  for _ in range(12):
    n_ctx = int(rng.integers(5, 200))
    ctx = rng.integers(1, 50, n_ctx)
    exs.append(Encoded([np.concatenate([ctx, rng.integers(1, 50, int(rng.integers(2, 90))), [3]]) for _ in range(2)],
                       [n_ctx, n_ctx], np.array([0.0, 1.0], np.float32)))
  batch = packing.collate_rows(exs, K=2, pad_id=0, buckets=packing.row_buckets((256,), 4096), one_row=True)
  seg, ctx = jnp.asarray(batch["segments"]), jnp.asarray(batch["contexts"])
  assert seg.shape[0] == 1 and seg.shape[1] > 1024
  tile = 64
  trip, vis = _pairs(SegmentIds(seg, ctx, seg), tile)
  trip, vis = np.asarray(trip), np.asarray(vis)
  mask = np.asarray(SegmentIds(seg, ctx, seg).dense())
  has_key = np.array([mask[b, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].any() for b, i, j in trip])
  assert (vis | ~has_key).all()        # no tile with a visible key is skipped
  assert has_key.sum() <= vis.sum() <= 1.1 * has_key.sum()
  assert vis.sum() < 0.5 * len(trip)  # and most of the long row's square is skipped
