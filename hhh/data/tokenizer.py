"""Byte and byte-level BPE tokenizers that serialise to a single JSON dict.

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
  raise ValueError(
      f"unknown tokenizer kind {kind!r} (expected 'byte' or 'bpe')")


def save(tok: Tokenizer, path: str | os.PathLike) -> None:
  """Writes `tok.to_json()` as one JSON file."""
  path = os.fspath(path)
  tmp = path + ".tmp"
  # Write-then-rename so a crash never leaves a truncated tokenizer behind.
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(tok.to_json(), f, ensure_ascii=False)
  os.replace(tmp, path)


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
