"""HF-format directories: `save_hf` -> `load_hf` round trips for llama, gpt_neox and gpt2, checked against numpy
reference forwards written here from each architecture's published equations, over the HF-named tensors.

The references read only config.json and model.safetensors (HF names and layouts), so a layout slip in the
mapping (a transposed Linear, the GPT-NeoX per-head q|k|v fusion, GPT-2's Conv1D) shows up as a logit mismatch.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx
from safetensors import numpy as st_np

from hhh.data import tokenizer as tk
from hhh.model.config import ModelConfig
from hhh.model.params import assemble_params, flat_param_shapes, flatten_params
from hhh.pretrained import LM, load_lm
from hhh.pretrained import hf

TEXTS = ["Hello, world!", "héllo wörld 日本語 🙂", "def f(x):\n\treturn x ** 2\n", "  two  spaces\n\n", "<eoc> literal"]


# ---------------------------------------------------------------- numpy references (HF equations)


def _gelu(x, act):
  if act == "gelu":
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))
  assert act == "gelu_new"
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _rms(x, w, eps):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _rotate_half(x):
  h = x.shape[-1] // 2
  return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _rope(x_LxHxDh, rot: int, theta: float):
  """HF `apply_rotary_pos_emb` on the first `rot` features: cos/sin of cat(freqs, freqs), rotate_half."""
  L = x_LxHxDh.shape[0]
  inv_freq = 1.0 / theta ** (np.arange(0, rot, 2, dtype=np.float64) / rot)
  freqs = np.arange(L)[:, None] * inv_freq[None]
  emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
  xr, rest = x_LxHxDh[..., :rot], x_LxHxDh[..., rot:]
  return np.concatenate([xr * np.cos(emb) + _rotate_half(xr) * np.sin(emb), rest], axis=-1)


def _attend(q_LxHxDh, k_LxKxDh, v_LxKxDh):
  L, H, Dh = q_LxHxDh.shape
  G = H // k_LxKxDh.shape[1]
  # HF repeat_kv: query head h reads kv head h // G.
  k, v = np.repeat(k_LxKxDh, G, axis=1), np.repeat(v_LxKxDh, G, axis=1)
  s = np.einsum("qhd,khd->hqk", q_LxHxDh, k) / np.sqrt(Dh)
  s = np.where(np.tril(np.ones((L, L), bool))[None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("hqk,khd->qhd", p, v).reshape(L, H * Dh)


def _lin(t, name, x):
  y = x @ t[name + ".weight"].T
  return y + t[name + ".bias"] if name + ".bias" in t else y


def llama_reference(t, c, ids):
  D, H = c["hidden_size"], c["num_attention_heads"]
  K, Dh, eps = c["num_key_value_heads"], D // H, c["rms_norm_eps"]
  L = len(ids)
  x = t["model.embed_tokens.weight"][ids].astype(np.float64)
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = _rms(x, t[p + "input_layernorm.weight"], eps)
    q = _rope(_lin(t, p + "self_attn.q_proj", h).reshape(L, H, Dh), Dh, c["rope_theta"])
    k = _rope(_lin(t, p + "self_attn.k_proj", h).reshape(L, K, Dh), Dh, c["rope_theta"])
    v = _lin(t, p + "self_attn.v_proj", h).reshape(L, K, Dh)
    x = x + _lin(t, p + "self_attn.o_proj", _attend(q, k, v))
    h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
    silu = lambda z: z / (1.0 + np.exp(-z))
    x = x + _lin(t, p + "mlp.down_proj", silu(_lin(t, p + "mlp.gate_proj", h)) * _lin(t, p + "mlp.up_proj", h))
  head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
  return _rms(x, t["model.norm.weight"], eps) @ head.T


def neox_reference(t, c, ids):
  D, H = c["hidden_size"], c["num_attention_heads"]
  Dh, eps, L = D // H, c["layer_norm_eps"], len(ids)
  rot = int(Dh * c["rotary_pct"])
  x = t["gpt_neox.embed_in.weight"][ids].astype(np.float64)
  ln = lambda name, z: _ln(z, t[name + ".weight"], t[name + ".bias"], eps)
  for i in range(c["num_hidden_layers"]):
    p = f"gpt_neox.layers.{i}."
    # HF GPTNeoXAttention: qkv.view(L, H, 3 * Dh), then q, k, v are consecutive Dh slices within each head.
    qkv = _lin(t, p + "attention.query_key_value", ln(p + "input_layernorm", x)).reshape(L, H, 3 * Dh)
    q = _rope(qkv[..., :Dh], rot, c["rope_theta"])
    k = _rope(qkv[..., Dh:2 * Dh], rot, c["rope_theta"])
    a = _lin(t, p + "attention.dense", _attend(q, k, qkv[..., 2 * Dh:]))
    mlp = lambda z: _lin(t, p + "mlp.dense_4h_to_h", _gelu(_lin(t, p + "mlp.dense_h_to_4h", z), c["hidden_act"]))
    if c["use_parallel_residual"]:
      x = x + a + mlp(ln(p + "post_attention_layernorm", x))
    else:
      x = x + a
      x = x + mlp(ln(p + "post_attention_layernorm", x))
  return ln("gpt_neox.final_layer_norm", x) @ t["embed_out.weight"].T


def gpt2_reference(t, c, ids):
  D, H = c["n_embd"], c["n_head"]
  Dh, eps, L = D // H, c["layer_norm_epsilon"], len(ids)
  conv = lambda name, z: z @ t[name + ".weight"] + t[name + ".bias"]   # Conv1D: weight [in, out]
  ln = lambda name, z: _ln(z, t[name + ".weight"], t[name + ".bias"], eps)
  x = (t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][:L]).astype(np.float64)
  for i in range(c["n_layer"]):
    p = f"transformer.h.{i}."
    q, k, v = np.split(conv(p + "attn.c_attn", ln(p + "ln_1", x)), 3, axis=-1)
    x = x + conv(p + "attn.c_proj", _attend(q.reshape(L, H, Dh), k.reshape(L, H, Dh), v.reshape(L, H, Dh)))
    x = x + conv(p + "mlp.c_proj", _gelu(conv(p + "mlp.c_fc", ln(p + "ln_2", x)), c["activation_function"]))
  head = t.get("lm_head.weight", t["transformer.wte.weight"])
  return ln("transformer.ln_f", x) @ head.T


REFERENCES = {"llama": llama_reference, "gpt_neox": neox_reference, "gpt2": gpt2_reference}


# ---------------------------------------------------------------- helpers


def random_lm(cfg: ModelConfig, tokenizer, seed: int = 0) -> LM:
  """Weights large enough (std 0.2, norms near 1, nonzero biases) that every layout slip moves the logits."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in flat_param_shapes(cfg).items():
    if name.endswith(".scale"):
      flat[name] = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1:
      flat[name] = 0.1 * rng.standard_normal(shape)
    else:
      flat[name] = 0.2 * rng.standard_normal(shape)
  flat = {k: v.astype(np.float32) for k, v in flat.items()}
  return LM(cfg, assemble_params(cfg, flat, "random"), tokenizer, name="random")


def our_logits(lm: LM, ids) -> np.ndarray:
  model = nnx.merge(lm.graphdef, lm.params)
  return np.asarray(model.lm_logits(model(jnp.asarray([ids], jnp.int32))))[0]


@pytest.fixture(scope="module")
def bpe():
  corpus = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 20
  return tk.train_bpe(corpus, 300)


def _cases(bpe):
  byte = tk.ByteTokenizer()
  V = bpe.vocab_size
  common = dict(d_model=32, n_heads=4, n_layers=2, max_len=64)
  return {
      "llama-gqa-untied": ("llama", ModelConfig(vocab_size=259, n_kv_heads=2, d_ff=48, rope_theta=500.0,
                                                tie_embeddings=False, norm_eps=1e-6, **common), byte),
      "llama-bias-tied": ("llama", ModelConfig(vocab_size=V, d_ff=40, attn_bias=True, mlp_bias=True, **common), bpe),
      "gpt_neox-parallel": ("gpt_neox", ModelConfig(
          vocab_size=V, d_ff=64, norm="layer", mlp="gelu", rotary_pct=0.25, attn_bias=True, mlp_bias=True,
          tie_embeddings=False, parallel_residual=True, rope_theta=1000.0, **common), bpe),
      "gpt_neox-sequential": ("gpt_neox", ModelConfig(
          vocab_size=259, d_ff=64, norm="layer", mlp="gelu", rotary_pct=0.5, attn_bias=True, mlp_bias=True,
          tie_embeddings=False, parallel_residual=False, **common), byte),
      "gpt2": ("gpt2", ModelConfig(vocab_size=V, d_ff=128, norm="layer", pos="learned", mlp="gelu_tanh", attn_bias=True,
                                   mlp_bias=True, **common), bpe),
  }


CASES = ["llama-gqa-untied", "llama-bias-tied", "gpt_neox-parallel", "gpt_neox-sequential", "gpt2"]


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_matches_reference(case, bpe, tmp_path):
  model_type, cfg, tok = _cases(bpe)[case]
  lm = random_lm(cfg, tok)
  hf.save_hf(lm, tmp_path, model_type)
  c = json.loads((tmp_path / "config.json").read_text())
  assert c["model_type"] == model_type
  t = st_np.load_file(tmp_path / "model.safetensors")

  back = load_lm(str(tmp_path))
  assert back.cfg == cfg
  a, b = flatten_params(lm.params), flatten_params(back.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert (back.tokenizer.pad_id, back.tokenizer.eoc_id, back.tokenizer.eos_id) == (tok.pad_id, tok.eoc_id, tok.eos_id)
  for s in TEXTS:
    assert back.tokenizer.encode(s) == tok.encode(s)
    assert back.tokenizer.decode(back.tokenizer.encode(s)) == s

  ids = tok.encode("the quick brown fox, héllo!")[:20]
  assert len(ids) >= 12
  ref = REFERENCES[model_type](t, c, np.asarray(ids))
  ours = our_logits(back, ids)
  assert np.abs(ref).max() > 1.0  # logits far from trivial, so the tolerance below means something
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_hf_tensor_names_and_layouts(bpe, tmp_path):
  """Concrete HF shapes: Linear [out, in], GPT-2 Conv1D [in, out] with fused q|k|v, GPT-NeoX fused [3D, D]."""
  cases = _cases(bpe)
  for case, names in [("llama-gqa-untied", {"model.layers.0.self_attn.k_proj.weight": (16, 32),
                                            "model.layers.1.mlp.gate_proj.weight": (48, 32),
                                            "lm_head.weight": (259, 32), "score.weight": (1, 32)}),
                      ("gpt_neox-parallel", {"gpt_neox.layers.0.attention.query_key_value.weight": (96, 32),
                                             "gpt_neox.layers.0.attention.query_key_value.bias": (96,),
                                             "embed_out.weight": (bpe.vocab_size, 32)}),
                      ("gpt2", {"transformer.h.0.attn.c_attn.weight": (32, 96),
                                "transformer.h.1.mlp.c_fc.weight": (32, 128),
                                "transformer.wpe.weight": (64, 32)})]:
    model_type, cfg, tok = cases[case]
    out = tmp_path / case
    hf.save_hf(random_lm(cfg, tok), out, model_type)
    t = st_np.load_file(out / "model.safetensors")
    for name, shape in names.items():
      assert t[name].shape == shape, (case, name)
    if model_type == "gpt2":
      assert "lm_head.weight" not in t  # tied
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert (tc["pad_token"], tc["eoc_token"], tc["eos_token"]) == ("<pad>", "<eoc>", "<eos>")


def test_neox_fused_qkv_is_per_head(bpe, tmp_path):
  """Row h * 3 * Dh + j * Dh + d of query_key_value is feature d of head h of q (j=0), k (1) or v (2)."""
  model_type, cfg, tok = _cases(bpe)["gpt_neox-parallel"]
  lm = random_lm(cfg, tok)
  hf.save_hf(lm, tmp_path, model_type)
  w = st_np.load_file(tmp_path / "model.safetensors")["gpt_neox.layers.1.attention.query_key_value.weight"]
  ours = flatten_params(lm.params)
  Dh = cfg.head_dim
  for h, j, d in [(0, 0, 0), (1, 1, 3), (3, 2, 7), (2, 0, 5)]:
    col = ours[f"layers.1.attn.w{'qkv'[j]}"][:, h * Dh + d]
    np.testing.assert_array_equal(w[h * 3 * Dh + j * Dh + d], col)


def test_byte_tokenizer_exports_as_identical_tokenizer_json():
  import tokenizers
  lib = tokenizers.Tokenizer.from_str(hf.byte_level_tokenizer_json())
  lib.encode_special_tokens = True  # as our wrappers run it: "<eoc>" in text stays bytes
  byte = tk.ByteTokenizer()
  for s in TEXTS + ["\x00\x7f ÿ"]:
    assert lib.encode(s, add_special_tokens=False).ids == byte.encode(s)
  assert [lib.token_to_id(t) for t in tk.SPECIAL_TOKENS] == [256, 257, 258]


def test_gelu_kinds_load_as_themselves_and_unknown_activations_are_refused(bpe, tmp_path):
  model_type, cfg, tok = _cases(bpe)["gpt2"]
  hf.save_hf(random_lm(cfg, tok), tmp_path, model_type)
  c = json.loads((tmp_path / "config.json").read_text())
  assert c["activation_function"] == "gelu_new"  # GPT-2's own tanh approximation
  for act, kind in (("gelu_pytorch_tanh", "gelu_tanh"), ("gelu", "gelu")):
    (tmp_path / "config.json").write_text(json.dumps(dict(c, activation_function=act)))
    assert hf.load_hf(tmp_path).cfg.mlp == kind
  (tmp_path / "config.json").write_text(json.dumps(dict(c, activation_function="relu")))
  with pytest.raises(ValueError, match="relu"):
    hf.load_hf(tmp_path)


def test_bad_directories_raise_one_line_errors(bpe, tmp_path):
  model_type, cfg, tok = _cases(bpe)["llama-gqa-untied"]
  with pytest.raises(ValueError, match="cannot save as gpt2"):
    hf.save_hf(random_lm(cfg, tok), tmp_path / "x", "gpt2")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(tmp_path)
  d = tmp_path / "llama"
  hf.save_hf(random_lm(cfg, tok), d, model_type)
  t = st_np.load_file(d / "model.safetensors")
  st_np.save_file({**t, "model.layers.0.self_attn.extra.weight": np.zeros((2,), np.float32)},
                  d / "model.safetensors")
  with pytest.raises(ValueError, match="extra"):
    hf.load_hf(d)
  del t["model.norm.weight"]
  st_np.save_file(t, d / "model.safetensors")
  with pytest.raises(ValueError, match="model.norm.weight"):
    hf.load_hf(d)
  c = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**c, "model_type": "mamba"}))
  with pytest.raises(ValueError, match="mamba"):
    hf.load_hf(d)
  with pytest.raises(FileNotFoundError, match="not a known model name"):
    load_lm(str(tmp_path / "nothing"))


def test_read_safetensors_widens_bfloat16(tmp_path):
  # bf16 1.0 = 0x3F80, -2.5 = 0xC020, 0.15625 = 0x3E20: the top 16 bits of the float32.
  header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [6, 10]}}).encode()
  data = np.array([0x3F80, 0xC020, 0x3E20], "<u2").tobytes() + np.array([7.0], "<f4").tobytes()
  path = tmp_path / "x.safetensors"
  path.write_bytes(len(header).to_bytes(8, "little") + header + data)
  t = hf.read_safetensors(path)
  assert t["w"].dtype == np.float32 and t["w"].tolist() == [1.0, -2.5, 0.15625]
  assert t["b"].tolist() == [7.0]


def test_choose_special_ids_for_chat_vocabularies():
  """The SmolLM2-style vocabulary (declared eos = pad = <|im_end|>) and a Pythia-style one (<|padding|>)."""
  import tokenizers
  from tokenizers import models
  def vocab(names):
    t = tokenizers.Tokenizer(models.BPE(vocab={n: i for i, n in enumerate(names)}, merges=[]))
    t.add_special_tokens([tokenizers.AddedToken(n, special=True) for n in names if n.startswith("<")])
    return t
  smol = vocab(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<empty_output>", "a", "b"])
  assert tk.choose_special_ids(smol, eos=2, pad=2, bos=1, unk=0) == {"pad_id": 4, "eoc_id": 2, "eos_id": 0}
  pythia = vocab(["<|endoftext|>", "<|padding|>", "a"])
  assert tk.choose_special_ids(pythia, eos=0) == {"pad_id": 1, "eoc_id": 0, "eos_id": 0}
  gpt2 = vocab(["a", "b", "<|endoftext|>"])
  with pytest.raises(ValueError, match="pad"):
    tk.choose_special_ids(gpt2, eos=2)


def test_bos_prefix_survives_save_and_load(bpe, tmp_path):
  model_type, cfg, _ = _cases(bpe)["llama-bias-tied"]
  tok = tk.PretrainedTokenizer(bpe.hf_tokenizer, pad_id=bpe.pad_id, eoc_id=bpe.eoc_id, eos_id=bpe.eos_id,
                               bos_prefix=[bpe.eos_id], chat_template="{{ bos_token }}{{ messages[0]['content'] }}")
  hf.save_hf(random_lm(cfg, tok), tmp_path, model_type)
  back = hf.load_hf(tmp_path).tokenizer
  assert back.bos_prefix == (bpe.eos_id,) and back.chat_template == tok.chat_template


def test_pretrained_tokenizer_json_round_trip(bpe):
  t = tk.PretrainedTokenizer(bpe.hf_tokenizer, pad_id=bpe.pad_id, eoc_id=bpe.eoc_id, eos_id=bpe.eos_id,
                             bos_prefix=[bpe.eos_id], chat_template="{{ messages[0]['content'] }}")
  d = json.loads(json.dumps(t.to_json()))
  assert d["kind"] == "pretrained" and d["bos_prefix"] == [bpe.eos_id]
  back = tk.from_json(d)
  assert isinstance(back, tk.PretrainedTokenizer) and back.to_json() == d
  assert back.encode("<eoc>") == bpe.encode("<eoc>") and back.encode_special("<eoc>") == [bpe.eoc_id]
  with pytest.raises(ValueError, match="pad id"):
    tk.PretrainedTokenizer(bpe.hf_tokenizer, pad_id=bpe.eoc_id, eoc_id=bpe.eoc_id, eos_id=bpe.eos_id)
  with pytest.raises(ValueError, match="out of range"):
    tk.PretrainedTokenizer(bpe.hf_tokenizer, pad_id=10**6, eoc_id=bpe.eoc_id, eos_id=bpe.eos_id)
