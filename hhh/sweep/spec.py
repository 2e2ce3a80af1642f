"""Sweep files: a YAML grid over an experiment, expanded into trials whose identity is their resolved config.

    out: runs/sweeps/tiny             # the sweep directory (default runs/sweeps/FILE_STEM)
    retries: 1                        # re-runs of a failed trial in one launch (every attempt's log is kept)
    resources: {devices: 0, cpus: 1}  # what one trial needs (a stage may give its own)
    stages:                           # in order; a stage starts when the one before it is done
      - name: pm
        experiment: experiments/tiny_pm.py      # `hhh train`; or `command: [argv...]` for any other program
                                                # (its result: the JSON object it writes to `result`,
                                                # default {workdir}/metrics.json)
        set: {steps: 2, data.toy_train: 64}     # `--set` items every trial of the stage gets
        axes:                                   # the grid: every combination is one trial
          objective: [binary, ranked]           # a config key: `--set objective=binary`, ...
          size: [100k, 1.6m]                    # the model family's sizes (model.d_model, n_layers, n_heads)
          pmp: {none: {init_from: ""}, ranked: {init_from: "@pmp"}}   # named values: label -> `--set` items
          seed: [0, 1]
    report:                           # plots in report.md (see hhh/sweep/report.py)
      - {stage: pm, metric: accuracy, x: size, line: objective}

A file with one stage may put `experiment`/`command`, `set`, `axes` (and `result`) at the top level instead of
`stages`.
String values may name `{out}` (the sweep directory) and `{AXIS}` (this trial's label on an axis), and a
command's argv also `{KEY}` (any `set` or named-axis key), `{workdir}` (the trial's directory, where a command
may write metrics.json, its result) and `{python}` (this Python); a value that
is exactly `@STAGE` is the directory of the trial of STAGE whose labels agree with this trial's on their shared
axes (e.g. a fine-tune's `init_from` pointing at its size's base LM).

Limits: a sweep file is a regular file of at most 1 MiB; a sweep has at most MAX_TRIALS (10,000) trials, counted
as the product of each stage's axis sizes before any is expanded; `retries` is at most MAX_RETRIES (100).

A trial's id is a hash of its resolved config (the experiment's config with every `--set` applied, or the
command's argv), so editing the file re-runs exactly the trials whose config changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import pathlib
import re
from typing import Any

TOP_KEYS = {"name", "out", "retries", "resources", "stages", "report", "experiment", "command", "set", "axes",
            "result"}
STAGE_KEYS = {"name", "experiment", "command", "set", "axes", "resources", "retries", "result"}
RESOURCE_KEYS = {"devices", "cpus"}
REPORT_KEYS = {"name", "stage", "metric", "x", "line", "panel", "over", "xscale", "title", "chance"}
ID_LEN = 12
MAX_FILE_BYTES = 1 << 20
MAX_TRIALS = 10_000
MAX_RETRIES = 100
# YAML aliases let a small file stand for a huge tree (a "billion laughs"): the parsed tree is walked with a cap.
MAX_NODES = 200_000


class SpecError(ValueError):
  """A bad sweep file; the message is one line naming the file and the key."""


@dataclasses.dataclass(frozen=True)
class Resources:
  devices: int = 0    # accelerators (GPUs or TPU chips) for one trial; 0 = runs on CPU only
  cpus: int = 1       # CPU cores (pinned on a CPU-only host)


@dataclasses.dataclass(frozen=True)
class Plot:
  stage: str
  metric: str
  x: str                      # an axis name, or a result field such as `params`
  line: str = ""              # an axis: one line per label ("" = every other axis together)
  panel: str = ""             # an axis: one panel per label
  over: tuple[str, ...] = ("seed",)   # axes averaged over (error bars: standard error)
  xscale: str = "linear"
  title: str = ""
  chance: float | None = None
  name: str = ""


@dataclasses.dataclass(frozen=True)
class Trial:
  id: str
  stage: str
  labels: dict[str, str]                     # axis -> label
  kind: str                                  # "train" or "command"
  experiment: str = ""                       # kind train
  overrides: tuple[str, ...] = ()            # kind train: `--set` items
  argv: tuple[str, ...] = ()                 # kind command; `{workdir}` is filled in when it runs
  config: dict[str, Any] = dataclasses.field(default_factory=dict)   # what the id hashes
  resources: Resources = Resources()
  retries: int = 1
  needs: tuple[str, ...] = ()                # ids of the earlier trials its `@STAGE` values point at
  result: str = "metrics.json"               # kind command: the JSON object it writes in its directory

  @property
  def title(self) -> str:
    return f"{self.stage}[" + ",".join(f"{k}={v}" for k, v in self.labels.items()) + "]"


@dataclasses.dataclass(frozen=True)
class Spec:
  path: pathlib.Path
  out: pathlib.Path
  trials: tuple[Trial, ...]
  stages: tuple[str, ...]
  plots: tuple[Plot, ...] = ()

  def trial_dir(self, trial: Trial) -> pathlib.Path:
    return self.out / "trials" / trial.id


def load(path, out: str | None = None) -> Spec:
  """Reads, validates and expands a sweep file (SpecError on the first problem)."""
  import yaml
  from hhh import safeio
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"sweep file {path} not found")
  try:
    text = safeio.read_text(path, MAX_FILE_BYTES)
  except ValueError as e:
    raise SpecError(str(e)) from None
  try:
    raw = yaml.safe_load(text)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]
    raise SpecError(f"{path}:{where} not valid YAML ({problem})") from None
  except RecursionError:
    raise SpecError(f"{path}: not valid YAML (nested too deeply)") from None
  _check_size(raw, path)
  return from_dict(raw, path, out=out)


def _check_size(raw, path) -> None:
  n, todo = 0, [raw]
  while todo:
    v = todo.pop()
    n += 1
    if n > MAX_NODES:
      raise SpecError(f"{path}: more than {MAX_NODES:,} values once YAML aliases are expanded")
    if isinstance(v, dict):
      todo.extend(v.keys())
      todo.extend(v.values())
    elif isinstance(v, list):
      todo.extend(v)


def from_dict(raw: Any, path, out: str | None = None) -> Spec:
  path = pathlib.Path(path)
  err = lambda msg: SpecError(f"{path}: {msg}")
  if not isinstance(raw, dict):
    raise err("expected a mapping at the top level")
  _check_keys(raw, TOP_KEYS, "", err)
  single = {k for k in ("experiment", "command", "set", "axes", "result") if k in raw}
  if "stages" in raw and single:
    raise err(f"give either 'stages' or a single stage's keys ({', '.join(sorted(single))}), not both")
  stages_raw = raw.get("stages") if "stages" in raw else [{k: raw[k] for k in single} | {"name": "main"}]
  if not isinstance(stages_raw, list) or not stages_raw:
    raise err("'stages' must be a non-empty list")
  if raw.get("out") is not None and (not isinstance(raw["out"], str) or not raw["out"].strip()):
    raise err(f"out={_short(raw['out'])}: expected a directory name")
  if raw.get("report") is not None and not isinstance(raw["report"], list):
    raise err(f"report={_short(raw['report'])}: expected a list of plots")
  out_dir = pathlib.Path(out or raw.get("out") or pathlib.Path("runs") / "sweeps" / path.stem)
  default_res = _resources(raw.get("resources", {}), "resources", err)
  default_retries = _int(raw.get("retries", 1), "retries", err, maximum=MAX_RETRIES)
  _count_trials(stages_raw, err)
  trials: list[Trial] = []
  names: list[str] = []
  experiments: dict[str, Any] = {}
  for i, st in enumerate(stages_raw):
    where = f"stages[{i}]"
    if not isinstance(st, dict):
      raise err(f"{where}: expected a mapping")
    _check_keys(st, STAGE_KEYS, where + ".", err)
    name = st.get("name", f"stage{i}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in names:
      raise err(f"{where}.name {_short(name)}: expected a unique name of letters, digits, '-' or '_'")
    names.append(name)
    where = f"stage {name}"
    if ("experiment" in st) == ("command" in st):
      raise err(f"{where}: give exactly one of 'experiment' or 'command'")
    for k in ("experiment", "result"):
      if k in st and (not isinstance(st[k], str) or not st[k]):
        raise err(f"{where}.{k}={_short(st[k])}: expected a file name")
    res = _resources(st["resources"], f"{where}.resources", err) if "resources" in st else default_res
    retries = _int(st.get("retries", default_retries), f"{where}.retries", err, maximum=MAX_RETRIES)
    base = st.get("set") or {}
    if not isinstance(base, dict):
      raise err(f"{where}.set: expected a mapping of config keys to values")
    axes = _axes(st.get("axes") or {}, where, err)
    done = [t for t in trials]
    for combo in itertools.product(*[list(values.items()) for values in axes.values()]):
      labels = {axis: label for axis, (label, _) in zip(axes, combo)}
      params = {str(k): v for k, v in base.items()}
      for _, items in combo:
        params.update(items)
      ctx = {"out": str(out_dir), **labels}
      needs: list[str] = []
      params = {k: _resolve(v, ctx, done, labels, out_dir, needs, f"{where}.set.{k}", err)
                for k, v in params.items()}
      t = _trial(st, name, labels, params, ctx, res, retries, experiments, where, err)
      trials.append(dataclasses.replace(t, needs=tuple(dict.fromkeys(needs))))
  seen: dict[str, Trial] = {}
  for t in trials:
    if t.id in seen:
      raise err(f"{seen[t.id].title} and {t.title} resolve to the same config (an axis changes nothing)")
    seen[t.id] = t
  plots = tuple(_plot(p, i, names, trials, err) for i, p in enumerate(raw.get("report") or []))
  return Spec(path=path, out=out_dir, trials=tuple(trials), stages=tuple(names), plots=plots)


def _check_keys(d: dict, allowed: set[str], prefix: str, err):
  for k in d:
    if k not in allowed:
      raise err(f"unknown key '{prefix}{k}' (valid: {', '.join(sorted(allowed))})")


def _short(v) -> str:
  text = repr(v)
  return text if len(text) <= 60 else text[:57] + "..."


def _count_trials(stages_raw, err) -> None:
  """Refuses a grid over MAX_TRIALS from the sizes of its axes alone, before anything is expanded."""
  total = 0
  for i, st in enumerate(stages_raw):
    axes = st.get("axes") if isinstance(st, dict) else None
    n = 1
    if isinstance(axes, dict):
      for values in axes.values():
        n *= max(1, len(values)) if isinstance(values, (list, dict)) else 1
    total += n
    if total > MAX_TRIALS:
      raise err(f"the grid has {total:,}{'+' if i + 1 < len(stages_raw) else ''} trials, over the limit of "
                f"{MAX_TRIALS:,} (stage {i} alone: {n:,})")


def _int(v, where, err, minimum: int = 0, maximum: int | None = None) -> int:
  if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    raise err(f"{where}={_short(v)}: expected an integer {bound}")
  return v


def _resources(d, where, err) -> Resources:
  if not isinstance(d, dict):
    raise err(f"{where}: expected a mapping with devices and cpus")
  _check_keys(d, RESOURCE_KEYS, where + ".", err)
  return Resources(devices=_int(d.get("devices", 0), f"{where}.devices", err),
                   cpus=_int(d.get("cpus", 1), f"{where}.cpus", err, minimum=1))


def _text(v) -> str:
  """A YAML value as `--set` text: true/false, comma-joined lists (tuple fields), numbers as written."""
  if isinstance(v, bool):
    return "true" if v else "false"
  if isinstance(v, (list, tuple)):
    return ",".join(_text(x) for x in v)
  if v is None:
    return ""
  return str(v)


def _axes(d, where, err) -> dict[str, dict[str, dict[str, Any]]]:
  """axis -> label -> the `--set` items that label stands for."""
  if not isinstance(d, dict):
    raise err(f"{where}.axes: expected a mapping of axis names to value lists")
  out = {}
  for axis, values in d.items():
    axis = str(axis)
    at = f"{where}.axes.{axis}"
    if isinstance(values, dict):
      # A label with no keys only feeds `{AXIS}` placeholders (e.g. a dataset name inside data paths).
      values = {label: ({} if items is None else items) for label, items in values.items()}
      if not values or not all(isinstance(v, dict) for v in values.values()):
        raise err(f"{at}: a named axis maps each label to a mapping of config keys (label: {{key: value}})")
      out[axis] = {str(label): {str(k): v for k, v in items.items()} for label, items in values.items()}
    elif isinstance(values, list) and values:
      if any(isinstance(v, (dict, list)) for v in values):
        raise err(f"{at}: values must be scalars (use a named axis for several keys)")
      labels = [_text(v) for v in values]
      if len(set(labels)) != len(labels):
        raise err(f"{at}: repeated value")
      if axis == "size":
        out[axis] = {lab: _size_items(lab, at, err) for lab in labels}
      else:
        out[axis] = {lab: {axis: v} for lab, v in zip(labels, values)}
    else:
      raise err(f"{at}: expected a non-empty list of values or a mapping of labels")
  return out


def _size_items(size: str, where, err) -> dict[str, Any]:
  from hhh.model import family
  try:
    m = family.get(size)
  except (KeyError, ValueError):
    raise err(f"{where}: unknown model size {size!r} (known: {', '.join(family.FAMILY)})") from None
  return {"model.d_model": m.d_model, "model.n_layers": m.n_layers, "model.n_heads": m.n_heads}


def _resolve(v, ctx, done: list[Trial], labels, out_dir, needs: list[str], where, err):
  if isinstance(v, str) and v.startswith("@"):
    ref = _reference(v[1:], done, labels, where, err)
    needs.append(ref.id)
    return str(out_dir / "trials" / ref.id)
  if isinstance(v, str):
    return _format(v, ctx, where, err)
  if isinstance(v, list):
    return [_resolve(x, ctx, done, labels, out_dir, needs, where, err) for x in v]
  return v


def _format(s: str, ctx: dict, where, err) -> str:
  import string
  try:
    fields = list(string.Formatter().parse(s))
  except ValueError as e:
    raise err(f"{where}: bad placeholder in {_short(s)} ({e}; write {{{{ and }}}} for literal braces)") from None
  for _, field, spec, conv in fields:
    if field is None:
      continue
    # `{out.__class__}`, `{seed:>999999999}`: only a plain name, with nothing after it, is a placeholder.
    if spec or conv or not re.fullmatch(r"[A-Za-z0-9_-]+", field):
      raise err(f"{where}: bad placeholder in {_short(s)} (only {{NAME}}; write {{{{ and }}}} for literal braces)")
    if field not in ctx:
      raise err(f"{where}: {{{field}}} is neither 'out' nor an axis of this stage ({', '.join(ctx)})")
  try:
    return s.format_map(ctx)
  except KeyError as e:
    raise err(f"{where}: {{{e.args[0]}}} is neither 'out' nor an axis of this stage ({', '.join(ctx)})") from None
  except (ValueError, IndexError, AttributeError, TypeError) as e:
    raise err(f"{where}: bad placeholder in {_short(s)} ({e}; write {{{{ and }}}} for literal braces)") from None


def _reference(stage: str, done: list[Trial], labels, where, err) -> Trial:
  cands = [t for t in done if t.stage == stage]
  if not cands:
    raise err(f"{where}: @{stage} names no earlier stage")
  match = [t for t in cands if all(labels.get(k, v) == v for k, v in t.labels.items())]
  if len(match) != 1:
    raise err(f"{where}: @{stage} matches {len(match)} trials for labels {labels}; the stage's axes must be a "
              "subset of this stage's")
  return match[0]


def _trial(st, name, labels, params, ctx, res, retries, experiments, where, err) -> Trial:
  if "experiment" in st:
    from hhh import config as config_lib
    exp = str(st["experiment"])
    overrides = tuple(f"{k}={_text(v)}" for k, v in params.items()) + ("progress=false",)
    try:
      if exp not in experiments:
        experiments[exp] = config_lib.load_experiment(exp)
      cfg = config_lib.apply_overrides(experiments[exp], list(overrides))
    except config_lib.ConfigError as e:
      raise err(f"{where} {_labels(labels)}: {e}") from None
    # JSON-normal (tuples as lists): what trial.json holds is exactly what was hashed.
    config = {"kind": "train", "config": json.loads(json.dumps(config_lib.to_dict(cfg)))}
    return Trial(id=_hash(config), stage=name, labels=labels, kind="train", experiment=exp, overrides=overrides,
                 config=config, resources=res, retries=retries)
  argv = st["command"]
  if not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) for a in argv):
    raise err(f"{where}.command: expected a non-empty list of strings")
  # `{workdir}` is the trial's own directory, known only once the id is: it stays a placeholder in the hash.
  # So are `{python}` (the interpreter that runs it: a Ray node's may live elsewhere) and `{workdir}`.
  fmt = {**{k: _text(v) for k, v in params.items()}, **ctx, "workdir": "{workdir}", "python": "{python}"}
  argv = tuple(_format(str(a), fmt, f"{where}.command", err) for a in argv)
  config = {"kind": "command", "argv": list(argv)}
  result = str(st.get("result", "metrics.json"))
  if pathlib.PurePath(result).is_absolute() or ".." in pathlib.PurePath(result).parts:
    raise err(f"{where}.result={result!r}: expected a file name inside the trial's directory")
  return Trial(id=_hash(config), stage=name, labels=labels, kind="command", argv=argv, config=config,
               resources=res, retries=retries, result=result)


def _labels(labels) -> str:
  return "[" + ",".join(f"{k}={v}" for k, v in labels.items()) + "]" if labels else ""


def _hash(config: dict) -> str:
  blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:ID_LEN]


def _plot(p, i, stages, trials, err) -> Plot:
  where = f"report[{i}]"
  if not isinstance(p, dict):
    raise err(f"{where}: expected a mapping")
  _check_keys(p, REPORT_KEYS, where + ".", err)
  for k in ("stage", "metric", "x"):
    if k not in p:
      raise err(f"{where}: missing key '{k}'")
  for k in ("stage", "metric", "x", "line", "panel", "xscale", "title", "name"):
    if k in p and not isinstance(p[k], str):
      raise err(f"{where}.{k}={_short(p[k])}: expected a string")
  if p["stage"] not in stages:
    raise err(f"{where}.stage={_short(p['stage'])}: no such stage ({', '.join(stages)})")
  axes = {a for t in trials if t.stage == p["stage"] for a in t.labels}
  for k in ("line", "panel"):
    if p.get(k) and p[k] not in axes:
      raise err(f"{where}.{k}={_short(p[k])}: not an axis of stage {p['stage']} ({', '.join(sorted(axes))})")
  over = p.get("over", ["seed"])
  over = [over] if isinstance(over, str) else over
  if not isinstance(over, list) or not all(isinstance(a, str) for a in over):
    raise err(f"{where}.over={_short(p['over'])}: expected an axis name or a list of axis names")
  over = tuple(over)
  if p.get("xscale", "linear") not in ("linear", "log"):
    raise err(f"{where}.xscale={_short(p['xscale'])}: expected linear or log")
  chance = p.get("chance")
  if chance is not None and (isinstance(chance, bool) or not isinstance(chance, (int, float))
                             or not math.isfinite(chance)):
    raise err(f"{where}.chance={_short(chance)}: expected a number")
  return Plot(stage=p["stage"], metric=str(p["metric"]), x=str(p["x"]), line=str(p.get("line", "")),
              panel=str(p.get("panel", "")), over=over, xscale=p.get("xscale", "linear"),
              title=str(p.get("title", "")), chance=p.get("chance"), name=str(p.get("name", f"plot{i}")))
