"""Reward-model bundles: everything a reward function needs, self-contained and pickle-free.

    BUNDLE/bundle.json   format version, model config, tokenizer (JSON), the end-of-context convention,
                         the training objective, normalization statistics and where they came from
    BUNDLE/params/       the parameters (an orbax pytree of arrays)

This module is the format: `write` lays a bundle out from its parts and `read` reads one back.
`hhh export` (hhh/reward/export.py) writes one from a training run.

A bundle may come from anyone, so `read` trusts none of it: bundle.json is read
only if it is a regular file (not a symlink, FIFO or device) of at most
`MAX_INFO_BYTES`, every field is checked with a one-line error naming it, and
params/ may not reach outside the bundle through symlinks.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
from typing import Any

from orbax.checkpoint import v1 as ocp

from hhh import config as config_lib
from hhh import safeio
from hhh.data import tokenizer as tokenizer_lib
from hhh.model import params as params_lib
from hhh.model.config import ModelConfig
from hhh.model.validate import is_int, is_number, model_config, show
from hhh.objectives import PM_OBJECTIVES

FORMAT_VERSION = 1

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
  write_info(out, info)
  return info


def write_info(out: pathlib.Path, info: dict) -> None:
  (out / "bundle.json").write_text(json.dumps(info, indent=2, allow_nan=False) + "\n")


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
    params = ocp.load_pytree(params_dir, params_lib.on_first_device(cfg))
  except Exception as e:  # noqa: BLE001 -- orbax raises many kinds; all mean "these are not the params"
    raise ValueError(f"{params_dir}: not the parameters of the model bundle.json describes: "
                     f"{' '.join(str(e).split())[:300]}") from e
  return cfg, params, tok, info


def read_regular_file(path, limit: int) -> bytes:
  """The bytes of `path` if it is a regular file (not a symlink) of at most `limit` bytes; else ValueError."""
  return safeio.read_bytes(path, limit, follow_symlinks=False)


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
      raise ValueError(f"{p}: is {safeio.kind(mode) if mode else 'a dangling symlink'}, not a file or directory")
  if not params.is_dir():
    raise ValueError(f"{params}: is not a directory")
  return params


def validate_info(info, where: str) -> tuple[ModelConfig, Any]:
  """(model config, tokenizer) of a parsed bundle.json, or a ValueError naming the first bad field."""
  if not isinstance(info, dict):
    raise ValueError(f"{where}: must hold a JSON object, not {show(info)}")
  for key in ("format_version", "model", "tokenizer", "objective", "max_len", "normalization"):
    if key not in info:
      raise ValueError(f"{where}: missing field {key!r}")
  if info["format_version"] != FORMAT_VERSION or not is_int(info["format_version"]):
    raise ValueError(f"{where}: format_version {show(info['format_version'])} is not {FORMAT_VERSION}")
  if info["objective"] not in PM_OBJECTIVES:
    raise ValueError(f"{where}: objective must be one of {', '.join(PM_OBJECTIVES)}, not {show(info['objective'])}")
  cfg = model_config(info["model"], where)
  if not isinstance(info["tokenizer"], dict):
    raise ValueError(f"{where}: tokenizer must be an object, not {show(info['tokenizer'])}")
  try:
    tok = tokenizer_lib.from_json(info["tokenizer"])
  except ValueError as e:
    raise ValueError(f"{where}: tokenizer: {' '.join(str(e).split())[:200]}") from None
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{where}: the tokenizer has {tok.vocab_size} ids but model.vocab_size is {cfg.vocab_size}")
  max_len = info["max_len"]
  # At least one token and <eoc>; at most what the model has positions for.
  if not is_int(max_len) or not 2 <= max_len <= cfg.max_len:
    raise ValueError(f"{where}: max_len must be an integer from 2 to model.max_len={cfg.max_len}, "
                     f"not {show(max_len)}")
  eoc = info.get("end_of_context", {})
  if not isinstance(eoc, dict):
    raise ValueError(f"{where}: end_of_context must be an object, not {show(eoc)}")
  for key, want in (("token_id", tok.eoc_id), ("pad_id", tok.pad_id)):
    if key in eoc and (not is_int(eoc[key]) or eoc[key] != want):
      raise ValueError(f"{where}: end_of_context.{key} is {show(eoc[key])} but the tokenizer's is {want}")
  norm = info["normalization"]
  if not isinstance(norm, dict):
    raise ValueError(f"{where}: normalization must be an object, not {show(norm)}")
  if not is_number(norm.get("mean")):
    raise ValueError(f"{where}: normalization.mean must be a finite number, not {show(norm.get('mean'))}")
  # A zero std turns every normalized reward into +-inf (or nan), which no RL loop can use.
  if not is_number(norm.get("std")) or norm["std"] <= 0:
    raise ValueError(f"{where}: normalization.std must be a finite number > 0, not {show(norm.get('std'))}")
  if "n" in norm and (not is_int(norm["n"]) or norm["n"] < 0):
    raise ValueError(f"{where}: normalization.n must be an integer >= 0, not {show(norm['n'])}")
  return cfg, tok
