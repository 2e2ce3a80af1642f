"""Packed rows of the largest bucket against one long row a step, in hhh's packed train step, on this machine.

    python benchmarks/long_rows.py                        # SmolLM2-135M's shape, steps 1-4 of train_real's order
    python benchmarks/long_rows.py --shape 13m --rounds 3

The same 8 real comparisons a step (the four HH-RLHF test files in ../shared/data, train_real.py's fixed
shuffled order, SmolLM2's tokenizer, cut to 1024 tokens), laid out two ways by hhh.data.packing: rows of up to
1,024 tokens, bin-packed (data.pack_len=1024), and one row a step of up to 8,192 tokens on the grid of
`row_buckets` (data.pack_len=0 on CPU). One train step per batch from the same fresh state, so the two layouts'
losses must agree (checked). Rounds interleave (rows, long, rows, long, ...); per round the time of all the
steps; medians; the load average beside every round. Runs under jemalloc, as the `hhh` command does on CPU.
Writes benchmarks/results/long_rows.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
BUCKETS = (128, 256, 512, 1024)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "13m"])
  ap.add_argument("--steps", default="1,2,3,4", help="batches of train_real.py's order (8 comparisons each)")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--out", default=str(HERE / "results" / "long_rows.json"))
  a = ap.parse_args()
  from hhh import cpu_malloc
  cpu_malloc.reexec_under_jemalloc(__file__)

  import jax
  import numpy as np
  import trl_side
  from device_check import _state  # the same fresh train state as the GPU check
  from train_real import BATCH, _cpu, _model_cfg
  from hhh import config as config_lib
  from hhh.data import packing
  from hhh.data.pipeline import encode_all
  from hhh.model import sharding as shd
  from hhh.model.params import abstract_params
  from hhh.pretrained import load_lm
  from hhh.train.step import Steps

  js = [int(x) for x in a.steps.split(",")]
  tok = load_lm("smollm2-135m-instruct").tokenizer
  comps = trl_side.load_comparisons(str(SHARED / "hh_rlhf"))
  comps = [comps[i] for i in np.random.default_rng(0).permutation(len(comps))[:BATCH * (max(js) + 1)]]
  examples, _ = encode_all(comps, tok, 1024, 2, config_lib.DataConfig.context_cut)
  model_cfg = _model_cfg(a.shape, tok.vocab_size)
  cfg = config_lib.TrainConfig(model=model_cfg, batch_size=BATCH, steps=10**6,
                               data=config_lib.DataConfig(max_len=1024, buckets=BUCKETS, max_k=2),
                               optim=config_lib.OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
  mesh = shd.make_mesh(cfg.mesh)
  graphdef, params_abs = abstract_params(model_cfg)
  layouts = {"rows_1024": 1024, "long_row": packing.row_length(BUCKETS, backend="cpu")}
  steps = {n: Steps(cfg, mesh, graphdef, params_abs, cfg.steps, packed=True) for n in layouts}
  hosts = {n: [packing.collate_rows(examples[j * BATCH:(j + 1) * BATCH], K=2, pad_id=tok.pad_id,
                                    buckets=packing.row_buckets(BUCKETS, L), one_row=packing.long_rows(BUCKETS, L))
               for j in js] for n, L in layouts.items()}
  needed = sum(packing.packed_length(e) for j in js for e in examples[j * BATCH:(j + 1) * BATCH])

  def run(n):
    """Every batch's step from a fresh state: (seconds of the steps, losses)."""
    total, losses = 0.0, []
    for host in hosts[n]:
      state = _state(steps[n], model_cfg)
      jax.block_until_ready(state)
      t = time.perf_counter()
      _, m = steps[n].train(state, steps[n].put_batch(host))
      losses.append(float(m["loss"]))
      total += time.perf_counter() - t
    return total, losses

  first_s, losses = {}, {}
  for n in layouts:
    t = time.perf_counter()
    _, losses[n] = run(n)   # compiles every row shape of the measured batches
    first_s[n] = time.perf_counter() - t
    print(f"{n}: shapes {[h['tokens'].shape for h in hosts[n]]}, first pass (compiles) {first_s[n]:.0f} s",
          file=sys.stderr, flush=True)
  diff = max(abs(x - y) for x, y in zip(losses["rows_1024"], losses["long_row"]))
  assert diff < 1e-4, diff
  times, loads = {n: [] for n in layouts}, []
  for r in range(a.rounds):
    for n in layouts:
      times[n].append(run(n)[0])
    loads.append(os.getloadavg())
    print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in layouts) + f", load {loads[-1][0]:.2f}",
          file=sys.stderr, flush=True)
  med = {n: statistics.median(t) for n, t in times.items()}
  res = {"command": "python " + " ".join(sys.argv), "shape": a.shape, "batches": js, "comparisons_per_batch": BATCH,
         "allocator": "jemalloc" if os.environ.get("LD_PRELOAD") else "glibc", "cpu": _cpu(),
         "nproc": os.cpu_count(), "backend": jax.default_backend(),
         "row_shapes": {n: [list(h["tokens"].shape) for h in hosts[n]] for n in layouts},
         "processed_over_needed": {n: sum(h["tokens"].size for h in hosts[n]) / needed for n in layouts},
         "first_pass_s": first_s, "loss_max_abs_diff": diff, "s_for_the_steps": med, "rounds": times,
         "load_avg_rounds": loads, "long_row_speedup": med["rows_1024"] / med["long_row"]}
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2) + "\n")
  print(json.dumps({k: res[k] for k in ("s_for_the_steps", "long_row_speedup", "processed_over_needed")}))


if __name__ == "__main__":
  main()
