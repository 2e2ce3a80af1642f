"""Seeded random mutations of a real reward bundle, an exported HF directory and a .jsonl.zst, each fed to the
command that reads it. Every case must end within CASE_S seconds with exit 0 or a one-line `hhh: error:` (no
traceback), must leave everything outside its --out as it was, and the whole run must stay under MAX_RSS_MB.

The cases run in one child process per surface (through `hhh.cli.main`), so JAX starts once per surface.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, hhh_env, random_bundle_and_hf

CASE_S = 30  # a clean case takes well under a second once JAX is up
MAX_RSS_MB = 2500  # the child's peak; a clean run peaks under 1 GB, /dev/zero read whole passed 2.3 GB in 5 s

_CHILD = r"""
import contextlib, hashlib, io, json, os, pathlib, random, shutil, signal, sys, time, traceback
from hhh import cli

surface, src, work, n, seed = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
CASE_S = int(sys.argv[6])
VALUES = [0, -5, 1, 2000, 10**12, 2**62, 1e12, -1.5, float("nan"), "64", "evil", None, True, [1, 2], {}, {"a": [1]}]

def tree_hash(root):
  h = hashlib.sha256()
  for d, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(dirs + files):
      p = pathlib.Path(d) / name
      h.update(str(p.relative_to(root)).encode())
      st = os.lstat(p)
      h.update(str(st.st_mode).encode())
      if os.path.islink(p):
        h.update(os.readlink(p).encode())
      elif p.is_file():
        h.update(p.read_bytes())
  return h.hexdigest()

def mutate_json(value, rng):
  # Replace one value somewhere in the tree (or the whole document) with a hostile one.
  if not isinstance(value, (dict, list)) or not value or rng.random() < 0.1:
    return rng.choice(VALUES)
  key = rng.choice(sorted(value) if isinstance(value, dict) else range(len(value)))
  value[key] = mutate_json(value[key], rng)
  return value

def mutate(path, rng):
  # One hostile change to one file: what a careless or malicious publisher could ship.
  files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
  f = rng.choice(files)
  kinds = ["flip", "truncate", "json", "json", "fifo", "devzero", "dir", "append"]
  kind = rng.choice(kinds + ["endless"] * (f.suffix == ".zst"))
  data = f.read_bytes()
  if kind == "json" and f.suffix != ".json":
    kind = "flip"
  if kind == "flip" and not data:
    kind = "append"
  if kind == "flip":
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
      b[rng.randrange(len(b))] = rng.randrange(256)
    f.write_bytes(bytes(b))
  elif kind == "truncate":
    f.write_bytes(data[:rng.randrange(len(data) + 1)])
  elif kind == "json":
    try:
      doc = json.loads(data)
    except ValueError:
      doc = {}
    f.write_text(json.dumps(mutate_json(doc, rng)))
  elif kind == "endless":
    # One line longer than the line cap, in the middle of the dump (one frame, as Pushshift writes them).
    import zstandard
    from hhh.data.mine.common import MAX_LINE_BYTES
    raw = zstandard.ZstdDecompressor().decompress(data)
    cut = raw.index(b"\n", len(raw) // 2) + 1
    with open(f, "wb") as out, zstandard.ZstdCompressor(level=1).stream_writer(out) as w:
      w.write(raw[:cut])
      for _ in range(MAX_LINE_BYTES // (1 << 20) + 1):
        w.write(b"7" * (1 << 20))
      w.write(b"\n" + raw[cut:])
  elif kind == "append":
    f.write_bytes(data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))))
  else:
    os.remove(f)
    {"fifo": os.mkfifo, "devzero": lambda p: os.symlink("/dev/zero", p), "dir": os.mkdir}[kind](f)
  return f"{kind} {f.relative_to(path.parent) if path.is_dir() else f.name}"

def own_lines(text):
  # orbax's background threads print "Event loop is closed" tracebacks once many loads have run in one process
  # (a fresh `hhh` process prints none): those lines are not the command's.
  lines = text.splitlines()
  keep = []
  for i, line in enumerate(lines):
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    if "uvloop" in line or line == "RuntimeError: Event loop is closed" or \
        (line.startswith("Traceback") and "uvloop" in nxt):
      continue
    keep.append(line)
  return "\n".join(keep)

def alarm(*_):
  raise TimeoutError("case took too long")

signal.signal(signal.SIGALRM, alarm)
rng = random.Random(seed)
results = []
for i in range(n):
  case = work / f"case{i}"
  if src.is_dir():
    shutil.copytree(src, case, symlinks=True)
  else:
    case.mkdir()
    shutil.copy(src, case / src.name)
  target = case if src.is_dir() else case / src.name
  what = mutate(target, rng)
  before = tree_hash(case)
  out = work / f"out{i}"
  argv = {"bundle": ["export", str(target), "--format", "hf", "--out", str(out)],
          "hf": ["convert", str(target), "--out", str(out), "--as-bundle"],
          "zst": ["data", "load", "hh_rlhf", str(target), "--out", str(out)]}[surface]
  err = io.StringIO()
  start = time.monotonic()
  signal.alarm(CASE_S)
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      rc = cli.main(argv)
  except BaseException as e:
    rc = f"uncaught {type(e).__name__}: {e}"[:300] + "\n" + traceback.format_exc()[-2000:]
  finally:
    signal.alarm(0)
  results.append({"case": what, "rc": rc, "s": time.monotonic() - start, "stderr": own_lines(err.getvalue())[-600:],
                  "intact": tree_hash(case) == before})
  shutil.rmtree(case, ignore_errors=True)
  shutil.rmtree(out, ignore_errors=True)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
json.dump({"results": results, "hwm_mb": hwm / 1024}, sys.stdout)
sys.stdout.flush()
# The report is complete. Skip interpreter teardown: after dozens of loads in one process, a daemon thread of a
# library can still be running while builtins are torn down and print an "Exception ignored" traceback (seen once
# under heavy load). A real `hhh` command runs one case per process and is not affected.
os._exit(0)
"""


def fuzz(surface: str, src, work, n: int, seed: int) -> list[dict]:
  work.mkdir()
  proc = subprocess.run([sys.executable, "-c", _CHILD, surface, str(src), str(work), str(n), str(seed), str(CASE_S)],
                        env=hhh_env(), cwd=REPO, capture_output=True, text=True, timeout=60 + n * CASE_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report["hwm_mb"] < MAX_RSS_MB, report["hwm_mb"]
  results = report["results"]
  assert len(results) == n
  for r in results:
    assert r["intact"], f"{r['case']}: the input was altered"
    assert r["rc"] in (0, 1, 2), r
    assert "Traceback" not in r["stderr"], r
    if r["rc"] != 0:
      assert r["stderr"].splitlines()[-1].startswith("hhh: error: "), r
  # Each work dir holds only what the child made, and it removed every case: nothing else was touched.
  assert sorted(p.name for p in work.iterdir()) == []
  return results


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = random_bundle_and_hf(tmp_path_factory.mktemp("fuzz_src"))
  import zstandard
  # Enough rows for several zstd blocks, so a cut or a flipped byte leaves some of them readable.
  rows = [json.dumps({"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i * 7919 % 10007}",
                      "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i * 104729 % 10009}"}) for i in range(4000)]
  (root / "train.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress("\n".join(rows).encode() + b"\n"))
  return root


def test_fuzz_bundle(sources, tmp_path):
  results = fuzz("bundle", sources / "bundle", tmp_path / "work", n=24, seed=1)
  assert any(r["rc"] == 1 for r in results)


def test_fuzz_hf_directory(sources, tmp_path):
  results = fuzz("hf", sources / "hf", tmp_path / "work", n=24, seed=2)
  assert any(r["rc"] == 1 for r in results)


def test_fuzz_jsonl_zst(sources, tmp_path):
  results = fuzz("zst", sources / "train.jsonl.zst", tmp_path / "work", n=24, seed=3)
  assert any(r["rc"] == 1 for r in results)
  assert any(r["rc"] == 0 and r["case"].startswith("endless") for r in results)
