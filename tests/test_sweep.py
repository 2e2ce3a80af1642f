"""Sweep files and the local backend, on command trials that take milliseconds: validation, identity, resources,
retries, status, the report's numbers, and a launcher killed with SIGKILL whose children die with it."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from hhh import cli, sweep
from hhh.sweep import local, report, spec as spec_lib, trial as trial_lib
from tests.conftest import REPO, TINY_EXPERIMENT, hhh_env

# A trial process: records its pid, start and environment; the label `hold` waits for the sweep's gate file;
# `fail` exits 3 until it has failed `fails` times; then writes metrics.json and appends to the completion log.
TRIAL = textwrap.dedent('''
  import json, os, pathlib, sys, time
  wd, label, log, gate, fails = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
  (wd / "pid").write_text(str(os.getpid()))
  n = len(list(wd.glob("failures-*")))
  if n < fails:
    (wd / f"failures-{n}").write_text("")
    print("failing on purpose", flush=True)
    sys.exit(3)
  while label == "hold" and not os.path.exists(gate):
    time.sleep(0.05)
  env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS", "HHH_TRIAL_ID")}
  json.dump({"value": float(sys.argv[6]), "env": env, "cpus": sorted(os.sched_getaffinity(0))},
            open(wd / "metrics.json", "w"))
  with open(log, "a") as f:
    f.write(label + "\\n")
''')


def _write(tmp_path, doc: dict, name="s.yaml") -> pathlib.Path:
  path = tmp_path / name
  path.write_text(yaml.safe_dump(doc, sort_keys=False))
  return path


def _command_sweep(tmp_path, labels=("a", "b"), fails=0, retries=1, resources=None, values=None, axes=None):
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "trial.py").write_text(TRIAL)
  doc = {"out": str(tmp_path / "out"), "retries": retries, "resources": resources or {"devices": 0, "cpus": 1},
         "command": [sys.executable, str(tmp_path / "trial.py"), "{workdir}", "{label}",
                     str(tmp_path / "done.log"), str(tmp_path / "gate"), str(fails), "{value}"],
         "set": {"value": 0.5},
         "axes": axes or {"label": {lab: {"value": (values or {}).get(lab, 0.5)} for lab in labels}}}
  return _write(tmp_path, doc)


def _completions(tmp_path) -> list[str]:
  p = tmp_path / "done.log"
  return p.read_text().split() if p.exists() else []


def test_validation_errors_name_the_file_and_key(tmp_path):
  cases = [
      ({"experiment": "x.py", "axis": {}}, "unknown key 'axis'"),
      ({"stages": [{"name": "a", "command": ["true"], "sets": {}}]}, "unknown key 'stages[0].sets'"),
      ({"command": ["true"], "resources": {"gpus": 1}}, "unknown key 'resources.gpus'"),
      ({"command": ["true"], "resources": {"cpus": 0}}, "resources.cpus=0: expected an integer >= 1"),
      ({"command": ["true"], "retries": "two"}, "retries='two'"),
      ({"stages": [{"name": "a"}]}, "stage a: give exactly one of 'experiment' or 'command'"),
      ({"command": ["true", "{nope}"]}, "{nope} is neither 'out' nor an axis"),
      ({"command": ["true"], "axes": {"seed": []}}, "stage main.axes.seed: expected a non-empty list"),
      ({"command": ["true"], "axes": {"size": ["7x"]}}, "unknown model size '7x'"),
      ({"command": ["true"], "axes": {"seed": [0, 1]}}, "resolve to the same config"),
      ({"stages": [{"name": "b", "command": ["x", "{seed}"], "set": {"init": "@a"}, "axes": {"seed": [0]}}]},
       "@a names no earlier stage"),
      ({"command": ["x", "{seed}"], "axes": {"seed": [0]}, "report": [{"stage": "main", "metric": "m", "x": "seed",
                                                                      "line": "obj"}]},
       "report[0].line='obj': not an axis of stage main"),
  ]
  for i, (doc, msg) in enumerate(cases):
    with pytest.raises(spec_lib.SpecError, match=None) as e:
      spec_lib.load(_write(tmp_path, doc, f"c{i}.yaml"))
    assert msg in str(e.value) and str(e.value).startswith(str(tmp_path / f"c{i}.yaml")), (msg, str(e.value))
    assert "\n" not in str(e.value)
  (tmp_path / "bad.yaml").write_text("axes: [1,\n")
  with pytest.raises(spec_lib.SpecError, match="not valid YAML"):
    spec_lib.load(tmp_path / "bad.yaml")
  with pytest.raises(FileNotFoundError, match="sweep file .* not found"):
    spec_lib.load(tmp_path / "none.yaml")


def test_experiment_overrides_are_checked_against_the_config(tmp_path):
  (tmp_path / "exp.py").write_text(TINY_EXPERIMENT)
  doc = {"experiment": str(tmp_path / "exp.py"), "axes": {"optim.lrr": [0.1]}}
  with pytest.raises(spec_lib.SpecError, match=r"stage main \[optim.lrr=0.1\]: unknown config key 'optim.lrr'"):
    spec_lib.load(_write(tmp_path, doc))
  doc = {"experiment": str(tmp_path / "exp.py"), "axes": {"objective": ["ranked", "nope"]}}
  with pytest.raises(spec_lib.SpecError, match="objective='nope': expected one of"):
    spec_lib.load(_write(tmp_path, doc))


def test_grid_expansion_sizes_named_axes_references_and_ids(tmp_path):
  (tmp_path / "exp.py").write_text(TINY_EXPERIMENT)
  doc = {"out": str(tmp_path / "o"), "stages": [
      {"name": "base", "experiment": str(tmp_path / "exp.py"), "set": {"objective": "lm"}, "axes": {"size": ["100k"]}},
      {"name": "ft", "experiment": str(tmp_path / "exp.py"),
       "set": {"init_from": "@base", "data.train": "{out}/data/{ds}.jsonl", "data.buckets": [32, 64]},
       "axes": {"size": ["100k"], "ds": {"x": {"data.toy_k": 2}, "y": {"data.toy_k": 3}}, "seed": [0, 1]}}]}
  s = spec_lib.load(_write(tmp_path, doc))
  assert s.stages == ("base", "ft") and len(s.trials) == 1 + 4
  base, ft = s.trials[0], s.trials[1]
  assert base.config["config"]["model"]["d_model"] == 64 and base.config["config"]["objective"] == "lm"
  assert ft.labels == {"size": "100k", "ds": "x", "seed": "0"}
  cfg = ft.config["config"]
  assert cfg["init_from"] == str(tmp_path / "o" / "trials" / base.id) and ft.needs == (base.id,)
  assert cfg["data"]["train"] == f"{tmp_path / 'o'}/data/x.jsonl" and cfg["data"]["toy_k"] == 2
  assert cfg["data"]["buckets"] == [32, 64] and cfg["progress"] is False
  assert len({t.id for t in s.trials}) == 5 and all(len(t.id) == 12 for t in s.trials)
  # The id is the hash of the resolved config alone: the same grid loads to the same ids, and changing one
  # axis value changes only the trials that take it.
  assert [t.id for t in spec_lib.load(tmp_path / "s.yaml").trials] == [t.id for t in s.trials]
  doc["stages"][1]["axes"]["ds"]["y"] = {"data.toy_k": 4}
  s2 = spec_lib.load(_write(tmp_path, doc, "s2.yaml"))
  assert [a.id == b.id for a, b in zip(s.trials, s2.trials)] == [True, True, True, False, False]


def test_local_run_status_report_and_rerun_runs_nothing(tmp_path, capsys):
  path = _command_sweep(tmp_path, axes={"label": {"a": {}, "b": {}}, "seed": {"0": {"value": 0.25},
                                                                             "1": {"value": 0.75}}})
  doc = yaml.safe_load(path.read_text())
  doc["report"] = [{"name": "p", "stage": "main", "metric": "value", "x": "label", "chance": 0.5}]
  path = _write(tmp_path, doc)
  s = sweep.load(path)
  assert sweep.run_sweep(s, progress=False, device_kind="cpu") == []
  assert sorted(_completions(tmp_path)) == ["a", "a", "b", "b"]
  st = report.status(s)
  assert st["counts"] == {"done": 4, "running": 0, "failed": 0, "pending": 0}
  assert [r["attempts"] for r in st["trials"]] == [1, 1, 1, 1]
  res = sweep.results(s)
  assert [r["labels"] for r in res][:2] == [{"label": "a", "seed": "0"}, {"label": "a", "seed": "1"}]
  assert res[0]["metrics"]["env"]["HHH_TRIAL_ID"] == res[0]["id"]
  md = report.write(s).read_text()
  # mean of 0.25 and 0.75, standard error sqrt(0.125 / 2 / 1) ... = 0.25
  ids_a = " ".join(f"[{r['id']}](trials/{r['id']}/trial.json)" for r in res[:2])
  assert f"|  |  | a | 0.5000 ± 0.2500 | 2 | {ids_a} |" in md
  assert (tmp_path / "out" / "p.png").stat().st_size > 5000
  trial_json = json.loads((s.trial_dir(s.trials[0]) / "trial.json").read_text())
  assert trial_json["labels"] == {"label": "a", "seed": "0"} and trial_json["config"]["kind"] == "command"
  assert sweep.run_sweep(s, progress=False, device_kind="cpu") == []
  assert len(_completions(tmp_path)) == 4
  assert cli.main(["sweep", "status", str(path)]) == 0
  assert capsys.readouterr().out.strip().endswith("4 trials: 4 done, 0 running, 0 failed, 0 pending")


def test_failed_trials_are_retried_with_every_log_kept(tmp_path, capsys):
  s = sweep.load(_command_sweep(tmp_path, labels=("a",), fails=1, retries=1))
  assert sweep.run_sweep(s, progress=False, device_kind="cpu") == []
  d = s.trial_dir(s.trials[0])
  assert sorted(p.name for p in d.glob("attempt-*.log")) == ["attempt-1.log", "attempt-2.log"]
  assert "failing on purpose" in (d / "attempt-1.log").read_text()
  assert json.loads((d / "result.json").read_text())["attempts"] == 2 and not (d / "failed.json").exists()
  # Out of retries: failed, with the error and the log named; the CLI exits 1 with one line.
  s = sweep.load(_command_sweep(tmp_path / "f", labels=("a",), fails=5, retries=1))
  failed = sweep.run_sweep(s, progress=False, device_kind="cpu")
  assert len(failed) == 1 and failed[0]["error"] == "exit 3: failing on purpose"
  assert report.status(s)["counts"]["failed"] == 1
  capsys.readouterr()
  assert cli.main(["sweep", "run", str(tmp_path / "f" / "s.yaml"), "--device-kind", "cpu"]) == 1
  assert "hhh: error: 1 trials failed" in capsys.readouterr().err
  assert trial_lib.attempts(s.trial_dir(s.trials[0])) == 4   # two more attempts on the relaunch


def test_resources_pin_devices_and_cpus(tmp_path):
  s = sweep.load(_command_sweep(tmp_path, labels=("a", "b", "c"), resources={"devices": 1, "cpus": 1}))
  pool = local.Pool("cuda", ["0", "1"], [c for c in sorted(os.sched_getaffinity(0))][:2])
  assert local.run(s, pool=pool, progress=False) == []
  envs = [r["metrics"]["env"] for r in sweep.results(s)]
  assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} <= {"0", "1"} and all(e["JAX_PLATFORMS"] is None for e in envs)
  assert all(len(r["metrics"]["cpus"]) == 1 for r in sweep.results(s))
  assert pool.devices == ["0", "1"]   # all handed back
  # A trial without devices is kept off the accelerators; one needing more than the host has is an error.
  s = sweep.load(_command_sweep(tmp_path / "cpu", labels=("a",)))
  assert local.run(s, pool=local.Pool("cuda", ["0"], [0]), progress=False) == []
  assert sweep.results(s)[0]["metrics"]["env"] == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
                                                   "HHH_TRIAL_ID": s.trials[0].id}
  s = sweep.load(_command_sweep(tmp_path / "big", labels=("a",), resources={"devices": 3}))
  with pytest.raises(ValueError, match=r"needs 3 devices; this host has 2 cuda devices"):
    local.run(s, pool=local.Pool("cuda", ["0", "1"], [0]), progress=False)
  assert local.Pool("tpu", [], []).env(["2", "3"])["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"


def test_a_locked_trial_is_running_and_is_not_started_twice(tmp_path):
  s = sweep.load(_command_sweep(tmp_path, labels=("a",)))
  t = s.trials[0]
  d = trial_lib.prepare(t, s.trial_dir(t))
  fd = trial_lib.try_lock(d)   # as if an earlier launcher's trainer were still alive
  try:
    assert report.state(s, t) == "running" and trial_lib.try_lock(d) is None
    rec = trial_lib.run_blocking(t, d, wait_lock=0.3)
    assert rec.get("busy") and trial_lib.attempts(d) == 0 and _completions(tmp_path) == []
  finally:
    os.close(fd)
  assert trial_lib.run_blocking(t, d)["metrics"]["value"] == 0.5 and report.state(s, t) == "done"


def _wait_for(pred, what, timeout=120.0):
  t0 = time.monotonic()
  while not pred():
    if time.monotonic() - t0 > timeout:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def _dead(pid: int) -> bool:
  try:
    st = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return True
  return st.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_sigkill_of_the_launcher_kills_its_trial_and_a_relaunch_finishes_exactly_once(tmp_path):
  path = _command_sweep(tmp_path, labels=("a", "b", "hold", "d"))
  s = sweep.load(path)
  ids = {t.labels["label"]: t.id for t in s.trials}
  cmd = [sys.executable, "-m", "hhh.cli", "sweep", "run", str(path), "--max-parallel", "1"]
  launcher = subprocess.Popen(cmd, env=hhh_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
  hold = s.out / "trials" / ids["hold"]
  try:
    _wait_for(lambda: (hold / "pid").exists(), "the held trial to start")
  finally:
    os.kill(launcher.pid, signal.SIGKILL)   # the launcher's pid only, not its group
    launcher.wait()
  child = int((hold / "pid").read_text())
  _wait_for(lambda: _dead(child), f"trial process {child} to die with its launcher", timeout=30)
  assert _completions(tmp_path) == ["a", "b"]
  assert report.state(s, s.trials[2]) != "running"   # its lock died with it
  (tmp_path / "gate").write_text("")
  proc = subprocess.run(cmd, env=hhh_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sorted(_completions(tmp_path)) == ["a", "b", "d", "hold"]
  assert [trial_lib.attempts(s.out / "trials" / ids[k]) for k in ("a", "b", "hold", "d")] == [1, 1, 2, 1]
  assert report.status(s)["counts"]["done"] == 4 and len(sweep.results(s)) == 4


def test_shipped_sweep_files_load(monkeypatch):
  monkeypatch.chdir(REPO)   # their experiment paths are relative to the repository, as the README runs them
  n = {p.name: len(spec_lib.load(p).trials) for p in sorted((REPO / "sweeps").glob("*.yaml"))}
  assert n == {"hhh_baselines.yaml": 3, "objectives.yaml": 1 + 2 + 30, "sample_efficiency.yaml": 9, "tiny.yaml": 4}
