"""The same step on 1 device, on several (data, fsdp, tensor) meshes of 8 fake CPU devices, and on 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, free_port, hhh_cmd, hhh_env, read_metrics, run_hhh


@pytest.mark.parametrize("objective", ["ranked", "imitation"])
def test_meshes_match_one_device(objective):
  proc = subprocess.run([sys.executable, str(REPO / "tests" / "mesh_check.py"), objective], env=hhh_env(8),
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  ref = out.pop("(1, 1, 1)")
  assert ref["devices"] == 1 and len(out) == 3
  for shape, got in out.items():
    assert got["devices"] == 8
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5, err_msg=shape)
    np.testing.assert_allclose(got["params"], ref["params"], rtol=1e-4, atol=1e-6, err_msg=shape)
  # The parameters really are split: wq [64, 64] over fsdp (rows) and tensor (columns); the byte
  # vocabulary (259 rows) divides by no axis, so the embedding keeps only its fsdp split.
  assert out["(2, 2, 2)"]["wq_spec"] == out["(2, 4, 1)"]["wq_spec"] == "P('fsdp', 'tensor')"
  assert out["(2, 2, 2)"]["embed_spec"] == "P(None, 'fsdp')"
  assert out["(8, 1, 1)"]["embed_spec"] == "P('tensor', 'fsdp')"  # both axes of size 1 divide anything


def test_two_processes_agree_with_one(tiny_experiment, tmp_path):
  """jax.distributed over 2 local CPU processes (gloo collectives), each feeding half of every batch."""
  args = ["train", tiny_experiment, "--set", "steps=4", "--set", "checkpoint_every=2"]
  single = tmp_path / "single"
  run_hhh(*args[:2], "--workdir", single, *args[2:])
  multi = tmp_path / "multi"
  port = free_port()
  procs = [subprocess.Popen(
      hhh_cmd(*args[:2], "--workdir", multi, *args[2:], "--set", f"distributed.coordinator=127.0.0.1:{port}",
              "--set", "distributed.num_processes=2", "--set", f"distributed.process_id={i}"),
      env=hhh_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "2 device(s)" in outs[0][0]
  one, two = read_metrics(single), read_metrics(multi)
  assert [r["step"] for r in two] == [1, 2, 3, 4]
  np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
  np.testing.assert_allclose(read_metrics(multi, "validation")[0]["accuracy"],
                             read_metrics(single, "validation")[0]["accuracy"], atol=1e-6)
  assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
