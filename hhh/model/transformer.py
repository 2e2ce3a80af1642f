"""Decoder-only Transformer in flax.nnx, with a KV cache and the LM and preference heads.

Padding never changes a real token's output: positions count only valid tokens,
and keys at padded slots are masked. So a sequence gets the same hidden states
alone, in a batch, left-padded or right-padded (see `tests/test_model.py`).

Shape suffixes: B batch, L query length, S key length (cache size), D d_model,
H query heads, K kv heads, G = H // K, Dh head dim, F MLP width, V vocab.
Attention activations and the KV cache are head-major ([B, K, S, Dh]).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.model.config import ModelConfig

Cache = dict[str, Any]
INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape, std=INIT_STD) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def _zeros(shape) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, jnp.float32))


def _matmul(x, w, dtype):
  # Tokens flattened to one axis: the weight gradient then contracts over a single token axis. Contracting over
  # [B, L] together makes XLA:CPU canonicalise the dot with a transposing copy of the activation gradient,
  # fused into its elementwise producer: about a fifth of the PM step in a jax.profiler trace.
  y = jnp.matmul(x.reshape(-1, x.shape[-1]).astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
  return y.reshape(*x.shape[:-1], w.shape[-1])


class Norm(nnx.Module):
  """RMSNorm or LayerNorm, always computed in float32 (bf16 variance underflows)."""

  def __init__(self, cfg: ModelConfig):
    self.kind, self.eps = cfg.norm, cfg.norm_eps
    self.scale = nnx.Param(jnp.ones((cfg.d_model,), jnp.float32))
    self.bias = _zeros((cfg.d_model,)) if cfg.norm == "layer" else None

  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.kind == "layer":
      x = x - x.mean(-1, keepdims=True)
    y = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.scale[...]
    return y + self.bias[...] if self.bias is not None else y


def rope(x_BxLxNxDh, positions_BxL, rotary_dim: int, theta: float, head_axis: int = 2):
  """Rotates the first `rotary_dim` features of each head (GPT-NeoX half-split layout).

  head_axis 2: x is [B, L, N, Dh]; head_axis 1: x is head-major [B, N, L, Dh].
  """
  if rotary_dim == 0:
    return x_BxLxNxDh
  half = rotary_dim // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLx1xR = jnp.expand_dims(positions_BxL[..., None].astype(jnp.float32) * freq, head_axis)
  sin, cos = jnp.sin(angle_BxLx1xR), jnp.cos(angle_BxLx1xR)
  x = x_BxLxNxDh.astype(jnp.float32)
  x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
  return out.astype(x_BxLxNxDh.dtype)


def rope_head_major(x_BxNxLxDh, positions_BxL, rotary_dim: int, theta: float):
  """`rope` for head-major [B, N, L, Dh] activations."""
  return rope(x_BxNxLxDh, positions_BxL, rotary_dim, theta, head_axis=1)


def _query_blocks(L: int) -> int:
  # Blocks of at least 64 queries: smaller ones lose more to per-op overhead than the skipped keys save on CPU.
  for n in (4, 2):
    if L % n == 0 and L // n >= 64:
      return n
  return 1


_NEG = float(jnp.finfo(jnp.float32).min)


def _block_probs(qs_BxKxGxLxDh, k_BxKxSxDh, mask_BxLxS, i, n_blocks, dtype):
  """Softmax probabilities [B, K, G, c, S_i] of query block i over its keys [0, S_i)."""
  B, K, G, L, Dh = qs_BxKxGxLxDh.shape
  S = k_BxKxSxDh.shape[2]
  c = L // n_blocks
  S_i = S if n_blocks == 1 else (i + 1) * c
  q_BxKxCxDh = qs_BxKxGxLxDh[:, :, :, i * c:(i + 1) * c].reshape(B, K, G * c, Dh)
  # One batched [G*c, Dh] x [Dh, S_i] matmul per (row, kv head); G folds into the query rows.
  logits = jnp.einsum("bkqd,bksd->bkqs", q_BxKxCxDh.astype(dtype), k_BxKxSxDh[:, :, :S_i].astype(dtype),
                      preferred_element_type=jnp.float32).reshape(B, K, G, c, S_i)
  # finfo.min rather than -inf: a fully masked row (a pad query) stays finite instead of NaN.
  logits = jnp.where(mask_BxLxS[:, None, None, i * c:(i + 1) * c, :S_i], logits, _NEG)
  return jax.nn.softmax(logits, axis=-1)


def _block_out(p_BxKxGxCxS, v_BxKxSxDh, dtype):
  B, K, G, c, S_i = p_BxKxGxCxS.shape
  o = jnp.einsum("bkqs,bksd->bkqd", p_BxKxGxCxS.reshape(B, K, G * c, S_i).astype(dtype),
                 v_BxKxSxDh[:, :, :S_i].astype(dtype), preferred_element_type=jnp.float32)
  return o.reshape(B, K, G, c, -1)


def _core_fwd(q, k, v, mask, n_blocks, dtype):
  qs = q * (1.0 / math.sqrt(q.shape[-1]))
  probs = [_block_probs(qs, k, mask, i, n_blocks, dtype) for i in range(n_blocks)]
  out = jnp.concatenate([_block_out(p, v, dtype) for p in probs], axis=3)
  return out, (qs, k, v, probs, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _core(q, k, v, mask, n_blocks, dtype):
  return _core_fwd(q, k, v, mask, n_blocks, dtype)[0]


def _core_vjp_fwd(q, k, v, mask, n_blocks, dtype):
  out, res = _core_fwd(q, k, v, mask, n_blocks, dtype)
  return out, (res, mask)


def _core_vjp_bwd(n_blocks, dtype, saved, do_BxKxGxLxDh):
  """Softmax backward with the row term sum(dO * O) (over Dh) instead of sum(dP * P) (over S): one pass fewer
  over the L x S probabilities; each block's key gradients land in the prefix of keys it saw."""
  (qs, k, v, probs, out), mask = saved
  B, K, G, L, Dh = qs.shape
  c = L // n_blocks
  row_BxKxGxLx1 = jnp.sum(do_BxKxGxLxDh * out, axis=-1, keepdims=True)
  dq_blocks, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for i, p in enumerate(probs):
    S_i = p.shape[-1]
    blk = slice(i * c, (i + 1) * c)
    do_BxKxCxDh = do_BxKxGxLxDh[:, :, :, blk].reshape(B, K, G * c, Dh).astype(dtype)
    p_BxKxCxS = p.reshape(B, K, G * c, S_i)
    dv = dv.at[:, :, :S_i].add(jnp.einsum("bkqs,bkqd->bksd", p_BxKxCxS.astype(dtype), do_BxKxCxDh,
                                          preferred_element_type=jnp.float32))
    dp = jnp.einsum("bkqd,bksd->bkqs", do_BxKxCxDh, v[:, :, :S_i].astype(dtype), preferred_element_type=jnp.float32)
    ds_BxKxCxS = (p_BxKxCxS * (dp - row_BxKxGxLx1[:, :, :, blk].reshape(B, K, G * c, 1))).astype(dtype)
    dq_blocks.append(jnp.einsum("bkqs,bksd->bkqd", ds_BxKxCxS, k[:, :, :S_i].astype(dtype),
                                preferred_element_type=jnp.float32).reshape(B, K, G, c, Dh))
    q_BxKxCxDh = qs[:, :, :, blk].reshape(B, K, G * c, Dh).astype(dtype)
    dk = dk.at[:, :, :S_i].add(jnp.einsum("bkqs,bkqd->bksd", ds_BxKxCxS, q_BxKxCxDh,
                                          preferred_element_type=jnp.float32))
  dq = jnp.concatenate(dq_blocks, axis=3) * (1.0 / math.sqrt(Dh))
  return dq.astype(qs.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_core.defvjp(_core_vjp_fwd, _core_vjp_bwd)


def attention_core(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS, n_blocks: int = 1, dtype=jnp.float32):
  """softmax(q k^T / sqrt(Dh), masked) v, [B, K, G, L, Dh] in float32, for GQA-grouped queries.

  With n_blocks > 1 the mask must be causal (no key after its query; S == L): query block i then attends to
  keys [0, (i + 1) L / n_blocks) only, the same result for every query that has a valid key. Matmuls run in
  `dtype` with float32 accumulation; the softmax is float32."""
  if n_blocks > 1 and (k_BxKxSxDh.shape[2] != q_BxKxGxLxDh.shape[3] or q_BxKxGxLxDh.shape[3] % n_blocks):
    raise ValueError(f"query blocks need S == L divisible by n_blocks={n_blocks}")
  return _core(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS, n_blocks, jnp.dtype(dtype))


class SegmentIds(NamedTuple):
  """An attention mask as ids, never as a [B, L, S] array: a key is visible when it is real (seg_k >= 0), at or
  before its query, and in the query's segment or its context's (`segment_mask`)."""
  seg_q: jax.Array    # [B, L]
  ctx_q: jax.Array    # [B, L]
  seg_k: jax.Array    # [B, S]

  def tile(self, q0: int, q1: int, k0: int, k1: int):
    """The mask of queries [q0, q1) over keys [k0, k1): [B, q1 - q0, k1 - k0]."""
    sk = self.seg_k[:, None, k0:k1]
    causal = jnp.arange(q0, q1)[:, None] >= jnp.arange(k0, k1)[None, :]
    return ((sk == self.seg_q[:, q0:q1, None]) | (sk == self.ctx_q[:, q0:q1, None])) & (sk >= 0) & causal[None]

  def dense(self):
    return self.tile(0, self.seg_q.shape[1], 0, self.seg_k.shape[1])


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Static:
  tile: int
  skip: bool


class TiledMask(NamedTuple):
  """What a layer needs for tiled attention: the ids (arrays) and the tiling (static)."""
  ids: SegmentIds
  static: _Static

  @property
  def tile(self) -> int:
    return self.static.tile

  @property
  def skip(self) -> bool:
    return self.static.skip


def segment_mask(segments_RxL, contexts_RxL):
  """[R, L(query), L(key)] attention mask of packed rows (`hhh.data.packing`): a key is visible when it is real
  and in the query's own segment or its context's. The model intersects it with the causal mask."""
  seg_k_Rx1xL = segments_RxL[:, None, :]
  return (((seg_k_Rx1xL == segments_RxL[:, :, None]) | (seg_k_Rx1xL == contexts_RxL[:, :, None]))
          & (seg_k_Rx1xL >= 0))


def _tile_logits(q_BxKxGxTxDh, k_BxKxUxDh, m_BxTxU, dtype):
  B, K, G, T, Dh = q_BxKxGxTxDh.shape
  s = jnp.einsum("bkqd,bksd->bkqs", q_BxKxGxTxDh.reshape(B, K, G * T, Dh).astype(dtype), k_BxKxUxDh.astype(dtype),
                 preferred_element_type=jnp.float32).reshape(B, K, G, T, -1)
  return jnp.where(m_BxTxU[:, None, None], s, _NEG)


def _pv(p_BxKxGxTxU, v_BxKxUxDh, dtype):
  B, K, G, T, U = p_BxKxGxTxU.shape
  return jnp.einsum("bkqs,bksd->bkqd", p_BxKxGxTxU.reshape(B, K, G * T, U).astype(dtype), v_BxKxUxDh.astype(dtype),
                    preferred_element_type=jnp.float32).reshape(B, K, G, T, -1)


def _fwd_tiles(qs, k, v, ids, tile, dtype):
  """Online softmax over key tiles, every (query tile, key tile) pair at or below the diagonal, all rows at once."""
  B, K, G, L, Dh = qs.shape
  outs, lses = [], []
  for i in range(L // tile):
    q0, q1 = i * tile, (i + 1) * tile
    m = jnp.full((B, K, G, tile), _NEG, jnp.float32)
    l = jnp.zeros((B, K, G, tile), jnp.float32)
    acc = jnp.zeros((B, K, G, tile, Dh), jnp.float32)
    for j in range(i + 1):
      m, l, acc = _online(qs[:, :, :, q0:q1], k[:, :, j * tile:(j + 1) * tile], v[:, :, j * tile:(j + 1) * tile],
                          ids.tile(q0, q1, j * tile, (j + 1) * tile), (m, l, acc), dtype)
    outs.append(acc / l[..., None])
    lses.append(m + jnp.log(l))
  return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _online(q_i, k_j, v_j, m_tile, carry, dtype):
  m, l, acc = carry
  s = _tile_logits(q_i, k_j, m_tile, dtype)
  m_new = jnp.maximum(m, s.max(-1))
  scale = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new[..., None])
  return m_new, l * scale + p.sum(-1), acc * scale[..., None] + _pv(p, v_j, dtype)


def _pairs(ids: SegmentIds, tile: int):
  """The (row, query tile, key tile) triples at or below the diagonal, [N, 3] int32, and whether each may hold a
  visible key: the work list of skipping tiled attention, in one loop whatever the row count.

  From each tile's ranges of ids, O(L) work: a query tile may see a key tile when the keys' segment range meets
  the queries' segment range or their contexts' range. That holds whenever a key is visible, so no visible key
  is skipped; in packed rows (segments numbered along the row) it is nearly exact. A tile run where a query sees
  nothing adds exact zeros to it (its probabilities underflow to 0 against any visible key's logit)."""
  B, L = ids.seg_q.shape
  n = L // tile
  trip = np.array([(b, i, j) for b in range(B) for i in range(n) for j in range(i + 1)], np.int32)
  big = jnp.iinfo(jnp.int32).max

  def span(x_BxL, valid_BxL):
    x_BxNxT, ok = x_BxL.reshape(B, n, tile), valid_BxL.reshape(B, n, tile)
    return jnp.where(ok, x_BxNxT, big).min(-1), jnp.where(ok, x_BxNxT, -1).max(-1)
  k_lo, k_hi = span(ids.seg_k, ids.seg_k >= 0)
  q_ok = ids.seg_q >= 0   # padding queries see no key
  s_lo, s_hi = span(ids.seg_q, q_ok)
  c_lo, c_hi = span(ids.ctx_q, q_ok)

  def meets(lo_BxN, hi_BxN):
    return (lo_BxN[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= hi_BxN[:, :, None])
  # Causality only matters on the diagonal, where the query's own key is always visible, so it runs anyway.
  vis_BxNxN = meets(s_lo, s_hi) | meets(c_lo, c_hi) | jnp.eye(n, dtype=bool)[None]
  return jnp.asarray(trip), vis_BxNxN[trip[:, 0], trip[:, 1], trip[:, 2]]


def _slice_tile(x, b, start, tile, axis):
  """x[b:b+1] sliced to [start, start + tile) along `axis`."""
  x = jax.lax.dynamic_slice_in_dim(x, b, 1, axis=0)
  return jax.lax.dynamic_slice_in_dim(x, start, tile, axis=axis)


def _tile_mask(ids: SegmentIds, b, q0, k0, tile: int):
  sq = _slice_tile(ids.seg_q, b, q0, tile, 1)[:, :, None]
  cq = _slice_tile(ids.ctx_q, b, q0, tile, 1)[:, :, None]
  sk = _slice_tile(ids.seg_k, b, k0, tile, 1)[:, None, :]
  causal = (q0 + jnp.arange(tile))[:, None] >= (k0 + jnp.arange(tile))[None, :]
  return ((sk == sq) | (sk == cq)) & (sk >= 0) & causal[None]


def _over_tiles(ids: SegmentIds, tile: int, step, init):
  """A loop over the (row, query tile, key tile) triples at or below the diagonal where the row has a visible key
  (`step(b, q0, k0, carry)`), in row-major order: packed rows skip the other comparisons' tiles, and the program
  stays one loop body in size, whatever the row length. The visible triples are moved to the front (a stable
  sort) and the loop stops after them, so a long row of many comparisons pays nothing per skipped tile."""
  trip, vis = _pairs(ids, tile)
  # Stable: the visible triples keep their order, so sums accumulate as in a loop over all of them.
  trip, n_vis = trip[jnp.argsort(~vis, stable=True)], jnp.sum(vis, dtype=jnp.int32)

  def body(n, carry):
    return step(trip[n, 0], trip[n, 1] * tile, trip[n, 2] * tile, carry)
  return jax.lax.fori_loop(0, n_vis, body, init)


def _fwd_skip(qs, k, v, ids, tile, dtype):
  """`_fwd_tiles` over `_over_tiles`: the running max, normaliser and output of every query, updated per tile."""
  B, K, G, L, Dh = qs.shape

  def step(b, q0, k0, carry):
    m_all, l_all, acc_all = carry
    part = (_slice_tile(m_all, b, q0, tile, 3), _slice_tile(l_all, b, q0, tile, 3),
            _slice_tile(acc_all, b, q0, tile, 3))
    m, l, acc = _online(_slice_tile(qs, b, q0, tile, 3), _slice_tile(k, b, k0, tile, 2),
                        _slice_tile(v, b, k0, tile, 2), _tile_mask(ids, b, q0, k0, tile), part, dtype)
    at = (b, 0, 0, q0)
    return (jax.lax.dynamic_update_slice(m_all, m, at), jax.lax.dynamic_update_slice(l_all, l, at),
            jax.lax.dynamic_update_slice(acc_all, acc, at + (0,)))
  init = (jnp.full((B, K, G, L), _NEG, jnp.float32), jnp.zeros((B, K, G, L), jnp.float32),
          jnp.zeros((B, K, G, L, Dh), jnp.float32))
  m, l, acc = _over_tiles(ids, tile, step, init)
  return acc / l[..., None], m + jnp.log(l)


def _bwd_skip(qs, k, v, ids, do, lse, row, tile, dtype):
  """The backward of `_fwd_skip`: the same loop, each visited tile's dq, dk and dv added in place."""
  B, K, G, L, Dh = qs.shape

  def step(b, q0, k0, carry):
    dq_all, dk_all, dv_all = carry
    q_i = _slice_tile(qs, b, q0, tile, 3)
    do_flat = _slice_tile(do, b, q0, tile, 3).reshape(1, K, G * tile, Dh).astype(dtype)
    lse_i = _slice_tile(lse, b, q0, tile, 3)[..., None]
    row_i = _slice_tile(row, b, q0, tile, 3).reshape(1, K, G * tile, 1)
    acc = (_slice_tile(dq_all, b, q0, tile, 3).reshape(1, K, G * tile, Dh), _slice_tile(dk_all, b, k0, tile, 2),
           _slice_tile(dv_all, b, k0, tile, 2))
    dq, dk, dv = _tile_grads(q_i, _slice_tile(k, b, k0, tile, 2), _slice_tile(v, b, k0, tile, 2), do_flat,
                             lse_i, row_i, _tile_mask(ids, b, q0, k0, tile), acc, dtype)
    return (jax.lax.dynamic_update_slice(dq_all, dq.reshape(1, K, G, tile, Dh), (b, 0, 0, q0, 0)),
            jax.lax.dynamic_update_slice(dk_all, dk, (b, 0, k0, 0)),
            jax.lax.dynamic_update_slice(dv_all, dv, (b, 0, k0, 0)))
  init = (jnp.zeros((B, K, G, L, Dh), jnp.float32), jnp.zeros((B, K, L, Dh), jnp.float32),
          jnp.zeros((B, K, L, Dh), jnp.float32))
  return _over_tiles(ids, tile, step, init)


def _tiled_fwd(q, k, v, ids, tile, dtype, skip):
  """Flash attention's forward in plain JAX: per query tile a running max, normaliser and output over key tiles
  at or below the diagonal (causal), and with `skip` only those where a row has a visible key. Returns the
  output and the log-sum-exp per query, all that the backward keeps."""
  qs = q * (1.0 / math.sqrt(q.shape[-1]))
  return (_fwd_skip if skip else _fwd_tiles)(qs, k, v, ids, tile, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _tiled(q, k, v, ids, tile, dtype, skip):
  return _tiled_fwd(q, k, v, ids, tile, dtype, skip)[0]


def _tiled_vjp_fwd(q, k, v, ids, tile, dtype, skip):
  out, lse = _tiled_fwd(q, k, v, ids, tile, dtype, skip)
  return out, (q, k, v, ids, out, lse)


def _tile_grads(q_i, k_j, v_j, do_flat, lse_i, row_i, m_tile, acc, dtype):
  """One (query tile, key tile) pair's share of dq, dk, dv, its probabilities recomputed from the log-sum-exp.
  q_i is the scaled query tile [nb, K, G, T, Dh]; dq comes back flat, [nb, K, G * T, Dh]."""
  dq_a, dk_a, dv_a = acc
  nb, K, G, T, Dh = q_i.shape
  q_flat = q_i.reshape(nb, K, G * T, Dh).astype(dtype)
  p_flat = jnp.exp(_tile_logits(q_i, k_j, m_tile, dtype) - lse_i).reshape(nb, K, G * T, -1)
  dv_a = dv_a + jnp.einsum("bkqs,bkqd->bksd", p_flat.astype(dtype), do_flat, preferred_element_type=jnp.float32)
  dp = jnp.einsum("bkqd,bksd->bkqs", do_flat, v_j.astype(dtype), preferred_element_type=jnp.float32)
  ds = (p_flat * (dp - row_i)).astype(dtype)
  dq_a = dq_a + jnp.einsum("bkqs,bksd->bkqd", ds, k_j.astype(dtype), preferred_element_type=jnp.float32)
  dk_a = dk_a + jnp.einsum("bkqs,bkqd->bksd", ds, q_flat, preferred_element_type=jnp.float32)
  return dq_a, dk_a, dv_a


def _tiled_vjp_bwd(tile, dtype, skip, saved, do):
  """Flash attention's backward: each (query tile, key tile) pair's probabilities are recomputed from the saved
  log-sum-exp, so nothing of size L x S is kept between the passes; with `skip`, the forward's skipped tiles are
  skipped here too."""
  q, k, v, ids, out, lse = saved
  B, K, G, L, Dh = q.shape
  c = 1.0 / math.sqrt(Dh)
  qs = q * c
  row = jnp.sum(do * out, axis=-1)          # [B, K, G, L]
  if skip:
    dq, dk, dv = _bwd_skip(qs, k, v, ids, do, lse, row, tile, dtype)
  else:
    dq_tiles = []
    dk = [jnp.zeros((B, K, tile, Dh), jnp.float32) for _ in range(L // tile)]
    dv = [jnp.zeros((B, K, tile, Dh), jnp.float32) for _ in range(L // tile)]
    for i in range(L // tile):
      q0, q1 = i * tile, (i + 1) * tile
      q_i = qs[:, :, :, q0:q1]
      do_flat = do[:, :, :, q0:q1].reshape(B, K, G * tile, Dh).astype(dtype)
      lse_i = lse[:, :, :, q0:q1, None]
      row_i = row[:, :, :, q0:q1].reshape(B, K, G * tile, 1)
      dq_i = jnp.zeros((B, K, G * tile, Dh), jnp.float32)
      for j in range(i + 1):
        k0, k1 = j * tile, (j + 1) * tile
        dq_i, dk[j], dv[j] = _tile_grads(q_i, k[:, :, k0:k1], v[:, :, k0:k1], do_flat, lse_i, row_i,
                                         ids.tile(q0, q1, k0, k1), (dq_i, dk[j], dv[j]), dtype)
      dq_tiles.append(dq_i.reshape(B, K, G, tile, Dh))
    dq = jnp.concatenate(dq_tiles, axis=3)
    dk, dv = jnp.concatenate(dk, axis=2), jnp.concatenate(dv, axis=2)
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), ids)
  return (dq * c).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), zeros


_tiled.defvjp(_tiled_vjp_fwd, _tiled_vjp_bwd)


def tiled_attention(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, ids: SegmentIds, tile: int = 512, dtype=jnp.float32,
                    skip: bool = False):
  """`attention_core` with the mask given as `SegmentIds`, in query x key tiles: no [B, L, S] mask or
  probability array exists at any point, and activations kept for the backward are O(L) per head (flash
  attention's scheme, in plain JAX so one code path serves GPU, TPU and CPU). With `skip`, each row runs its
  tiles on its own, in a loop over only the tiles where the row has a visible key: a
  packed row of several comparisons then computes about the blocks of its comparisons only. Needs S == L, a
  multiple of `tile`. Same result as `attention_core` on `ids.dense()` for every query with a valid key."""
  L = q_BxKxGxLxDh.shape[3]
  if k_BxKxSxDh.shape[2] != L or L % tile:
    raise ValueError(f"tiled attention needs S == L divisible by tile={tile}")
  return _tiled(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, ids, tile, jnp.dtype(dtype), bool(skip))


def prefix_attention(q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS, pk_KxPxDh, pv_KxPxDh, pvalid_P,
                     dtype=jnp.float32):
  """Attention of B rows over one shared prefix (keys pk, values pv, valid slots pvalid) and their own keys.

  The prefix is not copied per row: its scores are one [B*G*L, Dh] x [Dh, P] matmul per kv head, where the
  plain cache path would copy a 7k-token prompt cache to every row of every layer (1.25x slower rows,
  benchmarks/prompt_cache.py). Every valid prefix slot is before every row token; `mask_BxLxS` masks the rows' own keys
  (their tokens, or a per-row cache). One softmax over prefix and own keys together, float32, as
  `attention_core`."""
  B, K, G, L, Dh = q_BxKxGxLxDh.shape
  S = k_BxKxSxDh.shape[2]
  N = B * G * L
  qs = (q_BxKxGxLxDh * (1.0 / math.sqrt(Dh))).astype(dtype)
  q_KxNxDh = jnp.moveaxis(qs, 1, 0).reshape(K, N, Dh)
  lp_KxNxP = jnp.einsum("knd,kpd->knp", q_KxNxDh, pk_KxPxDh.astype(dtype), preferred_element_type=jnp.float32)
  lp_KxNxP = jnp.where(pvalid_P, lp_KxNxP, _NEG)
  lo_BxKxGxLxS = jnp.einsum("bkqd,bksd->bkqs", qs.reshape(B, K, G * L, Dh), k_BxKxSxDh.astype(dtype),
                            preferred_element_type=jnp.float32).reshape(B, K, G, L, S)
  lo_BxKxGxLxS = jnp.where(mask_BxLxS[:, None, None], lo_BxKxGxLxS, _NEG)

  def to_k_major(x_BxKxGxL):
    return jnp.moveaxis(x_BxKxGxL, 1, 0).reshape(K, N)

  def to_b_major(x_KxN, *tail):
    return jnp.moveaxis(x_KxN.reshape(K, B, G, L, *tail), 0, 1)

  m_KxN = jnp.maximum(lp_KxNxP.max(-1), to_k_major(lo_BxKxGxLxS.max(-1)))
  ep_KxNxP = jnp.exp(lp_KxNxP - m_KxN[..., None])
  eo_BxKxGxLxS = jnp.exp(lo_BxKxGxLxS - to_b_major(m_KxN)[..., None])
  denom_BxKxGxL = to_b_major(ep_KxNxP.sum(-1)) + eo_BxKxGxLxS.sum(-1)
  op_KxNxDh = jnp.einsum("knp,kpd->knd", ep_KxNxP.astype(dtype), pv_KxPxDh.astype(dtype),
                         preferred_element_type=jnp.float32)
  oo_BxKxGxLxDh = jnp.einsum("bkqs,bksd->bkqd", eo_BxKxGxLxS.reshape(B, K, G * L, S).astype(dtype),
                             v_BxKxSxDh.astype(dtype), preferred_element_type=jnp.float32).reshape(B, K, G, L, Dh)
  return (to_b_major(op_KxNxDh, Dh) + oo_BxKxGxLxDh) / denom_BxKxGxL[..., None]


def attention_tiles(cfg: ModelConfig, L: int, packed: bool) -> tuple[int, bool]:
  """(tile, skip) of tiled attention for rows of L tokens, or (0, False) for dense attention
  (`ModelConfig.attention`). On CPU tiles of 64 skip what a row does not see: in packed rows of several
  comparisons that is most of the L x L square (benchmarks/attention_tiles.py). On accelerators tiles of up to
  512 for rows of 2048+ tokens, to keep L x L arrays out of memory, computing every tile."""
  cpu = jax.default_backend() == "cpu"
  if cfg.attention == "dense":
    return 0, False
  if cfg.attention == "auto":
    if cpu and not (packed and L >= 512 and L % 64 == 0):
      return 0, False
    if not cpu and L < 2048:
      return 0, False
  tile = 64 if cpu and L % 64 == 0 else math.gcd(L, 512)
  return (tile if tile >= 64 else L), cpu


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    self.wq = _param(rngs, (D, H * Dh))
    self.wk = _param(rngs, (D, K * Dh))
    self.wv = _param(rngs, (D, K * Dh))
    # Scaled init on the residual projections keeps the residual stream's variance flat with depth (GPT-2).
    self.wo = _param(rngs, (H * Dh, D), INIT_STD / math.sqrt(2 * cfg.n_layers))
    if cfg.attn_bias:
      self.bq, self.bk, self.bv, self.bo = _zeros((H * Dh,)), _zeros((K * Dh,)), _zeros((K * Dh,)), _zeros((D,))
    else:
      self.bq = self.bk = self.bv = self.bo = None

  def _heads(self, x_BxLxD, w, b, n):
    """The projection straight into head-major layout [B, n, L, Dh]: the attention matmuls then batch over
    (B, heads) with no transposes of q, k, v or of their gradients (about a fifth of the attention block's time
    on CPU when they were [B, L, n, Dh])."""
    cfg = self.cfg
    w_DxNxDh = w[...].reshape(cfg.d_model, n, cfg.head_dim)
    y = jnp.einsum("bld,dnk->bnlk", x_BxLxD.astype(cfg.dtype), w_DxNxDh.astype(cfg.dtype),
                   preferred_element_type=jnp.float32)
    return y + b[...].reshape(n, 1, cfg.head_dim) if b is not None else y

  def __call__(self, x_BxLxD, positions_BxL, mask_BxLxS, kv_cache: Cache | None, cache_index, prefix_kv=None):
    cfg = self.cfg
    B, L, _ = x_BxLxD.shape
    H, K, Dh = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    q_BxHxLxDh = self._heads(x_BxLxD, self.wq, self.bq, H)
    k_BxKxLxDh = self._heads(x_BxLxD, self.wk, self.bk, K)
    v_BxKxLxDh = self._heads(x_BxLxD, self.wv, self.bv, K)
    if cfg.pos == "rope":
      q_BxHxLxDh = rope_head_major(q_BxHxLxDh, positions_BxL, cfg.rotary_dim, cfg.rope_theta)
      k_BxKxLxDh = rope_head_major(k_BxKxLxDh, positions_BxL, cfg.rotary_dim, cfg.rope_theta)
    if kv_cache is not None:
      start = (0, 0, cache_index, 0)
      k_BxKxSxDh = jax.lax.dynamic_update_slice(kv_cache["k"], k_BxKxLxDh.astype(kv_cache["k"].dtype), start)
      v_BxKxSxDh = jax.lax.dynamic_update_slice(kv_cache["v"], v_BxKxLxDh.astype(kv_cache["v"].dtype), start)
      kv_cache = {"k": k_BxKxSxDh, "v": v_BxKxSxDh}
    else:
      k_BxKxSxDh, v_BxKxSxDh = k_BxKxLxDh, v_BxKxLxDh
    G = H // K
    if prefix_kv is not None:
      out_BxKxGxLxDh = prefix_attention(q_BxHxLxDh.reshape(B, K, G, L, Dh), k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS,
                                        prefix_kv["k"][0], prefix_kv["v"][0], prefix_kv["valid"], cfg.dtype)
      return self._out(out_BxKxGxLxDh), kv_cache
    if isinstance(mask_BxLxS, TiledMask):
      out_BxKxGxLxDh = tiled_attention(q_BxHxLxDh.reshape(B, K, G, L, Dh), k_BxKxSxDh, v_BxKxSxDh,
                                       mask_BxLxS.ids, mask_BxLxS.tile, cfg.dtype, mask_BxLxS.skip)
      return self._out(out_BxKxGxLxDh), kv_cache
    # Without a cache every mask is causal (row_layout, packed_mask), so query block i needs only the keys up to
    # its own end: blocks skip the upper triangle of the L x S square (3/8 of its matmuls and softmax at 4 blocks).
    n_blocks = _query_blocks(L) if kv_cache is None else 1
    out_BxKxGxLxDh = attention_core(q_BxHxLxDh.reshape(B, K, G, L, Dh), k_BxKxSxDh, v_BxKxSxDh, mask_BxLxS,
                                    n_blocks, cfg.dtype)
    return self._out(out_BxKxGxLxDh), kv_cache

  def _out(self, out_BxKxGxLxDh):
    cfg = self.cfg
    B, K, G, L, Dh = out_BxKxGxLxDh.shape
    w_HxDhxD = self.wo[...].reshape(K * G, Dh, cfg.d_model)
    out = jnp.einsum("bhld,hde->ble", out_BxKxGxLxDh.reshape(B, K * G, L, Dh).astype(cfg.dtype),
                     w_HxDhxD.astype(cfg.dtype), preferred_element_type=jnp.float32)
    return out + self.bo[...] if self.bo is not None else out


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, F = cfg.d_model, cfg.ff_dim
    self.w_gate = _param(rngs, (D, F)) if cfg.mlp == "swiglu" else None
    self.w_up = _param(rngs, (D, F))
    self.w_down = _param(rngs, (F, D), INIT_STD / math.sqrt(2 * cfg.n_layers))
    bias = cfg.mlp_bias
    self.b_gate = _zeros((F,)) if bias and cfg.mlp == "swiglu" else None
    self.b_up = _zeros((F,)) if bias else None
    self.b_down = _zeros((D,)) if bias else None

  def __call__(self, x_BxLxD):
    dt = self.cfg.dtype
    up_BxLxF = _matmul(x_BxLxD, self.w_up[...], dt)
    if self.b_up is not None:
      up_BxLxF = up_BxLxF + self.b_up[...]
    if self.w_gate is not None:
      gate_BxLxF = _matmul(x_BxLxD, self.w_gate[...], dt)
      if self.b_gate is not None:
        gate_BxLxF = gate_BxLxF + self.b_gate[...]
      h_BxLxF = jax.nn.silu(gate_BxLxF) * up_BxLxF
    else:
      h_BxLxF = jax.nn.gelu(up_BxLxF, approximate=self.cfg.mlp == "gelu_tanh")
    out = _matmul(h_BxLxF, self.w_down[...], dt)
    return out + self.b_down[...] if self.b_down is not None else out


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.parallel = cfg.parallel_residual
    self.norm1, self.norm2 = Norm(cfg), Norm(cfg)
    self.attn = Attention(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, mask, kv_cache, cache_index, drop, prefix_kv=None):
    a, kv_cache = self.attn(self.norm1(x), positions, mask, kv_cache, cache_index, prefix_kv)
    if self.parallel:
      return x + drop(a, 0) + drop(self.mlp(self.norm2(x)), 1), kv_cache
    x = x + drop(a, 0)
    return x + drop(self.mlp(self.norm2(x)), 1), kv_cache


def row_layout(valid_BxL, positions_BxL=None, mask_BxLxL=None):
  """Positions and the [B, L, L] attention mask of one sequence per row (no cache): positions count valid tokens,
  a query sees valid keys at or before it. Given arrays are used as they are (see `Transformer.__call__`)."""
  L = valid_BxL.shape[-1]
  if positions_BxL is None:
    positions_BxL = jnp.maximum(jnp.cumsum(valid_BxL, axis=-1) - 1, 0)
  if mask_BxLxL is None:
    idx_L = jnp.arange(L)
    mask_BxLxS = (idx_L[:, None] >= idx_L[None, :])[None] & valid_BxL[:, None, :]
  else:
    # Causal whatever the caller built: the attention's query blocks rely on it (no key after its query).
    idx_L = jnp.arange(L)
    mask_BxLxS = mask_BxLxL.astype(bool) & (idx_L[:, None] >= idx_L[None, :])
  return positions_BxL, mask_BxLxS


def last_valid_index(valid_BxL):
  """Index of each row's last valid token: the end-of-context token, whatever the padding side."""
  L = valid_BxL.shape[-1]
  return L - 1 - jnp.argmax(valid_BxL[..., ::-1], axis=-1)


class Transformer(nnx.Module):
  """Decoder with an LM head and a scalar preference (reward) head.

  `__call__` returns final-normed hidden states in float32; `lm_logits` and
  `reward` read them. The reward head is always present (it is tiny), so an LM
  checkpoint initialises a PM without any surgery.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model))
    self.pos_embed = _param(rngs, (cfg.max_len, cfg.d_model), 0.01) if cfg.pos == "learned" else None
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = Norm(cfg)
    self.lm_head = None if cfg.tie_embeddings else _param(rngs, (cfg.d_model, cfg.vocab_size))
    self.reward_head = nnx.Dict(kernel=_param(rngs, (cfg.d_model, 1)), bias=_zeros((1,)))

  def __call__(self, tokens_BxL, valid_BxL=None, *, cache: Cache | None = None, dropout_rng=None,
               positions_BxL=None, mask_BxLxL=None, prefix: Cache | None = None, segments_BxL=None,
               contexts_BxL=None):
    """Hidden states [B, L, D] (float32), and the updated cache when one is given.

    Without a cache, attention is causal over valid tokens of the same row. With
    a cache (from `init_cache`), the L new tokens are written at `cache["index"]`
    and attend to every valid slot before them.

    `positions_BxL` (int) and `mask_BxLxL` (bool, [query, key]) replace the
    positions and the attention mask built from `valid_BxL`, for layouts that are
    not one sequence per row (several responses packed after one shared context,
    `hhh.reward.packed`). A given mask is used as is: it must already exclude
    padded keys, and is intersected with the causal mask. Neither may be combined with a cache.
    `segments_BxL` and `contexts_BxL` give packed rows' mask as ids instead (`hhh.data.packing`:
    `segment_mask`), which tiled attention reads per tile without building it.

    `prefix` is a batch-1 cache every row continues (a prompt prefilled once: its "layers", "valid" and
    "next_pos"): each row attends to its valid slots and then to its own keys, without the prefix being copied
    per row (`prefix_attention`). Without a cache the own keys are the row's tokens (causal, positions
    continuing from the prefix's next_pos); with one they are the cache's slots, as above, and the cache's
    next_pos must already count the prefix (a per-row cache made after it). Not with positions or a mask.
    """
    cfg = self.cfg
    B, L = tokens_BxL.shape
    if valid_BxL is None:
      valid_BxL = jnp.ones((B, L), bool)
    valid_BxL = valid_BxL.astype(bool)
    if segments_BxL is not None and (mask_BxLxL is not None or contexts_BxL is None or cache is not None
                                     or prefix is not None):
      raise ValueError("segments_BxL needs contexts_BxL, and neither a mask, a cache nor a prefix")
    if cache is not None and (positions_BxL is not None or mask_BxLxL is not None):
      # The cache derives positions and the key mask from its own slots; a second source would silently disagree.
      raise ValueError("positions_BxL and mask_BxLxL cannot be combined with a cache")
    if prefix is not None and (positions_BxL is not None or mask_BxLxL is not None):
      raise ValueError("a prefix cannot be combined with positions_BxL or mask_BxLxL")
    prefix_kvs = [None] * cfg.n_layers
    if prefix is not None:
      if prefix["valid"].shape[0] != 1:
        raise ValueError(f"a prefix is one sequence shared by every row, got batch {prefix['valid'].shape[0]}")
      prefix_kvs = [{"k": c["k"], "v": c["v"], "valid": prefix["valid"][0]} for c in prefix["layers"]]
    if prefix is not None and cache is None:
      positions_BxL = jnp.maximum(prefix["next_pos"][:, None] + jnp.cumsum(valid_BxL, axis=-1) - 1, 0)
      positions_BxL, mask_BxLxS = row_layout(valid_BxL, positions_BxL)
      cache_index, layer_caches = 0, [None] * cfg.n_layers
    elif cache is None:
      tile, skip = attention_tiles(cfg, L, packed=segments_BxL is not None)
      if mask_BxLxL is None and tile:
        if positions_BxL is None:
          positions_BxL = jnp.maximum(jnp.cumsum(valid_BxL, axis=-1) - 1, 0)
        if segments_BxL is None:
          segments_BxL, contexts_BxL = jnp.where(valid_BxL, 0, -1), jnp.full((B, L), -2)
        mask_BxLxS = TiledMask(SegmentIds(segments_BxL, contexts_BxL, segments_BxL), _Static(tile, skip))
      else:
        if segments_BxL is not None:
          mask_BxLxL = segment_mask(segments_BxL, contexts_BxL) if mask_BxLxL is None else mask_BxLxL
        positions_BxL, mask_BxLxS = row_layout(valid_BxL, positions_BxL, mask_BxLxL)
      cache_index, layer_caches = 0, [None] * cfg.n_layers
    else:
      cache_index = cache["index"]
      positions_BxL = cache["next_pos"][:, None] + jnp.cumsum(valid_BxL, axis=-1) - 1
      positions_BxL = jnp.maximum(positions_BxL, 0)
      S = cache["valid"].shape[1]
      slot_valid_BxS = jax.lax.dynamic_update_slice(cache["valid"], valid_BxL, (0, cache_index))
      q_slot_L = cache_index + jnp.arange(L)
      mask_BxLxS = (q_slot_L[:, None] >= jnp.arange(S)[None, :])[None] & slot_valid_BxS[:, None, :]
      layer_caches = cache["layers"]
    x_BxLxD = self.embed_tokens(tokens_BxL, positions_BxL)

    def make_drop(layer):
      def drop(y, which):
        if dropout_rng is None or cfg.dropout == 0.0:
          return y
        key = jax.random.fold_in(jax.random.fold_in(dropout_rng, layer), which)
        keep = jax.random.bernoulli(key, 1.0 - cfg.dropout, y.shape)
        return jnp.where(keep, y / (1.0 - cfg.dropout), 0.0)
      return drop

    new_caches = []
    for i, block in enumerate(self.layers):
      if cfg.remat and cache is None and prefix is None:
        # Only the block's input is kept for the backward pass; its insides are recomputed there.
        run = jax.checkpoint(lambda x, pos, m, blk=block, drop=make_drop(i): blk(x, pos, m, None, 0, drop)[0])
        x_BxLxD, c = run(x_BxLxD, positions_BxL, mask_BxLxS), None
      else:
        x_BxLxD, c = block(x_BxLxD, positions_BxL, mask_BxLxS, layer_caches[i], cache_index, make_drop(i),
                           prefix_kvs[i])
      new_caches.append(c)
    h_BxLxD = self.final_norm(x_BxLxD)
    if cache is None:
      return h_BxLxD
    new_cache = {
        "layers": new_caches, "valid": slot_valid_BxS, "index": cache_index + L,
        "next_pos": cache["next_pos"] + valid_BxL.sum(-1).astype(jnp.int32)}
    return h_BxLxD, new_cache

  def embed_tokens(self, tokens_BxL, positions_BxL):
    x_BxLxD = jnp.take(self.embed[...], tokens_BxL, axis=0)
    if self.pos_embed is not None:
      x_BxLxD = x_BxLxD + jnp.take(self.pos_embed[...], positions_BxL, axis=0)
    return x_BxLxD

  def block_inputs(self, tokens_BxL, valid_BxL, layers) -> dict[int, jax.Array]:
    """The residual stream entering block l, for each l in `layers` ([B, L, D] float32; l = n_layers is the
    final norm's input, 0 the embeddings). Only the blocks below max(layers) run: this is how a frozen trunk's
    states are cached once (`hhh.frozen.cache`), with the same layout and padding rules as `__call__`."""
    layers = sorted(set(int(l) for l in layers))
    if not layers or layers[0] < 0 or layers[-1] > self.cfg.n_layers:
      raise ValueError(f"layers {layers} must lie in [0, {self.cfg.n_layers}]")
    valid_BxL = valid_BxL.astype(bool)
    positions_BxL, mask_BxLxS = row_layout(valid_BxL)
    x_BxLxD = self.embed_tokens(tokens_BxL, positions_BxL)
    out = {}
    for i in range(layers[-1] + 1):
      if i in layers:
        out[i] = x_BxLxD
      if i < layers[-1]:
        x_BxLxD, _ = self.layers[i](x_BxLxD, positions_BxL, mask_BxLxS, None, 0, lambda y, _: y)
    return out

  def init_cache(self, batch: int, size: int | None = None, dtype=jnp.float32) -> Cache:
    cfg = self.cfg
    size = size or cfg.max_len
    shape = (batch, cfg.kv_heads, size, cfg.head_dim)  # head-major, as the attention reads it
    return {
        "layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers)],
        "valid": jnp.zeros((batch, size), bool), "index": jnp.int32(0),
        "next_pos": jnp.zeros((batch,), jnp.int32)}

  def lm_logits(self, h_BxLxD):
    """Next-token logits in float32 (a bf16 softmax over a large vocab loses the tail)."""
    w_DxV = self.embed[...].T if self.lm_head is None else self.lm_head[...]
    return _matmul(h_BxLxD, w_DxV, self.cfg.dtype).astype(jnp.float32)

  def reward(self, h_BxLxD, valid_BxL):
    """Scalar score read at each row's last valid token (the end-of-context token), in float32."""
    idx_B = last_valid_index(valid_BxL)
    h_BxD = jnp.take_along_axis(h_BxLxD, idx_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return self.reward_all(h_BxD[:, None])[:, 0]

  def reward_all(self, h_BxLxD):
    """The reward head at every slot, [B, L] in float32 (packed rows read several per row)."""
    return (h_BxLxD.astype(jnp.float32) @ self.reward_head["kernel"][...])[..., 0] + self.reward_head["bias"][...][0]


def prefill_prefix(model: Transformer, tokens_1xP, valid_1xP, chunk: int | None = None) -> Cache:
  """The batch-1 cache of a prefix (P slots; pad slots invalid), for `Transformer(prefix=...)`: "layers",
  "valid" and "next_pos". Filled `chunk` tokens at a time (P a multiple of it): in one pass a 7k-token prompt
  makes [heads, P, P] attention temporaries of 1.7 GB per layer, in chunks of 512 a fourteenth of that (the
  prefill's time on 2 CPU cores is about the same either way)."""
  P = tokens_1xP.shape[1]
  C = chunk or P
  if P % C:
    raise ValueError(f"a prefix of {P} slots is not a multiple of the prefill chunk {C}")
  cache = model.init_cache(1, P, dtype=jnp.dtype(model.cfg.dtype))

  def step(cache, chunk_arrays):
    tokens_1xC, valid_1xC = chunk_arrays
    _, cache = model(tokens_1xC, valid_1xC, cache=cache)
    return cache, None

  chunks = (tokens_1xP.reshape(P // C, 1, C), valid_1xP.reshape(P // C, 1, C))
  cache, _ = jax.lax.scan(step, cache, chunks)
  return {"layers": cache["layers"], "valid": cache["valid"], "next_pos": cache["next_pos"]}


PREFILL_CHUNK = 512


def prefix_slots(n: int, align: int = 64, chunk: int = PREFILL_CHUNK) -> tuple[int, int]:
  """(slots, prefill chunk) for an n-token prefix: n rounded up to `align`, or to `chunk` when longer (0 slots
  for no prefix)."""
  P = -(-n // align) * align
  if P > chunk:
    P = -(-n // chunk) * chunk
  return P, min(P, chunk)

