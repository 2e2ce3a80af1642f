"""Architecture switches for the decoder, wide enough to load Llama-, GPT-NeoX- and GPT-2-shaped checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 259
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 0          # 0 means n_heads (MHA); fewer gives GQA.
  d_ff: int = 0                # 0 means 4 * d_model (GELU) or 8/3 * d_model rounded to 8 (SwiGLU).
  max_len: int = 512
  norm: Literal["rms", "layer"] = "rms"
  norm_eps: float = 1e-5
  pos: Literal["rope", "learned"] = "rope"
  rope_theta: float = 10000.0
  rotary_pct: float = 1.0      # fraction of head_dim that is rotated (GPT-NeoX/Pythia uses 0.25).
  mlp: Literal["swiglu", "gelu", "gelu_tanh"] = "swiglu"  # gelu_tanh: GPT-2's tanh approximation
  tie_embeddings: bool = True
  attn_bias: bool = False      # q/k/v/o biases (GPT-2, GPT-NeoX).
  mlp_bias: bool = False
  parallel_residual: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)).
  dropout: float = 0.0         # residual dropout, training only.
  dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; parameters stay float32.
  # Recompute each block's activations in the backward pass instead of keeping them (jax.checkpoint; the same
  # gradients, bit for bit). A run-time switch, like dropout. On XLA:CPU it was seen to save little memory.
  remat: bool = False
  # Attention without a cache: "dense" scores every query against every key under a [B, L, S] mask; "tiled"
  # runs query x key tiles with the mask computed per tile from segment ids and the probabilities recomputed
  # in the backward (flash attention's scheme), so memory is O(L) per head, and on CPU each row skips the
  # tiles where it sees no key (the other comparisons of a packed row). "auto": tiled for packed rows of 512+
  # tokens on CPU, tiled for rows of 2048+ tokens on an accelerator, dense otherwise.
  attention: Literal["auto", "dense", "tiled"] = "auto"

  def __post_init__(self):
    if self.n_heads <= 0 or self.d_model % self.n_heads:
      raise ValueError(f"model.d_model={self.d_model} must be a positive multiple of model.n_heads={self.n_heads}")
    if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
      raise ValueError(f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.kv_heads}")
    if self.pos == "rope" and self.rotary_dim % 2:
      raise ValueError(f"rotary dimension {self.rotary_dim} must be even (model.rotary_pct={self.rotary_pct})")

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.rotary_pct)

  @property
  def ff_dim(self) -> int:
    if self.d_ff:
      return self.d_ff
    if self.mlp in ("gelu", "gelu_tanh"):
      return 4 * self.d_model
    return 8 * ((8 * self.d_model // 3 + 7) // 8)
