"""Reading files from a user's directory (HF model directories, bundles, GGUF files) without trusting them.

Every file is checked before it is read: it must be a regular file (after symlinks, unless `follow_symlinks` is
off) of at most a given size. A symlink to /dev/zero would otherwise be read forever and a FIFO would block the
open, so files are opened with O_NONBLOCK and checked with fstat on the open descriptor (no race with a swap of
the path), and never read past their limit even if they grow. Each problem is a one-line ValueError naming the
file; a missing file stays FileNotFoundError.

Writing, the other way round: `write_text_atomic` and `write_json_atomic` write a file whole or not at all.

Limits (bytes):
    MAX_CONFIG_BYTES      16 MiB   config.json, tokenizer_config.json, generation_config.json, chat_template.jinja
    MAX_TOKENIZER_BYTES   64 MiB   tokenizer.json, bundle.json (which carries the tokenizer)
    MAX_WEIGHTS_BYTES     1 TiB    one *.safetensors shard or .gguf file (read in place, tensor by tensor)
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

MAX_CONFIG_BYTES = 16 << 20
# SmolLM2's tokenizer.json is ~2 MB, Llama 3's ~9 MB; a bundle.json carries one.
MAX_TOKENIZER_BYTES = 64 << 20
MAX_WEIGHTS_BYTES = 1 << 40


def kind(mode: int) -> str:
  """What a non-regular file is, in words."""
  for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                     (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
    if test(mode):
      return name
  return "not a regular file"


def open_regular(path, limit: int, *, follow_symlinks: bool = True) -> tuple[int, int]:
  """(file descriptor, size) of `path` opened for reading, once it is known to be a regular file of at most
  `limit` bytes; the caller closes the descriptor. ValueError (one line, naming the file) otherwise."""
  flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
  if not follow_symlinks:
    flags |= getattr(os, "O_NOFOLLOW", 0)
  try:
    fd = os.open(path, flags)
  except FileNotFoundError:
    raise
  except OSError as e:
    if e.errno == errno.ELOOP and not follow_symlinks:
      raise ValueError(f"{path}: is a symlink; it must be a regular file") from None
    if e.errno == errno.EISDIR:
      raise ValueError(f"{path}: is a directory, not a regular file") from None
    raise ValueError(f"{path}: cannot be opened: {e.strerror}") from None
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise ValueError(f"{path}: is {kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
      raise ValueError(f"{path}: is {st.st_size} bytes, over the limit of {limit}")
  except BaseException:
    os.close(fd)
    raise
  return fd, st.st_size


def read_bytes(path, limit: int, *, follow_symlinks: bool = True) -> bytes:
  """The bytes of the regular file `path` of at most `limit` bytes (see `open_regular`)."""
  fd, _ = open_regular(path, limit, follow_symlinks=follow_symlinks)
  try:
    chunks, n = [], 0
    while n <= limit:  # the size can change after fstat; never read more than the limit allows
      chunk = os.read(fd, min(1 << 20, limit + 1 - n))
      if not chunk:
        break
      chunks.append(chunk)
      n += len(chunk)
    if n > limit:
      raise ValueError(f"{path}: grew past the limit of {limit} bytes while being read")
    return b"".join(chunks)
  finally:
    os.close(fd)


def read_text(path, limit: int, *, follow_symlinks: bool = True) -> str:
  try:
    return read_bytes(path, limit, follow_symlinks=follow_symlinks).decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def parse_json(text: str | bytes, where) -> Any:
  """json.loads with every failure (syntax, encoding, nesting too deep for the parser) as one ValueError."""
  try:
    return json.loads(text)
  except RecursionError:
    raise ValueError(f"{where}: not valid JSON: nested too deeply") from None
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise ValueError(f"{where}: not valid JSON: {' '.join(str(e).split())[:200]}") from None


def read_json(path, limit: int = MAX_CONFIG_BYTES, *, follow_symlinks: bool = True, object_only: bool = True) -> Any:
  """The parsed JSON of a regular file of at most `limit` bytes; with `object_only`, it must be an object."""
  data = parse_json(read_bytes(path, limit, follow_symlinks=follow_symlinks), path)
  if object_only and not isinstance(data, dict):
    raise ValueError(f"{path}: must hold a JSON object, not {type(data).__name__ if data is not None else 'null'}")
  return data


def write_text_atomic(path, text: str) -> None:
  """Write-then-rename: a reader (or a relaunch after SIGKILL) sees the whole file or none of it."""
  path = os.fspath(path)
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path, obj, *, indent: int | None = 2, **dumps_kw) -> None:
  """`obj` as JSON (one trailing newline), written as `write_text_atomic` writes."""
  write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kw) + "\n")
