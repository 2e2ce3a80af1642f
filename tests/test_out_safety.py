"""`--out` never deletes what hhh did not write, a run in use, or its own source (hhh/outdir.py).

Each test is one of issue 26's repros: a user's file in --out, a run as --out, a source as --out, an existing run
as convert's --out, two writers at once; then --force, and a failed write over an earlier output.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import subprocess

import pytest

from hhh import cli, outdir
from hhh.model import bundle as bundle_lib
from hhh.train.workdir import WorkdirLock
from tests.conftest import TINY_EXPERIMENT, hhh_cmd, hhh_env, run_hhh


def snapshot(d: pathlib.Path) -> dict[str, str]:
  """Every file under d (relative path -> sha256 of its bytes): equal snapshots mean nothing was touched."""
  return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


def hhh(capsys, *args) -> tuple[int, str]:
  """`hhh ARGS` in this process: its exit code and its stderr, stripped."""
  capsys.readouterr()
  rc = cli.main([str(a) for a in args])
  return rc, capsys.readouterr().err.strip()


def no_staging_left(parent: pathlib.Path) -> bool:
  return not [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.fixture(scope="module")
def pm(tmp_path_factory) -> dict[str, pathlib.Path]:
  """A trained tiny PM run, its bundle and its HF export: the sources the tests below point --out at."""
  root = tmp_path_factory.mktemp("out_safety")
  (root / "exp.py").write_text(TINY_EXPERIMENT)
  assert cli.main(["train", str(root / "exp.py"), "--workdir", str(root / "run")]) == 0
  assert cli.main(["export", str(root / "run"), "--out", str(root / "bundle")]) == 0
  assert cli.main(["export", str(root / "run"), "--format", "hf", "--out", str(root / "hf")]) == 0
  return {"root": root, "run": root / "run", "bundle": root / "bundle", "hf": root / "hf"}


def test_export_refuses_a_directory_holding_a_users_file(pm, tmp_path):
  d = tmp_path / "D"
  d.mkdir()
  (d / "thesis.tex").write_text("x")
  # The repro as typed, through the console command: `hhh export RUN --format hf --out D`.
  proc = subprocess.run(hhh_cmd("export", pm["run"], "--format", "hf", "--out", d), env=hhh_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (f"hhh: error: {d} is not empty and was not written by `hhh export --format hf`; "
                                 "refusing to delete what is there (choose a new or empty --out)")
  assert (d / "thesis.tex").read_text() == "x" and os.listdir(d) == ["thesis.tex"]
  assert no_staging_left(tmp_path)


def test_force_does_not_make_a_users_directory_replaceable(pm, tmp_path, capsys):
  d = tmp_path / "D"
  d.mkdir()
  (d / "thesis.tex").write_text("x")
  rc, err = hhh(capsys, "export", pm["run"], "--out", d, "--force")
  assert rc == 1 and err.startswith(f"hhh: error: {d} is not empty and was not written by `hhh export`")
  assert (d / "thesis.tex").read_text() == "x"


def test_export_refuses_its_own_run_as_out(pm, capsys):
  before = snapshot(pm["run"])
  assert any(k.startswith("checkpoints/") for k in before) and "metrics.jsonl" in before
  for args in (["--out", pm["run"]], ["--out", pm["run"], "--force"], ["--format", "hf", "--out", pm["run"]],
               ["--out", pm["run"] / "checkpoints"], ["--out", pm["run"] / "bundle"]):
    rc, err = hhh(capsys, "export", pm["run"], *args)
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"hhh: error: {pathlib.Path(args[-2] if args[-1] == '--force' else args[-1])} ")
    assert " the source " in err
  # A step dir as the source protects the whole run, not just that step.
  step = sorted((pm["run"] / "checkpoints").iterdir())[-1]
  rc, err = hhh(capsys, "export", step, "--out", pm["run"])
  assert rc == 1 and err == (f"hhh: error: {pm['run']} contains the source {step}; `hhh export` never "
                             "writes where it reads from: choose another --out")
  assert snapshot(pm["run"]) == before
  assert not (pm["run"] / "bundle").exists()


def test_export_refuses_a_run_in_use(pm, tmp_path, capsys):
  other = tmp_path / "training"
  lock = WorkdirLock(other)  # what `hhh train --workdir other` holds while it runs
  (other / "metrics.jsonl").write_text('{"step": 1}\n')
  try:
    before = snapshot(other)
    rc, err = hhh(capsys, "export", pm["run"], "--out", other, "--force")
    assert rc == 1
    assert err == (f"hhh: error: {other} is a training run in use (.lock held by pid {os.getpid()} on "
                   f"{os.uname().nodename}); refusing to touch it")
    assert snapshot(other) == before
  finally:
    lock.release()


def test_convert_refuses_its_own_source(pm, capsys):
  before = snapshot(pm["hf"])
  for args in (["--as-bundle"], ["--as-bundle", "--force"], []):
    rc, err = hhh(capsys, "convert", pm["hf"], "--out", pm["hf"], *args)
    assert rc == 1
    assert err == (f"hhh: error: {pm['hf']} is the source {pm['hf']}; `hhh convert{' --as-bundle' if args else ''}` "
                   "never writes where it reads from: choose another --out")
  rc, err = hhh(capsys, "convert", pm["hf"], "--out", pm["hf"] / "inner", "--as-bundle")
  assert rc == 1 and f"{pm['hf'] / 'inner'} is inside the source {pm['hf']}" in err
  assert snapshot(pm["hf"]) == before


def test_convert_refuses_an_existing_run(pm, tmp_path, capsys):
  before = snapshot(pm["run"])
  for args in ([], ["--as-bundle"], ["--force"]):
    rc, err = hhh(capsys, "convert", pm["hf"], "--out", pm["run"], *args)
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"hhh: error: {pm['run']} is not empty and was not written by `hhh convert")
  assert snapshot(pm["run"]) == before


def test_convert_writes_a_checkpoint_and_replaces_only_its_own_with_force(pm, tmp_path, capsys):
  out = tmp_path / "ckpt"
  rc, err = hhh(capsys, "convert", pm["hf"], "--out", out)
  assert rc == 0, err
  assert (out / "checkpoints" / "0").is_dir() and json.loads((out / outdir.MARKER).read_text())["written_by"] == \
      "hhh convert"
  rc, err = hhh(capsys, "convert", pm["hf"], "--out", out)
  assert rc == 1 and err == f"hhh: error: {out} holds an earlier `hhh convert` output; pass --force to replace it"
  assert hhh(capsys, "convert", pm["hf"], "--out", out, "--force")[0] == 0
  # A convert output is a different command's output to `hhh export`, with --force too.
  rc, err = hhh(capsys, "export", pm["run"], "--out", out, "--force")
  assert rc == 1 and "was not written by `hhh export`" in err
  assert (out / "checkpoints" / "0").is_dir() and no_staging_left(tmp_path)


def test_force_replaces_an_earlier_export_but_not_what_was_added_to_it(pm, tmp_path, capsys):
  out = tmp_path / "b"
  assert hhh(capsys, "export", pm["run"], "--out", out)[0] == 0
  first = json.loads((out / "bundle.json").read_text())
  rc, err = hhh(capsys, "export", pm["run"], "--out", out)
  assert rc == 1 and err == f"hhh: error: {out} holds an earlier `hhh export` output; pass --force to replace it"
  assert hhh(capsys, "export", pm["run"], "--out", out, "--force")[0] == 0
  assert json.loads((out / "bundle.json").read_text()) == first  # the same export, written again
  (out / "notes.txt").write_text("mine")
  rc, err = hhh(capsys, "export", pm["run"], "--out", out, "--force")
  assert rc == 1 and err == (f"hhh: error: {out} holds an earlier `hhh export` output plus what it did not write "
                             "(notes.txt); refusing to delete those")
  assert (out / "notes.txt").read_text() == "mine" and (out / "bundle.json").is_file()
  assert no_staging_left(tmp_path)


def test_an_empty_directory_is_a_fine_out(pm, tmp_path, capsys):
  out = tmp_path / "empty"
  out.mkdir()
  assert hhh(capsys, "export", pm["bundle"], "--format", "hf", "--out", out)[0] == 0
  assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_a_failed_export_leaves_the_earlier_output_intact(pm, tmp_path, capsys):
  out = tmp_path / "b"
  assert hhh(capsys, "export", pm["run"], "--out", out)[0] == 0
  before = snapshot(out)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  rc, err = hhh(capsys, "export", pm["run"], "--out", out, "--force", "--reference", empty)
  assert rc == 1 and err.startswith("hhh: error: ") and len(err.splitlines()) == 1
  assert snapshot(out) == before
  assert no_staging_left(tmp_path)


def test_the_first_of_two_writers_to_finish_wins_and_the_other_changes_nothing(tmp_path):
  out = tmp_path / "out"
  a_cm, b_cm = outdir.staged(out, "hhh export"), outdir.staged(out, "hhh export")
  a, b = a_cm.__enter__(), b_cm.__enter__()
  assert a.parent != b.parent and a.parent.parent == b.parent.parent == tmp_path
  for d, who in ((a, "a"), (b, "b")):
    d.mkdir()
    (d / "who").write_text(who)
  b_cm.__exit__(None, None, None)
  assert (out / "who").read_text() == "b"
  with pytest.raises(outdir.OutDirError, match="was written by another process meanwhile"):
    a_cm.__exit__(None, None, None)
  assert (out / "who").read_text() == "b" and no_staging_left(tmp_path)


def test_a_writer_that_fails_changes_nothing(tmp_path):
  out = tmp_path / "out"
  with outdir.staged(out, "hhh export") as d:
    d.mkdir()
    (d / "who").write_text("first")
  with pytest.raises(RuntimeError):
    with outdir.staged(out, "hhh export", force=True) as d:
      d.mkdir()
      (d / "who").write_text("second")
      raise RuntimeError("the writer failed")
  assert (out / "who").read_text() == "first" and no_staging_left(tmp_path)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_force_swaps_in_the_new_output(tmp_path, monkeypatch, exchange):
  if not exchange:
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)  # a system without RENAME_EXCHANGE
  out = tmp_path / "out"
  for who in ("first", "second"):
    with outdir.staged(out, "hhh export", force=True) as d:
      d.mkdir()
      (d / "who").write_text(who)
  assert (out / "who").read_text() == "second" and sorted(os.listdir(out)) == [outdir.MARKER, "who"]
  assert no_staging_left(tmp_path)


def test_a_killed_writers_staging_directory_is_removed_by_the_next(tmp_path):
  out = tmp_path / "out"
  dead = subprocess.Popen(["true"])
  dead.wait()
  prefix = f".out.partial-{socket.gethostname()}."
  stale, live = tmp_path / f"{prefix}{dead.pid}.abc", tmp_path / f"{prefix}{os.getpid()}.def"
  other_host = tmp_path / f".out.partial-elsewhere.{dead.pid}.ghi"  # its pid means nothing here
  for d in (stale, live, other_host):
    (d / "out").mkdir(parents=True)
  with outdir.staged(out, "hhh export") as d:
    d.mkdir()
  assert not stale.exists() and live.is_dir() and other_host.is_dir() and out.is_dir()


def test_two_concurrent_exports_to_one_out(pm, tmp_path):
  out = tmp_path / "b"
  procs = [subprocess.Popen(hhh_cmd("export", pm["run"], "--out", out), env=hhh_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  results = [(p.wait(timeout=300), p.stderr.read().strip().splitlines()[-1:]) for p in procs]
  for p in procs:
    p.stdout.close()
    p.stderr.close()
  codes = sorted(rc for rc, _ in results)
  # Both finish; at most one replaced --out, and what is there is one whole bundle.
  assert codes in ([0, 0], [0, 1]), results
  for rc, err in results:  # the loser says so in its last line (a truncation warning may come before)
    assert rc == 0 or err == [f"hhh: error: {out} was written by another process meanwhile; kept that, discarded "
                              "this output"], err
  assert bundle_lib.read(out)[3]["objective"] == "ranked"
  assert no_staging_left(tmp_path)


def test_refusals_are_value_errors_of_one_line(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  link = tmp_path / "link"
  link.symlink_to(tmp_path / "elsewhere")
  for out, why in ((f, "exists and is not a directory"), (link, "is a symbolic link")):
    with pytest.raises(ValueError, match=why) as e:
      outdir.check(out, "hhh export")
    assert "\n" not in str(e.value)
  assert f.read_text() == "x" and link.is_symlink()
