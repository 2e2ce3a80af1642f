"""The Ray backend on a local Ray cluster: a tiny `hhh train` trial and a held command trial; the driver killed
with SIGKILL mid-sweep takes its trial process with it, and a relaunch finishes with nothing lost or run twice."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import yaml

pytest.importorskip("ray", reason='the Ray backend needs Ray: pip install -e ".[ray]"')

from hhh import sweep  # noqa: E402
from hhh.sweep import report, trial as trial_lib  # noqa: E402
from tests.conftest import REPO, TINY_EXPERIMENT, free_port, hhh_env  # noqa: E402
from tests.test_sweep import TRIAL, _completions, _dead, _wait_for  # noqa: E402


def _start_head(temp: str):
  port = free_port()
  names = ["dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
           "metrics-export-port"]
  # The Ray Client server starts (and its port may be set) only where `ray[client]` is installed; the backend
  # connects to the GCS address and does not need it.
  from ray._private.utils import get_ray_client_dependency_error
  if get_ray_client_dependency_error() is None:
    names.append("ray-client-server-port")
  ports = {f"--{k}": str(free_port()) for k in names}
  cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
         *[f"{k}={v}" for k, v in ports.items()]]
  # A throwaway cluster on loopback: no token (Ray 2.5x+ asks for one by default, which a driver started by
  # the test would not have).
  env = dict(hhh_env(), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
  log = open(os.path.join(temp, "head.log"), "w+")
  head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  address = f"127.0.0.1:{port}"
  _wait_for(lambda: head.poll() is not None or _ray_up(address), "the Ray head to start", timeout=180)
  return head, address, log


def _stop(head):
  try:
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=3)
  except ProcessLookupError:
    pass
  except subprocess.TimeoutExpired:
    os.killpg(head.pid, signal.SIGKILL)
  head.wait()


@pytest.fixture(scope="module")
def ray_address():
  """A local head node on free ports, ours alone; stopped by killing the process group we started. The free
  ports are picked before Ray binds them, so another process can take one in between: a head that exits at
  start is retried once on fresh ports, and its own log is shown if it fails again."""
  temp = tempfile.mkdtemp(prefix="/tmp/hhhray")   # short: Ray's socket paths must fit in 107 bytes
  head = None
  try:
    for attempt in range(2):
      head, address, log = _start_head(temp)
      if head.poll() is None:
        break
      log.seek(0)
      tail = log.read()[-3000:]
      head.wait()
    assert head.poll() is None, f"ray start --head exited twice; its log:\n{tail}"
    yield address
  finally:
    if head is not None:
      _stop(head)
    shutil.rmtree(temp, ignore_errors=True)


def _ray_up(address) -> bool:
  import socket
  host, port = address.split(":")
  with socket.socket() as s:
    return s.connect_ex((host, int(port))) == 0


def test_ray_sweep_end_to_end_and_sigkill_resume(tmp_path, ray_address):
  (tmp_path / "exp.py").write_text(TINY_EXPERIMENT)
  (tmp_path / "trial.py").write_text(TRIAL)
  doc = {"out": str(tmp_path / "out"), "resources": {"devices": 0, "cpus": 1}, "stages": [
      {"name": "train", "experiment": str(tmp_path / "exp.py"), "set": {"eval_every": 2},
       "axes": {"objective": ["ranked"]}},
      {"name": "hold", "command": [sys.executable, str(tmp_path / "trial.py"), "{workdir}", "{label}",
                                   str(tmp_path / "done.log"), str(tmp_path / "gate"), "0", "0.5"],
       "axes": {"label": ["first", "hold"]}}]}
  path = tmp_path / "ray.yaml"
  path.write_text(yaml.safe_dump(doc))
  s = sweep.load(path)
  train, first, hold = s.trials
  cmd = [sys.executable, "-m", "hhh.cli", "sweep", "run", str(path), "--backend", "ray", "--address", ray_address,
         "--max-parallel", "1"]
  driver = subprocess.Popen(cmd, env=hhh_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
  try:
    _wait_for(lambda: (s.trial_dir(hold) / "pid").exists() or driver.poll() is not None,
              "the held trial to start on Ray", timeout=400)
    assert driver.poll() is None, "the driver exited before the held trial started"
  finally:
    os.kill(driver.pid, signal.SIGKILL)   # the driver's pid only
    driver.wait()
  child = int((s.trial_dir(hold) / "pid").read_text())
  _wait_for(lambda: _dead(child), f"trial process {child} to die with its Ray worker", timeout=60)
  assert _completions(tmp_path) == ["first"]
  res = trial_lib.read_json(s.trial_dir(train) / "result.json")
  assert res["step"] == 2 and res["metrics"]["pairs"] == 32.0 and res["params"] == 12673
  stamp = (s.trial_dir(train) / "result.json").stat().st_mtime_ns
  (tmp_path / "gate").write_text("")
  proc = subprocess.run(cmd, env=hhh_env(), cwd=REPO, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "3 done, 0 running, 0 failed, 0 pending" in proc.stdout
  assert sorted(_completions(tmp_path)) == ["first", "hold"]
  assert [trial_lib.attempts(s.trial_dir(t)) for t in s.trials] == [1, 1, 2]
  assert (s.trial_dir(train) / "result.json").stat().st_mtime_ns == stamp
  assert report.status(s)["counts"]["done"] == 3


def test_ray_backend_reports_a_missing_ray_or_too_few_devices(tmp_path, ray_address, monkeypatch):
  doc = {"out": str(tmp_path / "out"), "resources": {"devices": 1}, "command": ["true"]}
  (tmp_path / "g.yaml").write_text(yaml.safe_dump(doc))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"needs 1 devices; the Ray cluster has 0 GPU"):
    sweep.run_sweep(sweep.load(tmp_path / "g.yaml"), backend="ray", address=ray_address, progress=False)
  monkeypatch.setitem(sys.modules, "ray", None)
  with pytest.raises(ValueError, match=r'needs Ray: pip install -e "\.\[ray\]"'):
    sweep.run_sweep(sweep.load(tmp_path / "g.yaml"), backend="ray", progress=False)


def test_a_local_ray_instance_listens_on_loopback_only(tmp_path, monkeypatch):
  """The sweep starts its own Ray instance (no --address): while its trial runs, every listening port of Ray's
  processes (this driver's new children) is on 127.0.0.1."""
  import threading
  psutil = pytest.importorskip("psutil")
  (tmp_path / "trial.py").write_text(TRIAL)
  doc = {"out": str(tmp_path / "out"), "resources": {"devices": 0, "cpus": 1},
         "command": [sys.executable, str(tmp_path / "trial.py"), "{workdir}", "{label}", str(tmp_path / "done.log"),
                     str(tmp_path / "gate"), "0", "0.5"],
         "axes": {"label": ["hold"]}}
  (tmp_path / "local.yaml").write_text(yaml.safe_dump(doc))
  s = sweep.load(tmp_path / "local.yaml")
  monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
  monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
  seen: dict = {}

  def inspect():
    try:
      _wait_for(lambda: (s.trial_dir(s.trials[0]) / "pid").exists(), "the trial to start on Ray", timeout=300)
      addrs = set()
      for p in psutil.Process().children(recursive=True):
        if p.pid in others:
          continue
        try:
          addrs |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
          pass
      seen["addrs"] = addrs
    finally:
      (tmp_path / "gate").write_text("")

  # Not the Ray processes another test of this module started (its head node, also our child).
  others = {p.pid for p in psutil.Process().children(recursive=True)}
  watcher = threading.Thread(target=inspect)
  watcher.start()
  try:
    assert sweep.run_sweep(s, backend="ray", progress=False) == []
  finally:
    (tmp_path / "gate").write_text("")
    watcher.join(60)
  assert seen["addrs"] and seen["addrs"] <= {"127.0.0.1", "::ffff:127.0.0.1"}, seen
  assert _completions(tmp_path) == ["hold"]
