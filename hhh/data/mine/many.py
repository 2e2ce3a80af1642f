"""Many dump files -> one dataset: each input mined on its own (a process pool or Ray), then merged in input order.

`hhh data mine SOURCE PATH` takes one dump or a folder of them:
  stackexchange  a site folder (Posts.xml, Votes.xml), a site's .7z, a Posts.xml, or a folder of site folders and
                 .7z archives (a `*-Votes.7z` beside its `*-Posts.7z` belongs to it and is not an input itself);
  reddit         a comments file (RC_*.zst, ndjson, ...) or a folder of them (RS_* submissions are not inputs);
  wikipedia      a history file (.xml, .bz2, .7z, ...) or a folder of them.
Inputs are taken in sorted name order, and the dataset holds their comparisons in that order, so it is the same
for any number of workers and equals what one process reading the inputs one after another would write.

Each input is mined into a part file in a work folder beside --out (".OUT.mine"): the input's comparisons as JSON
lines, then a done marker holding its counts, each renamed into place only once complete. A mine that is killed
and started again with the same inputs and options keeps the done parts and mines the rest; once the dataset is
written the work folder is removed. The work folder is locked while a mine uses it, so two mines into one --out
do not mix their parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Iterator

from hhh.data.mine.common import MineStats
from hhh.safeio import write_json_atomic
from hhh.data.schema import Comparison

SOURCES = ("stackexchange", "reddit", "wikipedia")
_PLAN = "plan.json"
_LOCK = ".lock"
_PART_RE = re.compile(r"\d{6}\.(jsonl|done\.json)(\.tmp-\d+)?")


def inputs(source: str, path) -> list[pathlib.Path]:
  """The inputs `path` stands for, in the order their comparisons are stored; FileNotFoundError if none."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{source} dump not found: {path}")
  if not path.is_dir():
    return [path]
  if source == "stackexchange":
    from hhh.data.mine import stackexchange
    if stackexchange.find_file(path, "Posts.xml") is not None:
      return [path]  # one site's folder
    found = []
    for p in sorted(path.iterdir()):
      if p.name.startswith("."):
        continue
      if p.is_dir() and stackexchange.find_file(p, "Posts.xml") is not None:
        found.append(p)
      elif p.is_file() and p.name.lower().endswith(".7z") and not p.name.lower().endswith("-votes.7z"):
        found.append(p)
  elif source == "reddit":
    from hhh.data.mine import reddit
    found = reddit.dump_files(path, skip_prefixes=("RS_",))
  elif source == "wikipedia":
    from hhh.data.mine import wikipedia
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in wikipedia.DUMP_SUFFIXES]
  else:
    raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
  if not found:
    raise FileNotFoundError(f"{path}: no {source} dumps in this folder")
  return found


def _miner(source: str):
  import importlib
  return importlib.import_module(f"hhh.data.mine.{source}")


def mine_one(source: str, path: str, index: int, options: dict, part: str) -> dict:
  """Mines input `index` into `part` (JSON lines of [key, comparison]) and then `part`'s done marker.

  Runs in a worker process: everything it takes and returns is plain data. Returns the done marker's contents.
  """
  mod = _miner(source)
  opts = mod.Options(**options)
  stats = MineStats(source=source)
  start = time.perf_counter()
  if source == "reddit":
    from hhh.data.mine import reddit
    # Submission-file problems count once per mine, as when one process reads a folder of comment files.
    items = reddit.mine_file(pathlib.Path(path), opts, stats, first=index == 0)
  else:
    items = mod.mine(path, opts, stats)
  part = pathlib.Path(part)
  tmp = part.with_name(f"{part.name}.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for key, c in items:
      f.write(json.dumps([key, c.to_json()], ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, part)
  done = {"input": str(path), **stats.to_json(), "seconds": round(time.perf_counter() - start, 3)}
  write_json_atomic(_done_path(part), done, indent=None)
  return done


def _done_path(part: pathlib.Path) -> pathlib.Path:
  return part.with_name(part.name.replace(".jsonl", ".done.json"))


def work_dir(out) -> pathlib.Path:
  out = pathlib.Path(out).absolute()
  return out.parent / f".{out.name}.mine"


@contextlib.contextmanager
def _locked(work: pathlib.Path, plan: dict) -> Iterator[None]:
  """Takes the work folder for this plan: kept when an earlier mine of the same plan left it, else started anew.

  Only a folder this module wrote (its plan file and part files, nothing else) is ever cleared."""
  work.mkdir(parents=True, exist_ok=True)
  fd = os.open(work / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(f"{work} is in use by another `hhh data mine` into the same --out") from None
    try:
      old = json.loads((work / _PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
      old = None
    if old != plan:
      strays = [n for n in os.listdir(work) if n not in (_PLAN, _LOCK) and not _PART_RE.fullmatch(n)]
      if strays:
        raise ValueError(f"{work} holds files `hhh data mine` did not write ({', '.join(sorted(strays)[:3])}); "
                         "refusing to clear it")
      for n in os.listdir(work):
        if n != _LOCK:
          os.unlink(work / n)
      write_json_atomic(work / _PLAN, plan)
    yield
  finally:
    os.close(fd)


def _check_out(out: pathlib.Path, sources: list[pathlib.Path]) -> None:
  """Refuses an --out that is, holds or lies inside an input, or holds files that are not a dataset."""
  from hhh.data import store
  real = os.path.realpath(out)
  for src in sources:
    s = os.path.realpath(src)
    if real == s or real.startswith(s.rstrip(os.sep) + os.sep) or s.startswith(real.rstrip(os.sep) + os.sep):
      raise ValueError(f"--out {out} overlaps the input {src}; choose another --out")
  store.check_replaceable(out)


def mine_many(source: str, path, options, out, *, workers: int = 1, backend: str = "local",
              address: str | None = None, progress: bool = True) -> tuple[Iterator[tuple], MineStats, list[dict]]:
  """Mines every input of `path` (see `inputs`) into parts, then returns (items, stats, per-input counts).

  `items` streams (key, comparison) from the parts in input order; `stats` sums the inputs' counts (skips'
  first places in input order, as one process would see them). Call `finish(out)` after writing the dataset.
  """
  if workers < 1:
    raise ValueError(f"--workers must be >= 1, got {workers}")
  files = inputs(source, path)
  out = pathlib.Path(out).absolute()
  _check_out(out, files)
  opts = dataclasses.asdict(options)
  plan = {"source": source, "inputs": [str(f.absolute()) for f in files], "options": opts}
  work = work_dir(out)
  parts = [work / f"{i:06d}.jsonl" for i in range(len(files))]
  with _locked(work, plan):
    done: dict[int, dict] = {}
    for i, part in enumerate(parts):
      with contextlib.suppress(OSError, ValueError):
        if part.is_file():
          done[i] = json.loads(_done_path(part).read_text(encoding="utf-8"))
    todo = [i for i in range(len(files)) if i not in done]
    # Largest first: the last input to finish is then a small one, so workers idle least.
    todo.sort(key=lambda i: -_size(files[i]))
    jobs = [(source, str(files[i]), i, opts, str(parts[i])) for i in todo]
    run = _run_ray if backend == "ray" else _run_local
    if backend not in ("local", "ray"):
      raise ValueError(f"--backend must be local or ray, got {backend!r}")
    for i, record in run(jobs, workers, address, progress, len(files), len(done)):
      done[i] = record
  per_input = [done[i] for i in range(len(files))]
  stats = _merged(source, per_input)
  return _items(parts), stats, per_input


def finish(out) -> None:
  """Removes the work folder once the dataset is written."""
  shutil.rmtree(work_dir(out), ignore_errors=True)


def _size(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
  return path.stat().st_size


def _bar(total: int, initial: int, progress: bool, desc: str):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit=" inputs", dynamic_ncols=True,
              disable=None if progress else True)


def _run_local(jobs, workers, address, progress, total, initial):
  if not jobs:
    return
  bar = _bar(total, initial, progress, "mine")
  try:
    if workers == 1:
      for job in jobs:
        yield job[2], mine_one(*job)
        bar.update(1)
      return
    yield from _parent_and_pool(jobs, workers, bar)
  finally:
    bar.close()


def pool_context():
  """fork where it is safe, else spawn. A forked worker starts at once; a spawned one first starts an interpreter
  and imports the miner (about 0.2 s, a large share of a small input). But a fork of a process whose libraries
  run threads of their own (JAX, TensorFlow, torch: imported when hhh is used as a library) can deadlock."""
  import multiprocessing
  heavy = any(m in sys.modules for m in ("jax", "jaxlib", "tensorflow", "torch"))
  fork = "fork" in multiprocessing.get_all_start_methods() and not heavy
  return multiprocessing.get_context("fork" if fork else "spawn")


def _parent_and_pool(jobs, workers: int, bar):
  """Runs `jobs` on this process (in a thread) and on `workers - 1` worker processes, each taking the next job
  when free; yields (index, record) as jobs finish.

  The parent mines too: it starts at once, while a worker process first starts (see pool_context), which on a
  few inputs is a large share of one input's time. Every worker takes its next job itself, from a shared counter,
  and sends its result straight down a pipe: nothing waits for this process's threads, which can wait long for
  the GIL while the parent mines (a pool executor's hand-offs were late by up to 0.3 s).
  """
  import queue
  import threading
  ctx = pool_context()
  nxt = ctx.Value("q", 0)  # the next job's position in `jobs`, shared by every process and the local thread
  results = ctx.SimpleQueue()  # (pid, position, "start" | "done" | "error", payload)
  local_errors: queue.Queue = queue.Queue()
  procs = [ctx.Process(target=_worker, args=(jobs, nxt, results), daemon=True, name=f"hhh-mine-{k}")
           for k in range(min(workers, len(jobs)) - 1)]
  for p in procs:
    p.start()

  def local():
    try:
      _worker(jobs, nxt, results, local=True)
    except BaseException as e:  # raised by the caller's thread
      local_errors.put(e)

  local_thread = threading.Thread(target=local, name="hhh-mine-local", daemon=True)
  local_thread.start()
  running: dict[int, int] = {}  # worker pid -> position of its job
  finished = 0
  try:
    while finished < len(jobs):
      if not local_errors.empty():
        raise local_errors.get()
      if not results._reader.poll(0.2):
        for p in procs:
          if p.exitcode is not None and p.pid in running:
            raise RuntimeError(f"a mining worker died (exit code {p.exitcode}) while mining "
                               f"{jobs[running[p.pid]][1]}")
        if (not local_thread.is_alive() and all(p.exitcode is not None for p in procs)
            and not results._reader.poll(0)):
          if not local_errors.empty():
            raise local_errors.get()
          raise RuntimeError(f"the mining workers stopped with {len(jobs) - finished} of {len(jobs)} inputs "
                             "unfinished")
        continue
      pid, pos, what, payload = results.get()
      if what == "start":
        running[pid] = pos
        continue
      running.pop(pid, None)
      if what == "error":
        raise payload
      finished += 1
      yield jobs[pos][2], payload
      bar.update(1)
  finally:
    with nxt.get_lock():
      nxt.value = len(jobs)  # no new jobs
    for p in procs:
      if p.is_alive():
        p.terminate()  # an unfinished part stays under its temporary name; a rerun mines that input again
    for p in procs:
      p.join()
    # The local thread is not joined: after an error or Ctrl-C it may be inside a large input; it takes no new job,
    # and as a daemon it ends with the process (its part is written under a temporary name until complete).


def _worker(jobs, nxt, results, local: bool = False) -> None:
  """Takes jobs by position until none is left; reports each one's start and its record or error."""
  pid = os.getpid() if not local else -1
  try:
    while True:
      with nxt.get_lock():
        pos = nxt.value
        if pos >= len(jobs):
          return
        nxt.value = pos + 1
      results.put((pid, pos, "start", None))
      try:
        record = mine_one(*jobs[pos])
      except Exception as e:
        if local:
          raise
        try:
          results.put((pid, pos, "error", e))
        except Exception:  # an exception that cannot cross the pipe: its text does
          results.put((pid, pos, "error", RuntimeError(f"{type(e).__name__}: {e}")))
        return
      results.put((pid, pos, "done", record))
  except KeyboardInterrupt:
    if local:
      raise
    # Ctrl-C reaches every process of the group: the parent reports it, a worker just stops.


def _run_ray(jobs, workers, address, progress, total, initial):
  try:
    import ray
  except ImportError:
    raise ValueError('--backend ray needs Ray: pip install -e ".[ray]"') from None
  if not jobs:
    return
  try:
    # A local instance listens on loopback only; an --address joins a cluster whose nodes see these paths.
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             configure_logging=False, **({} if address else {"num_cpus": workers, "_node_ip_address": "127.0.0.1"}))
  except (ConnectionError, RuntimeError) as e:
    raise ValueError(f"ray: cannot start or join a cluster at {address or 'a new local instance'}: "
                     f"{str(e).strip().splitlines()[-1][:300]}") from None
  bar = _bar(total, initial, progress, "mine (ray)")
  try:
    remote = ray.remote(num_cpus=1, max_retries=0)(mine_one)
    pending = {remote.remote(*job): job[2] for job in jobs}
    while pending:
      ready, _ = ray.wait(list(pending), num_returns=1)
      for ref in ready:
        yield pending.pop(ref), ray.get(ref)
        bar.update(1)
  finally:
    bar.close()
    ray.shutdown()


def _merged(source: str, per_input: list[dict]) -> MineStats:
  stats = MineStats(source=source)
  for record in per_input:
    stats.records_read += record["records_read"]
    stats.comparisons += record["comparisons"]
    stats.skipped.update(record["skipped"])
    for reason, wheres in record["first_skipped_at"].items():
      seen = stats.first_offsets.setdefault(reason, [])
      seen.extend(wheres[:stats.max_offsets - len(seen)])
  notes = [r["notes"] for r in per_input if r.get("notes")]
  if len(notes) == 1 and len(per_input) == 1:
    stats.notes = notes[0]
  return stats


def _items(parts: list[pathlib.Path]) -> Iterator[tuple[str, Comparison]]:
  for part in parts:
    with open(part, encoding="utf-8") as f:
      for line in f:
        key, d = json.loads(line)
        yield key, Comparison.from_json(d)


def per_input_summary(per_input: list[dict]) -> list[dict]:
  """The per-input counts for summary.json: each input's own counts, notes and seconds."""
  keys = ("input", "records_read", "comparisons", "skipped", "first_skipped_at", "notes", "seconds")
  return [{k: r[k] for k in keys if k in r} for r in per_input]

