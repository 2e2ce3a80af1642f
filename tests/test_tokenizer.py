"""Tests for hhh.data.tokenizer."""

from __future__ import annotations

import json
import random

import pytest
import tokenizers

from hhh.data import tokenizer as tk

TRICKY = [
    "",
    "a",
    "hello world",
    "  leading and trailing  ",
    "line1\nline2\r\n\n\ttabbed",
    "hé café naïve",
    "e\u0301 vs \u00e9",  # NFD vs NFC must survive: no normaliser.
    "emoji 😀👍🏽 family 👨‍👩‍👧",
    "中文字符 日本語 한국어",
    "null\x00byte and \x7f del",
    "literal <eoc> <pad><eos> tokens",
    "<eoc>",
    "\u200b zero width \ufeff bom",
    "   \n\n   ",
]

WORDS = ("the a cat dog sat on mat quick brown fox jumps over lazy and then"
         " ran away from house garden tree").split()


def _corpus(n: int = 300, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> tk.BPETokenizer:
  return tk.train_bpe(_corpus(), 320)


# ByteTokenizer


def test_byte_ids():
  t = tk.ByteTokenizer()
  assert t.encode("hé") == [104, 195, 169]
  assert t.encode("") == []
  assert (t.pad_id, t.eoc_id, t.eos_id, t.vocab_size) == (256, 257, 258, 259)


@pytest.mark.parametrize("s", TRICKY)
def test_byte_round_trip(s):
  t = tk.ByteTokenizer()
  ids = t.encode(s)
  assert ids == list(s.encode("utf-8"))
  assert t.decode(ids) == s


def test_byte_decode_skips_specials_and_replaces_bad_utf8():
  t = tk.ByteTokenizer()
  assert t.decode([104, 256, 105, 257, 258]) == "hi"
  # Truncated two-byte sequence.
  assert t.decode([104, 195]) == "h\ufffd"
  assert t.decode([0xff]) == "\ufffd"


def test_byte_literal_special_text_is_bytes():
  t = tk.ByteTokenizer()
  ids = t.encode("<eoc>")
  assert ids == [60, 101, 111, 99, 62]
  assert max(ids) < 256


def test_byte_decode_rejects_out_of_range():
  t = tk.ByteTokenizer()
  with pytest.raises(ValueError):
    t.decode([259])
  with pytest.raises(ValueError):
    t.decode([-1])


def test_protocol():
  assert isinstance(tk.ByteTokenizer(), tk.Tokenizer)


# BPE


def test_bpe_vocab_and_specials(bpe):
  assert isinstance(bpe, tk.Tokenizer)
  assert bpe.vocab_size == 320
  assert bpe.hf_tokenizer.get_vocab_size(with_added_tokens=True) == 320
  ids = {bpe.pad_id, bpe.eoc_id, bpe.eos_id}
  assert len(ids) == 3
  assert all(0 <= i < bpe.vocab_size for i in ids)
  # Trainer puts special tokens first, in the order given.
  assert (bpe.pad_id, bpe.eoc_id, bpe.eos_id) == (0, 1, 2)


def test_bpe_compresses_frequent_words(bpe):
  for word in [" garden", " brown", "the"]:
    assert len(bpe.encode(word)) < len(word.encode("utf-8"))
  assert len(bpe.encode(" garden")) == 1


@pytest.mark.parametrize("s", TRICKY)
def test_bpe_round_trip(bpe, s):
  ids = bpe.encode(s)
  assert all(0 <= i < bpe.vocab_size for i in ids)
  assert bpe.decode(ids) == s


def test_bpe_never_emits_special_ids(bpe):
  specials = {bpe.pad_id, bpe.eoc_id, bpe.eos_id}
  for s in ["<eoc>", "a <eoc> b", "x<eos>y<pad>", "<eoc><eoc>", " <eoc>"]:
    ids = bpe.encode(s)
    assert not specials & set(ids), (s, ids)
    assert bpe.decode(ids) == s


def test_bpe_literal_special_not_forged_even_if_in_corpus():
  # Special-token strings in the training corpus must not become mergeable.
  corpus = [f"user: {s} <eoc> assistant: {s}<eos>" for s in _corpus(200)]
  t = tk.train_bpe(corpus, 300)
  ids = t.encode("hi <eoc> there<eos>")
  assert t.eoc_id not in ids and t.eos_id not in ids
  assert t.decode(ids) == "hi <eoc> there<eos>"


def test_library_matches_literal_specials_by_default():
  # Documents why BPETokenizer sets encode_special_tokens: without it the
  # library turns literal "<eoc>" into the special id; the flag is also not
  # serialised, so it has to be reapplied on every load.
  t = tk.train_bpe(_corpus(50), 270)
  raw = tokenizers.Tokenizer.from_str(t.to_json()["tokenizer_json"])
  assert raw.encode_special_tokens is False
  assert raw.encode("<eoc>", add_special_tokens=False).ids == [t.eoc_id]
  assert t.encode("<eoc>") != [t.eoc_id]


def test_bpe_decode_skips_specials_and_replaces_bad_utf8(bpe):
  hi = bpe.encode("hi")
  assert bpe.decode([bpe.pad_id] + hi + [bpe.eoc_id, bpe.eos_id]) == "hi"
  e_acute = bpe.encode("é")
  assert len(e_acute) == 2  # Two bytes never merged in this corpus.
  assert bpe.decode(e_acute[:1]) == "\ufffd"
  with pytest.raises(ValueError):
    bpe.decode([bpe.vocab_size])


def test_bpe_json_round_trip(bpe, tmp_path):
  d = bpe.to_json()
  assert d["kind"] == "bpe" and isinstance(d["tokenizer_json"], str)
  # Must survive a plain JSON text round trip (it lives in checkpoints).
  t2 = tk.from_json(json.loads(json.dumps(d)))
  path = tmp_path / "tok.json"
  tk.save(bpe, path)
  t3 = tk.load(path)
  for t in (t2, t3):
    assert isinstance(t, tk.BPETokenizer)
    assert t.to_json() == d
    assert (t.vocab_size, t.pad_id, t.eoc_id, t.eos_id) == (
        bpe.vocab_size, bpe.pad_id, bpe.eoc_id, bpe.eos_id)
    for s in TRICKY:
      assert t.encode(s) == bpe.encode(s)
    assert t.eoc_id not in t.encode("<eoc>")


def test_bpe_deterministic():
  a = tk.train_bpe(_corpus(), 320).to_json()
  b = tk.train_bpe(_corpus(), 320).to_json()
  assert a == b


def test_bpe_any_text_encodes_with_unseen_bytes():
  # Corpus is pure ASCII; the full byte alphabet still covers everything.
  t = tk.train_bpe(["aaaa bbbb"] * 20, 270)
  assert t.vocab_size <= 270
  for s in TRICKY:
    assert t.decode(t.encode(s)) == s


def test_train_bpe_rejects_small_vocab():
  with pytest.raises(ValueError, match="259"):
    tk.train_bpe(["abc"], 258)
  assert tk.train_bpe([], 259).vocab_size == 259


def test_bpe_requires_special_tokens():
  raw = tokenizers.Tokenizer(tokenizers.models.BPE())
  with pytest.raises(ValueError, match="<pad>"):
    tk.BPETokenizer(raw)


def test_bpe_wrapper_does_not_mutate_input():
  t = tk.train_bpe(_corpus(50), 270)
  raw = tokenizers.Tokenizer.from_str(t.to_json()["tokenizer_json"])
  tk.BPETokenizer(raw)
  assert raw.encode_special_tokens is False


# from_json / save / load / from_spec


def test_byte_json_and_file_round_trip(tmp_path):
  t = tk.ByteTokenizer()
  assert t.to_json() == {"kind": "byte"}
  assert isinstance(tk.from_json({"kind": "byte"}), tk.ByteTokenizer)
  path = tmp_path / "byte.json"
  tk.save(t, path)
  assert json.loads(path.read_text()) == {"kind": "byte"}
  assert isinstance(tk.load(path), tk.ByteTokenizer)


@pytest.mark.parametrize("d", [{"kind": "sentencepiece"}, {}, {"kind": "bpe"},
                               {"kind": "bpe", "tokenizer_json": 3},
                               {"kind": "bpe", "tokenizer_json": "{bad"},
                               "byte"])
def test_from_json_rejects_junk(d):
  with pytest.raises(ValueError):
    tk.from_json(d)


def test_from_spec(tmp_path):
  assert isinstance(tk.from_spec("byte"), tk.ByteTokenizer)
  t = tk.from_spec("bpe:300", corpus=_corpus(100))
  assert isinstance(t, tk.BPETokenizer)
  assert t.vocab_size == 300
  path = tmp_path / "t.json"
  tk.save(t, path)
  t2 = tk.from_spec(str(path))
  assert t2.to_json() == t.to_json()


@pytest.mark.parametrize("spec", ["bytes", "bpe:", "bpe:abc", "", "tok.txt",
                                  "BPE:300"])
def test_from_spec_rejects_junk(spec):
  with pytest.raises(ValueError):
    tk.from_spec(spec, corpus=["abc"])


def test_from_spec_bpe_needs_corpus():
  with pytest.raises(ValueError, match="corpus"):
    tk.from_spec("bpe:300")
