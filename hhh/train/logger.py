"""Run metrics: JSONL (the record of truth), TensorBoard event files, and throughput/MFU estimates."""

from __future__ import annotations

import json
import math
import pathlib

import jax


def measure_matmul_peak(dtype="float32", n: int | None = None, reps: int = 3) -> dict:
  """FLOP/s of one jitted n x n matmul on device 0 in `dtype`, best of `reps`: the achievable peak MFU is read
  against (a data sheet's number is not reachable on a CPU, and often not on an accelerator either).

  n defaults to 2048 on CPU (large enough for the BLAS kernels' full rate, under a second on 2 cores) and 8192
  on accelerators.
  """
  import time

  import jax.numpy as jnp
  import numpy as np
  dev = jax.devices()[0]
  n = n or (2048 if dev.platform == "cpu" else 8192)
  a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype), dev)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return {"flops": 2 * n**3 / best, "what": f"jnp.dot {n}x{n} {jnp.dtype(dtype).name} on {dev.device_kind}"}


class MetricsWriter:
  """Appends one JSON object per logged step to WORKDIR/metrics.jsonl (process 0 only).

  On resume from step S, lines past S (written after the checkpoint by a run
  that then died) are dropped, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir, resume_step: int | None, enabled: bool = True):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    kept = []
    if resume_step is not None and self.path.exists():
      for line in self.path.read_text().splitlines():
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a kill
        if rec.get("step", math.inf) <= resume_step:
          kept.append(line)
    self.path.write_text("".join(l + "\n" for l in kept))
    self._f = open(self.path, "a", encoding="utf-8")
    try:
      SummaryWriter = _summary_writer_class()
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"),
                               purge_step=None if resume_step is None else resume_step + 1)
    except ImportError:
      self._tb = None

  def write(self, step: int, split: str, metrics: dict[str, float]):
    if not self.enabled:
      return
    rec = {"step": step, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
    self._f.write(json.dumps(rec) + "\n")
    self._f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)

  def close(self):
    if self.enabled:
      self._f.close()
      if self._tb is not None:
        self._tb.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch when it is installed only to recognise torch tensors; we log Python floats, and
  the import costs seconds at every run's start. A None entry in sys.modules makes that import fail fast; it is
  removed again so that later imports of torch in this process work as usual.
  """
  import sys
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _clean(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)
