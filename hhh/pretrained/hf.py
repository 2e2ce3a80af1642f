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
from hhh.pretrained import LM, assemble_params, flatten_params

MODEL_TYPES = ("llama", "gpt_neox", "gpt2")
# Non-parameter buffers some checkpoints carry (causal masks, cached RoPE frequencies).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")
_EXACT_GELU = ("gelu",)
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_accurate")


# ---------------------------------------------------------------- safetensors


def read_safetensors(path) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file as numpy (bfloat16 widened to float32)."""
  from safetensors import numpy as st_np
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
  if "BF16" not in dtypes:
    return st_np.load_file(path)
  # numpy has no bfloat16, so `safetensors.numpy` cannot read it: bf16 is the top half of a float32.
  out = {}
  with open(path, "rb") as f:
    data = f.read()[8 + n:]
  for k, v in header.items():
    if k == "__metadata__":
      continue
    start, end = v["data_offsets"]
    if v["dtype"] == "BF16":
      bits = np.frombuffer(data[start:end], np.uint16).astype(np.uint32) << 16
      out[k] = bits.view(np.float32).reshape(v["shape"])
    else:
      out[k] = np.frombuffer(data[start:end], st_np._TYPES[v["dtype"]]).reshape(v["shape"])
  return out


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files")
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    for k, v in read_safetensors(f).items():
      if k in tensors:
        raise ValueError(f"{f}: tensor {k!r} also appears in another shard")
      tensors[k] = v
  return tensors


# ---------------------------------------------------------------- configs


def _rope_theta(c: dict, default: float = 10000.0) -> float:
  params = c.get("rope_parameters") or {}
  scaling = c.get("rope_scaling") or params
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"RoPE scaling {rope_type!r} is not supported")
  return float(params.get("rope_theta", c.get("rope_theta", c.get("rotary_emb_base", default))))


def _gelu_kind(act: str, source: str) -> str:
  """Our `ModelConfig.mlp` for an HF GELU activation name."""
  if act in _TANH_GELU:
    return "gelu_tanh"
  if act not in _EXACT_GELU:
    raise ValueError(f"{source}: activation {act!r} is not supported (expected one of "
                     f"{_EXACT_GELU + _TANH_GELU})")
  return "gelu"


def _gelu_name(cfg: ModelConfig) -> str:
  return "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu"


def config_from_hf(c: dict, source: str, vocab_size: int | None = None) -> ModelConfig:
  """Our `ModelConfig` from an HF config.json dict."""
  mt = c.get("model_type")
  # HF defaults: GPT-2 ties its head to the input embedding, Llama and GPT-NeoX do not.
  tied = bool(c.get("tie_word_embeddings", mt == "gpt2"))
  if mt == "llama":
    d, h = c["hidden_size"], c["num_attention_heads"]
    if c.get("head_dim", d // h) != d // h:
      raise ValueError(f"{source}: head_dim={c['head_dim']} differs from hidden_size / num_attention_heads")
    if c.get("hidden_act", "silu") != "silu":
      raise ValueError(f"{source}: hidden_act={c['hidden_act']!r} is not supported for llama (expected 'silu')")
    return ModelConfig(
        vocab_size=vocab_size or c["vocab_size"], d_model=d, n_layers=c["num_hidden_layers"], n_heads=h,
        # 0 is our canonical "as many kv heads as query heads".
        n_kv_heads=0 if c.get("num_key_value_heads", h) == h else c["num_key_value_heads"],
        d_ff=c["intermediate_size"],
        max_len=c.get("max_position_embeddings", 2048), norm="rms", norm_eps=c.get("rms_norm_eps", 1e-6),
        pos="rope", rope_theta=_rope_theta(c), rotary_pct=1.0, mlp="swiglu", tie_embeddings=tied,
        attn_bias=bool(c.get("attention_bias", False)), mlp_bias=bool(c.get("mlp_bias", False)),
        parallel_residual=False)
  if mt == "gpt_neox":
    mlp = _gelu_kind(c.get("hidden_act", "gelu"), source)
    return ModelConfig(
        vocab_size=vocab_size or c["vocab_size"], d_model=c["hidden_size"], n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"], d_ff=c["intermediate_size"],
        max_len=c.get("max_position_embeddings", 2048), norm="layer", norm_eps=c.get("layer_norm_eps", 1e-5),
        pos="rope", rope_theta=_rope_theta(c), rotary_pct=float(c.get("rotary_pct", 0.25)), mlp=mlp,
        tie_embeddings=tied, attn_bias=bool(c.get("attention_bias", True)), mlp_bias=True,
        parallel_residual=bool(c.get("use_parallel_residual", True)))
  if mt == "gpt2":
    mlp = _gelu_kind(c.get("activation_function", "gelu_new"), source)
    if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights", True) is False:
      raise ValueError(f"{source}: non-standard GPT-2 attention scaling is not supported")
    d = c["n_embd"]
    return ModelConfig(
        vocab_size=vocab_size or c["vocab_size"], d_model=d, n_layers=c["n_layer"], n_heads=c["n_head"],
        d_ff=c.get("n_inner") or 4 * d, max_len=c.get("n_positions", 1024), norm="layer",
        norm_eps=c.get("layer_norm_epsilon", 1e-5), pos="learned", mlp=mlp, tie_embeddings=tied,
        attn_bias=True, mlp_bias=True, parallel_residual=False)
  raise ValueError(f"{source}: model_type={mt!r} is not supported (expected one of {MODEL_TYPES})")


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


def _to_hf(cfg: ModelConfig, model_type: str, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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
  from hhh.data.tokenizer import PretrainedTokenizer, choose_special_ids
  tj = path / "tokenizer.json"
  if not tj.exists():
    raise FileNotFoundError(f"{path}: no tokenizer.json")
  tok = tokenizers.Tokenizer.from_file(str(tj))
  tc_path = path / "tokenizer_config.json"
  tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}

  def token_id(key: str, config_key: str | None = None) -> int | None:
    name = _token_content(tc.get(key))
    if name is not None:
      i = tok.token_to_id(name)
      if i is None:
        raise ValueError(f"{tc_path}: {key}={name!r} is not in the vocabulary")
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
    template = next((t["template"] for t in template if t.get("name") == "default"), None)
  if template is None and (path / "chat_template.jinja").exists():
    template = (path / "chat_template.jinja").read_text()
  return PretrainedTokenizer(tok, **special, bos_prefix=prefix, chat_template=template)


def _tokenizer_files(tok) -> tuple[str, dict]:
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
  """An HF-format directory (llama, gpt_neox or gpt2) as a float32 `LM`."""
  path = pathlib.Path(path)
  cj = path / "config.json"
  if not cj.is_file():
    raise FileNotFoundError(f"{path}: no config.json (not an HF model directory)")
  c = json.loads(cj.read_text())
  source = str(path)
  tensors = _read_tensors(path)
  model_type = c.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{cj}: model_type={model_type!r} is not supported (expected one of {MODEL_TYPES})")
  embed_name = {"llama": "model.embed_tokens.weight", "gpt_neox": "gpt_neox.embed_in.weight"}.get(
      model_type, "transformer.wte.weight" if "transformer.wte.weight" in tensors else "wte.weight")
  if embed_name not in tensors:
    raise ValueError(f"{source}: missing tensor {embed_name!r}")
  # The embedding may be padded past config.vocab_size (Pythia); its row count is what the model computes over.
  cfg = config_from_hf(c, source, vocab_size=int(tensors[embed_name].shape[0]))
  seq_cls = any(str(a).endswith("ForSequenceClassification") for a in c.get("architectures") or ())
  params = assemble_params(cfg, _to_ours(cfg, model_type, tensors, source, seq_cls), source)
  tok = _tokenizer_from_dir(path, c)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{source}: tokenizer has {tok.vocab_size} tokens, the embedding only {cfg.vocab_size} rows")
  return LM(cfg, params, tok, name=name or source, chat_template=tok.chat_template)


def save_hf(lm: LM, path, model_type: str) -> pathlib.Path:
  """Writes `lm` as an HF-format directory of `model_type`: config.json, model.safetensors, tokenizer files."""
  from safetensors import numpy as st_np
  cfg = lm.cfg
  hf_config = config_to_hf(cfg, model_type)
  text, tc = _tokenizer_files(lm.tokenizer)
  if lm.chat_template and "chat_template" not in tc:
    tc["chat_template"] = lm.chat_template
  tc["model_max_length"] = cfg.max_len
  lib_ids = {k: getattr(lm.tokenizer, k) for k in ("eos_id", "pad_id")}
  hf_config.update(eos_token_id=lib_ids["eos_id"], pad_token_id=lib_ids["pad_id"])
  tensors = _to_hf(cfg, model_type, flatten_params(lm.params))
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
