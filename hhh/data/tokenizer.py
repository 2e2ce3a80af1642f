"""Byte, byte-level BPE and pretrained-checkpoint tokenizers that serialise to a single JSON dict.

The JSON dict is stored inside every checkpoint, so `from_json(tok.to_json())`
must rebuild an identical tokenizer with no side files.

Special tokens only ever enter a sequence as ids added by the data pipeline:
`encode` never emits them, even when the text literally contains "<eoc>", so
user text cannot forge the end-of-context position the preference head reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD = "<pad>"
EOC = "<eoc>"
EOS = "<eos>"
SPECIAL_TOKENS = (PAD, EOC, EOS)


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of hhh relies on."""

  vocab_size: int
  pad_id: int
  eoc_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def to_json(self) -> dict[str, Any]: ...


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
  # Fail loudly: silently dropping out-of-range ids (what `tokenizers` does)
  # would hide a head/vocab size mismatch.
  ids = [int(i) for i in ids]
  for i in ids:
    if not 0 <= i < vocab_size:
      raise ValueError(f"token id {i} out of range [0, {vocab_size})")
  return ids


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then <pad>=256, <eoc>=257, <eos>=258."""

  vocab_size = 259
  pad_id = 256
  eoc_id = 257
  eos_id = 258

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    ids = _check_ids(ids, self.vocab_size)
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

  def to_json(self) -> dict[str, Any]:
    return {"kind": "byte"}

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class BPETokenizer:
  """Wraps a byte-level BPE `tokenizers.Tokenizer` with <pad>/<eoc>/<eos>."""

  def __init__(self, tok: tokenizers.Tokenizer):
    # Work on a private copy: we flip a runtime flag below and must not
    # mutate the caller's object.
    self._tok = tokenizers.Tokenizer.from_str(tok.to_str())
    added = self._tok.get_added_tokens_decoder()
    ids = {}
    for name in SPECIAL_TOKENS:
      i = self._tok.token_to_id(name)
      if i is None or i not in added or not added[i].special:
        raise ValueError(f"BPE tokenizer lacks special token {name!r}")
      ids[name] = i
    if len(set(ids.values())) != len(ids):
      raise ValueError(f"BPE special tokens share ids: {ids}")
    self.pad_id = ids[PAD]
    self.eoc_id = ids[EOC]
    self.eos_id = ids[EOS]
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self._special_ids = frozenset(ids.values())
    # Without this, `tokenizers` matches literal "<eoc>" in input text and
    # emits the special id even with add_special_tokens=False. The flag is
    # not part of the serialised JSON, so it must be set on every load.
    self._tok.encode_special_tokens = True

  @property
  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    """The wrapped library tokenizer (for batch encoding etc.)."""
    return self._tok

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = _check_ids(ids, self.vocab_size)
    # The ByteLevel decoder already uses lossy UTF-8 (U+FFFD) for bad bytes.
    return self._tok.decode(ids, skip_special_tokens=True)

  def to_json(self) -> dict[str, Any]:
    return {"kind": "bpe", "tokenizer_json": self._tok.to_str()}

  def __repr__(self) -> str:
    return f"BPETokenizer(vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], vocab_size: int,
              min_frequency: int = 2) -> BPETokenizer:
  """Trains a byte-level BPE; `vocab_size` counts the 3 special tokens.

  The result can be smaller than `vocab_size` when the corpus runs out of
  pairs seen `min_frequency` times; read `.vocab_size` rather than assuming.
  """
  floor = 256 + len(SPECIAL_TOKENS)
  if vocab_size < floor:
    raise ValueError(
        f"BPE vocab_size must be >= {floor} (256 bytes + 3 special tokens),"
        f" got {vocab_size}")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      min_frequency=min_frequency,
      special_tokens=list(SPECIAL_TOKENS),
      # All 256 byte symbols up front, so any text encodes without <unk>.
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer)
  return BPETokenizer(tok)


# Names pretrained vocabularies give their special tokens, most specific first. A pretrained
# tokenizer keeps its own vocabulary: our pad/eoc/eos roles are mapped onto these ids.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eot|>")
DOC_END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
PAD_TOKENS = ("<pad>", "<|padding|>", "<|pad|>", "[PAD]")


class PretrainedTokenizer:
  """A pretrained checkpoint's own tokenizer (GGUF metadata or an HF tokenizer.json).

  Nothing is added and the vocabulary is not resized: pad, eoc and eos are ids
  of tokens the checkpoint already has (see `choose_special_ids`). As with
  `BPETokenizer`, `encode` never emits special tokens; `encode_special` does,
  for text rendered from the model's chat template. `bos_prefix` holds the ids
  the model expects before any text (Llama's <s>; empty for most BPE models).
  """

  def __init__(self, tok: tokenizers.Tokenizer, *, pad_id: int, eoc_id: int, eos_id: int,
               bos_prefix: Sequence[int] = (), chat_template: str | None = None):
    s = tok.to_str()
    self._tok = tokenizers.Tokenizer.from_str(s)
    # A second copy parses special tokens in its input; only trusted template text goes through it.
    self._tok_special = tokenizers.Tokenizer.from_str(s)
    self._tok.encode_special_tokens = True
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.pad_id, self.eoc_id, self.eos_id = _check_ids([pad_id, eoc_id, eos_id], self.vocab_size)
    self.bos_prefix = tuple(_check_ids(bos_prefix, self.vocab_size))
    if self.pad_id in (self.eoc_id, self.eos_id):
      # Generation masks <pad>, and a PM reads its score at <eoc>: they must differ.
      raise ValueError(f"pad id {self.pad_id} must differ from eoc id {self.eoc_id} and eos id {self.eos_id}")
    self.chat_template = chat_template

  @property
  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    """The wrapped library tokenizer (special tokens in text are not parsed)."""
    return self._tok

  def token(self, i: int) -> str:
    return self._tok.id_to_token(_check_ids([i], self.vocab_size)[0])

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_special(self, text: str) -> list[int]:
    """Like `encode`, but literal special tokens in `text` (e.g. "<|im_start|>") become their ids."""
    return self._tok_special.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = _check_ids(ids, self.vocab_size)
    return self._tok.decode(ids, skip_special_tokens=True)

  def to_json(self) -> dict[str, Any]:
    return {"kind": "pretrained", "tokenizer_json": self._tok.to_str(), "pad_id": self.pad_id,
            "eoc_id": self.eoc_id, "eos_id": self.eos_id, "bos_prefix": list(self.bos_prefix),
            "chat_template": self.chat_template}

  def __repr__(self) -> str:
    names = {r: self._tok.id_to_token(i) for r, i in (("pad", self.pad_id), ("eoc", self.eoc_id),
                                                       ("eos", self.eos_id))}
    return f"PretrainedTokenizer(vocab_size={self.vocab_size}, {names})"


def choose_special_ids(tok: tokenizers.Tokenizer, *, eos: int | None = None, pad: int | None = None,
                       eoc: int | None = None, bos: int | None = None, unk: int | None = None) -> dict[str, int]:
  """{"pad_id", "eoc_id", "eos_id"} for a pretrained vocabulary, from its declared ids and token names.

  Explicit `eoc` (and `eos`, `pad`) win. Otherwise eoc is the chat turn-end token
  (<|im_end|>, <|eot_id|>, ...) or else eos: in an instruct model a response ends
  there, so a PM built on it reads its score where the base model already marks
  an end. eos is the declared eos when that differs from eoc, else the document
  separator (<|endoftext|>, </s>, ...), else eoc itself. pad is the declared pad
  when it is neither, else a <pad>-like token, else the highest-id special token
  that is not bos/eos/eoc/unk (the model never needs to emit it, since
  generation masks <pad>). E.g. SmolLM2-Instruct: eos <|endoftext|>=0,
  eoc <|im_end|>=2, pad <empty_output>=16.
  """
  special = {i: t.content for i, t in tok.get_added_tokens_decoder().items() if t.special}
  by_name = {c: i for i, c in special.items()}
  first = lambda names, avoid=(): next((by_name[n] for n in names if n in by_name and by_name[n] not in avoid),
                                       None)
  if eoc is None:
    eoc = first(TURN_END_TOKENS)
  if eoc is None:
    eoc = eos if eos is not None else first(DOC_END_TOKENS)
  if eoc is None:
    raise ValueError(f"no end-of-turn or end-of-text token among the special tokens {sorted(special.values())}")
  if eos is None or eos == eoc:
    eos = first(DOC_END_TOKENS, avoid=(eoc,))
    eos = eoc if eos is None else eos
  if pad is None or pad in (eoc, eos):
    pad = first(PAD_TOKENS, avoid=(eoc, eos))
  if pad is None:
    spare = sorted(set(special) - {bos, eos, eoc, unk})
    if not spare:
      raise ValueError(f"no special token is free to serve as <pad> (special tokens: {sorted(special.values())}); "
                       "name one as pad_token in tokenizer_config.json")
    pad = spare[-1]
  return {"pad_id": int(pad), "eoc_id": int(eoc), "eos_id": int(eos)}


def from_json(d: dict[str, Any]) -> Tokenizer:
  """Inverse of `to_json`."""
  kind = d.get("kind") if isinstance(d, dict) else None
  if kind == "byte":
    return ByteTokenizer()
  if kind == "bpe":
    s = d.get("tokenizer_json")
    if not isinstance(s, str):
      raise ValueError("bpe tokenizer dict needs a 'tokenizer_json' string")
    try:
      hf = tokenizers.Tokenizer.from_str(s)
    except Exception as e:  # The library raises a bare Exception.
      raise ValueError(f"bad bpe tokenizer_json: {e}") from e
    return BPETokenizer(hf)
  if kind == "pretrained":
    s = d.get("tokenizer_json")
    ids = [d.get(k) for k in ("pad_id", "eoc_id", "eos_id")]
    if not isinstance(s, str) or not all(isinstance(i, int) for i in ids):
      raise ValueError("pretrained tokenizer dict needs a 'tokenizer_json' string and int pad_id, eoc_id, eos_id")
    try:
      hf = tokenizers.Tokenizer.from_str(s)
    except Exception as e:  # The library raises a bare Exception.
      raise ValueError(f"bad pretrained tokenizer_json: {e}") from e
    return PretrainedTokenizer(hf, pad_id=ids[0], eoc_id=ids[1], eos_id=ids[2],
                               bos_prefix=d.get("bos_prefix") or (), chat_template=d.get("chat_template"))
  raise ValueError(
      f"unknown tokenizer kind {kind!r} (expected 'byte', 'bpe' or 'pretrained')")


def save(tok: Tokenizer, path: str | os.PathLike) -> None:
  """Writes `tok.to_json()` as one JSON file."""
  from hhh.safeio import write_json_atomic
  # Write-then-rename so a crash never leaves a truncated tokenizer behind.
  write_json_atomic(path, tok.to_json(), indent=None, ensure_ascii=False)


def load(path: str | os.PathLike) -> Tokenizer:
  """Reads a file written by `save`."""
  with open(path, encoding="utf-8") as f:
    return from_json(json.load(f))


def from_spec(spec: str, corpus: Iterable[str] | None = None) -> Tokenizer:
  """Builds from "byte", "bpe:N" (trained on `corpus`) or a saved .json."""
  if spec == "byte":
    return ByteTokenizer()
  if spec.startswith("bpe:"):
    try:
      n = int(spec[len("bpe:"):])
    except ValueError:
      raise ValueError(
          f"bad BPE spec {spec!r}: expected 'bpe:<vocab_size>'") from None
    if corpus is None:
      raise ValueError(f"tokenizer spec {spec!r} needs a training corpus")
    return train_bpe(corpus, n)
  if spec.endswith(".json"):
    return load(spec)
  raise ValueError(f"unknown tokenizer spec {spec!r}"
                   " (expected 'byte', 'bpe:N' or a .json path)")
