"""The model-size family, parameter counts and training FLOPs per token.

Shape. Askell et al. 2021 (following Kaplan et al. 2020) scale a single shape:
d_model = 128 * n_layers, so the 52B model has 64 layers and d_model 8192. We
keep that aspect ratio for every size from 1.6m up, which reproduces the
paper's family (13M, 42M, 197M, 810M, 2.7B, 6.4B, 13B, 52B non-embedding) with
the paper's layer counts (4, 6, 10, 16, 24, 32, 40, 64) and adds 1.6m and 5m
below it (2 and 3 layers).

The one exception is "100k". At ratio 128 the smallest possible model (1 layer,
d_model 128) already has ~2e5 non-embedding parameters, and a 1-layer model
cannot form induction heads, so it is a poor stand-in for anything. "100k"
instead uses 2 layers at d_model 64 (ratio 32), which is ModelConfig's default
shape and lands on ~1e5.

Heads. head_dim is 64 while d_model < 1024 and 128 from there up, as in the
paper's large models (the 52B has 64 heads of 128). "100k" uses 2 heads of 32
rather than a single 64-wide head so that the smallest preset still exercises
the multi-head (and, via overrides, GQA) code paths. All presets are MHA.

Everything else is ModelConfig's Llama-like default: RMSNorm, RoPE, SwiGLU with
d_ff = 8/3 * d_model rounded up to 8, no biases, tied embeddings (with a
259-token byte vocabulary the embedding is negligible at every size, so tying
costs nothing). Context is 512 for the three sub-paper sizes and 2048 above.
"""

from __future__ import annotations

import dataclasses

from hhh.model.config import ModelConfig


def _norm_params(cfg: ModelConfig) -> int:
  return cfg.d_model * (2 if cfg.norm == "layer" else 1)


def _layer_params(cfg: ModelConfig) -> int:
  d, f = cfg.d_model, cfg.ff_dim
  q_dim = cfg.n_heads * cfg.head_dim
  kv_dim = cfg.kv_heads * cfg.head_dim
  attn = d * q_dim + 2 * d * kv_dim + q_dim * d
  if cfg.attn_bias:
    attn += q_dim + 2 * kv_dim + d
  if cfg.mlp == "swiglu":
    mlp = 3 * d * f + ((2 * f + d) if cfg.mlp_bias else 0)
  else:
    mlp = 2 * d * f + ((f + d) if cfg.mlp_bias else 0)
  return 2 * _norm_params(cfg) + attn + mlp


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """Exact parameter counts of the decoder plus reward head.

  "embedding" is the token embedding, learned positions and an untied lm_head;
  "non_embedding" is everything else, reward head included (Kaplan et al.).
  """
  d = cfg.d_model
  embedding = cfg.vocab_size * d
  if cfg.pos == "learned":
    embedding += cfg.max_len * d
  if not cfg.tie_embeddings:
    embedding += d * cfg.vocab_size
  reward_head = d + 1
  non_embedding = cfg.n_layers * _layer_params(cfg) + _norm_params(cfg) + reward_head
  return {"total": embedding + non_embedding, "non_embedding": non_embedding, "embedding": embedding}


def train_flops_per_token(cfg: ModelConfig, n_ctx: int | None = None) -> float:
  """Training (forward + backward) FLOPs per token, Kaplan et al. style.

    6 * N_nonembed                  matmuls through the non-embedding weights
  + 6 * d_model * vocab_size        output projection (costs FLOPs even when tied)
  + 6 * n_layers * n_ctx * d_model  attention scores and values: Kaplan's
                                    2 * n_layer * n_ctx * d_attn forward, x3

  n_ctx defaults to cfg.max_len. The embedding lookup is free.
  """
  n_ctx = cfg.max_len if n_ctx is None else n_ctx
  n = param_counts(cfg)["non_embedding"]
  d = cfg.d_model
  return float(6 * n + 6 * d * cfg.vocab_size + 6 * cfg.n_layers * n_ctx * d)


def step_flops_per_token(cfg: ModelConfig, n_ctx: int, objective: str = "ranked", lm_head: bool | None = None) -> float:
  """Matmul FLOPs per token that one train step actually computes, for MFU (PaLM's convention).

    6 * N_matmul                    forward + backward through every weight matrix
  + 12 * n_layers * n_ctx * d_model attention scores and values over the full L x L square (a causal or padding
                                    mask skips no work), forward + backward
  + 6 * d_model * vocab_size        the LM head, only where the objective computes logits (lm, imitation, or a
                                    PM with LM mixing: pass lm_head=True)

  Unlike `train_flops_per_token` this counts no LM head for preference objectives, which read a scalar at
  <eoc> and never form [B, L, V] logits: counting it would inflate their MFU by up to a quarter at SmolLM2's
  vocabulary. Norms, RoPE, softmax and the optimizer are left out, as MFU conventionally does.
  """
  if lm_head is None:
    lm_head = objective in ("lm", "imitation")
  n = param_counts(cfg)["non_embedding"]
  d = cfg.d_model
  return float(6 * n + 12 * cfg.n_layers * n_ctx * d + (6 * d * cfg.vocab_size if lm_head else 0))


def forward_flops_per_token(cfg: ModelConfig, n_ctx: int | None = None) -> float:
  """Forward-only FLOPs per token: a third of train_flops_per_token."""
  return train_flops_per_token(cfg, n_ctx) / 3


def _paper_shape(n_layers: int, max_len: int = 2048) -> ModelConfig:
  d_model = 128 * n_layers
  head_dim = 64 if d_model < 1024 else 128
  return ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=d_model // head_dim, max_len=max_len)


FAMILY: dict[str, ModelConfig] = {
    "100k": ModelConfig(d_model=64, n_layers=2, n_heads=2, max_len=512),
    "1.6m": _paper_shape(2, max_len=512),
    "5m": _paper_shape(3, max_len=512),
    "13m": _paper_shape(4),
    "42m": _paper_shape(6),
    "200m": _paper_shape(10),
    "800m": _paper_shape(16),
    "2.7b": _paper_shape(24),
    "6.4b": _paper_shape(32),
    "13b": _paper_shape(40),
    "52b": _paper_shape(64),
}


def get(name: str, **overrides) -> ModelConfig:
  """The named family member, with ModelConfig fields overridden."""
  if name not in FAMILY:
    raise ValueError(f"unknown model size {name!r}; valid sizes: {', '.join(FAMILY)}")
  return dataclasses.replace(FAMILY[name], **overrides)


def table(vocab_size: int = 259, n_ctx: int | None = None) -> list[dict]:
  """One row per family member; n_ctx None means each model's own max_len."""
  rows = []
  for name in FAMILY:
    cfg = get(name, vocab_size=vocab_size)
    counts = param_counts(cfg)
    rows.append({
        "name": name,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads,
        "d_ff": cfg.ff_dim,
        "n_ctx": cfg.max_len if n_ctx is None else n_ctx,
        "non_embedding": counts["non_embedding"],
        "total": counts["total"],
        "train_flops_per_token": train_flops_per_token(cfg, n_ctx),
    })
  return rows


def human_count(n: float) -> str:
  """1234567 -> "1.2M", 51544866817 -> "52B": two significant digits is plenty."""
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if n >= scale:
      v = n / scale
      # Round first so 9.96 prints as "10", not "10.0".
      return f"{v:.1f}{suffix}" if round(v, 1) < 10 else f"{v:.0f}{suffix}"
  return str(int(n))


def format_table(rows: list[dict]) -> str:
  """Aligned text table of table() rows, for `hhh model list`."""
  cols = [("name", "name"), ("layers", "n_layers"), ("d_model", "d_model"), ("heads", "n_heads"),
          ("kv", "n_kv_heads"), ("d_ff", "d_ff"), ("ctx", "n_ctx"), ("non-emb", "non_embedding"),
          ("total", "total"), ("train FLOPs/tok", "train_flops_per_token")]
  cols = [(h, k) for h, k in cols if not rows or k in rows[0]]

  def cell(key: str, value) -> str:
    if key in ("non_embedding", "total"):
      return human_count(value)
    if key == "train_flops_per_token":
      return f"{value:.1e}"
    return str(value)

  body = [[cell(k, r[k]) for _, k in cols] for r in rows]
  widths = [max([len(h)] + [len(b[i]) for b in body]) for i, (h, _) in enumerate(cols)]
  # Name column reads best left-aligned, numbers right-aligned.
  def line(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

  return "\n".join([line([h for h, _ in cols])] + [line(b) for b in body])
