"""Orbax checkpoints: train state, data-iterator state and JSON metadata (config, tokenizer) saved together.

Layout: `WORKDIR/checkpoints/<step>/{state,data,meta,hhh_manifest.json}`. `meta` is plain JSON, so a
checkpoint is self-describing (model config and tokenizer) and loads without pickle.

Orbax trusts the bytes it reads: a truncated file fails deep inside tensorstore and flipped bytes load
silently. So process 0 writes a manifest (size and sha256 of every file) once a save has committed, and
a resume verifies it first; a checkpoint that fails (or fails to load) is set aside under
WORKDIR/corrupt_checkpoints and the run falls back to the newest earlier one that passes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import hashlib
import json
import logging
import os
import pathlib
import sys
import threading
import traceback
import warnings
from typing import Any

import jax
from orbax.checkpoint import v1 as ocp

from hhh.data import tokenizer as tokenizer_lib
from hhh.train import workdir as workdir_lib

MANIFEST = "hhh_manifest.json"
_MANIFEST_FORMAT = "hhh-checkpoint-manifest/1"


class CheckpointCorrupt(ValueError):
  """No checkpoint passes its checksums (or a named one does not)."""


class SaveFailed(ValueError):
  """A checkpoint save failed for a reason other than full or read-only storage (its step dir removed)."""


# How long a close after a failed save may wait for orbax before the process exits anyway.
_CLOSE_AFTER_FAILURE_S = 5.0


def _abandon_orbax_threads():
  """Cancels every live orbax save thread and wakes the ones waiting on a signal.

  orbax runs a save as threads that wait for each other's completion signals, each for up to its
  coordination timeout (300 s). When one fails, the ones waiting on it sit out that timeout, and they are not
  daemon threads, so the process cannot exit before: 300 s and a TimeoutError traceback per thread. A
  cancelled thread returns as soon as its wait ends, without running its work, so cancel them all, then set
  every signal they wait for (single-process runs keep the signals in this process).
  """
  try:
    from orbax.checkpoint._src.futures import future as ocp_future
  except ImportError:  # another orbax layout: nothing to cancel, the caller still reports in one line
    return
  for t in threading.enumerate():
    if isinstance(t, ocp_future._SignalingThread) and t.is_alive():
      with contextlib.suppress(Exception):
        t.cancel()
      if jax.process_count() == 1:
        with contextlib.suppress(Exception):
          ocp_future.set_signals(t._receive_signals, operation_id=t._operation_id)


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _hashes(step_dir: pathlib.Path, rels: list[str]) -> dict[str, str]:
  # hashlib drops the GIL on large buffers, so threads overlap the hashing of big array files.
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return dict(zip(rels, pool.map(lambda r: _sha256(step_dir / r), rels)))


def write_manifest(step_dir) -> pathlib.Path:
  """Records the size and sha256 of every file under a committed step dir, atomically (tmp + rename)."""
  step_dir = pathlib.Path(step_dir)
  rels = _files(step_dir)
  sums = _hashes(step_dir, rels)
  manifest = {"format": _MANIFEST_FORMAT,
              "files": {r: {"bytes": (step_dir / r).stat().st_size, "sha256": sums[r]} for r in rels}}
  tmp = step_dir / (MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, step_dir / MANIFEST)
  return step_dir / MANIFEST


def verify(step_dir) -> str | None:
  """Why the step dir does not match its manifest (one short phrase), or None when it does.

  A step dir without a manifest (written before hhh kept them, or killed between orbax's commit and
  the manifest) counts as intact here; it is still set aside if orbax then fails to load it.
  """
  step_dir = pathlib.Path(step_dir)
  path = step_dir / MANIFEST
  if not path.exists():
    return None
  try:
    files = json.loads(path.read_text(encoding="utf-8"))["files"]
    expected = {r: (int(v["bytes"]), str(v["sha256"])) for r, v in files.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return f"its manifest {MANIFEST} is unreadable"
  for rel, (size, _) in expected.items():  # sizes first: a truncation is found without reading anything
    if not (step_dir / rel).is_file():
      return f"{rel} is missing"
    got = (step_dir / rel).stat().st_size
    if got != size:
      return f"{rel} is {got:,} bytes, its manifest says {size:,}"
  sums = _hashes(step_dir, list(expected))
  for rel, (_, digest) in expected.items():
    if sums[rel] != digest:
      return f"{rel} does not match its sha256"
  return None


class _Abandoned(logging.Filter):
  """Drops, for the rest of the process, what the loads and saves hhh gave up on print after the fact.

  Orbax gathers one asyncio task per array and closes its event loop as soon as the first one fails;
  the other reads finish later on tensorstore's threads. Their tasks and coroutines then surface as
  "Task exception was never retrieved" (asyncio's logger) and "Exception ignored in <coroutine ...>"
  (sys.unraisablehook) whenever the garbage collector reaches them, and their completion callbacks hit
  the closed loop ("Event loop is closed", which tensorstore hands to PyErr_Print, so sys.excepthook).
  That can be seconds after the failure, so no scoped hold catches all of it. Everything else still
  reaches the previous hooks and handlers: a leftover is one that names a path given up on, or a
  `call_soon_threadsafe` into a closed loop (installed with the first save or load, since such callbacks
  can arrive before the failure that leaves them reaches hhh).
  """

  def __init__(self):
    super().__init__()
    self.paths: set[str] = set()
    self.silenced = False
    self._hooks = None

  def add(self, path):
    self.paths.add(str(path))

  def install(self):
    if self._hooks is None:
      self._hooks = sys.unraisablehook, sys.excepthook
      sys.unraisablehook, sys.excepthook = self._unraisable, self._excepthook
      logging.getLogger("asyncio").addFilter(self)

  def _leftover(self, exc, tb) -> bool:
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      # Only a completion callback scheduled into the dead loop; any other such error is the caller's.
      return any("call_soon_threadsafe" in f.name for f in traceback.extract_tb(tb))
    return exc is not None and any(p in f"{exc} {exc.__cause__}" for p in self.paths)

  def filter(self, record):
    if self.silenced:
      return False
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(p in text for p in self.paths)

  def silence(self):
    """After a failed save the run is over and reported in one line: orbax's background threads would log a
    traceback each for the same failure (a dozen, as they give up one after another), so none gets through."""
    self.install()
    self.silenced = True
    logging.getLogger("absl").addFilter(self)
    # The cancelled threads' coroutines, never started, are collected at exit with a warning each.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)

  def _unraisable(self, unraisable):
    if not self._leftover(unraisable.exc_value, unraisable.exc_traceback):
      self._hooks[0](unraisable)

  def _excepthook(self, typ, value, tb):
    if not self._leftover(value, tb):
      self._hooks[1](typ, value, tb)


_ABANDONED = _Abandoned()


class _HeldLogs(logging.Filter):
  """Holds orbax's (absl) log records during a save or load under `path`: replayed on success or on an
  unexpected error, dropped when the failure is one hhh reports itself in one line. A dropped failure's
  path goes to `_ABANDONED`, which keeps its late leftovers off stderr.
  """

  def __init__(self, path):
    super().__init__()
    self.path = pathlib.Path(path)

  def filter(self, record):
    self.records.append(record)
    return False

  def __enter__(self):
    self.records = []
    self.drop = False
    _ABANDONED.install()  # a failing load's callbacks can hit its closed loop before __exit__ runs
    logging.getLogger("absl").addFilter(self)
    return self

  def __exit__(self, *exc):
    log = logging.getLogger("absl")
    log.removeFilter(self)
    if self.drop:
      _ABANDONED.add(self.path)
      gc.collect()  # what is collectable now goes through the filter at once
    else:
      for r in self.records:
        log.handle(r)
    return False


def _none_left(root, bad) -> str:
  return (f"no intact checkpoint left in {root}: " + "; ".join(f"step {s}: {why}" for s, why in bad)
          + f". Move {root} away to train from scratch")


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  line = text[0] if text else type(e).__name__
  return line if len(line) <= 200 else line[:197] + "..."


class Checkpoints:

  def __init__(self, workdir, keep: int):
    self.workdir = pathlib.Path(workdir).absolute()
    self.dir = self.workdir / "checkpoints"
    self._keep = keep
    self._save_failed = False
    self._ckpt = self._open()

  def _open(self):
    return ocp.training.Checkpointer(
        self.dir, preservation_policy=ocp.training.preservation_policies.LatestN(self._keep))

  def steps(self) -> list[int]:
    return [int(c.step) for c in self._ckpt.checkpoints]

  def latest_step(self) -> int | None:
    latest = self._ckpt.latest
    return None if latest is None else int(latest.step)

  def step_dir(self, step: int) -> pathlib.Path:
    return next(pathlib.Path(c.path) for c in self._ckpt.checkpoints if int(c.step) == step)

  def save(self, step: int, state, data_iter, meta: dict[str, Any]):
    """Saves and commits step `step`, then (process 0) writes its manifest; a refused write is one line."""
    checkpointables = {"state": state, "meta": meta}
    if data_iter is not None:
      checkpointables["data"] = data_iter
    with _HeldLogs(self.dir / str(step)) as held:
      try:
        self._ckpt.save_checkpointables(step, checkpointables, force=True)
        if jax.process_index() == 0:
          write_manifest(self.step_dir(step))
      except (OSError, ValueError, RuntimeError, concurrent.futures.CancelledError) as e:
        # Storage that refuses writes, or a step dir removed while being written: either way the save is lost,
        # the earlier checkpoints are intact, and the run stops with one line.
        held.drop = self._save_failed = True
        _abandon_orbax_threads()
        _ABANDONED.silence()
        if workdir_lib.storage_errno(e, self.workdir) is not None:
          raise workdir_lib.unwritable(self.workdir, e, doing=f"save checkpoint step {step} in") from None
        raise SaveFailed(f"cannot save checkpoint step {step} in workdir {self.workdir}: {_first_line(e)}; "
                         f"the earlier checkpoints are intact") from None

  def restore(self, step: int, abstract_state, data_iter):
    """Loads the state onto `abstract_state`'s shardings and rewinds `data_iter` in place."""
    abstract = {"state": abstract_state, "meta": None}
    if data_iter is not None:
      abstract["data"] = data_iter
    out = self._ckpt.load_checkpointables(step, abstract)
    return out["state"], out["meta"]

  def newest_intact(self) -> tuple[int | None, dict[str, Any] | None]:
    """The newest step that matches its manifest and whose metadata loads, and that metadata.

    Newer steps that fail are reported in one warning line each and set aside; with checkpoints present
    but none intact, a one-line CheckpointCorrupt (nothing is set aside then, so a rerun cannot quietly
    start from scratch). (None, None) when there is no checkpoint at all.
    """
    step, meta, bad = self._scan()
    if step is None and bad:
      raise CheckpointCorrupt(_none_left(self.dir, bad))
    self._set_aside(bad, step)
    return step, meta

  def restore_intact(self, step: int, abstract_state, data_iter):
    """`restore`, falling back to the newest earlier intact step while a load fails; returns (step, state)."""
    while True:
      with _HeldLogs(self.step_dir(step)) as held:
        try:
          return step, self.restore(step, abstract_state, data_iter)[0]
        except Exception as e:  # noqa: BLE001 - a failed load of bytes on disk is what we fall back from
          held.drop = True
          why = f"it does not load ({_first_line(e)})"
      older, _, bad = self._scan(below=step)
      bad = [(step, why)] + bad
      if older is None:
        raise CheckpointCorrupt(_none_left(self.dir, bad))
      self._set_aside(bad, older)
      step = older

  def _scan(self, below: int | None = None):
    """(newest intact step below `below`, its metadata, [(newer failed step, why)]); changes nothing."""
    bad = []
    for step in reversed([s for s in self.steps() if below is None or s < below]):
      why = verify(self.step_dir(step))
      if why is None:
        with _HeldLogs(self.step_dir(step)) as held:
          try:
            return step, ocp.load_checkpointables(self.step_dir(step), {"meta": None})["meta"], bad
          except Exception as e:  # noqa: BLE001 - whatever orbax raises, this step is unusable
            held.drop = True
            why = f"its metadata does not load ({_first_line(e)})"
      bad.append((step, why))
    return None, None, bad

  def _set_aside(self, bad: list[tuple[int, str]], good: int):
    """Warns about and moves each failed step dir to WORKDIR/corrupt_checkpoints, so orbax never lists it
    again and the resumed run can save those steps afresh."""
    if not bad:
      return
    lead = jax.process_index() == 0
    aside = self.workdir / "corrupt_checkpoints"
    for step, why in bad:
      src = self.step_dir(step)
      dst = aside / src.name
      n = 1
      while dst.exists():
        dst, n = aside / f"{src.name}.{n}", n + 1
      if lead:
        aside.mkdir(exist_ok=True)
        os.replace(src, dst)
        print(f"hhh: warning: checkpoint step {step} is corrupt: {why}; falling back to step {good} "
              f"(moved to {dst})", flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("hhh_checkpoints_set_aside")  # every process lists the same steps
    self._ckpt.close()
    self._ckpt = self._open()

  def close(self):
    if self._save_failed:
      # orbax's close waits for the failed save's threads; they were cancelled, but a thread stuck in a file
      # system call must not hold the exit, so the close gets a few seconds of its own thread.
      closer = threading.Thread(target=self._close_quietly, name="hhh-checkpoint-close", daemon=True)
      closer.start()
      closer.join(timeout=_CLOSE_AFTER_FAILURE_S)
      return
    with _HeldLogs(self.dir) as held:
      try:
        self._ckpt.close()
      except Exception:
        if not self._save_failed:
          raise
        held.drop = True  # orbax re-raises the failed save we already reported

  def _close_quietly(self):
    try:
      self._ckpt.close()
    except BaseException:  # noqa: BLE001 - the failed save was reported; this is its echo
      pass


def _resolve(path) -> pathlib.Path:
  """A run's workdir (its latest checkpoint), its checkpoints dir, or one step dir."""
  path = pathlib.Path(path).absolute()
  if (path / "state").is_dir():
    return path
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir()),
                 reverse=True) if root.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint found under {path}")
  return root / str(steps[0])


_verified: dict[tuple[str, int], None] = {}


def _resolve_intact(path) -> pathlib.Path:
  """`_resolve`, then the step dir checked against its manifest (once per manifest version)."""
  step_dir = _resolve(path)
  manifest = step_dir / MANIFEST
  key = (str(step_dir), manifest.stat().st_mtime_ns if manifest.exists() else 0)
  if key not in _verified:
    why = verify(step_dir)
    if why is not None:
      raise CheckpointCorrupt(f"checkpoint {step_dir} is corrupt: {why}")
    _verified[key] = None
  return step_dir


def load_meta(path) -> dict[str, Any]:
  return ocp.load_checkpointables(_resolve_intact(path), {"meta": None})["meta"]


def load_params(path, abstract_params=None):
  """Parameters and metadata of a checkpoint, e.g. to start PM training from an LM (init_from).

  With `abstract_params` (ShapeDtypeStructs, optionally with shardings) the arrays
  are restored onto those shapes and shardings; a shape mismatch is an error.
  """
  step_dir = _resolve_intact(path)
  meta = load_meta(step_dir)
  if abstract_params is None:
    state = ocp.load_checkpointables(step_dir, {"state": None})["state"]
    return state["params"], meta
  abstract = {"state": {"params": abstract_params}}
  ctx = ocp.Context()
  ctx.pytree.loading.partial_load = True  # the checkpoint also holds opt_state, step and rng
  with ctx:
    state = ocp.load_checkpointables(step_dir, abstract)["state"]
  return state["params"], meta


def tokenizer_from_meta(meta: dict[str, Any]):
  return tokenizer_lib.from_json(meta["tokenizer"])


def host_scalar_tree(tree):
  """Local copy of replicated arrays (works on every process, unlike device_get on global arrays)."""
  return jax.tree.map(lambda x: x.addressable_data(0) if hasattr(x, "addressable_data") else x, tree)
