"""When the `hhh` command re-executes under jemalloc, and that it really runs under it afterwards."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from hhh import cpu_malloc

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def test_reexecutes_only_on_cpu_with_jemalloc_and_nothing_preloaded():
  env = {"PATH": "/bin"}
  got = cpu_malloc.jemalloc_env(env, LIB, accelerator=False)
  assert got == {"PATH": "/bin", "LD_PRELOAD": LIB, "MALLOC_CONF": "oversize_threshold:0", "HHH_JEMALLOC_ACTIVE": "1"}
  assert cpu_malloc.jemalloc_env(env, LIB, accelerator=True) is None            # device memory is not malloc's
  assert cpu_malloc.jemalloc_env(env, None, accelerator=False) is None          # no jemalloc on this system
  assert cpu_malloc.jemalloc_env({"HHH_JEMALLOC": "0"}, LIB, accelerator=False) is None
  assert cpu_malloc.jemalloc_env({"LD_PRELOAD": "/x/libtcmalloc.so"}, LIB, accelerator=False) is None
  assert cpu_malloc.jemalloc_env(got, LIB, accelerator=False) is None           # once, never a loop
  # A user's own jemalloc settings are kept.
  assert cpu_malloc.jemalloc_env({"MALLOC_CONF": "narenas:2"}, LIB, False)["MALLOC_CONF"] == "narenas:2"


def test_finds_jemalloc_in_a_conda_prefix(tmp_path):
  (tmp_path / "lib").mkdir()
  (tmp_path / "lib" / "libjemalloc.so.2").write_bytes(b"")
  assert cpu_malloc.find_jemalloc({"CONDA_PREFIX": str(tmp_path)}) == str(tmp_path / "lib" / "libjemalloc.so.2")


@pytest.mark.skipif(not pathlib.Path(LIB).is_file() or cpu_malloc.accelerator_plugin(),
                    reason="needs the system's libjemalloc2 (apt install libjemalloc2) and no accelerator plugin")
def test_the_command_runs_under_jemalloc_and_keeps_its_arguments(tmp_path):
  # A sitecustomize reports, as the final process exits, whether libjemalloc is mapped into it: execve replaces
  # the first interpreter before its exit hooks run, so only the process that did the work prints.
  (tmp_path / "sitecustomize.py").write_text(
      "import atexit\n"
      "atexit.register(lambda: print('MAPPED' if any('libjemalloc' in l for l in open('/proc/self/maps')) "
      "else 'NOT MAPPED'))\n")
  probe = "import sys; sys.argv = ['hhh', 'model', 'list']; from hhh.cli import main; sys.exit(main())"
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "HHH_JEMALLOC_ACTIVE", "HHH_JEMALLOC")}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
  out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "13m" in out.stdout  # the re-executed command kept its arguments
  assert out.stdout.strip().splitlines()[-1] == "MAPPED"
  off = subprocess.run([sys.executable, "-c", probe], env=dict(env, HHH_JEMALLOC="0"), capture_output=True,
                       text=True, timeout=120)
  assert off.returncode == 0 and off.stdout.strip().splitlines()[-1] == "NOT MAPPED"
  # An experiment script re-executes itself, with its own arguments.
  script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "hhh_scoring.py"
  exp = subprocess.run([sys.executable, str(script), "--help"], env=env, capture_output=True, text=True, timeout=120)
  assert exp.returncode == 0 and "usage" in exp.stdout and exp.stdout.strip().splitlines()[-1] == "MAPPED"
  # A library caller's main(argv) never re-executes its process.
  lib = subprocess.run([sys.executable, "-c", "from hhh.cli import main; main(['model', 'list'])"], env=env,
                       capture_output=True, text=True, timeout=120)
  assert lib.returncode == 0 and lib.stdout.strip().splitlines()[-1] == "NOT MAPPED"
