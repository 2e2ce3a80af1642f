"""`hhh export CKPT_DIR --out BUNDLE`: a reward bundle (hhh/model/bundle.py) from a training run, its latest
checkpoint or a given step dir, with normalization statistics (mean and std of raw rewards) computed over a
reference set, by default the run's own held-out responses, through the bundle's own scoring path."""

from __future__ import annotations

import pathlib

import numpy as np

from hhh import config as config_lib
from hhh import outdir
from hhh.data import sources
from hhh.model import bundle as bundle_lib
from hhh.model import params as params_lib
from hhh.objectives import PM_OBJECTIVES
from hhh.reward.api import RewardModel
from hhh.train import checkpoint as ckpt_lib

EXPORT = "hhh export"  # what bundle outputs are marked as (hhh/outdir.py)


def run_of(ckpt_path) -> list[pathlib.Path]:
  """The checkpoint path and, for a step dir or a checkpoints dir, the run that holds it: what an export reads."""
  p = pathlib.Path(ckpt_path).absolute()
  if p.name == "checkpoints":
    return [p, p.parent]
  return [p, p.parent.parent] if p.parent.name == "checkpoints" else [p]


def export(ckpt_path, out_dir, *, reference: str | None = None, max_reference: int = 2000,
           force: bool = False) -> dict:
  """Writes a bundle from a checkpoint; `reference` is a data spec (default: the run's validation data).
  `out_dir` is refused, or with `force` replaced, as hhh/outdir.py says."""
  with outdir.staged(out_dir, EXPORT, sources=run_of(ckpt_path), force=force) as tmp:
    meta = ckpt_lib.load_meta(ckpt_path)
    run_cfg = config_lib.from_dict(config_lib.TrainConfig, meta["config"])
    if run_cfg.objective not in PM_OBJECTIVES:
      raise ValueError(f"{ckpt_path} was trained with objective {run_cfg.objective!r}; only a preference model "
                       "(ranked or binary) has a reward head worth exporting")
    params, _ = ckpt_lib.load_params(ckpt_path, params_lib.on_first_device(run_cfg.model))
    info = bundle_lib.write(tmp, run_cfg.model, params, meta["tokenizer"], objective=run_cfg.objective,
                            max_len=run_cfg.data.max_len, source_checkpoint=str(pathlib.Path(ckpt_path).absolute()))
    # Normalization statistics come from the bundle's own scoring path, so they match serving exactly.
    spec = reference or run_cfg.data.validation
    comps = sources.load_comparisons(spec, run_cfg.data, "validation")[:max_reference]
    contexts = [c.context for c in comps for _ in c.responses]
    responses = [r for c in comps for r in c.responses]
    if not responses:
      raise ValueError(f"reference set {spec!r} has no responses to compute normalization statistics from")
    raw = RewardModel(tmp).score(contexts, responses)
    if not np.all(np.isfinite(raw)):
      raise ValueError(f"the model gives non-finite rewards on {int(np.sum(~np.isfinite(raw)))} reference "
                       "responses")
    info["normalization"] = {"mean": float(np.mean(raw)), "std": float(max(np.std(raw), 1e-6)), "n": len(raw),
                             "reference": spec if spec != "toy" else f"toy (seed {run_cfg.data.toy_seed}, validation)"}
    bundle_lib.write_info(tmp, info)
  return info
