"""Comparisons -> static-shape [B, K, L] batches with length buckets, via a deterministic grain pipeline.

Each sequence is `context + response + <eoc>`, right-padded; the preference head
reads the `<eoc>` token. Examples are tokenized once (`encode_all`), grouped into
the smallest length bucket that holds their longest response, and batched
within a bucket, so every batch has one of a few static shapes (one compile per
bucket). The batch order is a pure function of (seed, epoch), so a grain
iterator's state is just an index and resume is exact.

Every process builds the same global batch and keeps its own rows, so the data a
step sees does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import grain
import numpy as np

from hhh.data.schema import Comparison


@dataclasses.dataclass
class Encoded:
  """One tokenized comparison (ragged; padding happens at batch time)."""
  seqs: list[np.ndarray]        # K int32 arrays: context + response + <eoc>
  starts: list[int]             # index of each response's first token
  scores: np.ndarray            # [K] float32

  @property
  def length(self) -> int:
    return max(len(s) for s in self.seqs)


@dataclasses.dataclass
class EncodeStats:
  comparisons: int = 0
  responses_dropped: int = 0    # beyond max_k
  contexts_truncated: int = 0
  responses_truncated: int = 0


CONTEXT_CUTS = ("shared", "each")


def encode_comparison(c: Comparison, tok, max_len: int, max_k: int, stats: EncodeStats | None = None,
                      cut: str = "each") -> Encoded:
  """Tokenize one comparison; contexts lose tokens from the left, responses from the right, <eoc> always stays.

  `cut` says how a context too long for `max_len` is cut. "each": per response, to what fits beside it, as
  scoring one response does (a reward must not depend on the responses scored beside it). "shared": once, to
  what fits beside the longest response, so every response follows the same context; training uses it
  (`data.context_cut`): the responses are compared on the same context, and the comparison packs.
  """
  if cut not in CONTEXT_CUTS:
    raise ValueError(f"context cut {cut!r} is not one of {', '.join(CONTEXT_CUTS)}")
  stats = stats or EncodeStats()
  stats.comparisons += 1
  order = list(range(c.k))
  if c.k > max_k:
    # Keep the best and worst ends of the ranking so the pairs that remain still span it;
    # with room for one response only, keep the best (what imitation learns from).
    ranked = sorted(order, key=lambda i: -c.scores[i])
    keep = ranked[: max_k - 1] + ranked[-1:] if max_k > 1 else ranked[:1]
    stats.responses_dropped += c.k - max_k
    order = sorted(keep)
  ctx = tok.encode(c.context)
  resps = []
  for i in order:
    resp = tok.encode(c.responses[i])
    if len(resp) > max_len - 1:
      resp = resp[: max_len - 1]
      stats.responses_truncated += 1
    resps.append(resp)
  shared_room = max_len - 1 - max((len(r) for r in resps), default=0)
  seqs, starts = [], []
  for resp in resps:
    room = shared_room if cut == "shared" else max_len - 1 - len(resp)
    ctx_i = ctx[len(ctx) - room:] if len(ctx) > room else ctx
    if len(ctx_i) < len(ctx):
      stats.contexts_truncated += 1
    seqs.append(np.asarray(ctx_i + resp + [tok.eoc_id], np.int32))
    starts.append(len(ctx_i))
  return Encoded(seqs, starts, np.asarray([c.scores[i] for i in order], np.float32))


def encode_all(comparisons: Iterable[Comparison], tok, max_len: int, max_k: int, cut: str = "each"):
  stats = EncodeStats()
  return [encode_comparison(c, tok, max_len, max_k, stats, cut) for c in comparisons], stats


def encode_text(texts: Iterable[str], tok, seq_len: int) -> list[Encoded]:
  """LM data: documents joined by <eos> and cut into windows of `seq_len` tokens (K = 1)."""
  stream: list[int] = []
  for t in texts:
    stream.extend(tok.encode(t))
    stream.append(tok.eos_id)
  ids = np.asarray(stream, np.int32)
  return [Encoded([ids[i:i + seq_len]], [0], np.zeros((1,), np.float32))
          for i in range(0, max(len(ids) - 1, 0), seq_len) if len(ids[i:i + seq_len]) > 1]


def bucket_of(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


def collate(examples: Sequence[Encoded | None], L: int, K: int, pad_id: int) -> dict[str, np.ndarray]:
  """Pads to [B, K, L]; None entries (padding rows of a short last batch) have no valid response."""
  B = len(examples)
  tokens = np.full((B, K, L), pad_id, np.int32)
  lengths = np.zeros((B, K), np.int32)
  starts = np.zeros((B, K), np.int32)
  scores = np.zeros((B, K), np.float32)
  for b, ex in enumerate(examples):
    if ex is None:
      continue
    for k, (s, st) in enumerate(zip(ex.seqs, ex.starts)):
      tokens[b, k, :len(s)] = s
      lengths[b, k] = len(s)
      starts[b, k] = st
    scores[b, :len(ex.scores)] = ex.scores
  return {"tokens": tokens, "lengths": lengths, "response_start": starts, "scores": scores}


class _BatchPlan:
  """Random-access source of (bucket L, example indices) batches; epoch e's order depends only on (seed, e)."""

  def __init__(self, lengths: Sequence[int], batch_size: int, buckets: Sequence[int], seed: int, shuffle: bool,
               epochs: int | None):
    self.batch_size, self.seed, self.shuffle, self.epochs = batch_size, seed, shuffle, epochs
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
      by_bucket.setdefault(bucket_of(n, buckets), []).append(i)
    self.by_bucket = {b: np.asarray(ix, np.int64) for b, ix in sorted(by_bucket.items())}
    self.per_epoch = sum(-(-len(ix) // batch_size) for ix in self.by_bucket.values())
    if self.per_epoch == 0:
      raise ValueError("no examples to batch")

  def __len__(self):
    # grain needs a length; an endless training stream is "very long".
    return self.per_epoch * (self.epochs if self.epochs is not None else 1_000_000)

  @functools.lru_cache(maxsize=2)
  def epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng([self.seed, epoch])
    plan = []
    for L, ix in self.by_bucket.items():
      ix = rng.permutation(ix) if self.shuffle else ix
      plan += [(L, ix[i:i + self.batch_size]) for i in range(0, len(ix), self.batch_size)]
    if self.shuffle:
      plan = [plan[j] for j in rng.permutation(len(plan))]
    return plan

  def __getitem__(self, i: int):
    L, ix = self.epoch_plan(i // self.per_epoch)[i % self.per_epoch]
    return L, ix


class BatchSource:
  """Builds grain datasets of collated batches from encoded examples."""

  def __init__(self, examples: Sequence[Encoded], *, batch_size: int, max_k: int, buckets: Sequence[int],
               pad_id: int, seed: int = 0, process_index: int = 0, process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} must be divisible by the process count {process_count}")
    self.examples, self.batch_size, self.max_k = examples, batch_size, max_k
    self.buckets, self.pad_id, self.seed = tuple(sorted(buckets)), pad_id, seed
    self.process_index, self.process_count = process_index, process_count
    self.rows = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)

  def _collate(self, item, rows=None):
    L, ix = item
    exs = [self.examples[i] for i in ix] + [None] * (self.batch_size - len(ix))
    return collate(exs[self.rows if rows is None else rows], L, self.max_k, self.pad_id)

  def local_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[self.rows] for k, v in batch.items()}

  def dataset(self, *, shuffle: bool, epochs: int | None, rows: slice | None = None) -> grain.MapDataset:
    plan = _BatchPlan([e.length for e in self.examples], self.batch_size, self.buckets, self.seed, shuffle, epochs)
    return grain.MapDataset.source(plan).map(functools.partial(self._collate, rows=rows))

  def train_iter(self) -> grain.DatasetIterator:
    """Endless shuffled batches; the iterator is checkpointable (its state is the next batch index)."""
    opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    return iter(self.dataset(shuffle=True, epochs=None).to_iter_dataset(opts))

  def eval_batches(self):
    """One ordered pass of GLOBAL batches (every row); the last batch of each bucket is filled with empty rows."""
    ds = self.dataset(shuffle=False, epochs=1, rows=slice(None))
    return (ds[i] for i in range(len(ds)))
