"""The local backend: each trial its own process on a slice of this host, queued by the resources it needs.

A trial that needs D devices gets D of the pool's GPUs (CUDA_VISIBLE_DEVICES) or TPU chips (TPU_VISIBLE_CHIPS
and the bounds that let several processes share one TPU host); one that needs none is kept off the
accelerators. Its C CPUs are cores of this process's affinity set, pinned with sched_setaffinity. Trials start
in file order as soon as what they need is free (a later, smaller trial may overtake a big one that waits).

The launcher is one thread: it starts, polls and reaps its trial processes itself, which is what ties each
child's parent-death signal to a thread that outlives it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Sequence

from tqdm import tqdm

from hhh.sweep import trial as trial_lib
from hhh.sweep.spec import Spec, Trial

# TPU_CHIPS_PER_PROCESS_BOUNDS for a slice of N chips of one host (v4/v5e/v6e hosts: 2x2 chips or 2x4).
TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}


@dataclasses.dataclass
class Pool:
  kind: str                       # "cuda", "tpu" or "cpu"
  devices: list[str]              # free device ids
  cpus: list[int]                 # free CPU cores
  n_devices: int = 0
  n_cpus: int = 0

  def __post_init__(self):
    self.n_devices, self.n_cpus = len(self.devices), len(self.cpus)

  def fits_ever(self, t: Trial) -> str | None:
    if t.resources.devices > self.n_devices:
      have = f"{self.n_devices} {self.kind} devices" if self.kind != "cpu" else "no accelerators"
      return f"{t.title} needs {t.resources.devices} devices; this host has {have} (see --devices)"
    return None

  def take(self, t: Trial) -> tuple[list[str], list[int]] | None:
    nd, nc = t.resources.devices, min(t.resources.cpus, self.n_cpus)
    if nd > len(self.devices) or nc > len(self.cpus):
      return None
    devs, self.devices = self.devices[:nd], self.devices[nd:]
    cpus, self.cpus = self.cpus[:nc], self.cpus[nc:]
    return devs, cpus

  def give(self, alloc) -> None:
    devs, cpus = alloc
    self.devices = sorted(self.devices + devs, key=_devkey)
    self.cpus = sorted(self.cpus + cpus)

  def env(self, devs: Sequence[str]) -> dict[str, str]:
    if not devs:
      # Off the accelerators: a CPU trial must not claim a GPU or a TPU another trial holds.
      return {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""} if self.kind != "cpu" else {}
    if self.kind == "cuda":
      return {"CUDA_VISIBLE_DEVICES": ",".join(devs)}
    if self.kind == "tpu":
      if len(devs) not in TPU_BOUNDS:
        raise ValueError(f"a TPU trial takes 1, 2, 4 or 8 chips, not {len(devs)}")
      return {"TPU_VISIBLE_CHIPS": ",".join(devs), "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_BOUNDS[len(devs)],
              "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_PORT": str(_free_port()), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    return {}


def _devkey(d: str):
  return (0, int(d)) if d.isdigit() else (1, d)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def detect(kind: str = "auto", devices: str | None = None) -> Pool:
  """The host's pool: `devices` ("0,1,2,3") or what is visible (CUDA_VISIBLE_DEVICES, nvidia-smi, /dev/accel*)."""
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
  if kind not in ("auto", "cuda", "tpu", "cpu"):
    raise ValueError(f"--device-kind {kind!r}: expected auto, cuda, tpu or cpu")
  if kind == "auto":
    kind = ("cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") or shutil.which("nvidia-smi")
            else "tpu" if list(pathlib.Path("/dev").glob("accel*")) else "cpu")
  if devices is not None:
    ids = [d.strip() for d in devices.split(",") if d.strip()]
  elif kind == "cuda":
    ids = _cuda_ids()
  elif kind == "tpu":
    ids = [str(i) for i in range(len(list(pathlib.Path("/dev").glob("accel*"))))]
  else:
    ids = []
  if kind == "cpu" and ids:
    raise ValueError("--devices needs an accelerator host (--device-kind cuda or tpu)")
  return Pool(kind, ids, cpus)


def _cuda_ids() -> list[str]:
  vis = os.environ.get("CUDA_VISIBLE_DEVICES")
  if vis is not None:
    return [d for d in vis.split(",") if d.strip()]
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def _interrupt(signum, frame):
  raise KeyboardInterrupt


def run(spec: Spec, *, max_parallel: int | None = None, pool: Pool | None = None, progress: bool = True,
        poll_s: float = 0.2) -> list[dict]:
  """Runs every unfinished trial, stage by stage; returns the records of the trials that failed this launch."""
  pool = pool or detect()
  for t in spec.trials:
    why = pool.fits_ever(t)
    if why:
      raise ValueError(why)
  failed: dict[str, dict] = {}
  done = {t.id for t in spec.trials if trial_lib.is_done(spec.trial_dir(t))}
  bar = tqdm(total=len(spec.trials), initial=len(done), desc=f"sweep {spec.path.stem}", unit="trial",
             dynamic_ncols=True, disable=None if progress else True)
  running: dict[str, trial_lib.Running] = {}
  # SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, through the finally that kills the children.
  main = threading.current_thread() is threading.main_thread()
  old_term = signal.signal(signal.SIGTERM, _interrupt) if main else None
  try:
    for stage in spec.stages:
      queue = [t for t in spec.trials if t.stage == stage and t.id not in done]
      tries: dict[str, int] = {}
      while queue or running:
        for t in list(queue):
          if max_parallel and len(running) >= max_parallel:
            break
          bad = [n for n in t.needs if n not in done]
          if bad:
            queue.remove(t)
            failed[t.id] = {"id": t.id, "error": f"needs trial {bad[0]}, which did not finish"}
            tqdm.write(f"hhh: sweep: {t.title} skipped: it needs trial {bad[0]}, which did not finish")
            continue
          alloc = pool.take(t)
          if alloc is None:
            continue
          d = trial_lib.prepare(t, spec.trial_dir(t))
          fd = trial_lib.try_lock(d)
          if fd is None:   # a process of an earlier launch still works here: wait for it
            pool.give(alloc)
            continue
          if trial_lib.is_done(d):
            os.close(fd)
            pool.give(alloc)
            queue.remove(t)
            done.add(t.id)
            bar.update(1)
            continue
          env = trial_lib.trial_env(t, d, pool.env(alloc[0]))
          r = trial_lib.start(t, d, fd, env=env, cpus=alloc[1])
          r.alloc = alloc
          running[t.id] = r
          queue.remove(t)
          bar.set_postfix_str(f"running {len(running)}")
        for tid, r in list(running.items()):
          rc = r.proc.poll()
          if rc is None:
            continue
          rec = trial_lib.finish(r, rc)
          os.close(r.lock_fd)
          pool.give(r.alloc)
          del running[tid]
          if "error" not in rec:
            done.add(tid)
            failed.pop(tid, None)
            bar.update(1)
            continue
          tries[tid] = tries.get(tid, 0) + 1
          if tries[tid] <= r.trial.retries:
            tqdm.write(f"hhh: sweep: {r.trial.title} failed ({rec['error']}); retry {tries[tid]} of "
                       f"{r.trial.retries}")
            queue.append(r.trial)
          else:
            failed[tid] = rec
            tqdm.write(f"hhh: sweep: {r.trial.title} failed ({rec['error']}); log {rec['log']}")
        time.sleep(poll_s)
  finally:
    for r in running.values():
      trial_lib.kill_group(r.proc)
      r.log.close()
      os.close(r.lock_fd)
    if main:
      signal.signal(signal.SIGTERM, old_term)
    bar.close()
  return list(failed.values())
