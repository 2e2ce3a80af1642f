"""Reward-model bundles: everything a reward function needs, self-contained and pickle-free.

    BUNDLE/bundle.json   format version, model config, tokenizer (JSON), the end-of-context convention,
                         the training objective, normalization statistics and where they came from
    BUNDLE/params/       the parameters (an orbax pytree of arrays)

`hhh export CKPT_DIR --out BUNDLE` writes one from a training run (its latest
checkpoint, or a given step dir) and computes the normalization statistics (mean
and std of raw rewards) over a reference set: by default the run's own held-out
responses.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
from orbax.checkpoint import v1 as ocp

from hhh import config as config_lib
from hhh.data import sources
from hhh.data import tokenizer as tokenizer_lib
from hhh.model.config import ModelConfig
from hhh.train import checkpoint as ckpt_lib

FORMAT_VERSION = 1


def export(ckpt_path, out_dir, *, reference: str | None = None, max_reference: int = 2000) -> dict:
  """Writes a bundle from a checkpoint; `reference` is a data spec (default: the run's validation data)."""
  from hhh.reward.api import RewardModel
  meta = ckpt_lib.load_meta(ckpt_path)
  run_cfg = config_lib.from_dict(config_lib.TrainConfig, meta["config"])
  if run_cfg.objective not in ("ranked", "binary"):
    raise ValueError(f"{ckpt_path} was trained with objective {run_cfg.objective!r}; only a preference model "
                     "(ranked or binary) has a reward head worth exporting")
  params, _ = ckpt_lib.load_params(ckpt_path, _abstract(run_cfg.model))
  out = pathlib.Path(out_dir).absolute()
  tmp = out.with_name(out.name + ".partial")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  ocp.save_pytree(tmp / "params", params)
  tok = tokenizer_lib.from_json(meta["tokenizer"])
  info = {
      "format_version": FORMAT_VERSION,
      "model": config_lib.to_dict(run_cfg.model),
      "tokenizer": meta["tokenizer"],
      "objective": run_cfg.objective,
      "end_of_context": {"token_id": tok.eoc_id, "appended": True, "pad_id": tok.pad_id,
                         "sequence": "context tokens + response tokens + <eoc>; the reward is read at <eoc>",
                         "truncation": "context from the left, response from the right; <eoc> always kept"},
      "max_len": run_cfg.data.max_len,
      "source_checkpoint": str(pathlib.Path(ckpt_path).absolute()),
      "normalization": {"mean": 0.0, "std": 1.0, "n": 0, "reference": None},
  }
  (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
  # Normalization statistics come from the bundle's own scoring path, so they match serving exactly.
  spec = reference or run_cfg.data.validation
  comps = sources.load_comparisons(spec, run_cfg.data, "validation")[:max_reference]
  contexts = [c.context for c in comps for _ in c.responses]
  responses = [r for c in comps for r in c.responses]
  if not responses:
    raise ValueError(f"reference set {spec!r} has no responses to compute normalization statistics from")
  raw = RewardModel(tmp).score(contexts, responses)
  info["normalization"] = {"mean": float(np.mean(raw)), "std": float(max(np.std(raw), 1e-6)), "n": len(raw),
                           "reference": spec if spec != "toy" else f"toy (seed {run_cfg.data.toy_seed}, validation)"}
  (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)
  return info


def _abstract(cfg: ModelConfig):
  """The parameter tree on this process's first device, whatever topology it was written on."""
  from hhh.train.step import abstract_params
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params(cfg)[1])


def read(path):
  """(model config, params, tokenizer, info) of a bundle."""
  path = pathlib.Path(path).absolute()
  info_path = path / "bundle.json"
  if not info_path.exists():
    raise FileNotFoundError(f"{path} is not a reward bundle (no bundle.json); write one with `hhh export`")
  info = json.loads(info_path.read_text())
  if info.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: bundle format {info.get('format_version')} is not {FORMAT_VERSION}")
  cfg = config_lib.from_dict(ModelConfig, info["model"])
  params = ocp.load_pytree(path / "params", _abstract(cfg))
  return cfg, params, tokenizer_lib.from_json(info["tokenizer"]), info
