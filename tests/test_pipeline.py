"""Tests for hhh.data.pipeline: encoding, collation, length buckets and the deterministic batch stream."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from hhh.data import pipeline
from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
PAD, EOC, EOS = 256, 257, 258


def comp(context, responses, scores, id_="c"):
  return Comparison(context=context, responses=tuple(responses), scores=tuple(float(s) for s in scores),
                    source="test", id=id_)


def tolist(encoded):
  return [s.tolist() for s in encoded.seqs]


def parity_examples(n=23):
  """Example i has score i on its first response (its identity); even i -> length 4, odd i -> length 12."""
  comps = [comp("x" * (2 if i % 2 == 0 else 10), ["r", "s"], [i, -1], id_=str(i)) for i in range(n)]
  examples, stats = pipeline.encode_all(comps, TOK, max_len=16, max_k=2)
  assert [e.length for e in examples[:4]] == [4, 12, 4, 12]
  assert stats.comparisons == n
  return examples


def varied_examples(n=40):
  """Example i (identity: score i) has length i % 11 + 2 (even i) or i % 11 + 3 (odd i): 2..13."""
  comps = [comp("y" * (i % 11), ["a", "bb"[: 1 + i % 2]], [i, -1], id_=str(i)) for i in range(n)]
  examples, _ = pipeline.encode_all(comps, TOK, max_len=16, max_k=2)
  return examples


def source(examples, batch_size=4, buckets=(8, 16, 24), seed=0, **kw):
  return pipeline.BatchSource(examples, batch_size=batch_size, max_k=2, buckets=buckets, pad_id=PAD, seed=seed,
                              **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def ids_of(batch):
  """The identities (first-response scores) of a batch's real rows."""
  real = batch["lengths"][:, 0] > 0
  return [int(s) for s in batch["scores"][real, 0]]


# --- encode_comparison ------------------------------------------------------------------------


def test_encode_exact_tokens():
  stats = pipeline.EncodeStats()
  e = pipeline.encode_comparison(comp("Hi", ["yo", "n"], [1.0, -0.5]), TOK, max_len=16, max_k=2, stats=stats)
  # "H"=72 "i"=105 | "y"=121 "o"=111 | <eoc>=257
  assert tolist(e) == [[72, 105, 121, 111, 257], [72, 105, 110, 257]]
  assert all(s.dtype == np.int32 for s in e.seqs)
  assert e.starts == [2, 2]
  np.testing.assert_array_equal(e.scores, np.asarray([1.0, -0.5], np.float32))
  assert e.length == 5
  assert (stats.comparisons, stats.responses_dropped, stats.contexts_truncated, stats.responses_truncated) == (
      1, 0, 0, 0)


def test_encode_never_forges_special_tokens():
  e = pipeline.encode_comparison(comp("<eoc>", ["a"], [0]), TOK, max_len=16, max_k=1)
  # The literal text "<eoc>" is 5 bytes; the only 257 is the one the pipeline appends.
  assert tolist(e) == [[60, 101, 111, 99, 62, 97, 257]]
  assert e.starts == [5]


def test_long_context_is_cut_from_the_left():
  stats = pipeline.EncodeStats()
  # context "abcdefghij" = 97..106, response "xy" = 120, 121; max_len 6 leaves room for 3 context bytes.
  e = pipeline.encode_comparison(comp("abcdefghij", ["xy"], [0]), TOK, max_len=6, max_k=1, stats=stats)
  assert tolist(e) == [[104, 105, 106, 120, 121, 257]]  # "hij" + "xy" + <eoc>
  assert e.starts == [3]
  assert (stats.contexts_truncated, stats.responses_truncated) == (1, 0)


def test_context_that_exactly_fits_is_kept_whole():
  stats = pipeline.EncodeStats()
  e = pipeline.encode_comparison(comp("abc", ["xy"], [0]), TOK, max_len=6, max_k=1, stats=stats)
  assert tolist(e) == [[97, 98, 99, 120, 121, 257]]
  assert e.starts == [3]
  assert (stats.contexts_truncated, stats.responses_truncated) == (0, 0)


def test_long_response_is_cut_from_the_right_and_keeps_eoc():
  stats = pipeline.EncodeStats()
  # response "uvwxyz" = 117..122 is cut to max_len - 1 = 4 bytes; no room is left for the context "ab".
  e = pipeline.encode_comparison(comp("ab", ["uvwxyz"], [0]), TOK, max_len=5, max_k=1, stats=stats)
  assert tolist(e) == [[117, 118, 119, 120, 257]]
  assert e.starts == [0]
  assert (stats.responses_truncated, stats.contexts_truncated) == (1, 1)


def test_truncation_is_per_response():
  stats = pipeline.EncodeStats()
  # Response 0 (1 byte) leaves room for 3 context bytes, response 1 (4 bytes) for none.
  e = pipeline.encode_comparison(comp("abcd", ["x", "wxyz"], [1, 0]), TOK, max_len=5, max_k=2, stats=stats)
  assert tolist(e) == [[98, 99, 100, 120, 257], [119, 120, 121, 122, 257]]
  assert e.starts == [3, 0]
  assert (stats.contexts_truncated, stats.responses_truncated) == (2, 0)


def test_shared_cut_gives_every_response_the_context_of_the_longest():
  stats = pipeline.EncodeStats()
  # max_len 7: response 1 ("wxyz" + <eoc>) leaves room for 2 context bytes, so both responses follow "cd";
  # cut per response, response 0 ("x") would keep all of "abcd".
  e = pipeline.encode_comparison(comp("abcd", ["x", "wxyz"], [1, 0]), TOK, max_len=7, max_k=2, stats=stats,
                                 cut="shared")
  assert tolist(e) == [[99, 100, 120, 257], [99, 100, 119, 120, 121, 122, 257]]
  assert e.starts == [2, 2]
  assert (stats.contexts_truncated, stats.responses_truncated) == (2, 0)
  # A context that fits beside the longest response is kept whole, as per response.
  e = pipeline.encode_comparison(comp("ab", ["x", "wxyz"], [1, 0]), TOK, max_len=7, max_k=2, cut="shared")
  assert e.starts == [2, 2] and tolist(e)[0] == [97, 98, 120, 257]
  with pytest.raises(ValueError, match="context cut 'left'"):
    pipeline.encode_comparison(comp("ab", ["x"], [0]), TOK, max_len=7, max_k=1, cut="left")


def test_max_k_keeps_the_best_and_the_worst():
  # Ranking by score: "b" (2.0) > "d" (1.0) > "a" (0.5) > "c" (-1.0).
  c = comp("Q", ["a", "b", "c", "d"], [0.5, 2.0, -1.0, 1.0])
  stats = pipeline.EncodeStats()
  e2 = pipeline.encode_comparison(c, TOK, max_len=16, max_k=2, stats=stats)
  # best "b" and worst "c", in their original order.
  assert tolist(e2) == [[81, 98, 257], [81, 99, 257]]
  np.testing.assert_array_equal(e2.scores, [2.0, -1.0])
  assert stats.responses_dropped == 2
  e3 = pipeline.encode_comparison(c, TOK, max_len=16, max_k=3, stats=stats)
  # the two best ("b", "d") and the worst ("c"), in their original order b, c, d.
  assert tolist(e3) == [[81, 98, 257], [81, 99, 257], [81, 100, 257]]
  np.testing.assert_array_equal(e3.scores, [2.0, -1.0, 1.0])
  assert e3.starts == [1, 1, 1]
  assert stats.responses_dropped == 3
  e4 = pipeline.encode_comparison(c, TOK, max_len=16, max_k=4, stats=stats)
  assert tolist(e4) == [[81, 97, 257], [81, 98, 257], [81, 99, 257], [81, 100, 257]]
  assert stats.responses_dropped == 3
  assert stats.comparisons == 3


def test_max_k_one_keeps_the_best():
  c = comp("Q", ["a", "b", "c"], [0.0, 3.0, -2.0])
  stats = pipeline.EncodeStats()
  e = pipeline.encode_comparison(c, TOK, max_len=16, max_k=1, stats=stats)
  assert tolist(e) == [[81, 98, 257]]
  np.testing.assert_array_equal(e.scores, [3.0])
  assert stats.responses_dropped == 2


def test_encode_all_shares_stats():
  comps = [comp("abcdefgh", ["x"], [0], "0"), comp("a", ["x", "y", "z"], [0, 1, 2], "1")]
  examples, stats = pipeline.encode_all(comps, TOK, max_len=4, max_k=2)
  assert [tolist(e) for e in examples] == [[[103, 104, 120, 257]], [[97, 120, 257], [97, 122, 257]]]
  assert (stats.comparisons, stats.responses_dropped, stats.contexts_truncated, stats.responses_truncated) == (
      2, 1, 1, 0)


# --- encode_text ----------------------------------------------------------------------------------


def test_encode_text_joins_with_eos_and_cuts_windows():
  # stream: a b <eos> c d e <eos> = [97, 98, 258, 99, 100, 101, 258]
  w3 = pipeline.encode_text(["ab", "cde"], TOK, seq_len=3)
  # The trailing 1-token window [258] has nothing to predict and is dropped.
  assert [tolist(e) for e in w3] == [[[97, 98, 258]], [[99, 100, 101]]]
  w4 = pipeline.encode_text(["ab", "cde"], TOK, seq_len=4)
  assert [tolist(e) for e in w4] == [[[97, 98, 258, 99]], [[100, 101, 258]]]
  for e in w3 + w4:
    assert e.starts == [0]
    np.testing.assert_array_equal(e.scores, np.zeros((1,), np.float32))
  assert pipeline.encode_text([], TOK, seq_len=4) == []
  whole = pipeline.encode_text(["hello"], TOK, seq_len=16)
  assert [tolist(e) for e in whole] == [[[104, 101, 108, 108, 111, 258]]]


# --- bucket_of and collate --------------------------------------------------------------------


def test_bucket_of():
  assert [pipeline.bucket_of(n, (8, 16, 24)) for n in (1, 8, 9, 16, 17, 24)] == [8, 8, 16, 16, 24, 24]
  with pytest.raises(ValueError, match="25 tokens exceeds the largest bucket 24"):
    pipeline.bucket_of(25, (8, 16, 24))


def test_collate_pads_to_static_shape():
  ex1 = pipeline.Encoded([np.asarray([1, 2, 3], np.int32), np.asarray([4, 5], np.int32)], [1, 0],
                         np.asarray([0.5, -0.5], np.float32))
  ex2 = pipeline.Encoded([np.asarray([7], np.int32)], [0], np.asarray([2.0], np.float32))  # K=1 < 2
  b = pipeline.collate([ex1, None, ex2], L=4, K=2, pad_id=9)
  assert sorted(b) == ["lengths", "response_start", "scores", "tokens"]
  assert b["tokens"].shape == (3, 2, 4) and b["tokens"].dtype == np.int32
  assert b["tokens"].tolist() == [
      [[1, 2, 3, 9], [4, 5, 9, 9]],
      [[9, 9, 9, 9], [9, 9, 9, 9]],
      [[7, 9, 9, 9], [9, 9, 9, 9]],
  ]
  assert b["lengths"].dtype == np.int32 and b["lengths"].tolist() == [[3, 2], [0, 0], [1, 0]]
  assert b["response_start"].dtype == np.int32 and b["response_start"].tolist() == [[1, 0], [0, 0], [0, 0]]
  assert b["scores"].dtype == np.float32 and b["scores"].tolist() == [[0.5, -0.5], [0.0, 0.0], [2.0, 0.0]]


# --- BatchSource: buckets, determinism, epochs ------------------------------------------------


def test_train_batches_use_the_smallest_bucket_and_static_shapes():
  examples = varied_examples()
  buckets = (4, 8, 16, 32)
  it = source(examples, batch_size=4, buckets=buckets).train_iter()
  seen_L = collections.Counter()
  for batch in take(it, 30):
    B, K, L = batch["tokens"].shape
    assert (B, K) == (4, 2)
    assert L in buckets
    for key in ("lengths", "response_start", "scores"):
      assert batch[key].shape == (4, 2)
    longest = int(batch["lengths"].max())
    assert L == min(b for b in buckets if b >= longest)
    # Everything past each row's length is padding.
    pos = np.arange(L)
    assert np.all(batch["tokens"][pos >= batch["lengths"][..., None]] == PAD)
    assert np.all(batch["tokens"][pos < batch["lengths"][..., None]] != PAD)
    seen_L[L] += 1
  # Lengths 2..13 fill buckets 4, 8 and 16; 32 holds nothing.
  assert set(seen_L) == {4, 8, 16}


def test_same_seed_same_batches_other_seed_differs():
  examples = varied_examples()
  a = take(source(examples, seed=3).train_iter(), 12)
  b = take(source(examples, seed=3).train_iter(), 12)
  c = take(source(examples, seed=4).train_iter(), 12)
  assert_batches_equal(a, b)
  assert [ids_of(x) for x in a] != [ids_of(x) for x in c]


def test_each_epoch_visits_every_example_once():
  examples = parity_examples(23)
  # 12 even examples (bucket 8) -> 3 batches of 4; 11 odd ones (bucket 16) -> 3 batches, the last with 3 rows.
  per_epoch = 6
  it = source(examples, batch_size=4).train_iter()
  epochs = []
  for _ in range(3):
    batches = take(it, per_epoch)
    ids = [i for b in batches for i in ids_of(b)]
    assert sorted(ids) == list(range(23))
    for b in batches:
      L = b["tokens"].shape[2]
      assert all((i % 2 == 0) == (L == 8) for i in ids_of(b))
      assert L in (8, 16)
    # The one short batch is padded with an empty row.
    assert sum(int((b["lengths"][:, 0] == 0).sum()) for b in batches) == 1
    epochs.append([ids_of(b) for b in batches])
  # Each epoch is reshuffled.
  assert epochs[0] != epochs[1] != epochs[2]


def test_iterator_state_resumes_exactly():
  examples = parity_examples(23)
  src = source(examples, seed=11)
  it = src.train_iter()
  first = take(it, 5)
  state = it.get_state()
  state = json.loads(json.dumps(state))  # survives a trip through a JSON checkpoint
  rest = take(it, 3)  # crosses the epoch boundary at batch 6
  fresh = src.train_iter()
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), rest)
  # A fresh iterator from the start repeats the whole sequence.
  assert_batches_equal(take(source(examples, seed=11).train_iter(), 8), first + rest)


# --- processes --------------------------------------------------------------------------------


def test_process_rows_concatenate_to_the_global_batch():
  examples = varied_examples()
  glob = take(source(examples, seed=5).train_iter(), 8)
  halves = [take(source(examples, seed=5, process_index=p, process_count=2).train_iter(), 8) for p in (0, 1)]
  for g, h0, h1 in zip(glob, *halves):
    assert h0["tokens"].shape[0] == h1["tokens"].shape[0] == 2
    for k in g:
      np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), g[k], err_msg=k)


def test_process_rows_for_eval():
  examples = varied_examples()
  srcs = [source(examples, process_index=p, process_count=2) for p in (0, 1)]
  glob = list(source(examples).eval_batches())
  for src in srcs:
    # eval_batches are global on every process; local_rows picks this process's half.
    assert_batches_equal(list(src.eval_batches()), glob)
  for g in glob:
    h0, h1 = (src.local_rows(g) for src in srcs)
    assert h0["tokens"].shape[0] == 2
    for k in g:
      np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), g[k], err_msg=k)
  four = [source(examples, batch_size=8, process_index=p, process_count=4) for p in range(4)]
  g = glob[0]
  assert [src.local_rows({"x": np.arange(8)})["x"].tolist() for src in four] == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert srcs[1].local_rows(g)["scores"].tolist() == g["scores"][2:].tolist()


def test_batch_size_must_divide_by_process_count():
  with pytest.raises(ValueError, match="divisible"):
    source(varied_examples(), batch_size=3, process_count=2)


# --- eval_batches ---------------------------------------------------------------------------------


def test_eval_batches_are_one_ordered_padded_pass():
  examples = parity_examples(7)  # evens 0, 2, 4, 6 -> bucket 8; odds 1, 3, 5 -> bucket 16
  batches = list(source(examples, batch_size=3).eval_batches())
  assert [b["tokens"].shape for b in batches] == [(3, 2, 8), (3, 2, 8), (3, 2, 16)]
  # Buckets in increasing order, examples in index order, short batch filled with empty rows.
  assert [b["scores"][:, 0].tolist() for b in batches] == [[0, 2, 4], [6, 0, 0], [1, 3, 5]]
  assert [b["lengths"].tolist() for b in batches] == [
      [[4, 4], [4, 4], [4, 4]],
      [[4, 4], [0, 0], [0, 0]],
      [[12, 12], [12, 12], [12, 12]],
  ]
  assert np.all(batches[1]["tokens"][1:] == PAD)
  # Example 0: "xx" + "r" + <eoc>, then padding.
  assert batches[0]["tokens"][0].tolist() == [[120, 120, 114, 257, PAD, PAD, PAD, PAD],
                                              [120, 120, 115, 257, PAD, PAD, PAD, PAD]]
  assert batches[0]["response_start"][0].tolist() == [2, 2]
  # A second pass is identical.
  assert_batches_equal(list(source(examples, batch_size=3, seed=9).eval_batches()), batches)


def test_eval_batches_cover_a_larger_set_once():
  examples = varied_examples(40)
  ids = [i for b in source(examples, batch_size=4).eval_batches() for i in ids_of(b)]
  assert sorted(ids) == list(range(40))
