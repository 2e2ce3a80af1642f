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
  monkeypatch.chdir(REPO)   # their experiment paths are relative to the repository, as docs/guide/sweeps.md runs them
  n = {p.name: len(spec_lib.load(p).trials) for p in sorted((REPO / "sweeps").glob("*.yaml"))}
  assert n == {"hhh_baselines.yaml": 3, "objectives.yaml": 1 + 2 + 30, "sample_efficiency.yaml": 9, "tiny.yaml": 4}


# A command trial that exits 0: `none` writes nothing, `list` writes a JSON list, `dir` makes its result a
# directory, `good` writes a proper result; `flaky` writes its result and then fails on its first attempt, and
# writes nothing on the others.
LIAR = textwrap.dedent('''
  import json, os, pathlib, sys
  wd, how = pathlib.Path(sys.argv[1]), sys.argv[2]
  if how == "list":
    (wd / "metrics.json").write_text("[1, 2]")
  elif how == "dir":
    (wd / "metrics.json").mkdir(exist_ok=True)
  elif how == "good":
    json.dump({"value": 1.0}, open(wd / "metrics.json", "w"))
  elif how == "flaky" and not (wd / "once").exists():
    (wd / "once").write_text("")
    json.dump({"value": 9.0}, open(wd / "metrics.json", "w"))
    sys.exit(3)
''')


def _liar_sweep(tmp_path, hows, retries=1):
  (tmp_path / "liar.py").write_text(LIAR)
  return _write(tmp_path, {"out": str(tmp_path / "out"), "retries": retries,
                           "command": [sys.executable, str(tmp_path / "liar.py"), "{workdir}", "{how}"],
                           "axes": {"how": list(hows)}})


def test_exit_0_without_a_valid_result_is_a_failure_that_is_retried(tmp_path):
  s = sweep.load(_liar_sweep(tmp_path, ["none", "list", "dir", "good", "flaky"], retries=2))
  failed = {r["id"]: r for r in sweep.run_sweep(s, progress=False, device_kind="cpu")}
  by = {t.labels["how"]: t for t in s.trials}
  assert sorted(t.labels["how"] for t in s.trials if t.id in failed) == ["dir", "flaky", "list", "none"]
  assert failed[by["none"].id]["error"] == "finished but no result: it wrote no metrics.json"
  assert failed[by["list"].id]["error"] == "finished but no result: metrics.json: must hold a JSON object, not list"
  assert failed[by["dir"].id]["error"] == "finished but no result: metrics.json: is a directory, not a regular file"
  # Retried like any failure: one attempt and two retries each, and never recorded as done.
  assert [trial_lib.attempts(s.trial_dir(by[h])) for h in ("none", "list", "dir")] == [3, 3, 3]
  assert not any((s.trial_dir(by[h]) / "result.json").exists() for h in ("none", "list", "dir"))
  # `flaky` wrote a result on its first attempt, then failed; its later attempts exit 0 and write nothing. The
  # stale result is not theirs: removed before each attempt, it never passes for one.
  assert failed[by["flaky"].id]["error"] == "finished but no result: it wrote no metrics.json"
  assert trial_lib.attempts(s.trial_dir(by["flaky"])) == 3
  st = {r["id"]: r["state"] for r in report.status(s)["trials"]}
  assert [st[by[h].id] for h in ("none", "list", "dir", "good", "flaky")] == ["failed"] * 3 + ["done", "failed"]
  assert [r["metrics"] for r in sweep.results(s)] == [{"value": 1.0}]
  # A result.json that is not a valid record (cut short, or hand-edited) does not make a trial done.
  (s.trial_dir(by["good"]) / "result.json").write_text('{"metrics": ')
  assert report.state(s, by["good"]) == "pending"
  sweep.run_sweep(s, progress=False, device_kind="cpu")
  assert report.state(s, by["good"]) == "done" and trial_lib.attempts(s.trial_dir(by["good"])) == 2


def test_grid_and_retries_caps_refuse_at_once(tmp_path, capsys):
  # 100^3 = 1,000,000 trials: refused from the axis sizes, before any trial is built.
  path = _write(tmp_path, {"out": str(tmp_path / "out"), "command": ["true", "{a}", "{b}", "{c}"],
                           "axes": {k: list(range(100)) for k in "abc"}})
  t0 = time.monotonic()
  assert cli.main(["sweep", "run", str(path), "--device-kind", "cpu"]) == 1
  assert time.monotonic() - t0 < 5
  assert capsys.readouterr().err.splitlines() == [
      f"hhh: error: {path}: the grid has 1,000,000 trials, over the limit of 10,000 (stage 0 alone: 1,000,000)"]
  assert not (tmp_path / "out").exists()
  # Stages add up: two stages of 6,000 are over the limit, one of 10,000 is not.
  big = {"stages": [{"name": n, "command": ["true", "{a}", "{b}"], "axes": {"a": list(range(60)),
                                                                        "b": list(range(100))}} for n in "xy"]}
  with pytest.raises(spec_lib.SpecError, match=r"the grid has 12,000\+? trials, over the limit of 10,000 \(stage 1 "
                                               r"alone: 6,000\)"):
    spec_lib.load(_write(tmp_path, big, "big.yaml"))
  assert spec_lib.MAX_TRIALS == 10_000 and spec_lib.MAX_RETRIES == 100
  for where, doc in (("retries", {"command": ["true"], "retries": 1_000_000}),
                     ("stage main.retries", {"stages": [{"name": "main", "command": ["true"], "retries": 101}]})):
    with pytest.raises(spec_lib.SpecError) as e:
      spec_lib.load(_write(tmp_path, doc, "r.yaml"))
    assert str(e.value).endswith(f": {where}={doc.get('retries', 101)}: expected an integer from 0 to 100")
  assert spec_lib.load(_write(tmp_path, {"command": ["true"], "retries": 100}, "r.yaml")).trials[0].retries == 100


def test_parse_errors_are_one_line_naming_the_file_and_field(tmp_path, capsys):
  cases = [
      ({"command": ["true", "{seed}"], "axes": {"seed": [0]},
        "report": [{"stage": "main", "metric": "m", "x": "seed", "over": 5}]},
       "report[0].over=5: expected an axis name or a list of axis names"),
      ({"command": ["true"], "out": [1, 2]}, "out=[1, 2]: expected a directory name"),
      ({"command": ["true"], "report": "p"}, "report='p': expected a list of plots"),
      ({"command": ["true", "{seed}"], "axes": {"seed": [0]},
        "report": [{"stage": "main", "metric": "m", "x": "seed", "line": ["seed"]}]},
       "report[0].line=['seed']: expected a string"),
      ({"command": ["true", "{seed}"], "axes": {"seed": [0]},
        "report": [{"stage": "main", "metric": "m", "x": "seed", "chance": "half"}]},
       "report[0].chance='half': expected a number"),
      ({"stages": [{"name": [1], "command": ["true"]}]}, "stages[0].name [1]: expected a unique name of letters, digits, '-' or '_'"),
      ({"experiment": ["x.py"]}, "stage main.experiment=['x.py']: expected a file name"),
      ({"command": ["true"], "result": {"a": 1}}, "stage main.result={'a': 1}: expected a file name"),
      # Placeholders are plain names: no attribute, index or format spec (a width of 10^9 is 1 GB of text).
      ({"command": ["true", "{out.__class__}"]}, "stage main.command: bad placeholder in '{out.__class__}'"),
      ({"command": ["true", "{out:>999999999}"]}, "stage main.command: bad placeholder in '{out:>999999999}'"),
      ({"command": ["true", "{out[0]}"]}, "stage main.command: bad placeholder in '{out[0]}'"),
      ({"command": ["true", "{}"]}, "stage main.command: bad placeholder in '{}'"),
  ]
  for i, (doc, msg) in enumerate(cases):
    path = _write(tmp_path, doc, f"c{i}.yaml")
    assert cli.main(["sweep", "status", str(path)]) == 1, msg
    assert capsys.readouterr().err.splitlines() == [f"hhh: error: {path}: {msg}" + (
        " (only {NAME}; write {{ and }} for literal braces)" if "placeholder" in msg else "")], msg
  # Files that are not sweep files: a directory, an oversized file, YAML aliases that expand to a huge tree.
  (tmp_path / "d.yaml").mkdir()
  (tmp_path / "huge.yaml").write_text("#" * (spec_lib.MAX_FILE_BYTES + 1))
  laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
      f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
  (tmp_path / "laughs.yaml").write_text(laughs)
  for name, msg in (("d.yaml", "is a directory, not a regular file"),
                    ("huge.yaml", f"is {spec_lib.MAX_FILE_BYTES + 1} bytes, over the limit of {spec_lib.MAX_FILE_BYTES}"),
                    ("laughs.yaml", "more than 200,000 values once YAML aliases are expanded")):
    assert cli.main(["sweep", "status", str(tmp_path / name)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"hhh: error: {tmp_path / name}: {msg}"]


def test_an_unanswering_ray_address_is_one_line_within_seconds(tmp_path, capsys):
  """Refused at once, or unanswered until the probe's timeout: either way one line, before Ray is imported,
  even with every trial done."""
  s = sweep.load(_command_sweep(tmp_path, labels=("a",)))
  assert sweep.run_sweep(s, progress=False, device_kind="cpu") == []
  capsys.readouterr()
  path = str(tmp_path / "s.yaml")
  t0 = time.monotonic()
  assert cli.main(["sweep", "run", path, "--backend", "ray", "--address", "127.0.0.1:1"]) == 1
  assert time.monotonic() - t0 < 5
  assert capsys.readouterr().err.splitlines() == [
      "hhh: error: ray: no Ray cluster answers at 127.0.0.1:1: Connection refused"]
  # A listener whose accept queue is full drops new connection requests: the probe's timeout ends the wait.
  import socket
  from hhh.sweep import ray_backend
  with socket.socket() as srv:
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    queued = [socket.socket() for _ in range(4)]
    try:
      for c in queued:
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
      time.sleep(0.2)
      t0 = time.monotonic()
      with pytest.raises(ValueError) as e:
        ray_backend.probe(f"127.0.0.1:{port}", timeout=1.0)
      assert 0.9 < time.monotonic() - t0 < 5
    finally:
      for c in queued:
        c.close()
  assert str(e.value) == f"ray: no Ray cluster answers at 127.0.0.1:{port}: no reply within 1 s"
  with pytest.raises(ValueError, match=r"--address 'nowhere': expected HOST:PORT or auto"):
    ray_backend.probe("nowhere")


def test_a_local_ray_instance_is_started_on_loopback(tmp_path, monkeypatch):
  """What ray.init is asked for, without starting Ray (test_sweep_ray.py checks the ports a real one opens)."""
  from hhh.sweep import ray_backend
  seen = {}

  class FakeRay:
    def init(self, **kw):
      seen.update(kw, env=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"))

    def shutdown(self):
      pass

  monkeypatch.setattr(ray_backend, "_import_ray", FakeRay)
  monkeypatch.setattr(ray_backend, "_run", lambda *a: [])
  monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
  s = sweep.load(_command_sweep(tmp_path, labels=("a",)))
  assert sweep.run_sweep(s, backend="ray", progress=False) == []
  assert seen["_node_ip_address"] == "127.0.0.1" and seen["env"] == "0" and seen["include_dashboard"] is False
  assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ   # restored after the run
  seen.clear()
  assert sweep.run_sweep(s, backend="ray", progress=False, ray_host="10.1.2.3") == []
  assert seen["_node_ip_address"] == "10.1.2.3" and seen["env"] is None
