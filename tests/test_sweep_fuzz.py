"""Seeded random mutations of real sweep files: every case ends within a time bound with exit 0 or one
`hhh: error:` line (no traceback), and changes nothing outside its `--out`.

Two bases: sweeps/tiny.yaml (an experiment sweep: loaded, validated and shown with `hhh sweep status`) and a
two-stage command sweep whose trials take milliseconds, so a mutation that still loads is also run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import random
import sys
import time

import yaml

from hhh import cli
from tests.conftest import REPO

SEED = 26
CASES = 60            # for the base that is only loaded
MAX_RUN_TRIALS = 6
CASE_BOUND_S = 20.0   # one case, generous for a loaded machine: the slowest case measured took well under 1 s

POOL = [5, -1, 0, 10**9, 1e308, float("nan"), "x", "", None, True, [], {}, [1, 2], {"a": 1}, {"a": {"b": [1]}},
        "{out}", "{out.__class__}", "{seed:>999999999}", "{}", "{nope}", "@main", "@nope", "../../outside", "/",
        "x" * 10_000, list(range(200)), {"k" + str(i): [i] for i in range(50)}, "\u00e9\u4e2d", "!!python/none"]

RAW = ["\t", ": :", "&a [1]", "*a", "!!python/object/apply:os.system ['echo owned']", "{", "]", "- - -", "\x00",
       "? ", "%YAML 9.9\n---\n"]

_TRIAL = """
import json, pathlib, sys
wd = pathlib.Path(sys.argv[1])
json.dump({"value": float(len(sys.argv))}, open(wd / "metrics.json", "w"))
"""


def _paths(node, prefix=()):
  yield prefix
  if isinstance(node, dict):
    for k, v in node.items():
      yield from _paths(v, prefix + (k,))
  elif isinstance(node, list):
    for i, v in enumerate(node):
      yield from _paths(v, prefix + (i,))


def _mutate(doc, rng: random.Random):
  """One to three edits of the parsed tree: replace, delete, duplicate or add a node."""
  import copy
  doc = copy.deepcopy(doc)
  for _ in range(rng.randint(1, 3)):
    paths = [p for p in _paths(doc) if p]
    if not paths:
      return rng.choice(POOL)
    path = rng.choice(paths)
    parent = doc
    for k in path[:-1]:
      parent = parent[k]
    key, op = path[-1], rng.choice(("replace", "replace", "delete", "duplicate", "add"))
    if op == "replace":
      parent[key] = copy.deepcopy(rng.choice(POOL))
    elif op == "delete":
      del parent[key]
    elif op == "duplicate" and isinstance(parent, list):
      parent.append(copy.deepcopy(parent[key]))
    elif isinstance(parent, dict):
      parent[rng.choice(["axes", "set", "retries", "out", "stages", "x_unknown", "report", "over", "seed"])] = \
          copy.deepcopy(rng.choice(POOL))
  return doc


def _text(base_text: str, base_doc, rng: random.Random) -> str:
  if rng.random() < 0.25:  # raw text edits: what YAML's own parser has to refuse
    cut = rng.randrange(len(base_text))
    return base_text[:cut] + rng.choice(RAW) + base_text[cut + rng.randint(0, 3):]
  return yaml.safe_dump(_mutate(base_doc, rng), sort_keys=False, allow_unicode=True)


def _snapshot(root: pathlib.Path, *skip: pathlib.Path) -> dict[str, str]:
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if pathlib.Path(dirpath, d) not in skip]
    for f in filenames:
      p = pathlib.Path(dirpath, f)
      out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def _trial_count(path, out) -> int:
  from hhh.sweep import spec as spec_lib
  try:
    return len(spec_lib.load(path, out=str(out)).trials)
  except (ValueError, FileNotFoundError):
    return 0


def _run_case(argv) -> tuple[int, str, float]:
  err, out = io.StringIO(), io.StringIO()
  t0 = time.monotonic()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    rc = cli.main(argv)   # an uncaught exception is a traceback, and fails the test here
  return rc, err.getvalue(), time.monotonic() - t0


def _fuzz(tmp_path, base_text: str, commands, monkeypatch, cases: int = CASES, cwd=REPO):
  # The shipped sweep's experiment paths are relative to the repository; a command sweep runs in a folder of its
  # own, since a mutated command may write where its trial runs (the user's program, not hhh, writing there).
  monkeypatch.chdir(cwd)
  base_doc = yaml.safe_load(base_text)
  rng = random.Random(SEED)
  sentinel = tmp_path / "outside"
  sentinel.mkdir(exist_ok=True)
  (sentinel / "keep.txt").write_text("must survive")
  ran = errors = 0
  worst = 0.0
  for i in range(cases):
    case = tmp_path / f"case{i}"
    case.mkdir()
    path = case / "s.yaml"
    path.write_text(_text(base_text, base_doc, rng), encoding="utf-8")
    out = case / "out"
    before = _snapshot(tmp_path, out, pathlib.Path(cwd))
    for cmd in commands:
      if cmd == "run" and _trial_count(path, out) > MAX_RUN_TRIALS:
        continue   # a mutated grid may hold hundreds of trials; status covers it, running them is not the point
      rc, err, secs = _run_case(["sweep", cmd, str(path), "--out", str(out)] +
                                (["--device-kind", "cpu"] if cmd == "run" else []))
      worst = max(worst, secs)
      assert secs < CASE_BOUND_S, (i, cmd, secs, path.read_text()[:2000])
      assert "Traceback" not in err, (i, cmd, err[-3000:])
      if rc != 0:
        lines = err.splitlines()
        assert rc in (1, 2) and len(lines) == 1 and lines[0].startswith("hhh: error: "), (i, cmd, rc, err[-3000:])
        errors += 1
        break
      ran += cmd == "run"
    after = _snapshot(tmp_path, out, pathlib.Path(cwd))
    assert after == before, (i, sorted(set(after.items()) ^ set(before.items()))[:5])
  assert (sentinel / "keep.txt").read_text() == "must survive"
  return ran, errors, worst


def test_fuzz_the_shipped_tiny_sweep(tmp_path, monkeypatch):
  base = (REPO / "sweeps" / "tiny.yaml").read_text()
  _, errors, worst = _fuzz(tmp_path, base, ["status"], monkeypatch)
  assert 0 < errors < CASES   # the mutations both break the file and leave it loadable


def test_fuzz_a_command_sweep_that_runs(tmp_path, monkeypatch):
  (tmp_path / "trial.py").write_text(_TRIAL)
  base = yaml.safe_dump({
      "retries": 0,
      "stages": [
          {"name": "a", "command": [sys.executable, str(tmp_path / "trial.py"), "{workdir}", "{seed}"],
           "axes": {"seed": [0, 1]}},
          {"name": "b", "command": [sys.executable, str(tmp_path / "trial.py"), "{workdir}", "{seed}", "{init}"],
           "set": {"init": "@a"}, "axes": {"seed": [0, 1]}}],
      "report": [{"stage": "b", "metric": "value", "x": "seed"}]}, sort_keys=False)
  # Fewer cases: each that loads runs its trials (about 1 s).
  (tmp_path / "cwd").mkdir()
  ran, errors, worst = _fuzz(tmp_path, base, ["run", "status"], monkeypatch, cases=24, cwd=tmp_path / "cwd")
  assert not (REPO / "metrics.json").exists()
  assert ran > 0 and errors > 0
