"""Comparison datasets on disk: TFDS ArrayRecord (built and read without TensorFlow), plus JSONL/parquet/HF readers.

A mined or loaded dataset directory looks like:

    DIR/summary.json                     counts: read, kept per split, skipped by reason (+ first offsets)
    DIR/tfds/comparisons/<version>/      the TFDS dataset: train / validation / test ArrayRecord shards

Writing streams: comparisons go to per-split JSONL staging files first (constant
memory), then TFDS builds the ArrayRecord shards from them, then staging is removed.
All of it happens in ".DIR.building-PID" beside DIR, renamed to DIR only when finished.
"""

from __future__ import annotations

import collections
import functools
import glob
import json
import math
import os
import pathlib
import shutil
import threading
import time
from typing import Iterable, Iterator

import numpy as np

from hhh import outdir
from hhh.data.mine.common import SPLITS, MineStats, split_of
from hhh.data.schema import Comparison, read_jsonl

VERSION = "1.1.0"  # 1.1.0 added `meta` (a JSON object per record); 1.0.0 datasets still read.
_NAME = "comparisons"


class NothingMined(RuntimeError):
  """A run that produced no comparisons: the CLI exits non-zero with the reason."""


@functools.lru_cache(maxsize=None)
def _builder_cls():
  # TFDS registers a builder class by name when it is defined: define it once per process.
  import tensorflow_datasets as tfds

  class Comparisons(tfds.core.GeneratorBasedBuilder):
    """The hhh comparison schema as a TFDS dataset."""
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "hhh comparison schema: id, source, context, responses, scores.",
                     "1.1.0": "adds meta: a JSON object of per-record facts (e.g. a source's own split)."}

    def __init__(self, *, staging: pathlib.Path | None = None, description: str = "", **kwargs):
      self._staging, self._description = staging, description
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=self._description,
          features=tfds.features.FeaturesDict({
              "id": tfds.features.Text(), "source": tfds.features.Text(), "context": tfds.features.Text(),
              "responses": tfds.features.Sequence(tfds.features.Text()),
              "scores": tfds.features.Sequence(np.float32), "meta": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in SPLITS if (self._staging / f"{s}.jsonl").exists()}

    def _generate_examples(self, split):
      with open(self._staging / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
          d = json.loads(line)
          d["meta"] = json.dumps(d.get("meta") or {}, ensure_ascii=False, sort_keys=True)
          yield d["id"], d

  Comparisons.name = _NAME
  return Comparisons


def write_dataset(out_dir, keyed: Iterable[tuple], stats: MineStats, *,
                  description: str = "", extra_summary: dict | None = None) -> dict:
  """Writes the TFDS dataset and summary.json from (key, comparison) or (key, comparison, split) items.

  The split is a hash of the grouping key unless the item names one (a source that ships its own splits).
  The dataset is built in a staging folder beside `out_dir` (".NAME.building-PID") and renamed into place only
  once it is complete, so a run that fails or is killed leaves an existing dataset at `out_dir` as it was.
  """
  out = pathlib.Path(out_dir)
  check_replaceable(out)
  _remove_stale_builds(out)
  build = _build_dir(out, os.getpid())
  shutil.rmtree(build, ignore_errors=True)
  build.mkdir(parents=True)
  try:
    summary = _write(build, keyed, stats, description, extra_summary or {})
    _swap_in(build, out)
  except BaseException:
    shutil.rmtree(build, ignore_errors=True)
    raise
  return summary


def _build_dir(out: pathlib.Path, pid: int) -> pathlib.Path:
  return out.parent / f".{out.name}.building-{pid}"


def check_replaceable(out: pathlib.Path) -> None:
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} is a file, not a dataset directory")
  if out.is_dir() and any(out.iterdir()) and not ((out / "summary.json").exists() or is_dataset_dir(out)):
    raise ValueError(f"--out {out} holds files that are not an hhh dataset; not replacing them")


def _remove_stale_builds(out: pathlib.Path) -> None:
  """Staging folders of runs into the same --out that were killed (their process is gone)."""
  if not out.parent.is_dir():
    return
  for p in out.parent.glob(f".{glob.escape(out.name)}.building-*"):
    pid = p.name.rsplit("-", 1)[-1]
    if pid.isdigit() and not outdir.alive(int(pid)):
      shutil.rmtree(p, ignore_errors=True)


def _swap_in(build: pathlib.Path, out: pathlib.Path) -> None:
  """Renames the finished build to `out`; an old dataset there is moved aside first and removed after."""
  if not out.exists():
    os.rename(build, out)
    return
  old = out.parent / f".{out.name}.old-{os.getpid()}"
  shutil.rmtree(old, ignore_errors=True)
  os.rename(out, old)
  os.rename(build, out)
  shutil.rmtree(old, ignore_errors=True)


def _pause_after() -> int:
  """HHH_DATA_PAUSE_AFTER=N: stop for good after N records (tests kill a run mid-build at a known point)."""
  value = os.environ.get("HHH_DATA_PAUSE_AFTER", "")
  return int(value) if value.isdigit() else 0


def _write(out: pathlib.Path, keyed: Iterable[tuple], stats: MineStats, description: str,
           extra_summary: dict) -> dict:
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  staging = out / "_staging"
  staging.mkdir(parents=True)
  files = {s: open(staging / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
  kept = collections.Counter()
  seen: set[str] = set()
  hist = {s: collections.Counter() for s in SPLITS}
  k_hist = collections.Counter()
  pause = _pause_after()
  try:
    for n, item in enumerate(keyed, 1):
      if n == pause:
        for f in files.values():
          f.flush()
        (out / "paused").write_text(f"{n}\n")
        while True:
          time.sleep(60)
      key, c = item[0], item[1]
      split = item[2] if len(item) > 2 and item[2] else split_of(key)
      if split not in SPLITS:
        raise ValueError(f"{c.id}: split {split!r} is not one of {', '.join(SPLITS)}")
      if c.id in seen:
        stats.skip("duplicate_id", c.id)
        continue
      if len(set(c.scores)) < 2:
        # Sources drop these themselves; this keeps any that slip through (a new source, a bug) out of the store.
        stats.skip("all_tied", c.id)
        continue
      seen.add(c.id)
      files[split].write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
      kept[split] += 1
      k_hist[c.k] += 1
      for s in c.scores:
        hist[split][_bin(s)] += 1
  finally:
    for f in files.values():
      f.close()
  for s in SPLITS:
    if not kept[s]:
      (staging / f"{s}.jsonl").unlink()
  summary = {**stats.to_json(), "kept": {s: kept[s] for s in SPLITS}, "total_kept": sum(kept.values()),
             "responses_per_comparison": {str(k): n for k, n in sorted(k_hist.items())},
             "score_histogram": {s: {str(b): n for b, n in sorted(h.items())} for s, h in hist.items()},
             "format": "tfds/array_record", "version": VERSION, **extra_summary}
  if not summary["total_kept"]:
    reasons = ", ".join(f"{r}: {n}" for r, n in stats.skipped.most_common(5)) or "no skips recorded"
    raise NothingMined(f"no comparisons mined from {stats.records_read} records read ({reasons})")
  data_dir = out / "tfds"
  builder = _builder_cls()(staging=staging, description=description, data_dir=str(data_dir),
                           file_format="array_record")
  builder.download_and_prepare()
  shutil.rmtree(staging, ignore_errors=True)
  shutil.rmtree(data_dir / "downloads", ignore_errors=True)
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def _bin(score: float) -> float:
  """Histogram bin: integer scores as themselves, others to one decimal."""
  return float(score) if float(score).is_integer() else round(float(score), 1)


def _tfds_dir(path: pathlib.Path) -> pathlib.Path:
  d = path / "tfds" / _NAME
  if not d.is_dir():
    raise FileNotFoundError(no_dataset_message(path))
  versions = sorted((v for v in d.iterdir() if (v / "dataset_info.json").exists()),
                    key=lambda v: tuple(int(x) for x in v.name.split(".")))
  if not versions:
    raise FileNotFoundError(f"{d} holds no finished dataset version")
  return versions[-1]


class DataSource:
  """Random access to one split of a stored dataset, decoded into `Comparison`s (a grain-compatible source)."""

  def __init__(self, path, split: str):
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(str(_tfds_dir(pathlib.Path(path))))
    if split not in builder.info.splits:
      raise ValueError(f"{path} has no split {split!r} (has: {', '.join(builder.info.splits)})")
    self._src = builder.as_data_source(split=split)
    self.info = builder.info
    self._split = split
    self._shards = None
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int) -> Comparison:
    return from_tfds(self._src[i])

  def read_many(self, indices) -> list[Comparison]:
    """Records at `indices`, in that order: the shards' ArrayRecord readers called directly and the tf.Example
    protos parsed without TFDS's per-feature decoding, about 10x faster than `self[i]` (training reads a batch
    at a time)."""
    from array_record.python import array_record_module
    indices = [int(i) for i in indices]
    with self._lock:
      if self._shards is None:
        sp = self.info.splits[self._split]
        # No readahead: a training batch reads scattered records.
        self._shards = ([array_record_module.ArrayRecordReader(str(f), "readahead_buffer_size:0")
                         for f in sp.filepaths], np.cumsum([0, *sp.shard_lengths]))
      readers, starts = self._shards
      shard = np.searchsorted(starts, indices, side="right") - 1
      out: list = [None] * len(indices)
      for j, (s, i) in enumerate(zip(shard, indices)):
        # A one-record range read: the reader's read(list) costs time in proportion to the shard's record count
        # (28 ms for any 16 of 2.5M records), a range read does not (0.1 ms a record).
        pos = i - int(starts[s])
        out[j] = _from_example_bytes(readers[s].read(pos, pos + 1)[0])
    return out

  @property
  def version_dir(self) -> pathlib.Path:
    return pathlib.Path(self.info.data_dir)

  def __iter__(self) -> Iterator[Comparison]:
    return (self[i] for i in range(len(self)))


def _from_example_bytes(b: bytes) -> Comparison:
  """`from_tfds` of one stored record's serialized tf.Example, read straight from the proto."""
  from tensorflow_datasets.core.example_parser import tf_example_pb2
  f = tf_example_pb2.Example.FromString(b).features.feature
  text = lambda key: f[key].bytes_list.value[0].decode("utf-8") if f[key].bytes_list.value else ""
  return Comparison(context=text("context"),
                    responses=tuple(x.decode("utf-8") for x in f["responses"].bytes_list.value),
                    scores=tuple(float(x) for x in f["scores"].float_list.value), source=text("source"),
                    id=text("id"), meta=json.loads(text("meta") or "{}") if "meta" in f else {})


def from_tfds(d: dict) -> Comparison:
  text = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)
  return Comparison(context=text(d["context"]), responses=tuple(text(r) for r in d["responses"]),
                    scores=tuple(float(s) for s in d["scores"]), source=text(d["source"]), id=text(d["id"]),
                    meta=json.loads(text(d["meta"]) or "{}") if "meta" in d else {})


def read_summary(path) -> dict:
  path = pathlib.Path(path)
  p = path / "summary.json"
  if not p.exists():
    raise FileNotFoundError(no_dataset_message(path))
  return json.loads(p.read_text())


def no_dataset_message(path: pathlib.Path) -> str:
  """One line on why `path` is not a finished dataset (missing, empty, or a build that never finished)."""
  builds = sorted(path.parent.glob(f".{glob.escape(path.name)}.building-*")) if path.parent.is_dir() else []
  if builds:
    return (f"{path} holds no finished hhh dataset: a build into it did not finish ({builds[-1].name} is "
            "its staging folder; rerun the command to build it)")
  if not path.exists():
    return f"{path} holds no finished hhh dataset: no such directory"
  return f"{path} holds no finished hhh dataset (no summary.json)"


def splits_of(path) -> list[str]:
  import tensorflow_datasets as tfds
  return list(tfds.builder_from_directory(str(_tfds_dir(pathlib.Path(path)))).info.splits)


def is_dataset_dir(path) -> bool:
  return (pathlib.Path(path) / "tfds" / _NAME).is_dir()


def load(spec: str, split: str = "train") -> list[Comparison]:
  """Comparisons from a dataset directory, a .jsonl file, a local .parquet, or `hf:NAME` (HF hub, online only)."""
  path = pathlib.Path(spec)
  if is_dataset_dir(path):
    return list(DataSource(path, split))
  if path.suffix == ".jsonl" and path.is_file():
    return read_jsonl(path, parse=lambda row, lineno: row_to_comparison(row, lineno, str(path)))
  if path.suffix == ".parquet" or spec.startswith("hf:"):
    return list(from_hf(spec, split))
  raise FileNotFoundError(f"{spec}: not an hhh dataset directory, .jsonl, .parquet or hf:NAME")


def row_to_comparison(row: dict, i: int, name: str) -> Comparison:
  """One HF row in our schema, SHP's (stanfordnlp/SHP) or H4's (HuggingFaceH4/stack-exchange-preferences)."""
  if "responses" in row:
    return Comparison(context=row["context"], responses=tuple(row["responses"]),
                      scores=tuple(float(s) for s in row["scores"]), source=row.get("source") or name,
                      id=str(row.get("id") or f"{name}#{i}"))
  if "human_ref_A" in row:  # SHP: labels == 1 when A is preferred
    a_wins = float(row["labels"] == 1)
    return Comparison(context=row["history"], responses=(row["human_ref_A"], row["human_ref_B"]),
                      scores=(a_wins, 1.0 - a_wins), source="shp",
                      id=f"shp/{row.get('post_id', i)}/{row.get('c_root_id_A', '')}/{row.get('c_root_id_B', '')}")
  if "answers" in row and "question" in row:  # H4 stack-exchange-preferences: pm_score follows the paper's recipe
    answers = sorted(row["answers"], key=lambda a: -float(a["pm_score"]))
    return Comparison(context=row["question"], responses=tuple(a["text"] for a in answers),
                      scores=tuple(float(a["pm_score"]) for a in answers), source="stackexchange",
                      id=f"h4-stackexchange/{row.get('qid', i)}")
  raise ValueError(f"{name}: row {i} has neither our fields (context/responses/scores), SHP's nor H4's "
                   f"(columns: {', '.join(sorted(row))})")


def from_hf(spec: str, split: str = "train") -> Iterator[Comparison]:
  """Reads comparisons through HF `datasets`: a local parquet/jsonl file or a hub name (`hf:NAME`, online only).

  Rows may be in our schema (context, responses, scores, id, source), SHP's, or H4 stack-exchange-preferences'.
  """
  import datasets
  if spec.startswith("hf:"):
    ds = datasets.load_dataset(spec[3:], split=split)
  else:
    kind = "parquet" if spec.endswith(".parquet") else "json"
    ds = datasets.load_dataset(kind, data_files={split: spec}, split=split)
  for i, row in enumerate(ds):
    yield row_to_comparison(row, i, spec)


def score_histogram_text(hist: dict[str, int], width: int = 40) -> str:
  if not hist:
    return "  (empty)"
  top = max(hist.values())
  return "\n".join(f"  {b:>8} {n:>8}  {'#' * max(1, math.ceil(width * n / top))}" for b, n in hist.items())
