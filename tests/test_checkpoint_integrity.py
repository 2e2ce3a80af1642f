"""Corrupt checkpoints: caught by their manifest (or by orbax failing to load them), set aside, and the run
falls back to the newest earlier one and continues bit-identically to a resume from that step."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import TINY_EXPERIMENT, read_metrics, run_hhh

from hhh.train import checkpoint as ckpt_lib

_ARGS = ["--set", "steps=8", "--set", "checkpoint_every=2", "--set", "keep_checkpoints=4"]


def test_manifest_records_and_checks_every_file(tmp_path):
  step = tmp_path / "7"
  (step / "state" / "d").mkdir(parents=True)
  (step / "state" / "d" / "blob").write_bytes(b"abc")
  (step / "empty").write_bytes(b"")
  assert ckpt_lib.verify(step) is None  # no manifest yet: unverified, not corrupt
  ckpt_lib.write_manifest(step)
  files = json.loads((step / ckpt_lib.MANIFEST).read_text())["files"]
  assert files == {
      "empty": {"bytes": 0, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      "state/d/blob": {"bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}
  assert ckpt_lib.verify(step) is None
  (step / "state" / "d" / "blob").write_bytes(b"abd")  # a flipped byte: same size
  assert ckpt_lib.verify(step) == "state/d/blob does not match its sha256"
  (step / "state" / "d" / "blob").write_bytes(b"ab")
  assert ckpt_lib.verify(step) == "state/d/blob is 2 bytes, its manifest says 3"
  (step / "state" / "d" / "blob").unlink()
  assert ckpt_lib.verify(step) == "state/d/blob is missing"
  (step / ckpt_lib.MANIFEST).write_text('{"files": ')
  assert ckpt_lib.verify(step) == f"its manifest {ckpt_lib.MANIFEST} is unreadable"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """A finished 8-step run with checkpoints 2, 4, 6, 8: the reference every damaged copy must reproduce."""
  root = tmp_path_factory.mktemp("integrity")
  exp = root / "tiny_experiment.py"
  exp.write_text(TINY_EXPERIMENT)
  run_hhh("train", exp, "--workdir", root / "straight", *_ARGS)
  return exp, root / "straight"


def _copy(straight, tmp_path):
  wd = tmp_path / "damaged"
  shutil.copytree(straight, wd)
  return wd


def _biggest_state_file(wd, step):
  files = [p for p in (wd / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(path, size=1000):
  with open(path, "r+b") as f:
    f.truncate(size)


def _flip(path, at=5000):
  data = bytearray(path.read_bytes())
  data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
  path.write_bytes(bytes(data))


def _trajectory(wd):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(wd)]


def _steps(d):
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def test_corrupt_checkpoints_fall_back_bit_exactly(straight, tmp_path):
  """Step 8 has no manifest (an older run, or one killed between orbax's commit and the manifest) and is
  truncated, so only orbax's failure to load it shows; step 6 is truncated and step 4 has flipped bytes,
  which their manifests catch. The run sets all three aside, one line each, and resumes from step 2."""
  exp, ref = straight
  wd = _copy(ref, tmp_path)
  (wd / "checkpoints" / "8" / ckpt_lib.MANIFEST).unlink()
  _truncate(_biggest_state_file(wd, 8))
  truncated, flipped = _biggest_state_file(wd, 6), _biggest_state_file(wd, 4)
  size6 = truncated.stat().st_size
  _truncate(truncated)
  _flip(flipped)
  proc = run_hhh("train", exp, "--workdir", wd, *_ARGS)
  warnings = [l for l in proc.stdout.splitlines() if l.startswith("hhh: warning:")]
  aside = wd.absolute() / "corrupt_checkpoints"
  rel6, rel4 = truncated.relative_to(wd / "checkpoints" / "6"), flipped.relative_to(wd / "checkpoints" / "4")
  assert len(warnings) == 3, proc.stdout
  assert warnings[0].startswith("hhh: warning: checkpoint step 8 is corrupt: it does not load (")
  assert warnings[0].endswith(f"); falling back to step 2 (moved to {aside / '8'})")
  assert warnings[1:] == [
      f"hhh: warning: checkpoint step 6 is corrupt: {rel6} is 1,000 bytes, its manifest says {size6:,}; "
      f"falling back to step 2 (moved to {aside / '6'})",
      f"hhh: warning: checkpoint step 4 is corrupt: {rel4} does not match its sha256; "
      f"falling back to step 2 (moved to {aside / '4'})"]
  assert "resuming at step 2" in proc.stdout
  # orbax's own error log (a long traceback per failed load) is held back.
  assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 5, proc.stderr[-2000:]
  # Steps 3..8 retrained from step 2 are exactly the uninterrupted run's.
  assert [s for s, _, _ in _trajectory(wd)] == list(range(1, 9))
  assert _trajectory(wd) == _trajectory(ref)
  assert read_metrics(wd, "validation") == read_metrics(ref, "validation")
  assert _steps(wd / "checkpoints") == [2, 4, 6, 8]
  for s in (2, 4, 6, 8):  # rewritten with their manifests
    step_dir = wd / "checkpoints" / str(s)
    assert (step_dir / ckpt_lib.MANIFEST).exists() and ckpt_lib.verify(step_dir) is None
  assert _steps(aside) == [4, 6, 8]


def test_no_intact_checkpoint_is_a_one_line_error(straight, tmp_path):
  exp, ref = straight
  wd = _copy(ref, tmp_path)
  for step in (2, 4, 6, 8):
    _flip(_biggest_state_file(wd, step))
  before = (wd / "metrics.jsonl").read_text()
  proc = run_hhh("train", exp, "--workdir", wd, *_ARGS, check=False)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  ckdir = wd.absolute() / "checkpoints"
  assert lines[0].startswith(f"hhh: error: no intact checkpoint left in {ckdir}: step 8: state/")
  assert "; step 6: state/" in lines[0] and "; step 4: state/" in lines[0] and "; step 2: state/" in lines[0]
  assert lines[0].endswith(f"does not match its sha256. Move {ckdir} away to train from scratch")
  # Nothing was set aside or rewritten: a second attempt must not quietly start from scratch.
  assert _steps(ckdir) == [2, 4, 6, 8] and not (wd / "corrupt_checkpoints").exists()
  assert (wd / "metrics.jsonl").read_text() == before
  # Loading parameters (export, init_from) refuses the corrupt step too.
  with pytest.raises(ckpt_lib.CheckpointCorrupt, match=r"checkpoints/8 is corrupt: state/.* does not match"):
    ckpt_lib.load_params(wd)


def test_only_leftovers_of_abandoned_loads_are_dropped():
  """The process-wide filter drops callbacks into a closed loop and errors naming a path given up on;
  the same message raised by anything else, and every other error, still reaches the previous hook."""
  import asyncio
  seen = []
  f = ckpt_lib._Abandoned()
  f._hooks = (None, lambda typ, value, tb: seen.append(str(value)))
  f.add("/runs/x/checkpoints/8")
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    f._excepthook(type(e), e, e.__traceback__)
  def own_code():
    raise RuntimeError("Event loop is closed")
  for fn in (own_code, lambda: (_ for _ in ()).throw(OSError("read /runs/x/checkpoints/8/state failed")),
             lambda: (_ for _ in ()).throw(OSError("read /runs/x/checkpoints/6/state failed"))):
    try:
      fn()
    except Exception as e:  # noqa: BLE001
      f._excepthook(type(e), e, e.__traceback__)
  assert seen == ["Event loop is closed", "read /runs/x/checkpoints/6/state failed"]
