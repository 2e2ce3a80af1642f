"""What every miner shares: skip accounting, splits by id hash, and compressed-input opening."""

from __future__ import annotations

import bz2
import collections
import dataclasses
import gzip
import hashlib
import io
import lzma
import pathlib
from typing import IO

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class MineStats:
  """Counts of what a miner read, kept and skipped (by reason, with the first few offsets of each)."""
  source: str
  records_read: int = 0
  comparisons: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first_offsets: dict = dataclasses.field(default_factory=dict)
  max_offsets: int = 5
  # Facts about the run that are not skips (e.g. where a miner's scores came from); summary.json "notes".
  notes: dict = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, where: str | int | None = None, n: int = 1):
    """Counts `n` skipped records for `reason`; `where` is a line number, byte offset or id for the report."""
    self.skipped[reason] += n
    if where is not None:
      seen = self.first_offsets.setdefault(reason, [])
      if len(seen) < self.max_offsets:
        seen.append(where)

  def to_json(self) -> dict:
    return {"source": self.source, "records_read": self.records_read, "comparisons": self.comparisons,
            "skipped": dict(sorted(self.skipped.items())),
            "first_skipped_at": {k: v for k, v in sorted(self.first_offsets.items())},
            **({"notes": self.notes} if self.notes else {})}


def split_of(key: str, fractions=(0.9, 0.05, 0.05)) -> str:
  """A stable split from a hash of the grouping key (e.g. the question id), so a group never straddles splits."""
  h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
  acc = 0.0
  for name, frac in zip(SPLITS, fractions):
    acc += frac
    if h < acc:
      return name
  return SPLITS[-1]


def open_binary(path) -> IO[bytes]:
  """Opens a possibly compressed file as a binary stream (.gz, .bz2, .xz, .lzma, .zst, .7z, plain)."""
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix == ".gz":
    return gzip.open(path, "rb")
  if suffix == ".bz2":
    return bz2.open(path, "rb")
  if suffix in (".xz", ".lzma"):
    return lzma.open(path, "rb")
  if suffix == ".zst":
    import zstandard
    # Pushshift dumps use a long window; the default limit refuses them.
    reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(open(path, "rb"), read_size=1 << 20)
    return io.BufferedReader(reader, buffer_size=1 << 20)
  return open(path, "rb")


def not_utf8(data: bytes) -> bool:
  """True when a raw slice of a dump does not decode as UTF-8 (skipped as `bad_encoding`)."""
  try:
    data.decode("utf-8")
  except UnicodeDecodeError:
    return True
  return False
