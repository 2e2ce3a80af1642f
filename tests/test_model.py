"""The Transformer: padding invariance, KV cache, parameter counts, causality, bf16 and dropout."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hhh.model import family
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer

ATOL = 1e-5

# ModelConfig's own default: Llama-like (RMSNorm, RoPE, SwiGLU, tied, no biases), d_model 64, 2 layers.
DEFAULT = ModelConfig()
# GPT-2-like with GQA: LayerNorm, learned positions, GELU, untied head, q/k/v/o and MLP biases, 4 q heads on 2 kv heads.
GPT2 = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, norm="layer", pos="learned", mlp="gelu",
                   tie_embeddings=False, attn_bias=True, mlp_bias=True, max_len=128)
# GPT-NeoX-like: parallel residual, partial rotary (a quarter of head_dim 16 = 4 dims rotated), biases, GELU.
NEOX = dataclasses.replace(GPT2, n_kv_heads=0, pos="rope", rotary_pct=0.25, parallel_residual=True)
CONFIGS = {"default": DEFAULT, "gpt2": GPT2, "neox": NEOX}


def make_model(cfg: ModelConfig, seed: int = 0, noise: float = 0.1) -> Transformer:
  """Random init, then every parameter (biases, norm scales/biases, positions too) moved by N(0, noise^2).

  Biases and LayerNorm biases start at zero and norm scales at one; without the
  perturbation a bug that misuses them (or the learned positions, std 0.01) would
  hardly show. 0.1 keeps the activations O(1) so a 1e-5 tolerance is meaningful.
  """
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)
  leaves, treedef = jax.tree.flatten(pure)
  keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
  leaves = [x + noise * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, leaves))
  return nnx.merge(graphdef, state)


def _tokens(seed: int, n: int) -> np.ndarray:
  return np.asarray(jax.random.randint(jax.random.key(seed), (n,), 0, 259), np.int32)


def _pad(seq, width, left: bool, pad_id: int):
  pad = np.full((width - len(seq),), pad_id, np.int32)
  toks = np.concatenate([pad, seq] if left else [seq, pad])
  valid = np.concatenate([np.zeros(len(pad), bool), np.ones(len(seq), bool)])
  return toks, (valid if left else valid[::-1].copy())


# ---------------------------------------------------------------------------------------------------
# 1. Padding invariance.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_invariance(name):
  cfg = CONFIGS[name]
  model = make_model(cfg)
  x = _tokens(1, 7)                       # the example under test, 7 tokens
  other_long, other_short = _tokens(2, 11), _tokens(3, 3)
  W = 11

  # (a) alone, no padding.
  h_a = model(jnp.asarray(x)[None], jnp.ones((1, 7), bool))
  r_a = model.reward(h_a, jnp.ones((1, 7), bool))

  # (b) a mixed batch of 4 rows, width 11: a full-length sequence, x right-padded, a 3-token
  # sequence left-padded, and x left-padded. Pad ids differ on purpose: pads must not matter.
  rows = [_pad(other_long, W, False, 0), _pad(x, W, False, 5), _pad(other_short, W, True, 9),
          _pad(x, W, True, 258)]
  toks_b = jnp.asarray(np.stack([t for t, _ in rows]))
  valid_b = jnp.asarray(np.stack([v for _, v in rows]))
  h_b = model(toks_b, valid_b)
  r_b = model.reward(h_b, valid_b)

  # (c) alone, left-padded by 5; (d) alone, right-padded by 6.
  toks_c, valid_c = _pad(x, 12, True, 17)
  h_c = model(jnp.asarray(toks_c)[None], jnp.asarray(valid_c)[None])
  r_c = model.reward(h_c, jnp.asarray(valid_c)[None])
  toks_d, valid_d = _pad(x, 13, False, 42)
  h_d = model(jnp.asarray(toks_d)[None], jnp.asarray(valid_d)[None])
  r_d = model.reward(h_d, jnp.asarray(valid_d)[None])

  for r in (r_b[1], r_b[3], r_c[0], r_d[0]):
    np.testing.assert_allclose(r, r_a[0], rtol=0, atol=ATOL)
  h_ref = np.asarray(h_a[0])              # [7, D]
  np.testing.assert_allclose(h_b[1, :7], h_ref, rtol=0, atol=ATOL)   # right-padded in batch
  np.testing.assert_allclose(h_b[3, 4:], h_ref, rtol=0, atol=ATOL)   # left-padded by 4 in batch
  np.testing.assert_allclose(h_c[0, 5:], h_ref, rtol=0, atol=ATOL)
  np.testing.assert_allclose(h_d[0, :7], h_ref, rtol=0, atol=ATOL)

  # The other rows of the mixed batch are also unaffected by their neighbours.
  h_long = model(jnp.asarray(other_long)[None])
  h_short = model(jnp.asarray(other_short)[None])
  np.testing.assert_allclose(h_b[0], h_long[0], rtol=0, atol=ATOL)
  np.testing.assert_allclose(h_b[2, 8:], h_short[0], rtol=0, atol=ATOL)
  np.testing.assert_allclose(r_b[2], model.reward(h_short, jnp.ones((1, 3), bool))[0], rtol=0, atol=ATOL)

  # Not vacuous: the reward is the one at x's last token (the 6-token prefix scores differently),
  # and position matters (the same token at another position has another hidden state).
  r_prefix = model.reward(h_a[:, :6], jnp.ones((1, 6), bool))
  assert abs(float(r_prefix[0] - r_a[0])) > 1e-3
  assert np.abs(h_ref).max() > 0.1 and abs(float(r_a[0])) > 1e-2
  h_shift = model(jnp.asarray(np.concatenate([x[:1], x]))[None])   # x after an extra real token
  assert np.abs(np.asarray(h_shift[0, 1:]) - h_ref).max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# 2. KV cache.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_greedy_decoding_matches_full_forward(name):
  cfg = CONFIGS[name]
  model = make_model(cfg, seed=3)
  p0, p1 = _tokens(10, 5), _tokens(11, 3)   # prompts of 5 and 3 tokens, batch left-padded to 5
  t0, v0 = _pad(p0, 5, True, 0)
  t1, v1 = _pad(p1, 5, True, 7)
  prompt, prompt_valid = jnp.asarray(np.stack([t0, t1])), jnp.asarray(np.stack([v0, v1]))
  steps = 4

  cache = model.init_cache(2, size=16)
  h, cache = model(prompt, prompt_valid, cache=cache)
  hs, logits = [h], [model.lm_logits(h)]
  seq = prompt
  for _ in range(steps):
    nxt = jnp.argmax(logits[-1][:, -1], axis=-1).astype(jnp.int32)[:, None]   # greedy
    seq = jnp.concatenate([seq, nxt], axis=1)
    h, cache = model(nxt, jnp.ones((2, 1), bool), cache=cache)
    hs.append(h)
    logits.append(model.lm_logits(h))
  assert int(cache["index"]) == 5 + steps
  np.testing.assert_array_equal(cache["next_pos"], [5 + steps, 3 + steps])   # padded slots never count

  valid = jnp.concatenate([prompt_valid, jnp.ones((2, steps), bool)], axis=1)
  h_full = model(seq, valid)
  logits_full = model.lm_logits(h_full)
  h_inc, logits_inc = jnp.concatenate(hs, axis=1), jnp.concatenate(logits[:], axis=1)
  np.testing.assert_allclose(h_inc[valid], h_full[valid], rtol=0, atol=ATOL)
  np.testing.assert_allclose(logits_inc[valid], logits_full[valid], rtol=0, atol=ATOL)
  # Greedy choices agree with the full forward's argmax at each decoding position.
  np.testing.assert_array_equal(jnp.argmax(logits_full[:, 4:-1], -1), seq[:, 5:])
  # And each row equals that sequence run alone without padding.
  h_row1 = model(seq[1:, 2:])
  np.testing.assert_allclose(h_inc[1, 2:], h_row1[0], rtol=0, atol=ATOL)
  # Rewards read from the last (incrementally decoded) position agree too.
  np.testing.assert_allclose(model.reward(h_inc, valid), model.reward(h_full, valid), rtol=0, atol=ATOL)


def test_kv_cache_chunked_prefill():
  """A prompt fed in two chunks (the second with its own padding) equals one forward."""
  model = make_model(GPT2, seed=4)
  seq = _tokens(20, 9)
  cache = model.init_cache(1, size=12)
  h1, cache = model(jnp.asarray(seq[:4])[None], cache=cache)
  # Second chunk: 5 real tokens then 2 pad slots in the middle of the cache.
  toks2, valid2 = _pad(seq[4:], 7, False, 0)
  h2, cache = model(jnp.asarray(toks2)[None], jnp.asarray(valid2)[None], cache=cache)
  h3, cache = model(jnp.asarray([[3]]), cache=cache)   # one more token after the pad slots
  h_full = model(jnp.asarray(np.concatenate([seq, [3]]))[None])
  np.testing.assert_allclose(h1[0], h_full[0, :4], rtol=0, atol=ATOL)
  np.testing.assert_allclose(h2[0, :5], h_full[0, 4:9], rtol=0, atol=ATOL)
  np.testing.assert_allclose(h3[0], h_full[0, 9:], rtol=0, atol=ATOL)
  assert int(cache["index"]) == 12 and int(cache["next_pos"][0]) == 10


# ---------------------------------------------------------------------------------------------------
# 3. Parameter count.


@pytest.mark.parametrize("cfg,total", [
    # 259*64 + 2*(2*64 + 4*64*64 + 3*64*176) + 64 + 65 = 16576 + 100737 (see test_family.py)
    (DEFAULT, 117313),
    # embed 259*64 + pos 128*64 + lm_head 64*259 = 41344; non-embedding 91841 (see test_family.py)
    (GPT2, 133185),
    # SwiGLU with MLP biases: layer = 2*64 + 4*64*64 + 3*64*176 + (2*176 + 64) = 128 + 16384 + 33792 + 416
    # = 50720; total = 16576 + 2*50720 + 64 + 65 = 118145
    (ModelConfig(mlp_bias=True), 118145),
])
def test_param_count_matches_family(cfg, total):
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == family.param_counts(cfg)["total"] == total


# ---------------------------------------------------------------------------------------------------
# 4. Causality.


@pytest.mark.parametrize("name", ["default", "neox"])
def test_causality(name):
  model = make_model(CONFIGS[name], seed=5)
  x = _tokens(30, 8)
  y = x.copy()
  y[5] = (x[5] + 1) % 259
  h_x, h_y = model(jnp.asarray(np.stack([x, y])))
  np.testing.assert_allclose(h_x[:5], h_y[:5], rtol=0, atol=ATOL)
  assert np.abs(np.asarray(h_x[5:] - h_y[5:])).max(-1).min() > 1e-3   # every later position changes


# ---------------------------------------------------------------------------------------------------
# 5. bf16 compute.


def test_bfloat16_compute_close_to_float32():
  """bf16 matmul inputs (8-bit mantissa, unit roundoff 2**-9 ~ 2e-3) with f32 accumulation.

  Over 2 layers there are ~8 roundings of O(1) activations before the final
  norm, so hidden states carry ~1e-2 error; the reward is a 64-term dot product
  of those with the head (|w| ~ 0.1), so its error is ~sqrt(64) * 1e-2 * 0.1
  ~ 1e-2. We allow 5e-2 absolute on rewards of magnitude ~0.5-1 (and on logits
  scaled by their own spread), and require some difference so bf16 is really used.
  """
  cfg32 = GPT2
  cfg16 = dataclasses.replace(GPT2, dtype="bfloat16")
  m32, m16 = make_model(cfg32, seed=6), make_model(cfg16, seed=6)
  for p in jax.tree.leaves(nnx.state(m16, nnx.Param)):
    assert p.dtype == jnp.float32
  toks = jnp.asarray(np.stack([_tokens(40, 10), _tokens(41, 10)]))
  valid = jnp.asarray([[True] * 10, [False] * 3 + [True] * 7])
  h32, h16 = m32(toks, valid), m16(toks, valid)
  assert h16.dtype == jnp.float32
  r32, r16 = m32.reward(h32, valid), m16.reward(h16, valid)
  l32, l16 = m32.lm_logits(h32), m16.lm_logits(h16)
  assert r16.dtype == jnp.float32 and l16.dtype == jnp.float32
  assert np.abs(np.asarray(r32)).min() > 0.1
  np.testing.assert_allclose(r16, r32, rtol=0, atol=5e-2)
  np.testing.assert_allclose(l16, l32, rtol=0, atol=5e-2 * float(jnp.std(l32)) * 4)
  assert float(jnp.abs(l16 - l32).max()) > 1e-5        # bf16 really changed the arithmetic
  # Padding invariance still holds exactly enough in bf16 (same rounding on the same values).
  h16_alone = m16(toks[1:, 3:])
  np.testing.assert_allclose(h16[1, 3:], h16_alone[0], rtol=0, atol=1e-2)


# ---------------------------------------------------------------------------------------------------
# 6. Dropout.


def test_dropout():
  cfg = dataclasses.replace(DEFAULT, dropout=0.5)
  model = make_model(cfg, seed=7)
  toks = jnp.asarray(_tokens(50, 9))[None]
  h0, h0_again = model(toks), model(toks)
  np.testing.assert_array_equal(h0, h0_again)                  # no rng: deterministic, no dropout
  hk = model(toks, dropout_rng=jax.random.key(1))
  np.testing.assert_array_equal(hk, model(toks, dropout_rng=jax.random.key(1)))   # same key, same mask
  hk2 = model(toks, dropout_rng=jax.random.key(2))
  assert float(jnp.abs(hk - h0).max()) > 1e-2
  assert float(jnp.abs(hk - hk2).max()) > 1e-2
  # With dropout=0 the rng is ignored entirely.
  model0 = make_model(DEFAULT, seed=7)
  np.testing.assert_array_equal(model0(toks, dropout_rng=jax.random.key(1)), model0(toks))
  # Same parameters either way: no-rng output with dropout=0.5 equals the dropout=0 model's.
  np.testing.assert_allclose(h0, model0(toks), rtol=0, atol=ATOL)
