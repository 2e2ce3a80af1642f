"""Packed rows for preference training: each comparison's context once, then its K responses, several comparisons
to a row, in a few static shapes.

Unpacked, a comparison is K rows `context + response_k + <eoc>`, each padded to its bucket: the context is
computed K times and the padding once per row. Packed, a comparison is a *piece* laid out as

    tokens     c0 c1 c2 | a0 a1 E | b0 E
    positions   0  1  2 |  3  4 5 |  3 4
    segment     s  s  s |  t  t t |  u u        (ids unique within the row; -1 on padding)
    context     s  s  s |  s  s s |  s s        (the segment a token may read besides its own)

and pieces are packed first-fit-decreasing into rows. A token attends, causally, to keys of its own segment or
of its context's segment (`segment_mask`), and positions restart after the context, so every response sees
exactly the keys, at exactly the positions, of its separate sequence: the reward at each `<eoc>` is the unpacked
one up to float summation order. No attention crosses pieces.

Exactness needs the K responses to follow one context, which training's encoding gives (`data.context_cut`
"shared": a long context is cut once, to fit beside the longest response). When it was cut per response
("each": a long response leaves less room), the comparison falls back: each response becomes its own piece with
its own context, which is the unpacked layout inside a packed row (counted as `fallback`). A packed comparison
longer than the row length is split into pieces of as many responses as fit, each repeating the context
(`split`).

A batch holds the same comparisons, in the same order, as unpacked (`hhh.data.pipeline`'s plan). Its rows have
the row length (a bucket that holds its longest piece) that needs the fewest slots, and the row count is rounded
up on a short grid (1, 2, 3, 4, 6, 8, 12, ...), so a run compiles a few shapes. With S batch shards (devices
along the batch axes) each shard's comparisons are packed into its own rows, so reading rewards never crosses
devices.

With a token budget (`data.batch_tokens`) a step is instead one fixed shape, budget / row length rows of the
row length (on CPU one long row per shard: `row_length`), filled with as many comparisons as fit (at most
`batch_size`): `TokenPlan` walks the epoch's shuffled order and puts each comparison in the first step that
still has room for it among the next few, so rows are nearly full and a run compiles one train shape. The steps
are a pure function of (seed, epoch).
"""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
from typing import Iterable, Sequence

import grain
import numpy as np

from hhh.data.pipeline import BatchSource, Encoded

PAD_SEGMENT = -1    # segment id of padding slots: never a valid key
PAD_CONTEXT = -2    # context id of padding slots: matches no key


@dataclasses.dataclass
class Piece:
  """A context followed by some of one comparison's responses (each ending in <eoc>)."""
  context: np.ndarray
  responses: list[np.ndarray]
  which: list[int]              # the response index k of each response in its comparison

  def __len__(self) -> int:
    return len(self.context) + sum(len(r) for r in self.responses)


@dataclasses.dataclass
class PackStats:
  comparisons: int = 0
  packed: int = 0               # context once, all responses in one piece
  split: int = 0                # context shared, but the responses spread over several pieces (longer than a row)
  fallback: int = 0             # responses cut against different contexts: one piece per response

  def add(self, kind: str) -> None:
    self.comparisons += 1
    setattr(self, kind, getattr(self, kind) + 1)


def packable(ex: Encoded) -> bool:
  """Whether every response of an encoded comparison follows the same context (nothing was cut per response)."""
  c = ex.starts[0]
  return all(st == c and np.array_equal(s[:c], ex.seqs[0][:c]) for s, st in zip(ex.seqs, ex.starts))


def packed_length(ex: Encoded) -> int:
  """Tokens of an encoded comparison packed: the context once, then every response with its <eoc>."""
  return ex.starts[0] + sum(len(s) - st for s, st in zip(ex.seqs, ex.starts))


def pieces_of(ex: Encoded, row_len: int) -> tuple[list[Piece], str]:
  """The pieces of one comparison and how it was laid out: "packed", "split" or "fallback"."""
  if not packable(ex):
    return [Piece(s[:st], [s[st:]], [k]) for k, (s, st) in enumerate(zip(ex.seqs, ex.starts))], "fallback"
  c = ex.starts[0]
  ctx, resps = ex.seqs[0][:c], [s[c:] for s in ex.seqs]
  if c + sum(len(r) for r in resps) <= row_len:
    return [Piece(ctx, resps, list(range(len(resps))))], "packed"
  pieces = [Piece(ctx, [], [])]
  for k, r in enumerate(resps):  # every `context + response` fits a row: encoding caps it at max_len <= row_len
    if pieces[-1].responses and len(pieces[-1]) + len(r) > row_len:
      pieces.append(Piece(ctx, [], []))
    pieces[-1].responses.append(r)
    pieces[-1].which.append(k)
  return pieces, "split"


def row_buckets(buckets: Sequence[int], row_len: int) -> tuple[int, ...]:
  """Row lengths: the data's buckets up to `row_len`, then doubling up to 512 and steps of about an eighth from
  there (multiples of 64, so tiled attention's tiles divide them) up to it. Rows longer than the largest piece
  hold several comparisons end to end; the fine steps keep a step's last row from being rounded up by more than
  about 12%."""
  out = sorted(b for b in set(buckets) if b <= row_len)
  b = out[-1] if out else 32
  while b < row_len:
    b = min(-(-b * 9 // (8 * 64)) * 64 if b >= 512 else 2 * b, row_len)
    out.append(b)
  return tuple(out)


LONG_ROWS = 8  # an automatic row on CPU holds up to this many of the largest bucket


def long_rows(buckets: Sequence[int], row_len: int) -> bool:
  """Rows may be longer than the largest bucket: then a step's pieces go end to end in one row per shard
  (`collate_rows`'s one_row), where they fit."""
  return row_len > max(buckets)


def row_length(buckets: Sequence[int], pack_len: int = 0, batch_tokens: int = 0, backend: str = "cpu",
               n_shards: int = 1) -> int:
  """The longest packed row (`data.pack_len`; 0 picks it). Accelerators get the largest bucket: there attention
  computes every tile of a row, so its cost grows with the row's square. On CPU, where tiled attention skips the
  tiles a row does not see (`model.attention`), a row of 512+ tokens may grow to LONG_ROWS buckets: a step's
  comparisons then lie end to end in one row instead of being bin-packed into rows of the largest bucket, which
  on HH-RLHF cuts processed / needed tokens from 1.28 to 1.07 at 8 comparisons a step
  (benchmarks/row_layouts.py). Token-budget steps on CPU are likewise one row per batch shard, of
  batch_tokens / n_shards tokens, where that is a multiple of 64 up to LONG_ROWS buckets (else the largest
  bucket)."""
  if pack_len:
    return pack_len
  top = max(buckets)
  if backend != "cpu" or top < 512:
    return top
  if batch_tokens:
    per = batch_tokens // n_shards
    ok = batch_tokens % n_shards == 0 and per % 64 == 0 and top < per <= LONG_ROWS * top
    return per if ok else top
  return LONG_ROWS * top


def round_rows(n: int) -> int:
  """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... that holds n rows: at most a third more rows than needed
  (a sixth on average), in two shapes per power of two."""
  r = 1
  while True:
    for m in (r, 3 * r // 2 if r >= 2 else r):
      if m >= n:
        return m
    r *= 2


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Rows of piece indices, first-fit decreasing; ties keep index order, so the layout is deterministic."""
  rows: list[list[int]] = []
  room: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    for r, free in enumerate(room):
      if lengths[i] <= free:
        rows[r].append(i)
        room[r] -= lengths[i]
        break
    else:
      rows.append([i])
      room.append(capacity - lengths[i])
  return rows


def collate_rows(examples: Sequence[Encoded | None], *, K: int, pad_id: int, buckets: Sequence[int],
                 n_shards: int = 1, stats: PackStats | None = None, rows: int | None = None,
                 row_len: int | None = None, one_row: bool = False) -> dict[str, np.ndarray]:
  """One global packed batch from C comparisons (None = an empty comparison slot of a short last batch).

  Returns row arrays [R, L] (tokens, positions, segments, contexts, lm_target, lm_weight) and comparison arrays
  [C, K] (reward_index: the flat index into R * L of each response's <eoc>; lengths: the unpacked sequence
  length, 0 = no response; scores). Comparisons are split evenly over `n_shards`, and shard s's pieces fill
  rows [s R/S, (s+1) R/S), so each shard's rewards are read from its own rows. `lm_target`/`lm_weight` are the
  next-token targets of each comparison's preferred sequence (context + preferred response), what the unpacked
  LM mixing loss reads. `rows` fixes R (a token-budget step: one row length, the largest bucket); the pieces must
  fit, as `TokenPlan` guarantees. `row_len` (with `rows`) fixes the row length instead of the largest bucket: a
  process that collates only its own shards of a global batch whose shape `packed_shape` chose. `one_row`: one
  row per shard, the shortest of `buckets` that holds each shard's pieces end to end, where one exists (long
  rows, `row_length`); otherwise the shape with the fewest slots.
  """
  C = len(examples)
  if C % n_shards:
    raise ValueError(f"{C} comparisons do not split over {n_shards} batch shards")
  row_len = max(buckets)
  laid = []
  for ex in examples:
    if ex is None:
      laid.append(([], None))
      continue
    pieces, kind = pieces_of(ex, row_len)
    if stats is not None:
      stats.add(kind)
    laid.append((pieces, ex))
  longest = max((len(p) for pieces, _ in laid for p in pieces), default=1)
  per = C // n_shards
  shards = [[(c, p) for c in range(s * per, (s + 1) * per) for p in laid[c][0]] for s in range(n_shards)]
  best = None
  if rows is not None:
    if rows % n_shards:
      raise ValueError(f"{rows} rows do not split over {n_shards} batch shards")
    L = row_len or max(buckets)
    shard_rows = [first_fit([len(p) for _, p in items], L) for items in shards]
    if max(len(r) for r in shard_rows) > rows // n_shards or longest > L:
      raise ValueError(f"the comparisons do not fit {rows} rows of {L} tokens")
    best = (rows // n_shards, L, shard_rows)
  if rows is None and one_row:
    L = _one_row(buckets, [sum(len(p) for _, p in items) for items in shards], longest)
    if L:
      best = (1, L, [first_fit([len(p) for _, p in items], L) for items in shards])
  # The row length that needs the fewest slots (rows rounded up on the grid); the shorter one on a tie, since
  # attention grows with it. Pieces of 300 tokens waste 40% of 512-token rows and 12% of 1024-token ones.
  search = best is None
  for L in (b for b in sorted(buckets) if b >= longest and search):
    shard_rows = [first_fit([len(p) for _, p in items], L) for items in shards]
    R_s = round_rows(max(1, max(len(rows) for rows in shard_rows)))
    if best is None or R_s * L < best[0] * best[1]:
      best = (R_s, L, shard_rows)
  R_s, L, shard_rows = best
  shard_rows = list(zip(shards, shard_rows))
  R = R_s * n_shards

  tokens = np.full((R, L), pad_id, np.int32)
  positions = np.zeros((R, L), np.int32)
  segments = np.full((R, L), PAD_SEGMENT, np.int32)
  contexts = np.full((R, L), PAD_CONTEXT, np.int32)
  lm_target = np.zeros((R, L), np.int32)
  lm_weight = np.zeros((R, L), np.float32)
  reward_index = np.zeros((C, K), np.int32)
  lengths = np.zeros((C, K), np.int32)
  scores = np.zeros((C, K), np.float32)
  for c, (_, ex) in enumerate(laid):
    if ex is not None:
      lengths[c, :len(ex.seqs)] = [len(s) for s in ex.seqs]
      scores[c, :len(ex.scores)] = ex.scores
  # The preferred response, as the unpacked loss picks it: the first of the top-scored valid responses.
  preferred = {c: int(np.argmax(ex.scores)) for c, (_, ex) in enumerate(laid) if ex is not None}
  for s, (items, rows) in enumerate(shard_rows):
    for j, members in enumerate(rows):
      r = s * R_s + j
      at, seg = 0, 0
      for m in members:
        c, piece = items[m]
        n_ctx = len(piece.context)
        ctx_seg = seg
        seg += 1
        tokens[r, at:at + n_ctx] = piece.context
        positions[r, at:at + n_ctx] = np.arange(n_ctx)
        segments[r, at:at + n_ctx] = ctx_seg
        contexts[r, at:at + n_ctx] = ctx_seg
        ctx_at, at = at, at + n_ctx
        for k, resp in zip(piece.which, piece.responses):
          n = len(resp)
          tokens[r, at:at + n] = resp
          positions[r, at:at + n] = np.arange(n_ctx, n_ctx + n)
          segments[r, at:at + n] = seg
          contexts[r, at:at + n] = ctx_seg
          reward_index[c, k] = r * L + at + n - 1
          if preferred.get(c) == k:
            # context + response is one sequence: each token but the last (<eoc>) predicts the next one.
            seq_at = np.concatenate([np.arange(ctx_at, ctx_at + n_ctx), np.arange(at, at + n)])
            lm_target[r, seq_at[:-1]] = tokens[r, seq_at[1:]]
            lm_weight[r, seq_at[:-1]] = 1.0
          seg += 1
          at += n
  return {"tokens": tokens, "positions": positions, "segments": segments, "contexts": contexts,
          "lm_target": lm_target, "lm_weight": lm_weight, "reward_index": reward_index, "lengths": lengths,
          "scores": scores}


def _one_row(buckets: Sequence[int], shard_tokens: Sequence[int], longest: int) -> int:
  """The shortest row length that holds every shard's pieces in one row, or 0. One row per shard, not the
  fewest slots: a few percent more padding on average, for half as many compiled shapes (on HH-RLHF, 11 row
  shapes in 200 steps of 8 comparisons against 20, processed / needed 1.069 against 1.053;
  benchmarks/row_layouts.py)."""
  need = max(max(shard_tokens, default=0), longest, 1)
  return min((b for b in buckets if b >= need), default=0)


def packed_shape(piece_lengths: Sequence[Sequence[int]], *, buckets: Sequence[int], n_shards: int = 1,
                 rows: int | None = None, one_row: bool = False) -> tuple[int, int]:
  """(rows per shard, row length) that `collate_rows` picks for comparisons whose pieces have these lengths
  (an empty list for an empty slot), computed from lengths alone: a process can agree on the shape of a global
  batch without reading the other processes' comparisons."""
  C = len(piece_lengths)
  if C % n_shards:
    raise ValueError(f"{C} comparisons do not split over {n_shards} batch shards")
  if rows is not None:
    return rows // n_shards, max(buckets)
  longest = max((n for p in piece_lengths for n in p), default=1)
  per = C // n_shards
  shards = [[n for c in range(s * per, (s + 1) * per) for n in piece_lengths[c]] for s in range(n_shards)]
  if one_row and (L := _one_row(buckets, [sum(sh) for sh in shards], longest)):
    return 1, L
  best = None
  for L in (b for b in sorted(buckets) if b >= longest):
    R_s = round_rows(max(1, max(len(first_fit(sh, L)) for sh in shards)))
    if best is None or R_s * L < best[0] * best[1]:
      best = (R_s, L)
  if best is None:
    raise ValueError(f"a piece of {longest} tokens exceeds the longest row, {max(buckets)} tokens")
  return best


def fits(lengths: Sequence[int], capacity: int, rows: int) -> bool:
  """Whether pieces of these lengths go into `rows` rows of `capacity` tokens, first-fit decreasing (the layout
  `collate_rows` builds)."""
  return all(n <= capacity for n in lengths) and len(first_fit(lengths, capacity)) <= rows


class TokenPlan:
  """Random-access source of token-budget steps, as `pipeline._BatchPlan` is of fixed-size ones: item i is
  (row length, comparison indices), -1 marking an empty slot.

  Each epoch takes the examples in a (seed, epoch) permutation. A step has `n_shards` shards of `rows_per_shard`
  rows; shard by shard, it takes the first waiting comparison whose pieces still fit (first-fit decreasing),
  looking at most `window` comparisons ahead, until none of those fits or the shard holds its
  `max_comparisons / n_shards` slots. A comparison waits at most a few steps, and the rows are nearly full.

  The piece lengths are held flat (`lengths_flat`, comparison c's at `offsets[c]:offsets[c + 1]`), about 10 bytes
  a comparison, so a plan over millions of comparisons stays small; `piece_lengths` may be a generator."""

  def __init__(self, piece_lengths: Iterable[Sequence[int]], *, row_len: int, rows: int, max_comparisons: int,
               seed: int, n_shards: int = 1, window: int = 16, shuffle: bool = True):
    if rows < n_shards or rows % n_shards:
      raise ValueError(f"a token budget of {rows} rows does not split over {n_shards} batch shards")
    if max_comparisons % n_shards:
      raise ValueError(f"batch_size={max_comparisons} does not split over {n_shards} batch shards")
    self.row_len, self.rows, self.n_shards, self.window = row_len, rows, n_shards, window
    self.per_shard, self.seed, self.shuffle = max_comparisons // n_shards, seed, shuffle
    # Growable C buffers, not lists of lists: a Python list of one int costs ~90 bytes, a slot here 2-8.
    flat, ends = array.array("H" if row_len < 1 << 16 else "i"), array.array("q", [0])
    R_s, too_long, first = rows // n_shards, 0, -1
    for i, p in enumerate(piece_lengths):
      # One piece (the common case) fits iff it fits one row, and R_s >= 1: skip first_fit's sort.
      if not (p[0] <= row_len if len(p) == 1 else fits(p, row_len, R_s)):
        too_long += 1
        first = i if first < 0 else first
      elif not too_long:  # once one fails the plan is not built: stop storing (a length may not fit the dtype)
        flat.extend(p)
      ends.append(len(flat))
    if len(ends) == 1:
      raise ValueError("no examples to batch")
    if too_long:
      raise ValueError(f"example {first} needs more than {R_s} rows of {row_len} tokens "
                       f"({too_long} such): raise data.batch_tokens")
    # Views of the buffers, not copies, so the peak is one copy; read-only, since every epoch is replayed from them.
    self.lengths_flat = np.frombuffer(flat, np.uint16 if flat.typecode == "H" else np.int32)
    self.offsets = np.frombuffer(ends, np.int64)
    self.lengths_flat.flags.writeable = self.offsets.flags.writeable = False
    self._counts: list[int] = []

  def __len__(self):
    return 1 << 40  # an endless training stream

  @functools.lru_cache(maxsize=2)
  def epoch_plan(self, epoch: int) -> np.ndarray:
    """The epoch's steps, [steps, slots] comparison indices (-1: empty), int32 unless there are 2^31 examples."""
    n = len(self.offsets) - 1
    order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
    cap, R_s, C_s, window = self.row_len, self.rows // self.n_shards, self.per_shard, self.window
    # memoryviews index to plain Python ints, several times faster than numpy scalars in this loop.
    flat, off, rest = memoryview(self.lengths_flat), memoryview(self.offsets), memoryview(order)
    # The walk only ever looks `window` comparisons ahead: those wait in `head`, the rest stay in the array at
    # `rest[at:]` (a deque of all n Python ints would be ~50 bytes a comparison).
    head: collections.deque[int] = collections.deque()
    at = 0
    out = array.array("i" if n < 1 << 31 else "q")
    while head or at < n:
      for s in range(self.n_shards):
        taken: list[int] = []
        lengths: list[int] = []
        j = 0
        while len(taken) < C_s:
          if j == len(head):
            if j >= window or at == n:
              break
            head.append(rest[at])
            at += 1
          c = head[j]
          cand = lengths + flat[off[c]:off[c + 1]].tolist()
          if fits(cand, cap, R_s):
            taken.append(c)
            del head[j]
            lengths = cand
          else:
            j += 1
        out.extend(taken)
        out.extend([-1] * (C_s - len(taken)))
    steps = np.frombuffer(out, np.int32 if out.typecode == "i" else np.int64).reshape(-1, C_s * self.n_shards)
    steps.flags.writeable = False  # cached: every later call gets this same array
    return steps

  def _epoch_len(self, e: int) -> int:
    while len(self._counts) <= e:
      self._counts.append(len(self.epoch_plan(len(self._counts))))
    return self._counts[e]

  def __getitem__(self, i: int):
    e = 0
    while i >= self._epoch_len(e):
      i -= self._epoch_len(e)
      e += 1
    # int64, as before: the step is a fresh array (a consumer may keep or change it without touching the cache).
    return self.row_len, self.epoch_plan(e)[i].astype(np.int64)


def summary(examples: Sequence[Encoded], row_len: int) -> PackStats:
  """How a run's comparisons are laid out (packed, split, fallback), counted once before training."""
  stats = PackStats()
  for ex in examples:
    stats.add(pieces_of(ex, row_len)[1])
  return stats


class PackedBatchSource(BatchSource):
  """`BatchSource` whose training batches are packed rows: the same comparisons in the same order, since the
  plan (bucketed by unpacked length, shuffled by (seed, epoch)) is the unpacked one. Every process packs the
  whole global batch, so all agree on its shape, and keeps its own slice of rows and comparisons."""

  def __init__(self, examples: Sequence[Encoded], *, row_len: int, n_shards: int = 1, batch_tokens: int = 0,
               **kw):
    super().__init__(examples, **kw)
    if n_shards % self.process_count:
      raise ValueError(f"{n_shards} batch shards do not split over {self.process_count} processes")
    self.row_buckets = row_buckets(self.buckets, row_len)
    self.n_shards = n_shards
    self.budget_rows = batch_tokens // row_len if batch_tokens else None
    self.row_len = row_len
    self.one_row = long_rows(self.buckets, row_len)

  def dataset(self, *, shuffle: bool, epochs: int | None, rows: slice | None = None):
    if self.budget_rows is None or not shuffle:
      return super().dataset(shuffle=shuffle, epochs=epochs, rows=rows)
    plan = TokenPlan(([len(p) for p in pieces_of(e, self.row_len)[0]] for e in self.examples),
                     row_len=self.row_len, rows=self.budget_rows, max_comparisons=self.batch_size, seed=self.seed,
                     n_shards=self.n_shards)
    return grain.MapDataset.source(plan).map(functools.partial(self._collate, rows=rows, budget=True))

  def _collate(self, item, rows=None, budget=False):
    L, ix = item
    exs = [self.examples[i] if i >= 0 else None for i in ix] + [None] * (self.batch_size - len(ix))
    batch = collate_rows(exs, K=self.max_k, pad_id=self.pad_id, buckets=self.row_buckets, n_shards=self.n_shards,
                         rows=self.budget_rows if budget else None, one_row=self.one_row)
    return batch if rows == slice(None) else self.local_rows(batch)

  def local_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    p, n = self.process_index, self.process_count

    def part(x):
      m = x.shape[0] // n
      return x[p * m:(p + 1) * m]
    return {k: part(v) for k, v in batch.items()}
