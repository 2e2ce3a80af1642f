"""hhh never imports code from the directory it runs in: the jemalloc re-exec and sweep trials start Python with
`-c` code that drops the current directory from sys.path (hhh/selfcmd.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from hhh import cpu_malloc
from hhh.sweep import trial as trial_lib
from hhh.sweep.spec import Trial

REPO = pathlib.Path(__file__).resolve().parents[1]
HOSTILE = "open({marker!r}, 'w').write('imported'); raise SystemExit('owned')\n"


def _hostile_dir(path: pathlib.Path) -> pathlib.Path:
  """A directory whose argparse.py and hhh/ package would each run if Python imported from it."""
  path.mkdir()
  marker = path / "IMPORTED"
  (path / "argparse.py").write_text(HOSTILE.format(marker=str(marker)))
  (path / "hhh").mkdir()
  (path / "hhh" / "__init__.py").write_text(HOSTILE.format(marker=str(marker)))
  return path


def _console_command() -> str:
  found = pathlib.Path(sys.executable).parent / "hhh"
  return str(found) if found.is_file() else (shutil.which("hhh") or pytest.skip("the hhh console command is not "
                                                                                   "installed (pip install -e .)"))


def _jemalloc_env(tmp_path) -> dict[str, str]:
  """The environment in which `hhh` re-executes under jemalloc, with a sitecustomize that reports, as the last
  process exits, whether it did (see tests/test_cpu_malloc.py)."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(
      "import atexit\n"
      "atexit.register(lambda: print('MAPPED' if any('libjemalloc' in l for l in open('/proc/self/maps')) "
      "else 'NOT MAPPED'))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "HHH_JEMALLOC_ACTIVE", "HHH_JEMALLOC",
                                                          "PYTHONSAFEPATH")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(site))
  return env


needs_jemalloc = pytest.mark.skipif(
    cpu_malloc.find_jemalloc() is None or cpu_malloc.accelerator_plugin() or not sys.platform.startswith("linux"),
    reason="the re-exec happens only on a Linux CPU host with libjemalloc.so.2 (apt install libjemalloc2)")


@needs_jemalloc
def test_the_reexecuted_command_ignores_an_argparse_py_in_the_current_directory(tmp_path):
  cwd = _hostile_dir(tmp_path / "x")
  out = subprocess.run([_console_command(), "--help"], cwd=cwd, env=_jemalloc_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "owned" not in out.stdout + out.stderr and not (cwd / "IMPORTED").exists()
  assert out.stdout.startswith("usage: hhh")
  assert out.stdout.strip().splitlines()[-1] == "MAPPED"  # it did re-execute, under jemalloc


@needs_jemalloc
def test_the_command_runs_from_the_parent_of_a_checkout_named_hhh(tmp_path):
  parent = tmp_path / "parent"
  parent.mkdir()
  (parent / "hhh").symlink_to(REPO, target_is_directory=True)  # a clone: hhh/{pyproject.toml,hhh/,tests/,...}
  out = subprocess.run([_console_command(), "model", "list"], cwd=parent, env=_jemalloc_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "13m" in out.stdout and out.stdout.strip().splitlines()[-1] == "MAPPED"


def test_a_sweep_trial_ignores_modules_in_the_launchers_directory(tmp_path):
  cwd = _hostile_dir(tmp_path / "launcher")
  d = tmp_path / "trial"
  d.mkdir()
  t = Trial(id="t0", stage="s", labels={}, kind="train", experiment=str(tmp_path / "missing.py"))
  argv = trial_lib.command(t, d)
  assert "-m" not in argv[:2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", HHH_JEMALLOC="0", PYTHONPATH=str(REPO))
  out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
  # hhh itself ran (and refused the missing experiment); nothing of the launcher's directory did.
  assert "owned" not in out.stdout + out.stderr and not (cwd / "IMPORTED").exists()
  assert out.returncode == 2
  assert out.stderr.strip() == f"hhh: error: experiment file {tmp_path / 'missing.py'} not found"


def test_quickstart_workers_do_not_import_from_the_current_directory(tmp_path):
  # Spawned workers of a parent that runs as the `hhh` command does must not pick up a multiprocessing.py (or
  # anything else) from the directory they start in.
  marker = tmp_path / "imported"
  (tmp_path / "multiprocessing.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\nraise SystemExit(3)\n")
  # The parent drops '' from its path as the `hhh` command's re-exec does (hhh/selfcmd.py), not with -P, which
  # the spawned workers would inherit as a flag.
  code = ("import sys; sys.path.pop(0)\nfrom hhh.studies.quickstart import pipeline\n"
          "print(pipeline.spawn_pool(1).submit(abs, -7).result())\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                        timeout=120, env={**env, "PYTHONPATH": str(REPO)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "7" and not marker.exists()
