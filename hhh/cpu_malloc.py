"""The `hhh` command on CPU runs under jemalloc when the system has it.

XLA:CPU allocates each step's temporaries afresh and frees them at the end. Under glibc's malloc the large ones are
fresh mmaps, so every step page-faults its working set back in and the kernel zeroes it: 0.27M minor faults per
13m PM step and 2.4M (10 GB) per SmolLM2-135M step (benchmarks/train_step.py records faults and kernel time).
jemalloc with `oversize_threshold:0` keeps freed extents for reuse: 13m steps 1.70 s against 2.15 s, SmolLM2-135M
steps 14.5 s against 26.9 s, in the runs of docs/benchmarks/train_step.md.

An allocator can only be chosen before a process starts, so the console command, like the experiment scripts
that have a `main`, re-executes itself once with `LD_PRELOAD` when all hold: no accelerator plugin is installed
(device memory is not malloc's), HHH_JEMALLOC is not 0, nothing is preloaded yet, and a libjemalloc.so.2 is
found. Processes it starts (quickstart workers, sweep trials) inherit the setting. The library never does this
on import: a program embedding hhh picks its own.
"""

from __future__ import annotations

import os
import pathlib
import sys

MALLOC_CONF = "oversize_threshold:0"  # large extents stay in the arenas, reused instead of unmapped at once
_ACTIVE = "HHH_JEMALLOC_ACTIVE"
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def accelerator_plugin() -> bool:
  """Whether JAX would find a non-CPU backend, looked up as JAX discovers PJRT plugins (the `jax_plugins`
  namespace and entry points; libtpu on its own) without starting a backend in this process."""
  import importlib.metadata
  import importlib.util
  import pkgutil
  if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
    return True
  try:
    import jax_plugins
  except ImportError:
    return False
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def find_jemalloc(environ=os.environ) -> str | None:
  dirs = [pathlib.Path(environ["CONDA_PREFIX"]) / "lib"] if environ.get("CONDA_PREFIX") else []
  for d in [*dirs, *map(pathlib.Path, _DIRS)]:
    lib = d / "libjemalloc.so.2"
    if lib.is_file():
      return str(lib)
  return None


def jemalloc_env(environ, jemalloc: str | None, accelerator: bool) -> dict | None:
  """The environment to re-execute under, or None to run as is."""
  if (environ.get("HHH_JEMALLOC", "1") == "0" or environ.get(_ACTIVE) or environ.get("LD_PRELOAD")
      or accelerator or jemalloc is None or not sys.platform.startswith("linux")):
    return None
  return dict(environ, LD_PRELOAD=jemalloc, MALLOC_CONF=environ.get("MALLOC_CONF", MALLOC_CONF), **{_ACTIVE: "1"})


def reexec_under_jemalloc(script: str | None = None) -> None:
  """Replace this process by the same command under jemalloc, when `jemalloc_env` says so: the `hhh` command, or
  `python SCRIPT ARGS...` for an experiment script (whose own directory, which the user chose, is sys.path[0])."""
  if os.environ.get(_ACTIVE) or os.environ.get("HHH_JEMALLOC", "1") == "0":
    return  # before the plugin lookup below, which would otherwise run again in the re-executed process
  env = jemalloc_env(os.environ, find_jemalloc(), accelerator_plugin())
  if env is None:
    return
  if script is None:
    from hhh.selfcmd import hhh_argv  # `-c` code that keeps the current directory off sys.path
    command = hhh_argv(*sys.argv[1:])
  else:
    command = [sys.executable, os.path.abspath(script), *sys.argv[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, command, env)
