"""HF-format directories (config.json + *.safetensors + tokenizer.json) <-> `LM`, for llama, gpt_neox and gpt2.

Layouts (HF names; a Linear weight is [out, in], our kernels are [in, out]):

    llama     model.layers.N.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, RMSNorm, RoPE (rotate_half)
    gpt_neox  gpt_neox.layers.N.attention.query_key_value: q|k|v fused per head, rows [n_heads, 3, head_dim];
              LayerNorm, partial RoPE (rotary_pct), use_parallel_residual, exact-erf gelu
    gpt2      transformer.h.N.attn.c_attn: Conv1D, weight [in, out] with q|k|v fused along out;
              learned positions, LayerNorm

GELU comes in two kinds, each loaded as what it is: the exact (erf) one
(`gelu`, ModelConfig.mlp="gelu") and the tanh approximation (`gelu_new` and
its aliases, GPT-2's default; mlp="gelu_tanh"). The preference head, when saved, goes in `score.weight` [1, D]
and `score.bias` [1] (HF's sequence-classification name); a checkpoint without
it gets a zero head. A `*ForSequenceClassification` checkpoint has no LM head: an
untied one then starts at zero (`hhh.reward.hf_export` writes those directories). Which tokens serve as pad / end-of-context / eos is read
from tokenizer_config.json (`pad_token`, `eoc_token`, `eos_token`) when given,
else chosen by `hhh.data.tokenizer.choose_special_ids`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from hhh.model.config import ModelConfig
from hhh.model.params import assemble_params, flatten_params
from hhh.objectives import PM_OBJECTIVES
from hhh.pretrained.lm import LM

MODEL_TYPES = ("llama", "gpt_neox", "gpt2")
# Non-parameter buffers some checkpoints carry (causal masks, cached RoPE frequencies).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")
_EXACT_GELU = ("gelu",)
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate")


# ---------------------------------------------------------------- safetensors

# numpy dtypes of the safetensors dtypes we read; BF16 is widened to float32 by hand (numpy has no bfloat16).
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
# The safetensors library's own cap on the JSON header.
MAX_SAFETENSORS_HEADER = 100 << 20


def _safetensors_header(path) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]]:
  """(where the data starts, {name: (dtype, shape, start, end)}) of a .safetensors file, every entry checked against
  the file's real size: a lying shape, an offset past the end, a truncated file or a huge header length is a
  one-line ValueError naming the file, found before any tensor is read."""
  from hhh import safeio
  fd, size = safeio.open_regular(path, safeio.MAX_WEIGHTS_BYTES)
  try:
    with os.fdopen(fd, "rb", closefd=False) as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
      n = int.from_bytes(head, "little")
      if n > min(MAX_SAFETENSORS_HEADER, size - 8):
        raise ValueError(f"{path}: header length {n} is past the end of the file ({size} bytes) or over "
                         f"{MAX_SAFETENSORS_HEADER}; truncated or not a safetensors file")
      header = safeio.parse_json(f.read(n), f"{path}: header")
  finally:
    os.close(fd)
  if not isinstance(header, dict):
    raise ValueError(f"{path}: header must be a JSON object, not {type(header).__name__}")
  data_size = size - 8 - n
  entries, spans = {}, []
  for name, v in header.items():
    if name == "__metadata__":
      continue
    bad = lambda what: ValueError(f"{path}: tensor {name[:100]!r}: {what}")
    if not isinstance(v, dict):
      raise bad("entry must be an object")
    dtype, shape, offsets = v.get("dtype"), v.get("shape"), v.get("data_offsets")
    if dtype not in _ST_DTYPES:
      raise bad(f"dtype {str(dtype)[:20]!r} is not supported (one of {', '.join(_ST_DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_nonneg_int(d) for d in shape):
      raise bad(f"shape {str(shape)[:60]} is not a list of at most 8 non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_nonneg_int(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_size):
      raise bad(f"data_offsets {str(offsets)[:60]} do not lie within the file's {data_size} data bytes "
                "(truncated file?)")
    want = int(np.prod(shape, dtype=object)) * np.dtype(_ST_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != want:
      raise bad(f"shape {shape} of {dtype} needs {want} bytes, data_offsets give {offsets[1] - offsets[0]}")
    entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    spans.append((offsets[0], offsets[1], name))
  spans.sort()
  for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
    if start < end:
      raise ValueError(f"{path}: tensors {first[:100]!r} and {second[:100]!r} overlap")
  return 8 + n, entries


def _nonneg_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_safetensors(path, names=None) -> dict[str, np.ndarray]:
  """The tensors of one .safetensors file (all, or those in `names`) as numpy; bfloat16 is widened to float32."""
  from hhh import safeio
  path = pathlib.Path(path)
  start, entries = _safetensors_header(path)
  out = {}
  fd, _ = safeio.open_regular(path, safeio.MAX_WEIGHTS_BYTES)
  with os.fdopen(fd, "rb") as f:
    for name, (dtype, shape, begin, end) in entries.items():
      if names is not None and name not in names:
        continue
      f.seek(start + begin)
      a = np.empty(shape, _ST_DTYPES[dtype])
      if f.readinto(memoryview(a.reshape(-1)).cast("B")) != end - begin:
        raise ValueError(f"{path}: tensor {name[:100]!r} ends past the end of the file (it shrank while read)")
      # bf16 is the top half of a float32.
      out[name] = (a.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else a
  return out


def _shards(path: pathlib.Path) -> list[pathlib.Path]:
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files")
  return files


def _tensor_shapes(files) -> dict[str, tuple[int, ...]]:
  """Every tensor's shape, from the headers alone; a name in two shards is an error."""
  shapes: dict[str, tuple[int, ...]] = {}
  for f in files:
    for k, (_, shape, _, _) in _safetensors_header(f)[1].items():
      if k in shapes:
        raise ValueError(f"{f}: tensor {k[:100]!r} also appears in another shard")
      shapes[k] = shape
  return shapes


# ---------------------------------------------------------------- configs


def read_config(path) -> dict:
  """config.json of an HF directory (or the file itself), read as an untrusted file: a regular file under
  `safeio.MAX_CONFIG_BYTES` holding a JSON object whose fields hhh reads have the right types."""
  from hhh import safeio
  path = pathlib.Path(path)
  cj = path if path.name == "config.json" and not path.is_dir() else path / "config.json"
  if not os.path.lexists(cj):
    raise FileNotFoundError(f"{cj.parent}: no config.json (not an HF model directory)")
  c = safeio.read_json(cj, safeio.MAX_CONFIG_BYTES)
  where = str(cj)
  arch = c.get("architectures")
  if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
    raise ValueError(f"{where}: architectures must be a list of strings")
  if "id2label" in c and not isinstance(c["id2label"], (dict, type(None))):
    raise ValueError(f"{where}: id2label must be an object")
  if "num_labels" in c and not _nonneg_int(c["num_labels"]):
    raise ValueError(f"{where}: num_labels must be an integer >= 0, not {str(c['num_labels'])[:40]}")
  for key in ("rope_scaling", "rope_parameters"):
    if not isinstance(c.get(key) or {}, dict):
      raise ValueError(f"{where}: {key} must be an object or null")
  for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
    v = c.get(key)
    if v is not None and not (_nonneg_int(v) or (isinstance(v, list) and v and all(map(_nonneg_int, v)))):
      raise ValueError(f"{where}: {key} must be a token id (or a list of them), not {str(v)[:40]}")
  _check_reward_meta(c.get(REWARD_META), where)
  return c


REWARD_META = "hhh_reward"  # the block `hhh.reward.hf_export` writes into config.json


def _check_reward_meta(meta, where: str) -> None:
  """The `hhh_reward` block, when present, has the fields `hhh convert --as-bundle` reads, of the right types
  and ranges (the bundle reader's rules), so a bad one is refused before anything is written."""
  if meta is None:
    return
  key = REWARD_META
  if not isinstance(meta, dict):
    raise ValueError(f"{where}: {key} must be an object, not {type(meta).__name__}")
  num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
  if not _nonneg_int(meta.get("format_version")):
    raise ValueError(f"{where}: {key}.format_version must be an integer")
  if "reward_bias" in meta and not num(meta["reward_bias"]):
    raise ValueError(f"{where}: {key}.reward_bias must be a finite number")
  if meta.get("max_len") is not None and not (_nonneg_int(meta["max_len"]) and meta["max_len"] >= 2):
    raise ValueError(f"{where}: {key}.max_len must be an integer >= 2, not {str(meta['max_len'])[:40]}")
  if meta.get("objective") is not None and meta["objective"] not in PM_OBJECTIVES:
    raise ValueError(f"{where}: {key}.objective must be ranked or binary")
  norm = meta.get("normalization")
  if norm is not None:
    if not isinstance(norm, dict) or not num(norm.get("mean")) or not num(norm.get("std")) or norm["std"] <= 0:
      raise ValueError(f"{where}: {key}.normalization must hold a finite mean and a finite std > 0")
  tok = meta.get("tokenizer")
  if tok is not None:
    if not isinstance(tok, dict) or tok.get("kind") not in ("byte", "bpe", "pretrained"):
      raise ValueError(f"{where}: {key}.tokenizer must be an object with kind byte, bpe or pretrained")
    if tok["kind"] == "pretrained" and not all(_nonneg_int(tok.get(k)) for k in ("pad_id", "eoc_id", "eos_id")):
      raise ValueError(f"{where}: {key}.tokenizer needs integer pad_id, eoc_id and eos_id")
    if not (isinstance(tok.get("bos_prefix") or [], list) and all(map(_nonneg_int, tok.get("bos_prefix") or []))):
      raise ValueError(f"{where}: {key}.tokenizer.bos_prefix must be a list of token ids")
    if not isinstance(tok.get("post_processor") or {}, dict):
      raise ValueError(f"{where}: {key}.tokenizer.post_processor must be an object or null")
    if not isinstance(tok.get("lm_chat_template") or "", str):
      raise ValueError(f"{where}: {key}.tokenizer.lm_chat_template must be a string or null")


def _rope_theta(c: dict, default: float = 10000.0):
  params = c.get("rope_parameters") or {}
  scaling = c.get("rope_scaling") or params
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"RoPE scaling {str(rope_type)[:40]!r} is not supported")
  return params.get("rope_theta", c.get("rope_theta", c.get("rotary_emb_base", default)))


def _gelu_kind(act: str, source: str) -> str:
  """Our `ModelConfig.mlp` for an HF GELU activation name."""
  if act in _TANH_GELU and isinstance(act, str):
    return "gelu_tanh"
  if act not in _EXACT_GELU:
    raise ValueError(f"{source}: activation {str(act)[:40]!r} is not supported (expected one of "
                     f"{_EXACT_GELU + _TANH_GELU})")
  return "gelu"


def _gelu_name(cfg: ModelConfig) -> str:
  return "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu"


# HF names of our fields, for messages about a config.json.
_HF_NAMES = {
    "llama": {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
              "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "d_ff": "intermediate_size",
              "max_len": "max_position_embeddings", "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
              "tie_embeddings": "tie_word_embeddings", "attn_bias": "attention_bias", "mlp_bias": "mlp_bias"},
    "gpt_neox": {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
                 "n_heads": "num_attention_heads", "d_ff": "intermediate_size", "max_len": "max_position_embeddings",
                 "norm_eps": "layer_norm_eps", "rope_theta": "rope_theta", "rotary_pct": "rotary_pct",
                 "tie_embeddings": "tie_word_embeddings", "attn_bias": "attention_bias",
                 "parallel_residual": "use_parallel_residual"},
    "gpt2": {"vocab_size": "vocab_size", "d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
             "d_ff": "n_inner", "max_len": "n_positions", "norm_eps": "layer_norm_epsilon",
             "tie_embeddings": "tie_word_embeddings"},
}


def config_from_hf(c: dict, source: str, vocab_size: int | None = None) -> ModelConfig:
  """Our `ModelConfig` from an HF config.json dict; every field is checked by the bundle reader's rules
  (`hhh.model.validate.model_config`: types and upper bounds), with a one-line ValueError naming it."""
  from hhh.model.validate import model_config
  if not isinstance(c, dict):
    raise ValueError(f"{source}: must hold a JSON object, not {type(c).__name__}")
  mt = c.get("model_type")
  if mt not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type={str(mt)[:40]!r} is not supported (expected one of {MODEL_TYPES})")
  get = lambda key, default: default if c.get(key) is None else c[key]
  try:
    # HF defaults: GPT-2 ties its head to the input embedding, Llama and GPT-NeoX do not.
    common = {"vocab_size": vocab_size or c.get("vocab_size"), "tie_embeddings": get("tie_word_embeddings", mt == "gpt2")}
    if mt == "llama":
      if get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={str(c['hidden_act'])[:40]!r} is not supported for llama (expected 'silu')")
      h = c.get("num_attention_heads")
      kv = get("num_key_value_heads", h)
      d = dict(common, d_model=c.get("hidden_size"), n_layers=c.get("num_hidden_layers"), n_heads=h,
               # 0 is our canonical "as many kv heads as query heads".
               n_kv_heads=0 if kv == h else kv, d_ff=c.get("intermediate_size"),
               max_len=get("max_position_embeddings", 2048), norm="rms", norm_eps=get("rms_norm_eps", 1e-6),
               pos="rope", rope_theta=_rope_theta(c), rotary_pct=1.0, mlp="swiglu",
               attn_bias=get("attention_bias", False), mlp_bias=get("mlp_bias", False), parallel_residual=False)
    elif mt == "gpt_neox":
      d = dict(common, d_model=c.get("hidden_size"), n_layers=c.get("num_hidden_layers"),
               n_heads=c.get("num_attention_heads"), d_ff=c.get("intermediate_size"),
               max_len=get("max_position_embeddings", 2048), norm="layer", norm_eps=get("layer_norm_eps", 1e-5),
               pos="rope", rope_theta=_rope_theta(c), rotary_pct=get("rotary_pct", 0.25),
               mlp=_gelu_kind(get("hidden_act", "gelu"), source), attn_bias=get("attention_bias", True),
               mlp_bias=True, parallel_residual=get("use_parallel_residual", True))
    else:
      if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights", True) is False:
        raise ValueError("non-standard GPT-2 attention scaling is not supported")
      d = dict(common, d_model=c.get("n_embd"), n_layers=c.get("n_layer"), n_heads=c.get("n_head"),
               # 0 is our "4 * d_model" for a GELU MLP, GPT-2's default.
               d_ff=get("n_inner", 0), max_len=get("n_positions", 1024), norm="layer",
               norm_eps=get("layer_norm_epsilon", 1e-5), pos="learned",
               mlp=_gelu_kind(get("activation_function", "gelu_new"), source), attn_bias=True, mlp_bias=True,
               parallel_residual=False)
  except ValueError as e:
    raise ValueError(e if str(e).startswith(source) else f"{source}: {e}") from None
  names = _HF_NAMES[mt]
  for ours, theirs in names.items():
    if d.get(ours) is None and ours != "vocab_size":
      raise ValueError(f"{source}: missing field {theirs!r}")
  if d["vocab_size"] is None:
    raise ValueError(f"{source}: missing field 'vocab_size'")
  cfg = model_config(d, source, {k: v for k, v in names.items()})
  if mt == "llama" and get("head_dim", cfg.head_dim) != cfg.head_dim:
    raise ValueError(f"{source}: head_dim={str(c['head_dim'])[:20]} differs from hidden_size / num_attention_heads")
  return cfg


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict:
  """The config.json dict for `cfg` as `model_type`; ValueError when the architecture does not fit it."""
  def need(cond: bool, what: str):
    if not cond:
      raise ValueError(f"cannot save as {model_type}: it needs {what} ({cfg})")
  common = {"model_type": model_type, "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": "float32"}
  if model_type == "llama":
    need(cfg.norm == "rms" and cfg.pos == "rope" and cfg.mlp == "swiglu", "norm=rms, pos=rope, mlp=swiglu")
    need(cfg.rotary_pct == 1.0 and not cfg.parallel_residual, "rotary_pct=1 and sequential residuals")
    return {**common, "architectures": ["LlamaForCausalLM"], "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "rope_scaling": None, "hidden_act": "silu", "attention_bias": cfg.attn_bias, "mlp_bias": cfg.mlp_bias}
  if model_type == "gpt_neox":
    need(cfg.norm == "layer" and cfg.pos == "rope" and cfg.mlp != "swiglu", "norm=layer, pos=rope, a GELU mlp")
    need(cfg.kv_heads == cfg.n_heads and cfg.mlp_bias, "no GQA and mlp_bias")
    return {**common, "architectures": ["GPTNeoXForCausalLM"], "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ff_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "max_position_embeddings": cfg.max_len,
            "layer_norm_eps": cfg.norm_eps, "rotary_pct": cfg.rotary_pct, "rotary_emb_base": cfg.rope_theta,
            "rope_theta": cfg.rope_theta, "use_parallel_residual": cfg.parallel_residual, "hidden_act": _gelu_name(cfg),
            "attention_bias": cfg.attn_bias}
  if model_type == "gpt2":
    need(cfg.norm == "layer" and cfg.pos == "learned" and cfg.mlp != "swiglu", "norm=layer, pos=learned, a GELU mlp")
    need(cfg.kv_heads == cfg.n_heads and cfg.attn_bias and cfg.mlp_bias and not cfg.parallel_residual,
         "no GQA, attn_bias, mlp_bias and sequential residuals")
    return {**common, "architectures": ["GPT2LMHeadModel"], "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads, "n_inner": cfg.ff_dim, "n_positions": cfg.max_len, "n_ctx": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_eps, "activation_function": _gelu_name(cfg)}
  raise ValueError(f"model_type={model_type!r} is not supported (expected one of {MODEL_TYPES})")


# ---------------------------------------------------------------- parameter names


def _to_ours(cfg: ModelConfig, model_type: str, t: dict[str, np.ndarray], source: str,
             seq_cls: bool = False) -> dict[str, np.ndarray]:
  """HF tensors -> our dotted names; every non-buffer tensor must be used.

  `seq_cls`: a `*ForSequenceClassification` checkpoint, which has no LM head; a missing one is zero.
  """
  used: set[str] = set()
  out: dict[str, np.ndarray] = {}

  def take(name: str, optional: bool = False):
    if name not in t:
      if optional:
        return None
      raise ValueError(f"{source}: missing tensor {name!r}")
    used.add(name)
    return np.asarray(t[name], np.float32)

  D, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim
  if model_type == "llama":
    out["embed"] = take("model.embed_tokens.weight")
    out["final_norm.scale"] = take("model.norm.weight")
    for i in range(cfg.n_layers):
      p, o = f"model.layers.{i}.", f"layers.{i}."
      out[o + "norm1.scale"] = take(p + "input_layernorm.weight")
      out[o + "norm2.scale"] = take(p + "post_attention_layernorm.weight")
      for hf_name, ours in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "o")):
        out[f"{o}attn.w{ours}"] = take(f"{p}self_attn.{hf_name}_proj.weight").T
        if cfg.attn_bias:
          out[f"{o}attn.b{ours}"] = take(f"{p}self_attn.{hf_name}_proj.bias")
      for hf_name in ("gate", "up", "down"):
        out[f"{o}mlp.w_{hf_name}"] = take(f"{p}mlp.{hf_name}_proj.weight").T
        if cfg.mlp_bias:
          out[f"{o}mlp.b_{hf_name}"] = take(f"{p}mlp.{hf_name}_proj.bias")
    head = "lm_head.weight"
  elif model_type == "gpt_neox":
    out["embed"] = take("gpt_neox.embed_in.weight")
    out["final_norm.scale"] = take("gpt_neox.final_layer_norm.weight")
    out["final_norm.bias"] = take("gpt_neox.final_layer_norm.bias")
    for i in range(cfg.n_layers):
      p, o = f"gpt_neox.layers.{i}.", f"layers.{i}."
      for n, hf_name in (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
        out[f"{o}{n}.scale"] = take(f"{p}{hf_name}.weight")
        out[f"{o}{n}.bias"] = take(f"{p}{hf_name}.bias")
      # Output rows are laid out [head, (q, k, v), head_dim].
      qkv_Hx3xDhxD = take(p + "attention.query_key_value.weight").reshape(H, 3, Dh, D)
      for j, n in enumerate("qkv"):
        out[f"{o}attn.w{n}"] = qkv_Hx3xDhxD[:, j].reshape(H * Dh, D).T
      out[o + "attn.wo"] = take(p + "attention.dense.weight").T
      if cfg.attn_bias:
        b_Hx3xDh = take(p + "attention.query_key_value.bias").reshape(H, 3, Dh)
        for j, n in enumerate("qkv"):
          out[f"{o}attn.b{n}"] = b_Hx3xDh[:, j].reshape(H * Dh)
        out[o + "attn.bo"] = take(p + "attention.dense.bias")
      out[o + "mlp.w_up"] = take(p + "mlp.dense_h_to_4h.weight").T
      out[o + "mlp.b_up"] = take(p + "mlp.dense_h_to_4h.bias")
      out[o + "mlp.w_down"] = take(p + "mlp.dense_4h_to_h.weight").T
      out[o + "mlp.b_down"] = take(p + "mlp.dense_4h_to_h.bias")
    head = "embed_out.weight"
  else:
    # The original GPT-2 release names tensors without the "transformer." prefix.
    pre = "transformer." if "transformer.wte.weight" in t else ""
    out["embed"] = take(pre + "wte.weight")
    out["pos_embed"] = take(pre + "wpe.weight")
    out["final_norm.scale"] = take(pre + "ln_f.weight")
    out["final_norm.bias"] = take(pre + "ln_f.bias")
    for i in range(cfg.n_layers):
      p, o = f"{pre}h.{i}.", f"layers.{i}."
      for n, hf_name in (("norm1", "ln_1"), ("norm2", "ln_2")):
        out[f"{o}{n}.scale"] = take(f"{p}{hf_name}.weight")
        out[f"{o}{n}.bias"] = take(f"{p}{hf_name}.bias")
      # Conv1D stores [in, out] already: our layout, with q|k|v side by side along out.
      w_Dx3D, b_3D = take(p + "attn.c_attn.weight"), take(p + "attn.c_attn.bias")
      for j, n in enumerate("qkv"):
        out[f"{o}attn.w{n}"] = w_Dx3D[:, j * D:(j + 1) * D]
        out[f"{o}attn.b{n}"] = b_3D[j * D:(j + 1) * D]
      out[o + "attn.wo"], out[o + "attn.bo"] = take(p + "attn.c_proj.weight"), take(p + "attn.c_proj.bias")
      out[o + "mlp.w_up"], out[o + "mlp.b_up"] = take(p + "mlp.c_fc.weight"), take(p + "mlp.c_fc.bias")
      out[o + "mlp.w_down"], out[o + "mlp.b_down"] = take(p + "mlp.c_proj.weight"), take(p + "mlp.c_proj.bias")
    head = "lm_head.weight"
  if not cfg.tie_embeddings:
    lm_head = take(head, optional=seq_cls)
    out["lm_head"] = lm_head.T if lm_head is not None else np.zeros((cfg.d_model, cfg.vocab_size), np.float32)
  else:
    # Tied checkpoints sometimes store the shared matrix twice; it must really be the same one.
    dup = take(head, optional=True)
    if dup is not None and not np.array_equal(dup, out["embed"]):
      raise ValueError(f"{source}: tie_word_embeddings is set but {head} differs from the input embedding")
  score_w, score_b = take("score.weight", optional=True), take("score.bias", optional=True)
  if score_w is not None:
    if score_w.shape != (1, cfg.d_model):
      raise ValueError(f"{source}: score.weight has shape {score_w.shape}; a reward model has one label "
                       f"(num_labels=1, shape (1, {cfg.d_model}))")
    out["reward_head.kernel"] = score_w.T
    out["reward_head.bias"] = score_b if score_b is not None else np.zeros((1,), np.float32)
  unused = sorted(k for k in set(t) - used if not k.endswith(_BUFFER_SUFFIXES))
  if unused:
    raise ValueError(f"{source}: tensors not used by the {model_type} mapping: {unused[:8]}")
  return out


def to_hf(cfg: ModelConfig, model_type: str, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our dotted names -> HF tensors (inverse of `_to_ours`)."""
  out: dict[str, np.ndarray] = {}
  D, H, Dh = cfg.d_model, cfg.n_heads, cfg.head_dim
  if model_type == "llama":
    out["model.embed_tokens.weight"] = p["embed"]
    out["model.norm.weight"] = p["final_norm.scale"]
    for i in range(cfg.n_layers):
      q, o = f"model.layers.{i}.", f"layers.{i}."
      out[q + "input_layernorm.weight"] = p[o + "norm1.scale"]
      out[q + "post_attention_layernorm.weight"] = p[o + "norm2.scale"]
      for n in "qkvo":
        out[f"{q}self_attn.{n}_proj.weight"] = p[f"{o}attn.w{n}"].T
        if cfg.attn_bias:
          out[f"{q}self_attn.{n}_proj.bias"] = p[f"{o}attn.b{n}"]
      for n in ("gate", "up", "down"):
        out[f"{q}mlp.{n}_proj.weight"] = p[f"{o}mlp.w_{n}"].T
        if cfg.mlp_bias:
          out[f"{q}mlp.{n}_proj.bias"] = p[f"{o}mlp.b_{n}"]
    head = "lm_head.weight"
  elif model_type == "gpt_neox":
    out["gpt_neox.embed_in.weight"] = p["embed"]
    out["gpt_neox.final_layer_norm.weight"] = p["final_norm.scale"]
    out["gpt_neox.final_layer_norm.bias"] = p["final_norm.bias"]
    for i in range(cfg.n_layers):
      q, o = f"gpt_neox.layers.{i}.", f"layers.{i}."
      for n, hf_name in (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")):
        out[f"{q}{hf_name}.weight"], out[f"{q}{hf_name}.bias"] = p[f"{o}{n}.scale"], p[f"{o}{n}.bias"]
      w_Hx3xDhxD = np.stack([p[f"{o}attn.w{n}"].T.reshape(H, Dh, D) for n in "qkv"], axis=1)
      out[q + "attention.query_key_value.weight"] = w_Hx3xDhxD.reshape(3 * D, D)
      out[q + "attention.dense.weight"] = p[o + "attn.wo"].T
      if cfg.attn_bias:
        b_Hx3xDh = np.stack([p[f"{o}attn.b{n}"].reshape(H, Dh) for n in "qkv"], axis=1)
        out[q + "attention.query_key_value.bias"] = b_Hx3xDh.reshape(3 * D)
        out[q + "attention.dense.bias"] = p[o + "attn.bo"]
      out[q + "mlp.dense_h_to_4h.weight"], out[q + "mlp.dense_h_to_4h.bias"] = p[o + "mlp.w_up"].T, p[o + "mlp.b_up"]
      out[q + "mlp.dense_4h_to_h.weight"] = p[o + "mlp.w_down"].T
      out[q + "mlp.dense_4h_to_h.bias"] = p[o + "mlp.b_down"]
    head = "embed_out.weight"
  else:
    out["transformer.wte.weight"], out["transformer.wpe.weight"] = p["embed"], p["pos_embed"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = p["final_norm.scale"], p["final_norm.bias"]
    for i in range(cfg.n_layers):
      q, o = f"transformer.h.{i}.", f"layers.{i}."
      for n, hf_name in (("norm1", "ln_1"), ("norm2", "ln_2")):
        out[f"{q}{hf_name}.weight"], out[f"{q}{hf_name}.bias"] = p[f"{o}{n}.scale"], p[f"{o}{n}.bias"]
      out[q + "attn.c_attn.weight"] = np.concatenate([p[f"{o}attn.w{n}"] for n in "qkv"], axis=1)
      out[q + "attn.c_attn.bias"] = np.concatenate([p[f"{o}attn.b{n}"] for n in "qkv"])
      out[q + "attn.c_proj.weight"], out[q + "attn.c_proj.bias"] = p[o + "attn.wo"], p[o + "attn.bo"]
      out[q + "mlp.c_fc.weight"], out[q + "mlp.c_fc.bias"] = p[o + "mlp.w_up"], p[o + "mlp.b_up"]
      out[q + "mlp.c_proj.weight"], out[q + "mlp.c_proj.bias"] = p[o + "mlp.w_down"], p[o + "mlp.b_down"]
    head = "lm_head.weight"
  if not cfg.tie_embeddings:
    out[head] = p["lm_head"].T
  out["score.weight"], out["score.bias"] = p["reward_head.kernel"].T, p["reward_head.bias"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ---------------------------------------------------------------- tokenizers


def _token_content(v: Any) -> str | None:
  return v.get("content") if isinstance(v, dict) else v


def byte_level_tokenizer_json() -> str:
  """A `tokenizers` JSON that encodes exactly like `ByteTokenizer`: byte b -> id b, then <pad>, <eoc>, <eos>."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  from hhh.data.tokenizer import SPECIAL_TOKENS
  # ByteLevel's alphabet maps each byte to one printable character; with no merges each byte is one token.
  b2u = _bytes_to_unicode()
  tok = tokenizers.Tokenizer(models.BPE(vocab={b2u[b]: b for b in range(256)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
  return tok.to_str()


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (what the ByteLevel pre-tokenizer uses)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _tokenizer_from_dir(path: pathlib.Path, c: dict):
  import tokenizers
  from hhh import safeio
  from hhh.data.tokenizer import PretrainedTokenizer, choose_special_ids
  tj = path / "tokenizer.json"
  if not os.path.lexists(tj):
    raise FileNotFoundError(f"{path}: no tokenizer.json")
  text = safeio.read_text(tj, safeio.MAX_TOKENIZER_BYTES)
  try:
    tok = tokenizers.Tokenizer.from_str(text)
  except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for any bad file
    raise ValueError(f"{tj}: not a tokenizer the tokenizers library reads: {' '.join(str(e).split())[:200]}") from None
  tc_path = path / "tokenizer_config.json"
  tc = safeio.read_json(tc_path, safeio.MAX_CONFIG_BYTES) if os.path.lexists(tc_path) else {}

  def token_id(key: str, config_key: str | None = None) -> int | None:
    name = _token_content(tc.get(key))
    if name is not None:
      i = tok.token_to_id(name) if isinstance(name, str) else None
      if i is None:
        raise ValueError(f"{tc_path}: {key}={str(name)[:60]!r} is not in the vocabulary")
      return i
    v = c.get(config_key) if config_key else None
    return v[0] if isinstance(v, list) else v

  special = choose_special_ids(tok, eos=token_id("eos_token", "eos_token_id"),
                               pad=token_id("pad_token", "pad_token_id"), eoc=token_id("eoc_token"),
                               bos=token_id("bos_token", "bos_token_id"), unk=token_id("unk_token"))
  # What the tokenizer's own post-processor puts before the text (e.g. Llama's <s>) is the model's BOS prefix.
  plain = tok.encode("a", add_special_tokens=False).ids
  full = tok.encode("a", add_special_tokens=True).ids
  prefix = full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else full[:0]
  if not prefix and tc.get("add_bos_token") and token_id("bos_token") is not None:
    prefix = [token_id("bos_token")]
  template = tc.get("chat_template")
  if isinstance(template, list):
    template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
  if template is not None and not isinstance(template, str):
    raise ValueError(f"{tc_path}: chat_template must be a string or a list of named templates")
  jinja = path / "chat_template.jinja"
  if template is None and os.path.lexists(jinja):
    template = safeio.read_text(jinja, safeio.MAX_CONFIG_BYTES)
  return PretrainedTokenizer(tok, **special, bos_prefix=prefix, chat_template=template)


def tokenizer_files(tok) -> tuple[str, dict]:
  """(tokenizer.json text, tokenizer_config.json dict) for one of our tokenizers."""
  import tokenizers
  from hhh.data.tokenizer import ByteTokenizer
  if isinstance(tok, ByteTokenizer):
    text = byte_level_tokenizer_json()
  elif hasattr(tok, "hf_tokenizer"):
    text = tok.hf_tokenizer.to_str()
  else:
    raise ValueError(f"cannot write tokenizer.json for {tok!r}")
  lib = tokenizers.Tokenizer.from_str(text)
  name = lambda i: lib.id_to_token(int(i))
  tc = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": name(tok.eos_id),
        "pad_token": name(tok.pad_id), "eoc_token": name(tok.eoc_id)}
  template = getattr(tok, "chat_template", None)
  if template:
    tc["chat_template"] = template
  bos_prefix = getattr(tok, "bos_prefix", ())
  if len(bos_prefix) == 1:
    tc.update(bos_token=name(bos_prefix[0]), add_bos_token=True)
  elif bos_prefix:
    raise ValueError(f"cannot describe a {len(bos_prefix)}-token BOS prefix in tokenizer_config.json")
  return text, tc


# ---------------------------------------------------------------- entry points


def load_hf(path, name: str | None = None) -> LM:
  """An HF-format directory (llama, gpt_neox or gpt2) as a float32 `LM`.

  The directory may come from anyone: each file is read only if it is a regular file under its size limit
  (`hhh.safeio`), the config is checked field by field with upper bounds and the safetensors headers against
  the files, all before any tensor is read or any parameter allocated; each problem is one ValueError line.
  """
  path = pathlib.Path(path)
  cj = path / "config.json"
  c = read_config(path)
  source = str(path)
  files = _shards(path)
  shapes = _tensor_shapes(files)
  model_type = c.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{cj}: model_type={str(model_type)[:40]!r} is not supported (expected one of {MODEL_TYPES})")
  embed_name = {"llama": "model.embed_tokens.weight", "gpt_neox": "gpt_neox.embed_in.weight"}.get(
      model_type, "transformer.wte.weight" if "transformer.wte.weight" in shapes else "wte.weight")
  if embed_name not in shapes:
    raise ValueError(f"{source}: missing tensor {embed_name!r}")
  if len(shapes[embed_name]) != 2:
    raise ValueError(f"{source}: {embed_name} has shape {shapes[embed_name]}; an embedding is [vocab, hidden]")
  # The embedding may be padded past config.vocab_size (Pythia); its row count is what the model computes over.
  cfg = config_from_hf(c, str(cj), vocab_size=int(shapes[embed_name][0]))
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    tensors.update(read_safetensors(f))
  seq_cls = any(a.endswith("ForSequenceClassification") for a in c.get("architectures") or ())
  params = assemble_params(cfg, _to_ours(cfg, model_type, tensors, source, seq_cls), source)
  del tensors
  tok = _tokenizer_from_dir(path, c)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{source}: tokenizer has {tok.vocab_size} tokens, the embedding only {cfg.vocab_size} rows")
  return LM(cfg, params, tok, name=name or source, chat_template=tok.chat_template)


def save_hf(lm: LM, path, model_type: str) -> pathlib.Path:
  """Writes `lm` as an HF-format directory of `model_type`: config.json, model.safetensors, tokenizer files."""
  from safetensors import numpy as st_np
  cfg = lm.cfg
  hf_config = config_to_hf(cfg, model_type)
  text, tc = tokenizer_files(lm.tokenizer)
  if lm.chat_template and "chat_template" not in tc:
    tc["chat_template"] = lm.chat_template
  tc["model_max_length"] = cfg.max_len
  lib_ids = {k: getattr(lm.tokenizer, k) for k in ("eos_id", "pad_id")}
  hf_config.update(eos_token_id=lib_ids["eos_id"], pad_token_id=lib_ids["pad_id"])
  tensors = to_hf(cfg, model_type, flatten_params(lm.params))
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  # "format": "pt" is what HF loaders expect in the header; the data is plain little-endian float32.
  tmp = path / "model.safetensors.tmp"
  st_np.save_file(tensors, str(tmp), metadata={"format": "pt"})
  os.replace(tmp, path / "model.safetensors")
  (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  (path / "tokenizer.json").write_text(text)
  (path / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
  return path
