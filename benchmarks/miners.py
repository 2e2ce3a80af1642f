"""Miner throughput (MB/s of uncompressed input) and peak RSS, on the real dumps and on 10x larger inputs.

Each measurement runs in a fresh subprocess so its peak RSS is its own. Beside each
miner runs the bare scan of the same input (iterparse with clear() for XML,
json.loads per line for ndjson): the floor any parser of that format pays. Miner and
scan alternate over --single-repeats runs (medians): single runs of the small inputs
moved the ratio by a third.

  nice python benchmarks/miners.py [--shared ../shared/data] [--out benchmarks/results/miners.json]

A flat peak RSS from 1x to 10x is the point: memory must not grow with the input.

Then `hhh data mine` over several inputs (four copies of the 10x Stack Exchange site under other names, and the
Reddit month split into four files, all generated in a temporary folder) with 1 and 2 workers: runs interleaved
(1 2 1 2 ...), the median of each, and the load average before and after, since other work on the machine
depresses the speedup. The time is the mining phase (every input mined into its part file); writing the
dataset afterwards is one serial pass whatever the worker count.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

# Peak RSS is VmHWM: it resets at exec, unlike ru_maxrss, which a child inherits from the parent it forked from.
_CHILD = r"""
import importlib, json, pathlib, sys, time
import xml.etree.ElementTree as ET
kind, miner, path = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "miner":
  from hhh.data.mine.common import MineStats
  mod = importlib.import_module(f"hhh.data.mine.{miner}")
# Imports stay outside the clock (they were inside it for the miner alone: ~40 ms, a third of a small input).
t = time.perf_counter()
n = 0
if kind == "miner":
  stats = MineStats(source=miner)
  for _ in mod.mine(path, mod.Options(), stats):
    n += 1
elif miner == "reddit":
  for f in sorted(pathlib.Path(path).glob("*.ndjson")) if pathlib.Path(path).is_dir() else [path]:
    with open(f, "rb") as fh:
      for line in fh:
        json.loads(line)
        n += 1
else:
  p = pathlib.Path(path)
  files = [p / n for n in ("Posts.xml", "Votes.xml") if (p / n).exists()] if p.is_dir() else [p]
  for f in files:
    for _, elem in ET.iterparse(f, events=("end",)):
      n += 1
      elem.clear()
dt = time.perf_counter() - t
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "items": n, "peak_rss_mb": hwm_kb / 1024}))
"""


_POOL_CHILD = r"""
import json, sys, time, dataclasses
from hhh.data.mine import many
import importlib
source, path, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = importlib.import_module(f"hhh.data.mine.{source}").Options()
t = time.perf_counter()
items, stats, per_input = many.mine_many(source, path, options, out, workers=workers, progress=False)
dt = time.perf_counter() - t
many.finish(out)
print(json.dumps({"seconds": dt, "comparisons": stats.comparisons, "records_read": stats.records_read}))
"""


def _pool_run(source: str, path: pathlib.Path, out: pathlib.Path, workers: int) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-c", _POOL_CHILD, source, str(path), str(out), str(workers)], env=env,
                        capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _parallel(source: str, inputs: pathlib.Path, mb: float, tmp: pathlib.Path, repeats: int) -> dict:
  """1 and 2 workers over the same inputs, interleaved, medians."""
  load_before = os.getloadavg()
  times: dict[int, list[float]] = {1: [], 2: []}
  counts = set()
  for r in range(repeats):
    for workers in (1, 2):
      m = _pool_run(source, inputs, tmp / f"pool-{source}-{workers}-{r}", workers)
      times[workers].append(m["seconds"])
      counts.add((m["records_read"], m["comparisons"]))
  assert len(counts) == 1, counts  # every run mined the same
  med = {w: statistics.median(t) for w, t in times.items()}
  return {"miner": source, "inputs": len(list(inputs.iterdir())), "input_mb": round(mb, 2),
          "records_read": counts.pop()[0], "runs": repeats, "seconds_1_worker": [round(t, 3) for t in times[1]],
          "seconds_2_workers": [round(t, 3) for t in times[2]], "median_mb_per_s_1_worker": round(mb / med[1], 2),
          "median_mb_per_s_2_workers": round(mb / med[2], 2), "speedup_2_over_1": round(med[1] / med[2], 2),
          "load_average_before": [round(x, 2) for x in load_before],
          "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def _measure(kind: str, miner: str, path: pathlib.Path) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", _CHILD, kind, miner, str(path)], env=env, capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _size_mb(path: pathlib.Path) -> float:
  """Bytes the miner reads: for a Stack Exchange site, Posts.xml and Votes.xml."""
  files = [path / n for n in ("Posts.xml", "Votes.xml") if (path / n).exists()] if path.is_dir() else [path]
  return sum(p.stat().st_size for p in files) / 2**20


def _stackexchange_10x(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Ten copies of the site with ids shifted per copy, so every question is new."""
  dst.mkdir(parents=True, exist_ok=True)
  for name, id_attrs in (("Posts.xml", ("Id", "ParentId", "AcceptedAnswerId")), ("Votes.xml", ("Id", "PostId"))):
    text = (src / name).read_text(encoding="utf-8")
    head, rows = text.partition("\n")[0], re.findall(r"^\s*<row .*/>\s*$", text, re.M)
    root = "posts" if name == "Posts.xml" else "votes"
    with open(dst / name, "w", encoding="utf-8") as f:
      f.write(head + f"\n<{root}>\n")
      for copy in range(10):
        shift = copy * 10_000_000
        for row in rows:
          for attr in id_attrs:
            row = re.sub(rf'\b{attr}="(\d+)"', lambda m: f'{attr}="{int(m.group(1)) + shift}"', row)
          f.write(row.strip() + "\n")
      f.write(f"</{root}>\n")


def _reddit_10x(src: pathlib.Path, dst: pathlib.Path) -> None:
  with open(dst, "w", encoding="utf-8") as f:
    for copy in range(10):
      for line in open(src, encoding="utf-8"):
        d = json.loads(line)
        for key in ("id", "parent_id", "link_id"):
          if isinstance(d.get(key), str):
            d[key] = f"{d[key]}x{copy}"
        f.write(json.dumps(d) + "\n")


def _wikipedia_10x(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """The excerpt's page repeated as 10 pages (the miner's memory is per page, so this must stay flat)."""
  text = lzma.open(src, "rt", encoding="utf-8").read()
  start, end = text.index("<page>"), text.rindex("</page>") + len("</page>")
  page = text[start:end]
  with open(dst, "w", encoding="utf-8") as f:
    f.write(text[:start])
    for copy in range(10):
      f.write(re.sub(r"(<page>\s*<title>[^<]*)(</title>\s*<id>)(\d+)",
                     lambda m: f"{m.group(1)} {copy}{m.group(2)}{int(m.group(3)) * 100 + copy}", page, count=1))
    f.write(text[end:])
  return dst


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
  ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "miners.json"))
  ap.add_argument("--repeats", type=int, default=3, help="runs of each worker count in the parallel comparison")
  ap.add_argument("--single-repeats", type=int, default=5,
                  help="runs of each miner and its bare scan on one input (interleaved; medians)")
  args = ap.parse_args()
  shared = pathlib.Path(args.shared)
  if not shared.is_dir():
    sys.exit(f"no data at {shared}: the benchmark reads the real dumps in ../shared/data")
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    se = shared / "stackexchange" / "cardano.stackexchange.com"
    se10 = tmp / "se10" / "cardano.stackexchange.com"
    _stackexchange_10x(se, se10)
    rd = shared / "reddit" / "RC_2005-12.ndjson"
    rd10 = tmp / "RC_10x.ndjson"
    _reddit_10x(rd, rd10)
    wk_xz = shared / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"
    wk = tmp / "wiki_1x.xml"
    wk.write_text(lzma.open(wk_xz, "rt", encoding="utf-8").read(), encoding="utf-8")
    wk10 = _wikipedia_10x(wk_xz, tmp / "wiki_10x.xml")
    cases = [("stackexchange", "1x", se), ("stackexchange", "10x", se10), ("reddit", "1x", rd),
             ("reddit", "10x", rd10), ("wikipedia", "1x", wk), ("wikipedia", "10x", wk10)]
    for miner, scale, path in cases:
      mb = _size_mb(path)
      row = {"miner": miner, "scale": scale, "input_mb": round(mb, 2), "runs": args.single_repeats,
             "load_average_before": [round(x, 2) for x in os.getloadavg()]}
      runs: dict[str, list[dict]] = {"miner": [], "scan": []}
      for r in range(args.single_repeats):
        for kind in ("miner", "scan") if r % 2 == 0 else ("scan", "miner"):  # interleaved: drift hits both
          runs[kind].append(_measure(kind, miner, path))
      for kind, ms in runs.items():
        sec = statistics.median(m["seconds"] for m in ms)
        row[f"{kind}_mb_per_s"] = round(mb / sec, 2)
        row[f"{kind}_peak_rss_mb"] = round(max(m["peak_rss_mb"] for m in ms), 1)
        row[f"{kind}_items"] = ms[0]["items"]
      row["miner_over_scan"] = round(row["miner_mb_per_s"] / row["scan_mb_per_s"], 3)
      row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
      results.append(row)
      print(json.dumps(row), flush=True)
    parallel = []
    sites = tmp / "sites"
    sites.mkdir()
    for i in range(4):  # copies under other names: four inputs of one real site's size and make-up
      shutil.copytree(se10, sites / f"site{i}.stackexchange.com")
    months = tmp / "months"
    months.mkdir()
    lines = rd10.read_bytes().splitlines(keepends=True)
    for i in range(4):
      (months / f"RC_2005-12-part{i}.ndjson").write_bytes(b"".join(lines[i::4]))
    for source, folder in (("stackexchange", sites), ("reddit", months)):
      mb = sum(_size_mb(p) for p in folder.iterdir())
      row = _parallel(source, folder, mb, tmp, args.repeats)
      parallel.append(row)
      print(json.dumps(row), flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", "python": sys.version.split()[0],
                             "command": " ".join(["nice python benchmarks/miners.py", *sys.argv[1:]]),
                             "results": results,
                             "parallel": parallel}, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
