"""Reward-model bundles: everything a reward function needs, self-contained and pickle-free.

    BUNDLE/bundle.json   format version, model config, tokenizer (JSON), the end-of-context convention,
                         the training objective, normalization statistics and where they came from
    BUNDLE/params/       the parameters (an orbax pytree of arrays)

`hhh export CKPT_DIR --out BUNDLE` writes one from a training run (its latest
checkpoint, or a given step dir) and computes the normalization statistics (mean
and std of raw rewards) over a reference set: by default the run's own held-out
responses.

A bundle may come from anyone, so `read` trusts none of it: bundle.json is read
only if it is a regular file (not a symlink, FIFO or device) of at most
`MAX_INFO_BYTES`, every field is checked with a one-line error naming it, and
params/ may not reach outside the bundle through symlinks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import stat
import typing
from typing import Any, Literal

import jax
import numpy as np
from orbax.checkpoint import v1 as ocp

from hhh import config as config_lib
from hhh import safeio
from hhh.data import sources
from hhh.data import tokenizer as tokenizer_lib
from hhh.model.config import ModelConfig
from hhh.train import checkpoint as ckpt_lib

FORMAT_VERSION = 1
OBJECTIVES = ("ranked", "binary")
# A pretrained tokenizer's JSON rides inside bundle.json (SmolLM2's is ~2 MB, Llama 3's ~9 MB).
MAX_INFO_BYTES = safeio.MAX_TOKENIZER_BYTES


def write(out_dir, model_cfg: ModelConfig, params, tokenizer_json: dict, *, objective: str, max_len: int,
          normalization: dict | None = None, source_checkpoint: str | None = None) -> dict:
  """Writes a bundle into `out_dir` (which must not exist yet) from its parts; returns its bundle.json."""
  out = pathlib.Path(out_dir)
  tok = tokenizer_lib.from_json(tokenizer_json)
  info = {
      "format_version": FORMAT_VERSION,
      "model": config_lib.to_dict(model_cfg),
      "tokenizer": tokenizer_json,
      "objective": objective,
      "end_of_context": {"token_id": tok.eoc_id, "appended": True, "pad_id": tok.pad_id,
                         "sequence": "context tokens + response tokens + <eoc>; the reward is read at <eoc>",
                         "truncation": "context from the left, response from the right; <eoc> always kept"},
      "max_len": max_len,
      "source_checkpoint": source_checkpoint,
      "normalization": normalization or {"mean": 0.0, "std": 1.0, "n": 0, "reference": None},
  }
  # What `read` would refuse is never written (`hhh convert --as-bundle` once wrote such bundles).
  validate_info(json.loads(json.dumps(info, allow_nan=True)), "refusing to write a reward bundle")
  out.mkdir(parents=True)
  ocp.save_pytree(out / "params", params)
  _write_info(out, info)
  return info


def _write_info(out: pathlib.Path, info: dict) -> None:
  (out / "bundle.json").write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")


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
  from hhh import outdir
  from hhh.reward.api import RewardModel
  with outdir.staged(out_dir, EXPORT, sources=run_of(ckpt_path), force=force) as tmp:
    meta = ckpt_lib.load_meta(ckpt_path)
    run_cfg = config_lib.from_dict(config_lib.TrainConfig, meta["config"])
    if run_cfg.objective not in OBJECTIVES:
      raise ValueError(f"{ckpt_path} was trained with objective {run_cfg.objective!r}; only a preference model "
                       "(ranked or binary) has a reward head worth exporting")
    params, _ = ckpt_lib.load_params(ckpt_path, _abstract(run_cfg.model))
    info = write(tmp, run_cfg.model, params, meta["tokenizer"], objective=run_cfg.objective,
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
    _write_info(tmp, info)
  return info


def _abstract(cfg: ModelConfig):
  """The parameter tree on this process's first device, whatever topology it was written on."""
  from hhh.train.step import abstract_params
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params(cfg)[1])


def read(path):
  """(model config, params, tokenizer, info) of a bundle, every field checked."""
  path = pathlib.Path(path).absolute()
  info_path = path / "bundle.json"
  if not os.path.lexists(info_path):
    raise FileNotFoundError(f"{path} is not a reward bundle (no bundle.json); write one with `hhh export`")
  where = str(info_path)
  data = read_regular_file(info_path, MAX_INFO_BYTES)
  info = safeio.parse_json(data, where)
  cfg, tok = validate_info(info, where)
  params_dir = _params_dir(path)
  try:
    params = ocp.load_pytree(params_dir, _abstract(cfg))
  except Exception as e:  # noqa: BLE001 -- orbax raises many kinds; all mean "these are not the params"
    raise ValueError(f"{params_dir}: not the parameters of the model bundle.json describes: "
                     f"{' '.join(str(e).split())[:300]}") from e
  return cfg, params, tok, info


def read_regular_file(path, limit: int) -> bytes:
  """The bytes of `path` if it is a regular file (not a symlink) of at most `limit` bytes; else ValueError."""
  return safeio.read_bytes(path, limit, follow_symlinks=False)


_kind = safeio.kind


def _params_dir(bundle: pathlib.Path) -> pathlib.Path:
  """bundle/params, refused if it (or anything in it) resolves outside the bundle or is not a file or directory."""
  params = bundle / "params"
  if not os.path.lexists(params):
    raise FileNotFoundError(f"{bundle} has no params/ directory; write the bundle with `hhh export`")
  root = bundle.resolve()
  entries = [params] + [pathlib.Path(d) / n for d, dirs, files in os.walk(params) for n in dirs + files]
  for p in entries:
    target = p.resolve()
    if not target.is_relative_to(root):
      raise ValueError(f"{p}: points outside the bundle (to {target}); a bundle must be self-contained")
    mode = os.stat(target).st_mode if target.exists() else 0
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
      raise ValueError(f"{p}: is {_kind(mode) if mode else 'a dangling symlink'}, not a file or directory")
  if not params.is_dir():
    raise ValueError(f"{params}: is not a directory")
  return params


# --- bundle.json fields ---------------------------------------------------------------------------------------

_POSITIVE_INTS = {"vocab_size", "d_model", "n_layers", "n_heads", "max_len"}
# Upper bounds, far above any real checkpoint (Llama 3 405B: d_model 16384, 126 layers, vocab 128256), so that
# a hostile config is refused before its parameter tree is traced or allocated (2000 layers once hung here).
MAX_DIMS = {"vocab_size": 1 << 21, "d_model": 1 << 15, "n_layers": 512, "n_heads": 1 << 10, "n_kv_heads": 1 << 10,
            "d_ff": 1 << 18, "max_len": 1 << 20}
MAX_PARAMS = 1 << 36  # about 69 billion: 275 GB of float32 parameters
_FLOAT_RANGES = {"norm_eps": (0.0, 1.0, False), "rope_theta": (0.0, None, False),
                 "rotary_pct": (0.0, 1.0, False), "dropout": (0.0, 1.0, True)}  # (low, high, low allowed)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v) -> str:
  return json.dumps(v)[:60] if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__


def model_config(d, where: str, names: dict[str, str] | None = None) -> ModelConfig:
  """The `ModelConfig` of a dict of its fields, every type and range checked, or a ValueError naming the first bad
  field. Bundles, HF config.json, GGUF metadata and checkpoints all come through here. `names` maps our field
  names to what the file calls them (e.g. "n_layers" -> "num_hidden_layers"), for the message."""
  if not isinstance(d, dict):
    raise ValueError(f"{where}: model must be an object, not {_show(d)}")
  names = names or {}
  hints = typing.get_type_hints(ModelConfig)
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"{where}: model.{unknown[0]} is not a model config field")
  for name, v in d.items():
    tp, key = hints[name], names.get(name, f"model.{name}")
    if typing.get_origin(tp) is Literal:
      if v not in typing.get_args(tp) or not isinstance(v, str):
        raise ValueError(f"{where}: {key} must be one of {', '.join(typing.get_args(tp))}, not {_show(v)}")
    elif tp is bool:
      if not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, not {_show(v)}")
    elif tp is int:
      low, high = (1 if name in _POSITIVE_INTS else 0), MAX_DIMS.get(name)
      if not _is_int(v) or v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{where}: {key} must be an integer {bound}, not {_show(v)}")
    elif tp is float:
      low, high, low_ok = _FLOAT_RANGES.get(name, (None, None, True))
      if not _is_number(v) or (low is not None and (v < low or (v == low and not low_ok))) or \
          (high is not None and v > high):
        raise ValueError(f"{where}: {key} must be a finite number{_range(low, high, low_ok)}, not {_show(v)}")
  try:
    cfg = ModelConfig(**d)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  from hhh.model import family
  n = family.param_counts(cfg)["total"]
  if n > MAX_PARAMS:
    raise ValueError(f"{where}: the model would have {n:,} parameters, over the limit of {MAX_PARAMS:,}")
  return cfg


_model_config = model_config


def _range(low, high, low_ok) -> str:
  if low is None:
    return ""
  lo = f"{'>=' if low_ok else '>'} {low:g}"
  return f" {lo}" if high is None else f" {lo} and <= {high:g}"


def validate_info(info, where: str) -> tuple[ModelConfig, Any]:
  """(model config, tokenizer) of a parsed bundle.json, or a ValueError naming the first bad field."""
  if not isinstance(info, dict):
    raise ValueError(f"{where}: must hold a JSON object, not {_show(info)}")
  for key in ("format_version", "model", "tokenizer", "objective", "max_len", "normalization"):
    if key not in info:
      raise ValueError(f"{where}: missing field {key!r}")
  if info["format_version"] != FORMAT_VERSION or not _is_int(info["format_version"]):
    raise ValueError(f"{where}: format_version {_show(info['format_version'])} is not {FORMAT_VERSION}")
  if info["objective"] not in OBJECTIVES:
    raise ValueError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}, not {_show(info['objective'])}")
  cfg = _model_config(info["model"], where)
  if not isinstance(info["tokenizer"], dict):
    raise ValueError(f"{where}: tokenizer must be an object, not {_show(info['tokenizer'])}")
  try:
    tok = tokenizer_lib.from_json(info["tokenizer"])
  except ValueError as e:
    raise ValueError(f"{where}: tokenizer: {' '.join(str(e).split())[:200]}") from None
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{where}: the tokenizer has {tok.vocab_size} ids but model.vocab_size is {cfg.vocab_size}")
  max_len = info["max_len"]
  # At least one token and <eoc>; at most what the model has positions for.
  if not _is_int(max_len) or not 2 <= max_len <= cfg.max_len:
    raise ValueError(f"{where}: max_len must be an integer from 2 to model.max_len={cfg.max_len}, "
                     f"not {_show(max_len)}")
  eoc = info.get("end_of_context", {})
  if not isinstance(eoc, dict):
    raise ValueError(f"{where}: end_of_context must be an object, not {_show(eoc)}")
  for key, want in (("token_id", tok.eoc_id), ("pad_id", tok.pad_id)):
    if key in eoc and (not _is_int(eoc[key]) or eoc[key] != want):
      raise ValueError(f"{where}: end_of_context.{key} is {_show(eoc[key])} but the tokenizer's is {want}")
  norm = info["normalization"]
  if not isinstance(norm, dict):
    raise ValueError(f"{where}: normalization must be an object, not {_show(norm)}")
  if not _is_number(norm.get("mean")):
    raise ValueError(f"{where}: normalization.mean must be a finite number, not {_show(norm.get('mean'))}")
  # A zero std turns every normalized reward into +-inf (or nan), which no RL loop can use.
  if not _is_number(norm.get("std")) or norm["std"] <= 0:
    raise ValueError(f"{where}: normalization.std must be a finite number > 0, not {_show(norm.get('std'))}")
  if "n" in norm and (not _is_int(norm["n"]) or norm["n"] < 0):
    raise ValueError(f"{where}: normalization.n must be an integer >= 0, not {_show(norm['n'])}")
  return cfg, tok
