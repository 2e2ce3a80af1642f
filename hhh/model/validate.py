"""A `ModelConfig` from an untrusted dict (a bundle, an HF config.json, GGUF metadata, a checkpoint's meta): every
field's type and range checked, and upper bounds far above any real checkpoint, so that a hostile config is refused
with a one-line error naming the field before its parameter tree is traced or allocated."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Literal

from hhh.model import family
from hhh.model.config import ModelConfig

_POSITIVE_INTS = {"vocab_size", "d_model", "n_layers", "n_heads", "max_len"}
# Upper bounds, far above any real checkpoint (Llama 3 405B: d_model 16384, 126 layers, vocab 128256), so that
# a hostile config is refused before its parameter tree is traced or allocated (2000 layers once hung here).
MAX_DIMS = {"vocab_size": 1 << 21, "d_model": 1 << 15, "n_layers": 512, "n_heads": 1 << 10, "n_kv_heads": 1 << 10,
            "d_ff": 1 << 18, "max_len": 1 << 20}
MAX_PARAMS = 1 << 36  # about 69 billion: 275 GB of float32 parameters
_FLOAT_RANGES = {"norm_eps": (0.0, 1.0, False), "rope_theta": (0.0, None, False),
                 "rotary_pct": (0.0, 1.0, False), "dropout": (0.0, 1.0, True)}  # (low, high, low allowed)


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def show(v) -> str:
  return json.dumps(v)[:60] if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__


def model_config(d, where: str, names: dict[str, str] | None = None) -> ModelConfig:
  """The `ModelConfig` of a dict of its fields, every type and range checked, or a ValueError naming the first bad
  field. Bundles, HF config.json, GGUF metadata and checkpoints all come through here. `names` maps our field
  names to what the file calls them (e.g. "n_layers" -> "num_hidden_layers"), for the message."""
  if not isinstance(d, dict):
    raise ValueError(f"{where}: model must be an object, not {show(d)}")
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
        raise ValueError(f"{where}: {key} must be one of {', '.join(typing.get_args(tp))}, not {show(v)}")
    elif tp is bool:
      if not isinstance(v, bool):
        raise ValueError(f"{where}: {key} must be true or false, not {show(v)}")
    elif tp is int:
      low, high = (1 if name in _POSITIVE_INTS else 0), MAX_DIMS.get(name)
      if not is_int(v) or v < low or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{where}: {key} must be an integer {bound}, not {show(v)}")
    elif tp is float:
      low, high, low_ok = _FLOAT_RANGES.get(name, (None, None, True))
      if not is_number(v) or (low is not None and (v < low or (v == low and not low_ok))) or \
          (high is not None and v > high):
        raise ValueError(f"{where}: {key} must be a finite number{_range(low, high, low_ok)}, not {show(v)}")
  try:
    cfg = ModelConfig(**d)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  n = family.param_counts(cfg)["total"]
  if n > MAX_PARAMS:
    raise ValueError(f"{where}: the model would have {n:,} parameters, over the limit of {MAX_PARAMS:,}")
  return cfg



def _range(low, high, low_ok) -> str:
  if low is None:
    return ""
  lo = f"{'>=' if low_ok else '>'} {low:g}"
  return f" {lo}" if high is None else f" {lo} and <= {high:g}"
