"""The Transformer: padding invariance, KV cache, parameter counts, causality, bf16 and dropout.

Every forward goes through one jitted function keyed on (graphdef, shapes), and
the tests reuse a handful of shapes ([1, 7], [1, 11], [4, 11], and the cache's
[4, 7] and [4, 1]), so each config compiles only a few programs: XLA compiles, not
the tiny models' FLOPs, are what costs time on CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hhh.model import family
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer

ATOL = 1e-5

# ModelConfig's own default: Llama-like (RMSNorm, RoPE, SwiGLU, tied, no biases), d_model 64, 2 layers, 4 heads.
DEFAULT = ModelConfig()
# GPT-2-like with GQA: LayerNorm, learned positions, GELU, untied head, q/k/v/o and MLP biases, 4 q heads on 2 kv heads.
GPT2 = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, norm="layer", pos="learned", mlp="gelu",
                   tie_embeddings=False, attn_bias=True, mlp_bias=True, max_len=128)
# GPT-NeoX-like: parallel residual, partial rotary (a quarter of head_dim 16 = 4 dims rotated), biases, GELU, MHA.
NEOX = dataclasses.replace(GPT2, n_kv_heads=0, pos="rope", rotary_pct=0.25, parallel_residual=True)
CONFIGS = {"default": DEFAULT, "gpt2": GPT2, "neox": NEOX}


@functools.lru_cache(maxsize=None)
def _params(cfg: ModelConfig, seed: int, noise: float):
  """Random init through nnx.Rngs, then every parameter moved by N(0, noise^2) (numpy, so nothing compiles).

  Biases and LayerNorm biases start at zero and norm scales at one; without the
  perturbation a bug that drops or misplaces them (or the learned positions,
  std 0.01) would hardly show. 0.1 keeps activations O(1), so 1e-5 is a real test.
  """
  state = nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + noise * rng.standard_normal(x.shape, np.float32)),
                      nnx.to_pure_dict(state))


def make_model(cfg: ModelConfig, seed: int = 0, noise: float = 0.1, params_cfg: ModelConfig | None = None):
  """A perturbed random model; params_cfg builds it with another config's parameters (same shapes)."""
  pure = _params(params_cfg or cfg, seed, noise)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens, valid, dropout_rng):
  m = nnx.merge(graphdef, params)
  h = m(tokens, valid, dropout_rng=dropout_rng)
  return h, m.lm_logits(h), m.reward(h, valid)


@functools.partial(jax.jit, static_argnums=0)
def _forward_cached(graphdef, params, tokens, valid, cache):
  m = nnx.merge(graphdef, params)
  h, cache = m(tokens, valid, cache=cache)
  return h, m.lm_logits(h), cache


def fwd(model, tokens, valid=None, dropout_rng=None):
  """(hidden [B, L, D], lm_logits [B, L, V], reward [B]) of one jitted forward."""
  tokens = jnp.asarray(tokens, jnp.int32)
  valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid, bool)
  graphdef, params = nnx.split(model)
  return _forward(graphdef, params, tokens, valid, dropout_rng)


def fwd_cached(model, tokens, valid, cache):
  graphdef, params = nnx.split(model)
  return _forward_cached(graphdef, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid, bool), cache)


def _tokens(seed: int, n: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 259, (n,)).astype(np.int32)


def _pad(seq, width, left: bool, pad_id: int):
  """(tokens [width], valid [width]) with seq left- or right-padded by pad_id."""
  n_pad = width - len(seq)
  pad = np.full((n_pad,), pad_id, np.int32)
  toks = np.concatenate([pad, seq] if left else [seq, pad])
  valid = np.arange(width) >= n_pad if left else np.arange(width) < len(seq)
  return toks, valid


def _rows(*rows):
  return np.stack([t for t, _ in rows]), np.stack([v for _, v in rows])


# ---------------------------------------------------------------------------------------------------
# 1. Padding invariance.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_invariance(name):
  model = make_model(CONFIGS[name])
  x = _tokens(1, 7)                                # the example under test, 7 tokens
  other_long, other_short = _tokens(2, 11), _tokens(3, 3)

  # (a) alone, no padding.
  h_a, _, r_a = fwd(model, x[None])
  # (b) a mixed batch of width 11: an 11-token sequence, x right-padded, a 3-token sequence
  # left-padded, x left-padded. Pad ids differ on purpose: what sits under a pad must not matter.
  toks_b, valid_b = _rows(_pad(other_long, 11, False, 0), _pad(x, 11, False, 5), _pad(other_short, 11, True, 9),
                          _pad(x, 11, True, 258))
  h_b, _, r_b = fwd(model, toks_b, valid_b)
  # (c) alone, left-padded by 4; (d) alone, right-padded by 4.
  toks_c, valid_c = _pad(x, 11, True, 17)
  h_c, _, r_c = fwd(model, toks_c[None], valid_c[None])
  toks_d, valid_d = _pad(x, 11, False, 42)
  h_d, _, r_d = fwd(model, toks_d[None], valid_d[None])

  for r in (r_b[1], r_b[3], r_c[0], r_d[0]):
    np.testing.assert_allclose(r, r_a[0], rtol=0, atol=ATOL)
  h_ref = np.asarray(h_a[0])                       # [7, D]
  np.testing.assert_allclose(h_b[1, :7], h_ref, rtol=0, atol=ATOL)   # right-padded, in the batch
  np.testing.assert_allclose(h_b[3, 4:], h_ref, rtol=0, atol=ATOL)   # left-padded by 4, in the batch
  np.testing.assert_allclose(h_c[0, 4:], h_ref, rtol=0, atol=ATOL)
  np.testing.assert_allclose(h_d[0, :7], h_ref, rtol=0, atol=ATOL)

  # The other rows of the mixed batch are unaffected by their neighbours too.
  h_long, _, r_long = fwd(model, other_long[None])
  np.testing.assert_allclose(h_b[0], h_long[0], rtol=0, atol=ATOL)
  np.testing.assert_allclose(r_b[0], r_long[0], rtol=0, atol=ATOL)
  toks_s, valid_s = _pad(other_short, 11, False, 0)
  h_short, _, r_short = fwd(model, toks_s[None], valid_s[None])
  np.testing.assert_allclose(h_b[2, 8:], h_short[0, :3], rtol=0, atol=ATOL)
  np.testing.assert_allclose(r_b[2], r_short[0], rtol=0, atol=ATOL)

  # Not vacuous: activations and rewards are O(1), the reward is read at x's last token (not at
  # a pad or at the previous token), and position matters (x after 4 extra real tokens differs).
  assert np.abs(h_ref).max() > 0.5 and abs(float(r_a[0])) > 1e-2
  r_prefix = model.reward(h_a[:, :6], jnp.ones((1, 6), bool))
  assert abs(float(r_prefix[0] - r_a[0])) > 1e-3
  assert abs(float(model.reward(h_d, jnp.ones((1, 11), bool))[0] - r_a[0])) > 1e-3
  h_shift, _, _ = fwd(model, np.concatenate([other_long[:4], x])[None])
  assert np.abs(np.asarray(h_shift[0, 4:]) - h_ref).max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# 2. KV cache.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_greedy_decoding_matches_full_forward(name):
  """Prefill a left-padded batch of prompts (7, 3, 5 and 6 tokens), then decode 4 steps one token at a time.

  Row 2 is fed a pad slot (valid False) at step 1 and row 3 at step 3, so the
  cache also holds holes in the middle of a sequence; the full forward sees the
  same holes. Width 7 + 4 = 11 keeps the full forward at a shape already compiled.
  """
  model = make_model(CONFIGS[name], seed=3)
  prompt, prompt_valid = _rows(*(_pad(_tokens(10 + i, n), 7, True, i) for i, n in enumerate((7, 3, 5, 6))))
  step_valid = np.ones((4, 4), bool)               # [step, row]
  step_valid[1, 2] = step_valid[3, 3] = False

  cache = model.init_cache(4, size=16)
  h, logits, cache = fwd_cached(model, prompt, prompt_valid, cache)
  hs, all_logits, toks, valids = [h], [logits], [prompt], [prompt_valid]
  last_logits = logits[:, -1]                      # each row's logits at its last valid token
  for v in step_valid:
    nxt = np.where(v, np.asarray(jnp.argmax(last_logits, -1)), 0).astype(np.int32)[:, None]   # greedy
    h, logits, cache = fwd_cached(model, nxt, v[:, None], cache)
    last_logits = jnp.where(v[:, None], logits[:, -1], last_logits)
    hs.append(h)
    all_logits.append(logits)
    toks.append(nxt)
    valids.append(v[:, None])
  # 11 slots written; positions advanced by valid tokens only: prompt + 4, 4, 3, 3.
  assert int(cache["index"]) == 11
  np.testing.assert_array_equal(cache["next_pos"], [7 + 4, 3 + 4, 5 + 3, 6 + 3])

  seq, valid = np.concatenate(toks, axis=1), np.concatenate(valids, axis=1)   # [4, 11]
  h_full, logits_full, r_full = fwd(model, seq, valid)
  h_inc, logits_inc = jnp.concatenate(hs, axis=1), jnp.concatenate(all_logits, axis=1)
  np.testing.assert_allclose(h_inc[valid], h_full[valid], rtol=0, atol=ATOL)
  np.testing.assert_allclose(logits_inc[valid], logits_full[valid], rtol=0, atol=ATOL)
  np.testing.assert_allclose(model.reward(h_inc, jnp.asarray(valid)), r_full, rtol=0, atol=ATOL)
  # Each decoded token is the full forward's argmax at the previous valid position of its row.
  n_checked = 0
  for b in range(4):
    pos = np.flatnonzero(valid[b])
    for prev, cur in zip(pos[:-1], pos[1:]):
      if cur >= 7:
        assert seq[b, cur] == int(jnp.argmax(logits_full[b, prev]))
        n_checked += 1
  assert n_checked == 4 + 4 + 3 + 3
  # Row 1 run alone, unpadded (its 3-token prompt + 4 decoded tokens), matches as well.
  h_alone, _, _ = fwd(model, seq[1:2, 4:])
  np.testing.assert_allclose(h_inc[1, 4:], h_alone[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shared_prefix_matches_full_forward(name):
  """Three rows continuing one prefilled prefix (5 tokens in 8 slots, the last 3 invalid) read it as a shared
  prefix (`prefix=`, never copied per row): the same states as a full forward over prefix + row, padding and all."""
  model = make_model(CONFIGS[name], seed=4)
  prefix = _tokens(30, 5)
  cache = model.init_cache(1, size=8)
  prefix_8, prefix_valid_8 = _pad(prefix, 8, False, 0)
  _, _, cache = fwd_cached(model, prefix_8[None], prefix_valid_8[None], cache)
  shared = {"layers": cache["layers"], "valid": cache["valid"], "next_pos": cache["next_pos"]}
  rows, valid = _rows(*(_pad(_tokens(31 + i, n), 6, False, i) for i, n in enumerate((6, 2, 4))))
  graphdef, params = nnx.split(model)
  h = jax.jit(lambda p, t, v, pre: nnx.merge(graphdef, p)(t, v, prefix=pre))(params, rows, valid, shared)
  for b in range(3):
    n = int(valid[b].sum())
    h_full, _, _ = fwd(model, np.concatenate([prefix, rows[b, :n]])[None])
    np.testing.assert_allclose(h[b, :n], h_full[0, 5:], rtol=0, atol=ATOL)
  # With a per-row cache after the prefix (how sampling and shared-context scoring use it): the rows, then one
  # more token each, attend to prefix + their own slots and give the same states again.
  row_cache = model.init_cache(3, size=8)
  row_cache["next_pos"] = jnp.broadcast_to(shared["next_pos"], (3,))
  step = jax.jit(lambda p, t, v, c, pre: nnx.merge(graphdef, p)(t, v, cache=c, prefix=pre))
  h_rows, row_cache = step(params, rows, valid, row_cache, shared)
  nxt = np.array([[7], [8], [9]], np.int32)
  h_next, row_cache = step(params, nxt, np.ones((3, 1), bool), row_cache, shared)
  np.testing.assert_allclose(np.asarray(h_rows)[valid], np.asarray(h)[valid], rtol=0, atol=ATOL)
  for b in range(3):
    n = int(valid[b].sum())
    h_full, _, _ = fwd(model, np.concatenate([prefix, rows[b, :n], nxt[b]])[None])
    np.testing.assert_allclose(h_next[b, 0], h_full[0, -1], rtol=0, atol=ATOL)
  with pytest.raises(ValueError, match="shared by every row"):
    model(rows, valid, prefix={**shared, "valid": jnp.concatenate([shared["valid"]] * 2)})


# ---------------------------------------------------------------------------------------------------
# 3. Parameter count.


@pytest.mark.parametrize("cfg,total", [
    # 259*64 + 2*(2*64 + 4*64*64 + 3*64*176) + 64 + 65 = 16576 + 100737 (as in test_family.py)
    (DEFAULT, 117313),
    # embed 259*64 + pos 128*64 + lm_head 64*259 = 41344, non-embedding 91841 (as in test_family.py)
    (GPT2, 133185),
    # SwiGLU with MLP biases: layer = 2*64 + 4*64*64 + 3*64*176 + (176 + 176 + 64)
    #   = 128 + 16384 + 33792 + 416 = 50720; total = 259*64 + 2*50720 + 64 + (64 + 1) = 16576 + 101569
    (ModelConfig(mlp_bias=True), 118145),
])
def test_param_count_matches_family(cfg, total):
  state = nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  assert n == family.param_counts(cfg)["total"] == total


# ---------------------------------------------------------------------------------------------------
# 4. Causality.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causality(name):
  model = make_model(CONFIGS[name], seed=3)
  x = _tokens(30, 11)
  y = x.copy()
  y[5] = (x[5] + 1) % 259                          # change token 5 only
  h_x, h_y = fwd(model, x[None])[0][0], fwd(model, y[None])[0][0]
  np.testing.assert_array_equal(h_x[:5], h_y[:5])  # earlier positions: bit-identical
  assert np.abs(np.asarray(h_x[5:] - h_y[5:])).max(-1).min() > 1e-3   # every later position changes


# ---------------------------------------------------------------------------------------------------
# 5. bf16 compute.


def test_bfloat16_compute_close_to_float32():
  """bf16 matmul inputs (8-bit mantissa, unit roundoff 2**-9 ~ 2e-3) with float32 accumulation.

  Two layers round O(1) activations about eight times (q/k/v, scores, probs,
  values, out, MLP in/out), so the final-normed hidden states (entries ~1) carry
  errors of a few 1e-2 (measured: max 0.023 here). The reward is a 64-term dot
  product of those with a head of entries ~0.1, so independent errors give
  ~sqrt(64) * 1e-2 * 0.1 ~ 1e-2 (measured: max 0.006 on rewards up to 0.54).
  Logits are 64-term products with the untied head (entries ~0.1); measured
  max error is 0.026 of their spread. Tolerances: 0.1 on hidden states, 5e-2
  on rewards, 0.1 * std on logits (each 4-8x the measured error), and a
  visible difference is required so bf16 compute is really in use.
  """
  m32 = make_model(GPT2)
  m16 = make_model(dataclasses.replace(GPT2, dtype="bfloat16"), params_cfg=GPT2)   # same parameters
  for p in jax.tree.leaves(nnx.state(m16, nnx.Param)):
    assert p.dtype == jnp.float32
  toks, valid = _rows(_pad(_tokens(40, 11), 11, False, 0), _pad(_tokens(41, 7), 11, True, 0),
                      _pad(_tokens(42, 9), 11, False, 0), _pad(_tokens(43, 5), 11, True, 0))
  h32, l32, r32 = fwd(m32, toks, valid)
  h16, l16, r16 = fwd(m16, toks, valid)
  assert h16.dtype == l16.dtype == r16.dtype == jnp.float32
  assert float(jnp.abs(r32).max()) > 0.3
  np.testing.assert_allclose(h16[valid], h32[valid], rtol=0, atol=0.1)
  np.testing.assert_allclose(r16, r32, rtol=0, atol=5e-2)
  np.testing.assert_allclose(l16, l32, rtol=0, atol=0.1 * float(jnp.std(l32)))
  assert float(jnp.abs(l16 - l32).max()) > 1e-4      # bf16 really changed the arithmetic
  # The reward head itself computes in float32 from the float32 hidden state.
  np.testing.assert_allclose(m16.reward(h16, jnp.asarray(valid)), r16, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# 6. Dropout.


def test_dropout():
  m_drop = make_model(dataclasses.replace(DEFAULT, dropout=0.5), params_cfg=DEFAULT)
  m_plain = make_model(DEFAULT)                      # same parameters, dropout=0
  toks = _tokens(50, 11)[None]
  h0 = fwd(m_drop, toks)[0]
  np.testing.assert_array_equal(h0, fwd(m_drop, toks)[0])     # no rng: deterministic
  np.testing.assert_array_equal(h0, fwd(m_plain, toks)[0])    # ... and no dropout at all
  k1, k2 = jax.random.key(1), jax.random.key(2)
  h1 = fwd(m_drop, toks, dropout_rng=k1)[0]
  np.testing.assert_array_equal(h1, fwd(m_drop, toks, dropout_rng=k1)[0])   # same key, same masks
  h2 = fwd(m_drop, toks, dropout_rng=k2)[0]
  assert float(jnp.abs(h1 - h0).max()) > 1e-2
  assert float(jnp.abs(h1 - h2).max()) > 1e-2
  # With dropout=0 the rng is ignored.
  np.testing.assert_array_equal(fwd(m_plain, toks, dropout_rng=k1)[0], h0)
