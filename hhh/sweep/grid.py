"""Python-level grids (the older runner; sweep files are the newer one): named `hhh train` runs, each in a fresh process, results appended to one JSONL.

A sweep directory holds `results.jsonl` (one line per finished run: its tags, final held-out metrics, seconds)
and `runs/NAME/` (each run's workdir and `train.log`). Re-running a sweep skips runs that already have a result
line and resumes an interrupted run from its last checkpoint, so nothing finished is ever lost or redone.

Runs go to a local device pool: `devices=("0", "1", ...)` runs one job per device at a time with
`CUDA_VISIBLE_DEVICES` (GPUs) or `TPU_VISIBLE_CHIPS` (TPUs) set to it; with no devices, `jobs` runs share the
host. A cluster launcher hands the same `Run` records to its own workers (`run_one` is the unit of work).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import queue
import sys
import threading
import time
from typing import Any, Iterable, Sequence

from tqdm import tqdm

from hhh.selfcmd import hhh_argv


@dataclasses.dataclass(frozen=True)
class Run:
  name: str                                # unique within the sweep; the workdir's name
  experiment: str                          # an experiment file or module (`hhh train EXPERIMENT`)
  overrides: tuple[str, ...] = ()          # `--set key=value` items
  tags: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)  # dataset, size, objective, seed...


def read_results(path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  out = []
  for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        # A line cut by a crash mid-write: everything before it is still good.
        print(f"hhh: warning: {path}:{lineno}: unreadable line skipped", file=sys.stderr)
  return out


def final_metrics(workdir) -> dict[str, Any]:
  """The last held-out evaluation a run logged (its metrics.jsonl `validation` record)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  last = None
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("split") == "validation":
        last = rec
  if last is None:
    raise RuntimeError(f"{path}: no held-out evaluation was logged")
  return last


def run_one(run: Run, sweep_dir, env: dict[str, str] | None = None) -> dict[str, Any]:
  """Trains one run in a subprocess (output to its train.log) and returns its result record."""
  workdir = pathlib.Path(sweep_dir) / "runs" / run.name
  workdir.mkdir(parents=True, exist_ok=True)
  cmd = hhh_argv("train", run.experiment, "--workdir", workdir, "--set", "progress=false")  # see hhh/selfcmd.py
  for o in run.overrides:
    cmd += ["--set", o]
  t0 = time.perf_counter()
  from hhh.sweep.trial import kill_group, spawn
  with open(workdir / "train.log", "a", encoding="utf-8") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    # Its own process group and a parent-death signal: the trainer dies with this runner (see sweep/trial.py).
    proc = spawn(cmd, log, env={**os.environ, **(env or {})})
    try:
      proc.wait()
    except BaseException:
      kill_group(proc)
      raise
  seconds = time.perf_counter() - t0
  if proc.returncode != 0:
    tail = (workdir / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    return {"name": run.name, **run.tags, "error": f"exit {proc.returncode}: {' '.join(tail)}",
            "seconds": round(seconds, 1)}
  metrics = final_metrics(workdir)
  return {"name": run.name, **run.tags, "step": metrics.pop("step"),
          "metrics": {k: v for k, v in metrics.items() if k != "split"}, "seconds": round(seconds, 1)}


def run_grid(runs: Sequence[Run], sweep_dir, *, jobs: int = 1, devices: Sequence[str] = (),
             device_env: str = "CUDA_VISIBLE_DEVICES") -> list[dict]:
  """Runs every run without a result yet; returns all result records (old and new) in grid order."""
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError("sweep run names must be unique")
  sweep_dir = pathlib.Path(sweep_dir)
  sweep_dir.mkdir(parents=True, exist_ok=True)
  results_path = sweep_dir / "results.jsonl"
  have = {r["name"]: r for r in read_results(results_path) if "error" not in r}
  todo = [r for r in runs if r.name not in have]
  slots: queue.Queue = queue.Queue()
  for d in (devices or [None] * max(1, jobs)):
    slots.put(d)
  lock = threading.Lock()
  bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", dynamic_ncols=True)

  def work(run: Run) -> dict:
    slot = slots.get()
    try:
      res = run_one(run, sweep_dir, env=None if slot is None else {device_env: slot})
    finally:
      slots.put(slot)
    with lock:
      # Append as each run finishes, so an interrupted sweep keeps every result it had.
      with open(results_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(res) + "\n")
      bar.update(1)
      if "error" in res:
        tqdm.write(f"hhh: sweep: {run.name} failed ({res['error']}); see {sweep_dir}/runs/{run.name}/train.log")
    return res

  workers = len(devices) if devices else max(1, jobs)
  try:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      new = {r["name"]: r for r in pool.map(work, todo)}
  finally:
    bar.close()
  return [have.get(n) or new[n] for n in names]


def latest_by_name(results: Iterable[dict]) -> dict[str, dict]:
  """The last successful record of each run (a re-run after a failure appends a new one)."""
  out = {}
  for r in results:
    if "error" not in r:
      out[r["name"]] = r
  return out
