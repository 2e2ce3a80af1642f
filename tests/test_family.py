"""Parameter counts, FLOPs and the size family, checked against hand arithmetic."""

from __future__ import annotations

import pytest

from hhh.model import family
from hhh.model.config import ModelConfig


def test_param_counts_llama_like_by_hand():
  cfg = ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=4, d_ff=176, mlp="swiglu",
                    norm="rms", tie_embeddings=True, pos="rope")
  embed = 259 * 64                      # 16576
  norm = 64                             # rms: scale only
  attn = 4 * 64 * 64                    # wq, wk, wv, wo: 16384
  mlp = 3 * 64 * 176                    # w_gate, w_up, w_down: 33792
  layer = 2 * norm + attn + mlp         # 50304
  non_emb = 2 * layer + norm + (64 + 1)  # final_norm + reward head: 100737
  assert non_emb == 100737
  assert family.param_counts(cfg) == {"total": embed + non_emb, "non_embedding": non_emb, "embedding": embed}
  assert family.param_counts(cfg)["total"] == 117313


def test_param_counts_gpt2_like_gqa_by_hand():
  cfg = ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp="gelu",
                    norm="layer", attn_bias=True, mlp_bias=True, tie_embeddings=False, pos="learned",
                    max_len=128)
  assert cfg.head_dim == 16 and cfg.ff_dim == 256
  embedding = 259 * 64 + 128 * 64 + 64 * 259       # embed + pos_embed + lm_head: 41344
  norm = 2 * 64                                    # layer norm: scale + bias
  attn = 64 * 64 + 2 * 64 * (2 * 16) + 64 * 64     # wq, wk, wv, wo: 12288
  attn_b = 64 + 2 * (2 * 16) + 64                  # bq, bk, bv, bo: 192
  mlp = 2 * 64 * 256 + 256 + 64                    # w_up, w_down, b_up, b_down: 33088
  layer = 2 * norm + attn + attn_b + mlp           # 45824
  non_emb = 2 * layer + norm + 65                  # 91841
  assert (embedding, non_emb) == (41344, 91841)
  assert family.param_counts(cfg) == {"total": 133185, "non_embedding": 91841, "embedding": 41344}


def test_swiglu_biases_counted():
  base = ModelConfig(d_model=64, n_layers=1, n_heads=4, d_ff=176)
  biased = ModelConfig(d_model=64, n_layers=1, n_heads=4, d_ff=176, mlp_bias=True)
  # b_gate + b_up + b_down
  assert family.param_counts(biased)["non_embedding"] - family.param_counts(base)["non_embedding"] == 176 + 176 + 64


def test_flops_by_hand():
  cfg = ModelConfig(vocab_size=259, d_model=64, n_layers=2, n_heads=4, d_ff=176, max_len=512)
  # 6 N + 6 D V + 6 L n_ctx D
  expected = 6 * 100737 + 6 * 64 * 259 + 6 * 2 * 512 * 64
  assert expected == 1097094
  assert family.train_flops_per_token(cfg) == expected          # n_ctx defaults to max_len
  assert family.train_flops_per_token(cfg, n_ctx=512) == expected
  assert family.train_flops_per_token(cfg, n_ctx=128) == expected - 6 * 2 * (512 - 128) * 64
  assert family.forward_flops_per_token(cfg) == pytest.approx(expected / 3)


def test_family_is_monotone_and_spans_range():
  rows = family.table()
  assert [r["name"] for r in rows] == list(family.FAMILY)
  assert 8 <= len(rows) <= 12
  for key in ("non_embedding", "total", "train_flops_per_token", "d_model"):
    values = [r[key] for r in rows]
    assert values == sorted(values) and len(set(values)) == len(values), key
  assert 0.5e5 <= rows[0]["non_embedding"] <= 2e5
  assert abs(rows[-1]["non_embedding"] - 5e10) <= 0.1 * 5e10


def test_family_shape_and_names():
  scale = {"k": 1e3, "m": 1e6, "b": 1e9}
  for name, cfg in family.FAMILY.items():
    n = family.param_counts(cfg)["non_embedding"]
    nominal = float(name[:-1]) * scale[name[-1]]
    assert 1 / 1.25 <= n / nominal <= 1.25, (name, n)
    assert cfg.head_dim in (64, 128) or name == "100k"
    if name != "100k":  # the documented exception to the paper's aspect ratio
      assert cfg.d_model == 128 * cfg.n_layers, name
  big = family.FAMILY["52b"]
  assert (big.n_layers, big.d_model, big.head_dim, big.max_len) == (64, 8192, 128, 2048)


def test_get_overrides_and_unknown_name():
  cfg = family.get("13m", vocab_size=50257, max_len=1024)
  assert (cfg.vocab_size, cfg.max_len, cfg.n_layers) == (50257, 1024, 4)
  assert family.FAMILY["13m"].vocab_size == 259  # presets are untouched
  with pytest.raises(ValueError) as err:
    family.get("7b")
  msg = str(err.value)
  assert "\n" not in msg and all(name in msg for name in family.FAMILY)


def test_table_vocab_and_ctx():
  small = family.table()[0]
  big_vocab = family.table(vocab_size=50257, n_ctx=128)[0]
  assert big_vocab["non_embedding"] == small["non_embedding"]
  assert big_vocab["total"] - small["total"] == (50257 - 259) * 64
  assert big_vocab["train_flops_per_token"] == family.train_flops_per_token(
      family.get("100k", vocab_size=50257), n_ctx=128)


def test_format_table():
  text = family.format_table(family.table())
  lines = text.splitlines()
  assert len(lines) == len(family.FAMILY) + 1
  assert len({len(line) for line in lines}) == 1  # aligned
  for name in family.FAMILY:
    assert any(line.split()[0] == name for line in lines[1:])
  assert "52B" in text and "e+" in text


def test_human_count():
  assert family.human_count(999) == "999"
  assert family.human_count(100737) == "101K"
  assert family.human_count(1234567) == "1.2M"
  assert family.human_count(9_960_000) == "10M"
  assert family.human_count(51544866817) == "52B"


def test_step_flops_count_the_lm_head_only_where_the_step_forms_logits():
  cfg = family.get("13m", vocab_size=259)
  # Per layer: two RMSNorm scales, q/k/v/o (4 * 512^2) and SwiGLU (3 * 512 * 1368); plus the final norm and the
  # reward head (512 + 1).
  n = 4 * (2 * 512 + 4 * 512 * 512 + 3 * 512 * 1368) + 512 + 513
  assert family.param_counts(cfg)["non_embedding"] == n == 12_604_417
  attention = 12 * 4 * 256 * 512
  assert family.step_flops_per_token(cfg, 256, "ranked") == 6 * n + attention == 81_917_958
  assert family.step_flops_per_token(cfg, 256, "binary") == 81_917_958
  with_head = 6 * n + attention + 6 * 512 * 259
  assert family.step_flops_per_token(cfg, 256, "imitation") == with_head
  assert family.step_flops_per_token(cfg, 256, "ranked", lm_head=True) == with_head
