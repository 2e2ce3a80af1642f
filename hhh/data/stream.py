"""Streaming training data: comparisons read from the ArrayRecord store a batch at a time, never all in memory.

`data.stream=true` trains on dataset directories (`hhh data mine` / `hhh data load`) without loading them:

- **A length index** per (store split, tokenizer, max_len, max_k, context cut, binarize): each example's sequence
  lengths and context length, in the narrowest type that holds max_len (a few bytes per example, not per token),
  plus for a `:binarize` source the record and part each binarized comparison comes from. It is built once, in
  grain worker processes, each process of a multi-process run indexing its own share of the records, and cached as
  `DIR/index/*.npz` (no pickle). Workers load it from that file rather than from the training process.
- **The plan** (which comparisons form each batch, in which order) is computed from the index exactly as the
  in-memory path computes it from encoded examples: `_Plan` is `pipeline._BatchPlan` in flat arrays,
  `packing.TokenPlan` is used as is, and a mixture's weighted resampling repeats `sources.load_comparisons`'
  draws. Batches are therefore the in-memory ones, comparison for comparison and row for row.
- **Reading**: a batch item is a list of example indices; the grain map that turns it into arrays reads, from
  the store, only the comparisons of this process's rows, tokenizes and packs them (in `data.stream_workers`
  worker processes; 0 = in the training process). A packed batch's shape is chosen from the index
  (`packing.packed_shape`), so processes agree on it without reading each other's rows.
- The iterator state is grain's (a batch index), saved in every checkpoint, so resume is exact; resume with the
  same `data.stream_workers`.

Held-out batches are read whole by every process (the metrics need every row's scores). Toy data and .jsonl /
.parquet / hf: sources stay in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Sequence

import grain
import numpy as np

from hhh.data import binarize as binarize_lib
from hhh.data import packing, pipeline, sources, store
from hhh.data import tokenizer as tokenizer_lib

INDEX_VERSION = 3
_SLICE = 1 << 20  # examples per slice where a whole-index pass would otherwise make a wide temporary
_CHUNK = 4096  # records per index task: large enough to amortize a worker round trip, small enough to spread


def _mp_prefetch(ds: grain.IterDataset, workers: int, buffer: int = 1) -> grain.IterDataset:
  from absl import flags
  # grain's worker pool reads absl flags; `hhh` parses its own command line, so mark absl's as parsed (defaults).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))


def streamable(spec: str) -> bool:
  """Whether every source of a data spec is a stored dataset directory (the only kind read lazily)."""
  return all(store.is_dataset_dir(path) for path, _, _ in sources.parse_mixture(spec))


class _Reader:
  """One split of a stored dataset, opened on first use: grain ships it to worker processes by path."""

  def __init__(self, path: str, split: str):
    self.path, self.split, self._ds = str(path), split, None

  def __getstate__(self):
    return {"path": self.path, "split": self.split, "_ds": None}

  def _open(self) -> store.DataSource:
    if self._ds is None:
      self._ds = store.DataSource(self.path, self.split)
    return self._ds

  def __len__(self) -> int:
    return len(self._open())

  def read(self, records) -> list:
    return self._open().read_many(records)


@dataclasses.dataclass
class SourceIndex:
  """Per example of one source (a binarized source: per binarized comparison): what planning needs."""
  seq_len: np.ndarray          # [E, max_k] tokens of each kept response's sequence; 0 = no response
  start: np.ndarray            # [E] the first response's first token (its context's length)
  same: np.ndarray             # [E] whether every response follows that same context (the comparison packs)
  record: np.ndarray | None    # [E] the store record (binarized sources; otherwise the example is the record)
  part: np.ndarray | None      # [E] which of the record's binarized comparisons
  cuts: np.ndarray | None      # [E, 3] responses dropped, contexts truncated, responses truncated (encode stats)
  cache: str | None = None     # the cache file these arrays are in

  def __len__(self) -> int:
    return len(self.seq_len)

  def __getstate__(self):
    # Workers load a cached index from its file rather than from a pickle of it the training process would build.
    if self.cache is None:
      return self.__dict__
    return {"cache": self.cache, "binarized": self.record is not None}

  def __setstate__(self, state):
    if "binarized" in state:
      state = dataclasses.asdict(_load_index(pathlib.Path(state["cache"]), state["binarized"]))
      state["cuts"] = None
    self.__dict__.update(state)


def _small(max_len: int):
  """The narrowest unsigned type that holds a sequence length: the index is mostly these."""
  return np.uint8 if max_len < 2**8 else np.uint16 if max_len < 2**16 else np.uint32


class _IndexChunk:
  """Encodes records [lo, hi) of a chunk and keeps their lengths (a grain map, run in worker processes)."""

  def __init__(self, reader: _Reader, binarize: bool, tok_json: dict, max_len: int, max_k: int, cut: str, lo: int,
               hi: int):
    self.reader, self.binarize, self.tok_json = reader, binarize, tok_json
    self.max_len, self.max_k, self.cut, self.lo, self.hi = max_len, max_k, cut, lo, hi

  @functools.cached_property
  def tok(self):
    return tokenizer_lib.from_json(self.tok_json)

  def __call__(self, chunk: int) -> dict[str, np.ndarray]:
    lo = self.lo + chunk * _CHUNK
    records = np.arange(lo, min(lo + _CHUNK, self.hi))
    rec, part, seq, start, same, cuts = [], [], [], [], [], []
    for r, c in zip(records, self.reader.read(records)):
      for p, ci in enumerate(binarize_lib.binarize(c) if self.binarize else [c]):
        st = pipeline.EncodeStats()
        ex = pipeline.encode_comparison(ci, self.tok, self.max_len, self.max_k, st, self.cut)
        cuts.append((st.responses_dropped, st.contexts_truncated, st.responses_truncated))
        row_s = np.zeros(self.max_k, np.int64)
        row_s[:len(ex.seqs)] = [len(s) for s in ex.seqs]
        rec.append(r)
        part.append(p)
        seq.append(row_s)
        start.append(ex.starts[0])
        same.append(packing.packable(ex))
    k, small = self.max_k, _small(self.max_len)
    return {"record": np.asarray(rec, np.uint32), "part": np.asarray(part, np.uint8),
            "seq_len": np.asarray(seq, small).reshape(-1, k), "start": np.asarray(start, small),
            "same": np.asarray(same, bool),
            "cuts": np.minimum(np.asarray(cuts, np.int64).reshape(-1, 3), 255).astype(np.uint8)}


def _cache_path(reader: _Reader, binarize: bool, tok_json: dict, max_len: int, max_k: int, cut: str) -> pathlib.Path:
  version = reader._open().version_dir
  info = (version / "dataset_info.json").read_bytes()
  # The per-response cut was the only one before data.context_cut: its indexes keep the names they had.
  key = json.dumps([INDEX_VERSION, tok_json, max_len, max_k, binarize, hashlib.sha256(info).hexdigest(),
                    version.name] + ([] if cut == "each" else [cut]), sort_keys=True)
  return pathlib.Path(reader.path) / "index" / f"{reader.split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _allgather_concat(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates each process's arrays in process order (a multi-process index pass)."""
  from jax.experimental import multihost_utils
  n = np.asarray([len(parts["record"])], np.int64)
  counts = np.asarray(multihost_utils.process_allgather(n)).reshape(-1)
  top = int(counts.max())
  out = {}
  for k, v in parts.items():
    pad = np.zeros((top - len(v), *v.shape[1:]), v.dtype)
    got = np.asarray(multihost_utils.process_allgather(np.concatenate([v, pad])))
    out[k] = np.concatenate([got[p, :counts[p]] for p in range(len(counts))])
  return out


def _all_processes(flag: bool, process_count: int) -> bool:
  if process_count == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([int(flag)]))).min())


def build_index(reader: _Reader, binarize: bool, tok, max_len: int, max_k: int, *, cut: str = "each",
                workers: int = 0, process_index: int = 0, process_count: int = 1, cache: bool = True) -> SourceIndex:
  """The length index of one source, from its cache file or one pass over the store (each process its share)."""
  tok_json = tok.to_json()
  path = _cache_path(reader, binarize, tok_json, max_len, max_k, cut)
  if _all_processes(cache and path.exists(), process_count):
    return _load_index(path, binarize)
  else:
    n = len(reader)
    lo, hi = process_index * n // process_count, (process_index + 1) * n // process_count
    task = _IndexChunk(reader, binarize, tok_json, max_len, max_k, cut, lo, hi)
    ds = grain.MapDataset.range(-(-(hi - lo) // _CHUNK)).map(task).to_iter_dataset(
        grain.ReadOptions(num_threads=0 if workers else 1, prefetch_buffer_size=2))
    if workers:
      ds = _mp_prefetch(ds, workers)
    chunks = list(ds)
    arrays = _IndexChunk(reader, binarize, tok_json, max_len, max_k, cut, lo, lo)(0)  # empty arrays, the right dtypes
    for k in arrays:
      arrays[k] = np.concatenate([arrays[k]] + [c.pop(k) for c in chunks])
    del chunks
    if process_count > 1:
      arrays = _allgather_concat(arrays)
    written = cache and process_index == 0 and _write_cache(path, arrays)
    # Other processes learn whether process 0 wrote the file, so all of them pickle the index the same way.
    cached = bool(written) if process_count == 1 else _any_process(bool(written))
  return SourceIndex(arrays["seq_len"], arrays["start"], arrays["same"], arrays["record"] if binarize else None,
                     arrays["part"] if binarize else None, arrays["cuts"], str(path) if cached else None)


def _any_process(flag: bool) -> bool:
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([int(flag)]))).max())


def _load_index(path: pathlib.Path, binarize: bool) -> SourceIndex:
  with np.load(path, allow_pickle=False) as z:
    a = {k: z[k] for k in z.files if binarize or k not in ("record", "part")}
  return SourceIndex(a["seq_len"], a["start"], a["same"], a.get("record"), a.get("part"), a["cuts"], str(path))


def _write_cache(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> bool:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(exist_ok=True)
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
    return True
  except OSError as e:
    tmp.unlink(missing_ok=True)
    print(f"hhh: note: length index not cached ({path.parent}: {e.strerror}); it is rebuilt on every run")
    return False


def piece_lengths(seq_len: np.ndarray, start: int, same: bool, row_len: int) -> list[int]:
  """`[len(p) for p in packing.pieces_of(ex, row_len)[0]]` from one example's lengths alone."""
  seq = seq_len[seq_len > 0].astype(np.int64)
  if not same:
    return seq.tolist()
  c = int(start)
  resp = (seq - c).tolist()
  if c + sum(resp) <= row_len:
    return [c + sum(resp)]
  out, filled = [c], False
  for r in resp:
    if filled and out[-1] + r > row_len:
      out.append(c)
      filled = False
    out[-1] += r
    filled = True
  return out


def pack_kinds(index: SourceIndex, row_len: int) -> np.ndarray:
  """0 packed, 1 split, 2 fallback per example (`packing.pieces_of`'s kinds), vectorized."""
  out = np.empty(len(index), np.uint8)
  for lo in range(0, len(index), 1 << 16):  # small slices: wide copies of the whole index would dwarf it
    seq = index.seq_len[lo:lo + (1 << 16)].astype(np.int32)
    c = index.start[lo:lo + (1 << 16)].astype(np.int32)
    total = c + np.where(seq > 0, seq - c[:, None], 0).sum(1)
    out[lo:lo + len(seq)] = np.where(~index.same[lo:lo + len(seq)], 2, np.where(total <= row_len, 0, 1))
  return out


class Examples:
  """The comparisons of a run's split as one indexed sequence, as `sources.load_comparisons` would list them,
  without holding them: example i is (source, element), an element a record or one of its binarized parts."""

  def __init__(self, readers: list[_Reader], binarize: list[bool], indexes: list[SourceIndex],
               segments: list[tuple[int, np.ndarray | None]], tok_json: dict, max_len: int, max_k: int,
               cut: str = "each"):
    self.readers, self.binarize, self.indexes = readers, binarize, indexes
    self.seg_source = np.asarray([j for j, _ in segments], np.int64)
    self.seg_order = [o for _, o in segments]
    sizes = [len(o) if o is not None else len(indexes[j]) for j, o in segments]
    self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    self.tok_json, self.max_len, self.max_k, self.cut = tok_json, max_len, max_k, cut
    total = np.zeros(3, np.int64)
    for j, o in zip(self.seg_source, self.seg_order):
      cuts = indexes[j].cuts
      total += (cuts[o] if o is not None else cuts).sum(0, dtype=np.int64)
    self._stats = pipeline.EncodeStats(len(self), *(int(x) for x in total))
    for ix in indexes:
      ix.cuts = None  # counted; not needed again

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getstate__(self):
    d = dict(self.__dict__)
    d.pop("tok", None)
    return d

  @functools.cached_property
  def tok(self):
    return tokenizer_lib.from_json(self.tok_json)

  def locate(self, i: int) -> tuple[int, int]:
    s = int(np.searchsorted(self.offsets, i, side="right")) - 1
    o = self.seg_order[s]
    e = i - int(self.offsets[s])
    return int(self.seg_source[s]), int(o[e]) if o is not None else e

  def _per_segment(self, values: Sequence[np.ndarray]) -> np.ndarray:
    parts = [values[j][o] if o is not None else values[j] for j, o in zip(self.seg_source, self.seg_order)]
    return np.concatenate(parts) if parts else np.zeros(0)

  def lengths(self) -> np.ndarray:
    """Each example's longest sequence (`Encoded.length`)."""
    return self._per_segment([ix.seq_len.max(1) for ix in self.indexes])

  def pieces(self, i: int, row_len: int) -> list[int]:
    j, e = self.locate(i)
    ix = self.indexes[j]
    return piece_lengths(ix.seq_len[e], ix.start[e], ix.same[e], row_len)

  def pack_summary(self, row_len: int) -> packing.PackStats:
    kinds = self._per_segment([pack_kinds(ix, row_len) for ix in self.indexes])
    n = [int(np.count_nonzero(kinds == v)) for v in range(3)]
    return packing.PackStats(comparisons=sum(n), packed=n[0], split=n[1], fallback=n[2])

  def stats(self) -> pipeline.EncodeStats:
    """Encoding counts as `encode_all` reports them over this list (a resampled example counted each time)."""
    return self._stats

  def encoded(self, ix: Sequence[int]) -> list[pipeline.Encoded]:
    """Reads and encodes examples `ix` (in that order): one batched store read per source."""
    where = [self.locate(int(i)) for i in ix]
    by_source: dict[int, list[int]] = {}
    for j, e in where:
      by_source.setdefault(j, []).append(e)
    comps = {}
    for j, es in by_source.items():
      index = self.indexes[j]
      recs = sorted({int(index.record[e]) if index.record is not None else e for e in es})
      got = dict(zip(recs, self.readers[j].read(recs)))
      for e in es:
        if index.record is None:
          comps[(j, e)] = got[e]
        else:
          comps[(j, e)] = binarize_lib.binarize(got[int(index.record[e])])[int(index.part[e])]
    return [pipeline.encode_comparison(comps[w], self.tok, self.max_len, self.max_k, cut=self.cut) for w in where]


def examples(spec: str, dcfg, split: str, seed: int, tok, *, workers: int = 0, process_index: int = 0,
             process_count: int = 1, cache: bool = True) -> Examples:
  """`sources.load_comparisons(spec, dcfg, split, seed)`, lazily: the same examples in the same order."""
  mix = sources.parse_mixture(spec)
  readers, flags, indexes = [], [], []
  for path, _, binarize in mix:
    reader = _Reader(path, split)
    has = split in store.splits_of(path)
    if not has and split == "train":
      reader._open()  # the in-memory path's one-line error: the dataset has no such split
    if not has:
      print(f"hhh: note: {path} has no {split} split; it is not evaluated")
    readers.append(reader)
    flags.append(binarize)
    if has:
      indexes.append(build_index(reader, binarize, tok, dcfg.max_len, dcfg.max_k, cut=dcfg.context_cut,
                                 workers=workers, process_index=process_index, process_count=process_count,
                                 cache=cache))
    else:
      indexes.append(SourceIndex(np.zeros((0, dcfg.max_k), np.uint16), np.zeros(0, np.uint16), np.zeros(0, bool),
                                 None, None, np.zeros((0, 3), np.uint8)))
  if len(mix) == 1 or split != "train":
    segments = [(j, None) for j in range(len(mix))]
  else:
    # sources.load_comparisons' weighted resampling, draw for draw.
    total_n, total_w = sum(len(ix) for ix in indexes), sum(w for _, w, _ in mix)
    rng = np.random.default_rng(seed)
    segments = []
    for j, ((_, w, _), ix) in enumerate(zip(mix, indexes)):
      if not len(ix) or not w:
        continue
      n = round(total_n * w / total_w)
      order = np.concatenate([rng.permutation(len(ix)) for _ in range(-(-n // len(ix)))])[:n]
      segments.append((j, order.astype(np.uint32)))
  return Examples(readers, flags, indexes, segments, tok.to_json(), dcfg.max_len, dcfg.max_k, dcfg.context_cut)


class _Plan:
  """`pipeline._BatchPlan` in flat arrays (4 bytes per example rather than a tuple per batch): the same batches."""

  def __init__(self, lengths, batch_size: int, buckets: Sequence[int], seed: int, shuffle: bool,
               epochs: int | None):
    """`lengths`: a function returning each example's length, called again where the plan is used (a grain
    worker), so what travels to a worker is not the per-example arrays."""
    self.lengths, self.batch_size, self.seed, self.shuffle, self.epochs = lengths, batch_size, seed, shuffle, epochs
    self.buckets = sorted(buckets)
    # Batches per epoch from bucket counts; the buckets' index arrays are built where batches are made (with
    # grain workers, not in the training process).
    self.per_epoch = sum(-(-n // batch_size) for n in self._counts().values())
    if self.per_epoch == 0:
      raise ValueError("no examples to batch")

  def _counts(self) -> dict[int, int]:
    lengths, buckets = np.asarray(self.lengths()), self.buckets
    if len(lengths) and int(lengths.max()) > buckets[-1]:
      raise ValueError(f"sequence of {int(lengths.max())} tokens exceeds the largest bucket {buckets[-1]}")
    return {b: sum(int(np.count_nonzero((lengths[at:at + _SLICE] > lo) & (lengths[at:at + _SLICE] <= b)))
                   for at in range(0, len(lengths), _SLICE)) for lo, b in zip([0, *buckets], buckets)}

  def __getstate__(self):
    d = dict(self.__dict__)
    d.pop("by_bucket", None)
    return d

  @functools.cached_property
  def by_bucket(self) -> dict[int, np.ndarray]:
    lengths, buckets = np.asarray(self.lengths()), self.buckets
    out = {}
    for lo, b in zip([0, *buckets], buckets):  # bucket_of: the smallest bucket that holds the length
      # In slices, so that no int64 array of every example is ever made.
      ix = np.concatenate([np.flatnonzero((lengths[at:at + _SLICE] > lo) & (lengths[at:at + _SLICE] <= b))
                           .astype(np.uint32) + np.uint32(at) for at in range(0, len(lengths), _SLICE)] +
                          [np.zeros(0, np.uint32)])
      if len(ix):
        out[b] = ix
    return out

  def __len__(self):
    return self.per_epoch * (self.epochs if self.epochs is not None else 1_000_000)

  @functools.lru_cache(maxsize=2)
  def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flat example order, each batch's start in it, its length, its bucket), batches in epoch order."""
    rng = np.random.default_rng([self.seed, epoch])
    flat, starts, sizes, Ls = [], [], [], []
    at = 0
    for L, ix in self.by_bucket.items():
      ix = rng.permutation(ix) if self.shuffle else ix
      flat.append(ix)
      first = np.arange(0, len(ix), self.batch_size, dtype=np.int64)
      starts.append(at + first)
      sizes.append(np.minimum(self.batch_size, len(ix) - first))
      Ls.append(np.full(len(first), L, np.int64))
      at += len(ix)
    starts, sizes, Ls = np.concatenate(starts), np.concatenate(sizes), np.concatenate(Ls)
    order = rng.permutation(len(starts)) if self.shuffle else np.arange(len(starts))
    return (flat[0] if len(flat) == 1 else np.concatenate(flat), starts[order], sizes[order], Ls[order])

  def __getitem__(self, i: int):
    flat, starts, sizes, Ls = self.epoch_plan(i // self.per_epoch)
    b = i % self.per_epoch
    return int(Ls[b]), flat[starts[b]:starts[b] + sizes[b]].astype(np.int64)


class StreamBatchSource:
  """`pipeline.BatchSource` / `packing.PackedBatchSource` over `Examples`: the same batches, each process reading
  and encoding only the comparisons of its own rows."""

  def __init__(self, examples: Examples, *, batch_size: int, max_k: int, buckets: Sequence[int], pad_id: int,
               seed: int = 0, process_index: int = 0, process_count: int = 1, packed: bool = False,
               row_len: int = 0, n_shards: int = 1, batch_tokens: int = 0, workers: int = 0):
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} must be divisible by the process count {process_count}")
    if packed and n_shards % process_count:
      raise ValueError(f"{n_shards} batch shards do not split over {process_count} processes")
    self.examples, self.batch_size, self.max_k = examples, batch_size, max_k
    self.buckets, self.pad_id, self.seed = tuple(sorted(buckets)), pad_id, seed
    self.process_index, self.process_count = process_index, process_count
    self.rows = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)
    self.packed, self.row_len, self.n_shards, self.workers = packed, row_len, n_shards, workers
    self.row_buckets = packing.row_buckets(self.buckets, row_len) if packed else None
    self.budget_rows = batch_tokens // row_len if packed and batch_tokens else None
    self.one_row = packed and packing.long_rows(self.buckets, row_len)

  def __len__(self) -> int:
    return len(self.examples)

  def _plan(self, shuffle: bool, epochs: int | None):
    if self.budget_rows is not None and shuffle:
      pieces = (self.examples.pieces(i, self.row_len) for i in range(len(self.examples)))
      return packing.TokenPlan(pieces, row_len=self.row_len, rows=self.budget_rows, max_comparisons=self.batch_size,
                               seed=self.seed, n_shards=self.n_shards)
    return _Plan(self.examples.lengths, self.batch_size, self.buckets, self.seed, shuffle, epochs)

  def _collate(self, item, rows=None, budget=False):
    L, ix = item
    slots = [int(i) if i >= 0 else None for i in ix] + [None] * (self.batch_size - len(ix))
    if not self.packed or rows == slice(None):
      mine = slots[self.rows if rows is None else rows]
      enc = iter(self.examples.encoded([i for i in mine if i is not None]))
      return pipeline.collate([next(enc) if i is not None else None for i in mine], L, self.max_k, self.pad_id)
    # The global batch's shape, from the index; then only this process's shards are read and laid out.
    fixed = self.budget_rows if budget else None
    R_s, row_L = packing.packed_shape([self.examples.pieces(i, self.row_len) if i is not None else [] for i in slots],
                                      buckets=self.row_buckets, n_shards=self.n_shards, rows=fixed,
                                      one_row=self.one_row)
    per_proc = self.n_shards // self.process_count
    mine = slots[self.rows]
    enc = iter(self.examples.encoded([i for i in mine if i is not None]))
    batch = packing.collate_rows([next(enc) if i is not None else None for i in mine], K=self.max_k,
                                 pad_id=self.pad_id, buckets=self.row_buckets, n_shards=per_proc,
                                 rows=R_s * per_proc, row_len=row_L)
    # reward_index is flat over the global batch's rows: shift it past the rows of the processes before this one.
    shift = self.process_index * per_proc * R_s * row_L
    batch["reward_index"] = np.where(batch["lengths"] > 0, batch["reward_index"] + shift, 0).astype(np.int32)
    return batch

  def local_rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's part of a global (held-out) batch."""
    return {k: v[self.rows] for k, v in batch.items()}

  def dataset(self, *, shuffle: bool, epochs: int | None, rows: slice | None = None) -> grain.MapDataset:
    budget = self.budget_rows is not None and shuffle
    return grain.MapDataset.source(self._plan(shuffle, epochs)).map(
        functools.partial(self._collate, rows=rows, budget=budget))

  def train_iter(self) -> grain.DatasetIterator:
    """Endless shuffled local batches; checkpointable (grain's state: the next batch index, per worker)."""
    ds = self.dataset(shuffle=True, epochs=None).to_iter_dataset(
        grain.ReadOptions(num_threads=0 if self.workers else 1, prefetch_buffer_size=4))
    if self.workers:
      ds = _mp_prefetch(ds, self.workers, buffer=2)
    return iter(ds)

  def eval_batches(self):
    """One ordered pass of GLOBAL batches (every row, read by every process), as `BatchSource.eval_batches`."""
    ds = self.dataset(shuffle=False, epochs=1, rows=slice(None))
    return (ds[i] for i in range(len(ds)))
