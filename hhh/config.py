"""Configs are code: typed dataclasses, one per experiment, overridden with `--set key=value`."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import pathlib
import sys
import types
import typing
from typing import Any, Literal

from hhh.model.config import ModelConfig
from hhh.model.sharding import MeshConfig
from hhh.objectives import OBJECTIVES, PM_OBJECTIVES


class ConfigError(ValueError):
  """A bad config key or value; the CLI prints it as one line."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  # Comparisons: a dataset dir (`hhh data mine`), .jsonl, .parquet, hf:NAME, or "toy" (the generated
  # assistant world); or a weighted mixture "PATH[:WEIGHT][:binarize],..." (PMP).
  # For objective "lm": a text file, a {"text": ...} .jsonl, or "toy" (the toy world's dialogues).
  train: str = "toy"
  validation: str = "toy"
  toy_train: int = 4000
  toy_validation: int = 500
  toy_k: int = 2
  toy_seed: int = 0
  tokenizer: str = "byte"       # "byte", "bpe:VOCAB" (trained on the training text), or a tokenizer .json
  max_len: int = 128
  buckets: tuple[int, ...] = (64, 128)
  max_k: int = 2
  # A context too long for max_len beside a response loses tokens from the left. "shared": once, to what fits
  # beside the comparison's longest response, so its responses are compared on the same context (and pack);
  # "each": per response, as scoring does, so a comparison's responses may follow different contexts.
  context_cut: str = "shared"
  # Ranked and binary runs train on packed rows (hhh.data.packing): each comparison's context once, then its
  # responses, several comparisons to a row of at most `pack_len` tokens (a comparison longer than that is split
  # over rows, its context repeated). Same loss as unpacked. 0: the largest bucket, except on CPU with buckets
  # of 512+ tokens, where rows grow to 8x it, or to batch_tokens per batch shard (packing.row_length: less
  # padding, and CPU attention skips what a row does not see).
  pack: bool = True
  pack_len: int = 0
  # A token budget per step instead of `batch_size` comparisons (0: off). Packed steps are then one shape,
  # batch_tokens / row length rows (pack_len=0 on CPU: one row per batch shard), holding as many comparisons as
  # fit and at most `batch_size`, so set batch_size to the most a step may hold. Nearly no padding and one
  # compile, at a varying comparisons per step.
  batch_tokens: int = 0
  # Read dataset directories lazily (hhh.data.stream): a length index cached beside the store, then each step
  # reads, tokenizes and packs only this process's comparisons, in `stream_workers` grain worker processes
  # (0: in the training process). The same batches as in memory. Toy and .jsonl sources stay in memory.
  stream: bool = False
  stream_workers: int = 1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 1e-3
  warmup_steps: int = 20
  min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio at the last step
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process runs: set all three on every process (or leave coordinator empty for one process)."""
  coordinator: str = ""         # "host:port" of process 0
  num_processes: int = 1
  process_id: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  objective: Literal["lm", "imitation", "binary", "ranked"] = "ranked"
  lm_coef: float = 0.0          # PM objectives: add lm_coef * LM loss on the preferred sequence
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  batch_size: int = 16          # global, in comparisons
  steps: int = 300
  seed: int = 0
  log_every: int = 10
  eval_every: int = 100
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  init_from: str = ""           # another run's workdir (or one of its checkpoint step dirs): start from its parameters
  peak_tflops: float = 0.0      # per device, for MFU; 0 = measure a matmul at the start of the run
  progress: bool = True

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ConfigError(f"objective={self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if self.batch_size < 1 or self.steps < 0:
      raise ConfigError("batch_size must be >= 1 and steps >= 0")
    if max(self.data.buckets) > self.model.max_len:
      raise ConfigError(f"data.buckets reach {max(self.data.buckets)} > model.max_len={self.model.max_len}")
    if max(self.data.buckets) < self.data.max_len:
      raise ConfigError(f"data.max_len={self.data.max_len} exceeds the largest bucket {max(self.data.buckets)}")
    if self.data.context_cut not in ("shared", "each"):
      raise ConfigError(f"data.context_cut={self.data.context_cut!r} must be 'shared' or 'each'")
    if self.data.pack_len and self.data.pack_len < self.data.max_len:
      raise ConfigError(f"data.pack_len={self.data.pack_len} must hold one sequence of data.max_len="
                        f"{self.data.max_len} tokens (or be 0: the largest bucket)")
    if self.data.batch_tokens:
      row_len = self.data.pack_len or max(self.data.buckets)
      if not (self.data.pack and self.objective in PM_OBJECTIVES):
        raise ConfigError("data.batch_tokens needs packed rows: data.pack=true and a ranked or binary objective")
      if self.data.batch_tokens < row_len or self.data.batch_tokens % row_len:
        raise ConfigError(f"data.batch_tokens={self.data.batch_tokens} must be a multiple of the row length "
                          f"{row_len} (data.pack_len, or the largest bucket)")


def _convert(text: str, tp, key: str):
  origin = typing.get_origin(tp)
  try:
    if origin is Literal:
      allowed = typing.get_args(tp)
      if text not in allowed:
        raise ConfigError(f"{key}={text!r}: expected one of {', '.join(map(str, allowed))}")
      return text
    if origin is tuple:
      (elem, *_) = typing.get_args(tp)
      return tuple(_convert(t.strip(), elem, key) for t in text.split(",") if t.strip())
    if origin in (typing.Union, types.UnionType):
      return _convert(text, next(a for a in typing.get_args(tp) if a is not type(None)), key)
    if tp is bool:
      low = text.lower()
      if low not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={text!r}: expected true or false")
      return low in ("true", "1", "yes")
    if tp in (int, float):
      return tp(text)
    if tp is str:
      return text
  except ConfigError:
    raise
  except (TypeError, ValueError):
    raise ConfigError(f"{key}={text!r}: expected {getattr(tp, '__name__', tp)}") from None
  raise ConfigError(f"{key} cannot be set from the command line")


def _set(cfg, items: list[tuple[list[str], str, str]]):
  """Applies (path, text, full key) items to one dataclass level in a single replace, so fields that are
  validated together (model.d_model and model.n_heads, data.max_len and data.buckets) can change together,
  in any order."""
  fields = {f.name: f for f in dataclasses.fields(cfg)}
  hints = typing.get_type_hints(type(cfg))
  values, nested = {}, {}
  for path, text, full in items:
    name = path[0]
    if name not in fields:
      raise ConfigError(f"unknown config key {full!r} (valid here: {', '.join(sorted(fields))})")
    if len(path) == 1:
      if dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"{full!r} is a section; set one of its keys, e.g. {full}.{dataclasses.fields(hints[name])[0].name}=...")
      values[name] = _convert(text, hints[name], full)
    elif not dataclasses.is_dataclass(getattr(cfg, name)):
      raise ConfigError(f"unknown config key {full!r} ({name} has no sub-keys)")
    else:
      nested.setdefault(name, []).append((path[1:], text, full))
  for name, sub_items in nested.items():
    values[name] = _set(getattr(cfg, name), sub_items)
  try:
    return dataclasses.replace(cfg, **values)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    keys = ", ".join(f"{full}={text!r}" for _, text, full in items)
    raise ConfigError(f"{keys}: {e}") from None


def apply_overrides(cfg, overrides: list[str]):
  """All overrides are applied at once (the last one wins for a repeated key), then validated."""
  items = {}
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} must look like key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    items.pop(key, None)
    items[key] = (key.split("."), text.strip(), key)
  return _set(cfg, list(items.values())) if items else cfg


def add_set_argument(parser, what: str = "config", example: str | None = None) -> None:
  """The `--set KEY=VALUE` option of every entry point (repeatable; `apply_overrides` reads the items)."""
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help=f"override a {what} field" + (f" (e.g. {example})" if example else "") + "; repeatable")


def overrides_or_exit(cfg, overrides: list[str]):
  """`apply_overrides` for a script's own `main`: a bad item ends the process with one line, `hhh: error: ...`,
  and status 2, as the `hhh` command does (its subcommands raise, and hhh/cli.py prints)."""
  try:
    return apply_overrides(cfg, overrides)
  except (ConfigError, ValueError) as e:   # ValueError: a config's own check (its __post_init__)
    print(f"hhh: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def parse_script(argv, base, *, description: str, what: str, setup=None):
  """(args, config) of a script's own `main`: `--set` items applied to `base` (a bad one exits as
  `overrides_or_exit` says); `setup(parser)` adds the script's other arguments."""
  import argparse
  p = argparse.ArgumentParser(description=description)
  if setup is not None:
    setup(p)
  add_set_argument(p, what)
  args = p.parse_args(argv)
  return args, overrides_or_exit(base, args.set)


def load_experiment(spec: str):
  """An experiment is a Python file (or module name) with a `config()` returning a config dataclass."""
  path = pathlib.Path(spec)
  if path.suffix == ".py" or path.exists():
    if not path.is_file():
      raise ConfigError(f"experiment file {spec} not found")
    mod_spec = importlib.util.spec_from_file_location(f"hhh_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(spec)
    except ImportError:
      raise ConfigError(f"experiment {spec!r} is neither a file nor an importable module") from None
  if not hasattr(module, "config"):
    raise ConfigError(f"experiment {spec} defines no config() function")
  return module.config()


def to_dict(cfg) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def from_dict(cls, d: dict[str, Any]):
  """Rebuilds a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in d:
      continue
    v, tp = d[f.name], hints[f.name]
    if dataclasses.is_dataclass(tp):
      v = from_dict(tp, v)
    elif typing.get_origin(tp) is tuple:
      v = tuple(v)
    kwargs[f.name] = v
  unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
  return cls(**kwargs)


def dumps(cfg) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
