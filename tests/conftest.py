"""Shared test helpers: a tiny experiment file and a runner for the `hhh` command in a subprocess."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# The suite's models are tiny and its runs short, so XLA's compile time, not run time, is most of what it
# waits for: compile with LLVM's expensive passes off, in this process (set before JAX starts its backend) and
# in every `hhh` subprocess. Tests compare runs under the same flags, so no result depends on them.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), FAST_COMPILE_FLAGS]).strip()

TINY_EXPERIMENT = '''
from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model.config import ModelConfig

def config():
  return TrainConfig(
      objective="ranked",
      model=ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64),
      data=DataConfig(toy_train=64, toy_validation=32, max_len=64, buckets=(32, 64)),
      optim=OptimConfig(lr=3e-3, warmup_steps=2),
      batch_size=8, steps=2, log_every=1, eval_every=100, checkpoint_every=1, progress=False)
'''


@pytest.fixture
def tiny_experiment(tmp_path) -> pathlib.Path:
  path = tmp_path / "tiny_experiment.py"
  path.write_text(TINY_EXPERIMENT)
  return path


def hhh_env(devices: int = 1, **extra) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}")
  env.update(extra)
  return env


def hhh_cmd(*args) -> list[str]:
  return [sys.executable, "-m", "hhh.cli", *map(str, args)]


def run_hhh(*args, devices: int = 1, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(hhh_cmd(*args), env=hhh_env(devices), capture_output=True, text=True, timeout=timeout,
                        cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f"hhh {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def read_metrics(workdir, split: str = "train") -> list[dict]:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def random_bundle_and_hf(root: pathlib.Path) -> pathlib.Path:
  """A random one-layer byte-level reward bundle at ROOT/bundle and its `hhh export --format hf` directory at
  ROOT/hf: the untrusted-input tests mutate copies of both."""
  import jax
  from hhh.model.config import ModelConfig
  from hhh.model import bundle as bundle_lib
  from hhh.reward import hf_export
  from hhh.model.params import graphdef_and_params
  cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64, tie_embeddings=False)
  _, params = graphdef_and_params(cfg, jax.random.key(0))
  bundle_lib.write(root / "bundle", cfg, params, {"kind": "byte"}, objective="ranked", max_len=64,
                   normalization={"mean": 0.5, "std": 2.0, "n": 10, "reference": "made up"})
  hf_export.export_hf(root / "bundle", root / "hf")
  return root
