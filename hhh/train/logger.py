"""Run metrics: JSONL (the record of truth), TensorBoard event files, and throughput/MFU estimates."""

from __future__ import annotations

import json
import math
import pathlib

import jax

# Dense bf16 peak FLOP/s per device, for MFU. CPU has no meaningful peak: pass peak_tflops instead.
_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("V100", 125e12), ("L4", 121e12),
               ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
               ("TPU v4", 275e12), ("TPU v3", 123e12))


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
  if override_tflops:
    return override_tflops * 1e12
  kind = jax.devices()[0].device_kind
  return next((f for name, f in _PEAK_FLOPS if name.lower() in kind.lower()), None)


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
      from tensorboardX import SummaryWriter
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


def _clean(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)
