"""Streaming training data (`data.stream`): host peak RSS as the store grows 10x, and steps/s against in memory.

    python benchmarks/stream_memory.py [--small 200000] [--scale 10] [--tmp /tmp/hhh_stream_bench]

1. Two stores of the quickstart world's `assistant` comparisons (`hhh.studies.quickstart.synth.target_comparisons`),
   N and scale x N train records, written under --tmp (never in the repo). TFDS's builder writes about 3k records/s
   on this machine, so the train shards are written directly: records serialized with the store's own TFDS
   features and ArrayRecord writer in parallel processes, dataset_info.json updated with their shard lengths (the
   layout `hhh.data.store` writes; validation comes from the builder).
2. `hhh train` with data.stream=true on each: a first run that builds the length index (cold), then a run on
   the cached index; peak RSS of the training process and of its whole process tree (grain workers included),
   sampled every 50 ms.
3. Steps/s at the quickstart's sizes (its model "20k", max_len 64, batch 16, a PMP-sized store), in memory vs
   streamed, runs interleaved; steps/s from metrics.jsonl's wall clock after the first logged step (compile).

4. `--pmp STEPS` (after 1-3, on their stores): a PMP-stage run at this machine's scale instead, the mixture
   "large:1,small:1:binarize" streamed with the quickstart model, added to the JSON as "pmp_run".

Load averages are recorded before and after each run: the machine is shared.
Writes benchmarks/results/stream_memory.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "stream_memory.json"


def _serialize_shard(args) -> tuple[str, int, int]:
  version_dir, split, shard, n_shards, lo, hi, seed = args
  from array_record.python import array_record_module
  from hhh.data import store
  from hhh.studies.quickstart import synth
  feats = store.DataSource(pathlib.Path(version_dir).parents[2], "validation").info.features
  path = pathlib.Path(version_dir) / f"comparisons-{split}.array_record-{shard:05d}-of-{n_shards:05d}"
  w = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  rng = np.random.default_rng([seed, shard])
  for at in range(lo, hi, 10_000):
    for c in synth.target_comparisons("assistant", min(10_000, hi - at), rng, f"bench/{shard}/{at}"):
      w.write(feats.serialize_example({"id": c.id, "source": c.source, "context": c.context,
                                       "responses": list(c.responses), "scores": np.asarray(c.scores, np.float32),
                                       "meta": "{}"}))
  w.close()
  return str(path), hi - lo, path.stat().st_size


def make_store(path: pathlib.Path, n_train: int, n_valid: int = 2000, shards: int = 2, seed: int = 0) -> float:
  """A dataset directory with `n_train` train records; returns seconds taken."""
  from hhh.data import store
  from hhh.data.mine.common import MineStats
  from hhh.studies.quickstart import synth
  t0 = time.perf_counter()
  if path.exists():
    shutil.rmtree(path)
  rng = np.random.default_rng([seed, 99])
  valid = synth.target_comparisons("assistant", n_valid, rng, "valid")
  # The builder writes validation (and the metadata); a placeholder train record is replaced below.
  items = [(c.id, c, "validation") for c in valid] + [("t", synth.target_comparisons("assistant", 1, rng, "t")[0],
                                                        "train")]
  store.write_dataset(path, items, MineStats(source="bench"))
  version = store.DataSource(path, "validation").version_dir
  for old in version.glob("comparisons-train.array_record-*"):
    old.unlink()
  bounds = np.linspace(0, n_train, shards + 1).astype(int)
  jobs = [(str(version), "train", s, shards, int(bounds[s]), int(bounds[s + 1]), seed) for s in range(shards)]
  # spawn: the parent has array_record and TFDS threads running, which a fork does not survive.
  with concurrent.futures.ProcessPoolExecutor(shards, mp_context=multiprocessing.get_context("spawn")) as pool:
    done = list(pool.map(_serialize_shard, jobs))
  info_path = version / "dataset_info.json"
  info = json.loads(info_path.read_text())
  for sp in info["splits"]:
    if sp["name"] == "train":
      sp["shardLengths"] = [str(n) for _, n, _ in done]
      sp["numBytes"] = str(sum(b for _, _, b in done))
  info_path.write_text(json.dumps(info, indent=2))
  assert len(store.DataSource(path, "train")) == n_train
  return time.perf_counter() - t0


def _train_len(path: pathlib.Path) -> int:
  from hhh.data import store
  return len(store.DataSource(path, "train"))


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def run_train(workdir: pathlib.Path, sets: list[str]) -> dict:
  """One `hhh train`; peak RSS of the process and of its tree, sampled every 50 ms."""
  if workdir.exists():
    shutil.rmtree(workdir)
  cmd = [sys.executable, "-m", "hhh.cli", "train", "experiments/tiny_pm.py", "--workdir", str(workdir)]
  for s in sets:
    cmd += ["--set", s]
  load_before = os.getloadavg()
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ps = psutil.Process(proc.pid)
  peak_main = peak_tree = 0
  while proc.poll() is None:
    try:
      main = ps.memory_info().rss
      tree = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
    except psutil.Error:
      break
    peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
    time.sleep(0.05)
  out, err = proc.communicate()
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  first, last = train[0], train[-1]
  steps_per_s = (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)
  return {"peak_rss_mb": round(peak_main / 2**20, 1), "peak_rss_tree_mb": round(peak_tree / 2**20, 1),
          "wall_s": round(wall, 1), "steps_per_s": round(steps_per_s, 2), "final_loss": last["loss"],
          "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", type=int, default=200_000)
  ap.add_argument("--scale", type=int, default=10)
  ap.add_argument("--quickstart_n", type=int, default=5_000)
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--workers", type=int, default=1)
  ap.add_argument("--tmp", default="/tmp/hhh_stream_bench")
  ap.add_argument("--reuse", action="store_true", help="keep stores of the right size already under --tmp")
  ap.add_argument("--pmp", type=int, default=0, help="steps of a PMP mixture run on the stores already written")
  args = ap.parse_args()
  tmp = pathlib.Path(args.tmp)
  tmp.mkdir(parents=True, exist_ok=True)
  result = {"machine": {"cpus": os.cpu_count(), "load_at_start": [round(x, 2) for x in os.getloadavg()]},
            "command": "python " + " ".join(sys.argv), "stores": {}, "rss": {}, "speed": {}}
  # Quickstart sizes: the "20k" model (d 32, 1 layer), max_len 64, batch 16, 4-way max_k as its PMP stage.
  small_model = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_len=64", "data.max_len=64",
                 "data.buckets=64", "data.max_k=4", "batch_size=16", "log_every=10", "eval_every=100000",
                 "progress=false", f"data.stream_workers={args.workers}", "optim.warmup_steps=5"]
  if args.pmp:
    result = json.loads(OUT.read_text())
    mix = f"{tmp / 'store_large'}:1,{tmp / 'store_small'}:1:binarize"
    r = run_train(tmp / "run_pmp", small_model + [f"data.train={mix}", f"data.validation={tmp / 'store_quickstart'}",
                                                  f"steps={args.pmp}", f"checkpoint_every={args.pmp // 2}",
                                                  "data.stream=true"])
    lines = [json.loads(x) for x in (tmp / "run_pmp" / "metrics.jsonl").read_text().splitlines()]
    r["held_out"] = next((x for x in reversed(lines) if x["split"] == "validation"), None)
    r["data_train"] = "store_large:1,store_small:1:binarize"
    r["steps"] = args.pmp
    r["command"] = "python " + " ".join(sys.argv)
    result["pmp_run"] = r
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(r, indent=1))
    return
  sizes = {"small": args.small, "large": args.small * args.scale, "quickstart": args.quickstart_n}
  for name, n in sizes.items():
    path = tmp / f"store_{name}"
    if args.reuse and (path / "summary.json").exists() and _train_len(path) == n:
      result["stores"][name] = {"train_records": n, "reused": True}
      continue
    secs = make_store(path, n)
    result["stores"][name] = {"train_records": n, "seconds_to_write": round(secs, 1)}
    print(f"store {name}: {n} records in {secs:.0f}s", flush=True)

  def sets(store_name, stream, steps):
    d = tmp / f"store_{store_name}"
    return small_model + [f"data.train={d}", f"data.validation={d}", f"steps={steps}", f"checkpoint_every={steps}",
                          f"data.stream={str(stream).lower()}"]
  for name in ("small", "large"):
    for phase in ("index_cold", "index_cached"):
      if phase == "index_cold":
        shutil.rmtree(tmp / f"store_{name}" / "index", ignore_errors=True)
      r = run_train(tmp / f"run_{name}", sets(name, True, 20))
      result["rss"].setdefault(name, {})[phase] = r
      print(name, phase, r, flush=True)
  for phase in ("index_cold", "index_cached"):
    small, large = result["rss"]["small"][phase], result["rss"]["large"][phase]
    result["rss"][f"ratio_{phase}"] = {
        "main": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "tree": round(large["peak_rss_tree_mb"] / small["peak_rss_tree_mb"], 3)}
  # Interleaved: memory, stream, memory, stream, ... on the quickstart-sized store (index built by a first run).
  run_train(tmp / "run_warm", sets("quickstart", True, 5))
  for rep in range(args.repeats):
    for mode in ("in_memory", "streamed"):
      r = run_train(tmp / f"run_speed_{mode}", sets("quickstart", mode == "streamed", args.steps))
      result["speed"].setdefault(mode, []).append(r)
      print(mode, rep, r, flush=True)
  med = {m: float(np.median([r["steps_per_s"] for r in rs])) for m, rs in result["speed"].items()}
  result["speed"]["median_steps_per_s"] = med
  result["speed"]["streamed_over_in_memory"] = round(med["streamed"] / med["in_memory"], 3)
  same = [a["final_loss"] == b["final_loss"] for a, b in zip(result["speed"]["in_memory"], result["speed"]["streamed"])]
  result["speed"]["same_final_loss"] = all(same)
  result["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
  OUT.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({"rss_ratio": {k: v for k, v in result["rss"].items() if k.startswith("ratio")},
                    "speed": med}, indent=1))


if __name__ == "__main__":
  main()
