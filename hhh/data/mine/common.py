"""What every miner and loader shares: skip accounting, splits by id hash, compressed-input opening, and one
streaming reader of JSON lines with a cap on line length.

Lines. `lines` reads a stream in 1 MiB chunks and never holds more than MAX_LINE_BYTES of one line: a longer
line is dropped while scanning on to its end and comes out as None, so a dump that is one endless line (a
65 KB .zst of zeros decompresses to gigabytes with no newline) costs constant memory. `json_lines` builds on it:
every miner and loader of JSON lines reads through it and counts such a line as "oversize_line"."""

from __future__ import annotations

import bz2
import collections
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import pathlib
import queue
import stat
import threading
import zlib
from typing import IO, Any, Iterator

SPLITS = ("train", "validation", "test")
# The longest line a miner or loader reads; longer ones are skipped ("oversize_line") without being held. Real
# records are far shorter (a Pushshift comment is under 50 KB, an HH-RLHF line under 100 KB, an APPS problem
# with its tests a few MB).
MAX_LINE_BYTES = 64 << 20
_CHUNK = 1 << 20


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
  """Opens a possibly compressed regular file as a binary stream (.gz, .bz2, .xz, .lzma, .zst, plain, or the first
  file of a .7z); ValueError for anything else (a FIFO, a device, a directory)."""
  path = pathlib.Path(path)
  # Opening a FIFO blocks and a device never ends: only regular files are read (symlinks to them are fine).
  mode = os.stat(path).st_mode
  if not stat.S_ISREG(mode):
    from hhh.safeio import kind
    raise ValueError(f"{path}: is {kind(mode)}, not a regular file")
  suffix = path.suffix.lower()
  if suffix == ".gz":
    return gzip.open(path, "rb")
  if suffix == ".bz2":
    return bz2.open(path, "rb")
  if suffix in (".xz", ".lzma"):
    return lzma.open(path, "rb")
  if suffix == ".7z":
    # The archive's first file, streamed (a reader thread pulls from py7zr): never extracted whole.
    return io.BufferedReader(SevenZipStream(path), buffer_size=1 << 20)
  if suffix == ".zst":
    import zstandard
    # Pushshift dumps use a long window; the default limit refuses them.
    reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(open(path, "rb"), read_size=1 << 20)
    return io.BufferedReader(reader, buffer_size=1 << 20)
  return open(path, "rb")


class SevenZipStream(io.RawIOBase):
  """The first file in a .7z archive as a readable stream.

  py7zr only pushes data into writers, so a thread runs the extraction into a bounded
  queue and this reader pulls from it. Memory stays at a few chunks, and the member is
  never fully decompressed into memory or onto disk.
  """

  _END = object()

  def __init__(self, path: pathlib.Path):
    try:  # optional: only .7z input needs it
      import py7zr
      import py7zr.io
    except ImportError as e:
      raise ImportError("reading .7z files needs py7zr (pip install py7zr)") from e

    self._queue: queue.Queue = queue.Queue(maxsize=16)
    self._stop = threading.Event()
    self._buf = memoryview(b"")
    self._error: BaseException | None = None
    self._done = False
    stop, q = self._stop, self._queue

    class _Cancelled(Exception):
      pass

    class Writer(py7zr.io.Py7zIO):
      def write(self, s) -> int:
        data = bytes(s)
        while not stop.is_set():
          try:
            q.put(data, timeout=0.1)
            return len(data)
          except queue.Full:
            pass
        raise _Cancelled()

      def read(self, size=None) -> bytes:
        return b""

      def seek(self, offset, whence=0) -> int:
        return 0

      def flush(self) -> None:
        pass

      def size(self) -> int:
        return 0

    class Factory(py7zr.io.WriterFactory):
      def create(self, filename):
        return Writer()

    def run():
      try:
        with py7zr.SevenZipFile(path, "r") as archive:
          names = [i.filename for i in archive.list() if not i.is_directory]
          if names:
            archive.extract(targets=[names[0]], factory=Factory())
      except _Cancelled:
        pass
      except BaseException as e:  # handed to the reading thread, which reports it as corrupt input
        self._error = e
      finally:
        while not stop.is_set():
          try:
            q.put(self._END, timeout=0.1)
            break
          except queue.Full:
            pass

    self._thread = threading.Thread(target=run, name=f"7z:{path.name}", daemon=True)
    self._thread.start()

  def readable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    while not len(self._buf):
      if self._done:
        return 0
      item = self._queue.get()
      if item is self._END:
        self._done = True
        if self._error is not None:
          raise OSError(f"7z extraction failed: {self._error}")
        return 0
      self._buf = memoryview(item)
    n = min(len(b), len(self._buf))
    b[:n] = self._buf[:n]
    self._buf = self._buf[n:]
    return n

  def close(self) -> None:
    if not self.closed:
      self._stop.set()
      # Drain so a writer blocked on a full queue sees the stop flag.
      while self._thread.is_alive():
        try:
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread.join()
    super().close()


def not_utf8(data: bytes) -> bool:
  """True when a raw slice of a dump does not decode as UTF-8 (skipped as `bad_encoding`)."""
  try:
    data.decode("utf-8")
  except UnicodeDecodeError:
    return True
  return False


def decompress_errors() -> tuple[type[BaseException], ...]:
  """What reading a broken compressed stream raises (gzip's zlib.error and zstandard's ZstdError are not OSErrors)."""
  errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error)
  try:
    import zstandard
    errors += (zstandard.ZstdError,)
  except ImportError:
    pass
  return errors


def lines(stream: IO[bytes], max_bytes: int | None = None) -> Iterator[bytes | None]:
  """Each line of a binary stream without its "\\n", or None for one longer than `max_bytes` (default
  MAX_LINE_BYTES), which is dropped while scanning on to its end. Holds at most max_bytes + 1 MiB at a time."""
  cap = MAX_LINE_BYTES if max_bytes is None else max_bytes
  buf = bytearray()
  skipping = False  # inside an over-long line: drop bytes up to its newline
  while True:
    chunk = stream.read(_CHUNK)
    if not chunk:
      break
    start = 0
    while True:
      nl = chunk.find(b"\n", start)
      if nl < 0:
        break
      if skipping:
        skipping = False
        yield None
      elif len(buf) + nl - start > cap:
        del buf[:]
        yield None
      elif buf:
        buf += chunk[start:nl]
        line = bytes(buf)
        del buf[:]
        yield line
      else:
        yield chunk[start:nl]
      start = nl + 1
    if not skipping:
      buf += chunk[start:]
      if len(buf) > cap:
        del buf[:]
        skipping = True
  if skipping:
    yield None
  elif buf:
    yield bytes(buf)


class _BadLine(ValueError):
  """A strict reader's one-line error about one line."""


# json.loads less its per-call Python layers (see json_lines).
_scan_once = json.JSONDecoder().scan_once


def json_lines(file, stats: MineStats | None, *, prefix: str = "", count: bool = True, limit: int = 0,
               max_bytes: int | None = None) -> Iterator[tuple[dict[str, Any], str, int]]:
  """(object, "file:line", line) for each JSON-object line of a possibly compressed file; blank lines are ignored.

  With `stats`, every non-blank line counts as a record read (unless `count` is off), and bad lines are counted
  skips, named with `prefix`: "oversize_line" (over `max_bytes`, default MAX_LINE_BYTES), "bad_encoding",
  "invalid_json", "not_object", and "corrupt_file" for a broken compressed stream, keeping what came before. With
  a `limit`, reading stops once stats.records_read reaches it. Without stats (strict readers for evaluation), a
  bad line raises ValueError naming the file and line.
  """
  line = 0
  name = f"{file}"  # formatted once, not per line
  stream = open_binary(file)  # a path that is not a regular file is the caller's error, not a skip
  try:
    with stream as f:
      for raw in lines(f, max_bytes):
        line += 1
        if raw is not None and not raw.strip():
          continue
        where = f"{name}:{line}"
        if stats is not None:
          if limit and stats.records_read >= limit:
            return
          if count:
            stats.records_read += 1
        reason, obj = "", None
        if raw is None:
          reason = "oversize_line"
        else:
          try:
            text = raw.decode("utf-8")
            # json.loads skips leading whitespace, scans one value, then refuses anything but whitespace after it:
            # a value that starts at 0 and ends at len(text) is exactly what it returns. For anything else (spaces
            # around, a BOM, an error) json.loads itself decides, so a bad line raises what it always raised.
            try:
              obj, end = _scan_once(text, 0)
            except (StopIteration, ValueError, RecursionError):
              end = -1
            if end != len(text):
              obj = json.loads(text)
            reason = "" if isinstance(obj, dict) else "not_object"
          except UnicodeDecodeError:
            reason = "bad_encoding"
          except (ValueError, RecursionError):
            reason = "invalid_json"
        if reason:
          if stats is None:
            cap = MAX_LINE_BYTES if max_bytes is None else max_bytes
            raise _BadLine(f"{where}: " + (f"line longer than {cap} bytes" if raw is None
                                             else reason.replace("_", " ")))
          stats.skip(prefix + reason, where)
          continue
        yield obj, where, line
  except _BadLine:
    raise
  except decompress_errors() + (ValueError,) as e:  # zstandard raises ValueError for some broken frames too
    if stats is None:
      raise ValueError(f"{file}:{line + 1}: unreadable ({' '.join(str(e).split())[:200]})") from None
    stats.skip(prefix + "corrupt_file", f"{file}:{line + 1}")
