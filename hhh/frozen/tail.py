"""What trains on top of a cached frozen trunk: LoRA on the last two blocks, the reward head, the LM readout.

Trainable parameters (a pure dict; only what the objective uses is present):
  lora[j][module][name] = {"a": [in, r], "b": [r, out]}   tier "lora": block d-2+j, every projection
  reward_head = {"kernel": [D, 1], "bias": [1]}          binary and ranked
  readout [D, D]                                         imitation (and the text-trained LM readout)

A projection's weight is W + (alpha / r) a @ b, with b = 0 at init (the tail starts as the frozen trunk).
LM logits of a depth-d trunk are final_norm(h) @ readout @ embed^T: the readout (identity at init) lets a
truncated trunk's states reach the tied head; at d = n_layers with the identity readout they are the
pretrained model's logits. Rewards read final_norm(h) at each row's last valid token (<eoc>), as
`Transformer.reward` does, so a PM tail merges into a plain truncated `Transformer` (`merged_params`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from hhh.model.config import ModelConfig
from hhh.model.transformer import Block, Norm, last_valid_index, row_layout
from hhh.objectives import PM_OBJECTIVES

LORA_TARGETS = (("attn", "wq"), ("attn", "wk"), ("attn", "wv"), ("attn", "wo"),
                ("mlp", "w_gate"), ("mlp", "w_up"), ("mlp", "w_down"))
TAIL_BLOCKS = 2


@dataclasses.dataclass(frozen=True)
class TailSpec:
  depth: int                              # trunk depth d: blocks [0, d) of the pretrained model
  tier: Literal["head", "lora"] = "head"
  lora_rank: int = 16
  lora_alpha: float = 32.0

  def __post_init__(self):
    if self.tier not in ("head", "lora"):
      raise ValueError(f"tier must be 'head' or 'lora', not {self.tier!r}")
    if self.depth < (TAIL_BLOCKS if self.tier == "lora" else 0):
      raise ValueError(f"depth {self.depth} is too shallow for tier {self.tier!r}")

  @property
  def input_layer(self) -> int:
    """The cached layer this tail reads: the states entering its first trained block, or depth d's output."""
    return self.depth - TAIL_BLOCKS if self.tier == "lora" else self.depth

  @property
  def blocks(self) -> range:
    return range(self.depth - TAIL_BLOCKS, self.depth) if self.tier == "lora" else range(0)


def frozen_params(lm_params, spec: TailSpec) -> dict:
  """The pretrained arrays a tail reads (never trained): its blocks, the final norm, the tied embedding."""
  return {"blocks": [lm_params["layers"][i] for i in spec.blocks], "final_norm": lm_params["final_norm"],
          "embed": lm_params["embed"]}


def _lora_shape(cfg: ModelConfig, module: str, name: str) -> tuple[int, int]:
  D, F, Dh = cfg.d_model, cfg.ff_dim, cfg.head_dim
  return {("attn", "wq"): (D, cfg.n_heads * Dh), ("attn", "wk"): (D, cfg.kv_heads * Dh),
          ("attn", "wv"): (D, cfg.kv_heads * Dh), ("attn", "wo"): (cfg.n_heads * Dh, D),
          ("mlp", "w_gate"): (D, F), ("mlp", "w_up"): (D, F), ("mlp", "w_down"): (F, D)}[(module, name)]


def init_trainable(cfg: ModelConfig, spec: TailSpec, objective: str, *, lora_key, head_key,
                   readout=None) -> dict:
  """Fresh trainable parameters: LoRA a ~ N(0, 1/in), b = 0; reward head N(0, 0.02^2); readout given or I."""
  out: dict[str, Any] = {}
  if spec.tier == "lora":
    lora = []
    for j, k in zip(range(len(spec.blocks)), jax.random.split(lora_key, len(spec.blocks))):
      block: dict = {}
      for (module, name), kk in zip(LORA_TARGETS, jax.random.split(k, len(LORA_TARGETS))):
        n_in, n_out = _lora_shape(cfg, module, name)
        block.setdefault(module, {})[name] = {
            "a": jax.random.normal(kk, (n_in, spec.lora_rank), jnp.float32) / jnp.sqrt(n_in),
            "b": jnp.zeros((spec.lora_rank, n_out), jnp.float32)}
      lora.append(block)
    out["lora"] = lora
  if objective in PM_OBJECTIVES:
    out["reward_head"] = {"kernel": 0.02 * jax.random.normal(head_key, (cfg.d_model, 1), jnp.float32),
                          "bias": jnp.zeros((1,), jnp.float32)}
  elif objective in ("imitation", "lm"):
    out["readout"] = jnp.eye(cfg.d_model, dtype=jnp.float32) if readout is None else jnp.asarray(readout)
  else:
    raise ValueError(f"unknown objective {objective!r}")
  return out


def merged_block(block_params: dict, lora_block: dict | None, spec: TailSpec) -> dict:
  """A block's parameters with its LoRA deltas added (the same dict layout as the pretrained block)."""
  if lora_block is None:
    return block_params
  scale = spec.lora_alpha / spec.lora_rank
  out = jax.tree.map(lambda x: x, block_params)
  for module, names in lora_block.items():
    for name, ab in names.items():
      out[module][name] = block_params[module][name] + scale * (ab["a"] @ ab["b"])
  return out


@functools.lru_cache(maxsize=8)
def _graphdefs(cfg: ModelConfig):
  block = nnx.split(nnx.eval_shape(lambda: Block(cfg, nnx.Rngs(0))))[0]
  norm = nnx.split(nnx.eval_shape(lambda: Norm(cfg)))[0]
  return block, norm


def hidden(cfg: ModelConfig, spec: TailSpec, trainable: dict, frozen: dict, x_NxLxD, valid_NxL):
  """final_norm of the tail's output [N, L, D] (float32) from the cached input states."""
  block_gd, norm_gd = _graphdefs(cfg)
  x = x_NxLxD.astype(jnp.float32)
  if spec.tier == "lora":
    valid_NxL = valid_NxL.astype(bool)
    positions_NxL, mask_NxLxL = row_layout(valid_NxL)
    for j, bp in enumerate(frozen["blocks"]):
      params = merged_block(bp, trainable["lora"][j], spec)
      x, _ = nnx.merge(block_gd, params)(x, positions_NxL, mask_NxLxL, None, 0, lambda y, _: y)
  return nnx.merge(norm_gd, frozen["final_norm"])(x)


def rewards(trainable: dict, h_NxLxD, valid_NxL):
  idx_N = last_valid_index(valid_NxL)
  h_NxD = jnp.take_along_axis(h_NxLxD, idx_N[:, None, None], axis=1)[:, 0]
  head = trainable["reward_head"]
  return (h_NxD @ head["kernel"])[:, 0] + head["bias"][0]


def response_logprobs(trainable: dict, frozen: dict, h_NxLxD, tokens_NxL, lengths_N, starts_N, T: int):
  """log p of each row's response tokens and <eoc> (targets t in [start, length)), in a window of T targets
  from `start`: (logp_NxT, mask_NxT). Only those T positions go through the readout and the LM head."""
  t_T = jnp.arange(T)
  target_NxT = starts_N[:, None] + t_T[None, :]
  mask_NxT = (target_NxT < lengths_N[:, None]) & (target_NxT >= 1)
  L = tokens_NxL.shape[1]
  target_NxT = jnp.clip(target_NxT, 1, L - 1)
  h_NxTxD = jnp.take_along_axis(h_NxLxD, (target_NxT - 1)[..., None], axis=1)
  tok_NxT = jnp.take_along_axis(tokens_NxL, target_NxT, axis=1)
  return jnp.where(mask_NxT, token_logprobs(trainable, frozen, h_NxTxD, tok_NxT), 0.0), mask_NxT


def token_logprobs(trainable: dict, frozen: dict, h_xD, tok_x):
  """log p(tok | h) through the readout and the frozen tied LM head, for any leading shape of h and tok."""
  logits_xV = (h_xD.astype(jnp.float32) @ trainable["readout"]) @ frozen["embed"].T
  logp_xV = jax.nn.log_softmax(logits_xV, axis=-1)
  return jnp.take_along_axis(logp_xV, tok_x[..., None], axis=-1)[..., 0]


def merged_params(lm_params, cfg: ModelConfig, spec: TailSpec, trainable: dict) -> tuple[ModelConfig, dict]:
  """(config, params) of a plain `Transformer` of depth d with the tail folded in: the LoRA deltas added to
  blocks d-2 and d-1, and the trained reward head (a reward bundle is written from these)."""
  cfg_d = dataclasses.replace(cfg, n_layers=spec.depth)
  params = {k: v for k, v in lm_params.items() if k != "layers"}
  layers = {}
  for i in range(spec.depth):
    j = i - (spec.depth - TAIL_BLOCKS)
    lora = trainable["lora"][j] if spec.tier == "lora" and j >= 0 else None
    layers[i] = merged_block(lm_params["layers"][i], lora, spec)
  params["layers"] = layers
  if "reward_head" in trainable:
    params["reward_head"] = trainable["reward_head"]
  return cfg_d, params


def write_bundle(out_dir, lm, spec: TailSpec, trainable: dict, *, objective: str, max_len: int = 256) -> dict:
  """A reward bundle (`hhh.model.bundle`) of the depth-d trunk with the tail folded in: it scores raw text end
  to end, with no cache, through `hhh.reward.api` and `hhh serve` like any hhh PM."""
  import numpy as np
  from hhh.model import bundle
  if objective not in bundle.PM_OBJECTIVES:
    raise ValueError(f"only a reward tail ({', '.join(bundle.PM_OBJECTIVES)}) makes a bundle, not {objective!r}")
  cfg_d, params = merged_params(lm.params, lm.cfg, spec, trainable)
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  return bundle.write(out_dir, cfg_d, params, lm.tokenizer.to_json(), objective=objective, max_len=max_len,
                      source_checkpoint=f"{lm.name} (frozen trunk, depth {spec.depth}, tier {spec.tier})")
