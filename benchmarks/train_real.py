"""The real training workload side by side: hhh packed, hhh unpacked, TRL's RewardTrainer at its defaults and at
its best, on HH-RLHF comparisons (and Stack Exchange rankings), fed the same comparisons in the same order.

    python benchmarks/train_real.py                                  # writes benchmarks/results/train_real.json
    python benchmarks/train_real.py --shapes 13m --rounds 3 --steps 2

Data: the four HH-RLHF test files in ../shared/data/hh_rlhf (8,552 rows, 8,486 comparisons), in one fixed shuffled
order (seed 0), encoded once by hhh with SmolLM2-135M-Instruct's tokenizer and cut to 1024 tokens (context from
the left, once per comparison as `hhh train` does: data.context_cut); TRL gets those exact token ids as pair
rows (benchmarks/trl_side.py `encode_rows`), so no side tokenizes differently. Batch j is comparisons [8j, 8j+8)
for every side; TRL-best reorders them inside its length-grouped megabatches, as `group_by_length` does. With
--kway, the cardano Stack Exchange rankings (mined by `hhh data mine stackexchange`, up to 4 answers each): hhh
trains 8 rankings a step with its k-way objective, TRL 8 of their (better, worse) pairs a step, and
comparisons/s counts rankings.

hhh packed lays its rows out as `hhh train` does on this backend with data.pack_len=0 (on CPU: a step's
comparisons end to end in one long row; `--pack-len 1024` for rows of the largest bucket, bin-packed).

Shapes, random init (speed does not depend on the values): `smollm2-135m` (SmolLM2-135M's architecture) and `13m`
(hhh's family member with SmolLM2's vocabulary). All fp32, AdamW, clipping at 1.0, no dropout.

With --batch-tokens N, a fifth side, hhh budget, trains the same comparisons in token-budget steps
(`data.batch_tokens=N`: N / 1024 rows of 1024 tokens, as many comparisons as fit): each round, the comparisons
the other sides take in their `--steps` steps, in order (hhh.data.packing.TokenPlan with a 16-comparison
look-ahead, no shuffle), the last step of a round partly empty.

Each side is a persistent worker that warms up first (hhh compiles every row shape the measured batches use, TRL
runs its warm-up steps), then rounds interleave (A B C D A B C D ...), each round timing `--steps` steps of every
side on the same batches. Figures are medians over rounds; the load average is recorded with every round. A
step's time includes collating its batch on the host, for every side.

Tokens: "needed" is what a comparison must compute, its context once and each response (hhh.data.packing
`packed_length`); "processed" is every slot a side computes on, padding and repeated contexts included.
processed/needed is each side's token overhead; the ratio of two sides' overheads bounds their speed ratio at
equal per-token speed, and the report gives each comparisons/s ratio beside that bound.
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
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))

BATCH = 8
MAX_LEN = 1024
BUCKETS = (128, 256, 512, 1024)
BUDGET_MAX_COMPARISONS = 32   # batch_size of the token-budget side: the most comparisons one of its steps holds


def _emit(obj):
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def _model_cfg(shape: str, vocab_size: int):
  import dataclasses
  from hhh.model import family
  from hhh.pretrained import load_lm
  if shape == "13m":
    return family.get("13m", vocab_size=vocab_size, max_len=MAX_LEN)
  if shape == "smollm2-135m":
    return dataclasses.replace(load_lm("smollm2-135m-instruct").cfg, dropout=0.0)
  raise ValueError(f"unknown shape {shape!r}")


def _batches(examples, start: int, n: int, K: int, pack: bool, pad_id: int, row_len: int = MAX_LEN):
  """Host batches start..start+n-1 of the fixed order (B comparisons each); packed rows of up to `row_len`."""
  from hhh.data import packing, pipeline
  out = []
  for j in range(start, start + n):
    exs = examples[j * BATCH:(j + 1) * BATCH]
    if pack:
      out.append(packing.collate_rows(exs, K=K, pad_id=pad_id, buckets=packing.row_buckets(BUCKETS, row_len),
                                      one_row=packing.long_rows(BUCKETS, row_len)))
    else:
      L = pipeline.bucket_of(max(e.length for e in exs), BUCKETS)
      out.append(pipeline.collate(exs, L, K, pad_id))
  return out


def _budget_batches(examples, lo: int, hi: int, K: int, pad_id: int, batch_tokens: int, row_len: int):
  """Token-budget steps (`data.batch_tokens`) over comparisons [lo, hi) of the fixed order: hhh.data.packing's
  TokenPlan without the shuffle, so the side computes exactly the comparisons the other sides get in their
  hi - lo comparisons' steps. Returns (host batch, comparison indices) per step."""
  from hhh.data import packing
  rows = batch_tokens // row_len
  window = examples[lo:hi]
  plan = packing.TokenPlan([[len(p) for p in packing.pieces_of(e, row_len)[0]] for e in window], row_len=row_len,
                           rows=rows, max_comparisons=BUDGET_MAX_COMPARISONS, seed=0, shuffle=False)
  out = []
  for ix in plan.epoch_plan(0):
    exs = [window[i] if i >= 0 else None for i in ix.tolist()]
    out.append((packing.collate_rows(exs, K=K, pad_id=pad_id, buckets=(row_len,), rows=rows),
                [lo + i for i in ix.tolist() if i >= 0]))
  return out


def hhh_worker(a):
  """The hhh side of the worker protocol (benchmarks/train_step_torch.py): `run N` -> N timed steps."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from hhh import config as config_lib
  from hhh.data import packing
  from hhh.data.pipeline import encode_all
  from hhh.model import sharding as shd
  from hhh.pretrained import load_lm
  from hhh.model.params import abstract_params, graphdef_and_params
  from hhh.train.step import Steps

  tok = load_lm("smollm2-135m-instruct").tokenizer
  comps = _read_comparisons(a.data)
  examples, _ = encode_all(comps, tok, MAX_LEN, a.max_k, config_lib.DataConfig.context_cut)
  model_cfg = _model_cfg(a.shape, tok.vocab_size)
  cfg = config_lib.TrainConfig(model=model_cfg, batch_size=BATCH, steps=10**6,
                               data=config_lib.DataConfig(max_len=MAX_LEN, buckets=BUCKETS, max_k=a.max_k),
                               optim=config_lib.OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
  mesh = shd.make_mesh(cfg.mesh)
  graphdef, params_abs = abstract_params(model_cfg)
  steps = Steps(cfg, mesh, graphdef, params_abs, cfg.steps, packed=a.pack)
  params = jax.jit(lambda k: graphdef_and_params(model_cfg, k)[1], out_shardings=steps.param_sh)(jax.random.key(0))
  state = {"params": params, "opt_state": steps.init_opt(params),
           "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
           "rng": jax.device_put(jax.random.key_data(jax.random.key(1)), steps.state_sh["rng"])}

  def step(host):
    nonlocal state
    state, metrics = steps.train(state, steps.put_batch(host))
    return float(metrics["loss"])

  def slots(host):
    return int(np.prod(host["tokens"].shape))

  def needed(j):
    return sum(packing.packed_length(e) for e in examples[j * BATCH:(j + 1) * BATCH])

  t0 = time.perf_counter()
  # The row length `hhh train` picks on this backend (data.pack_len=0), unless --pack-len sets one.
  row_len = packing.row_length(BUCKETS, a.pack_len, a.batch_tokens, backend=jax.default_backend())
  if a.batch_tokens:
    # One shape: a step of the warm-up comparisons compiles it.
    step(_budget_batches(examples, 0, BATCH * a.warmup, a.max_k, tok.pad_id, a.batch_tokens, row_len)[0][0])
    _emit({"ready": True, "warmup_s": time.perf_counter() - t0, "shapes": [[a.batch_tokens // row_len, row_len]],
           "batch_tokens": a.batch_tokens, "versions": {"jax": jax.__version__}})
    return _budget_rounds(a, examples, step, tok.pad_id, row_len)
  for host in _batches(examples, 0, a.warmup, a.max_k, a.pack, tok.pad_id, row_len):
    step(host)
  # Every row shape the measured batches use is compiled now, so no round pays for a compile.
  measured = _batches(examples, a.warmup, a.total - a.warmup, a.max_k, a.pack, tok.pad_id, row_len)
  seen = set()
  for host in measured:
    shape = tuple(host["tokens"].shape)
    if shape not in seen:
      seen.add(shape)
      step(host)
  _emit({"ready": True, "warmup_s": time.perf_counter() - t0, "shapes": sorted(seen),
         "row_len": row_len if a.pack else None, "versions": {"jax": jax.__version__}})
  j = a.warmup
  for line in sys.stdin:
    line = line.strip()
    if not line or line == "quit":
      return
    if line == "rewind":  # --restart-trl: every round runs the same measured batches
      j = a.warmup
      continue
    n = int(line.split()[1])
    times, processed, need = [], [], []
    for _ in range(n):
      t = time.perf_counter()
      host = _batches(examples, j, 1, a.max_k, a.pack, tok.pad_id, row_len)[0]
      step(host)
      times.append(time.perf_counter() - t)
      processed.append(slots(host))
      need.append(needed(j))
      j += 1
    _emit({"times": times, "comparisons": [BATCH] * n, "processed_tokens": processed, "needed_tokens": need,
           "loadavg": os.getloadavg()})


def _budget_rounds(a, examples, step, pad_id, row_len):
  """`run N` on the token-budget side: the comparisons of the other sides' N steps, in token-budget steps."""
  import numpy as np
  from hhh.data import packing
  j = a.warmup
  for line in sys.stdin:
    line = line.strip()
    if not line or line == "quit":
      return
    if line == "rewind":
      j = a.warmup
      continue
    n = int(line.split()[1])
    times, processed, need, comps = [], [], [], []
    for host, ix in _budget_batches(examples, BATCH * j, BATCH * (j + n), a.max_k, pad_id, a.batch_tokens,
                                    row_len):
      t = time.perf_counter()
      step(host)
      times.append(time.perf_counter() - t)
      processed.append(int(np.prod(host["tokens"].shape)))
      need.append(sum(packing.packed_length(examples[i]) for i in ix))
      comps.append(len(ix))
    j += n
    _emit({"times": times, "comparisons": comps, "processed_tokens": processed, "needed_tokens": need,
           "loadavg": os.getloadavg()})


def _read_comparisons(path):
  from hhh.data.schema import Comparison
  with open(path) as f:
    return [Comparison(d["context"], tuple(d["responses"]), tuple(d["scores"]), d["id"], "")
            for d in map(json.loads, f)]


class HHHWorker:
  """An hhh worker process, the same protocol as trl_side.TRLWorker."""

  def __init__(self, name, shape, data, pack, max_k, warmup, total, batch_tokens=0, pack_len=0):
    self.name, self.info, self.proc = name, {}, None
    self.cmd = [sys.executable, __file__, "--worker", "--shape", shape, "--data", str(data), "--pack",
                "1" if pack else "0", "--max-k", str(max_k), "--warmup", str(warmup), "--total", str(total),
                "--batch-tokens", str(batch_tokens), "--pack-len", str(pack_len)]

  def start(self):
    import subprocess
    from hhh import cpu_malloc
    env = dict(os.environ)
    lib = cpu_malloc.find_jemalloc()
    if lib:  # what the `hhh` command runs under on CPU (hhh/cpu_malloc.py)
      # background_thread: an idle worker hands its step buffers back, so a TRL worker beside it has the memory.
      # dirty_decay_ms: within a second, so a TRL worker started next finds the memory free (one was OOM-killed).
      env.update(LD_PRELOAD=lib, MALLOC_CONF=cpu_malloc.MALLOC_CONF + ",background_thread:true,dirty_decay_ms:1000")
    self.info["allocator"] = "jemalloc" if lib else "glibc"
    self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                 env=env)
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"{self.name} exited ({self.proc.wait()})")
      if line.startswith("{"):
        msg = json.loads(line)
        self.info.update(msg)
        if msg.get("ready"):
          return self

  def rewind(self):
    self.proc.stdin.write("rewind\n")
    self.proc.stdin.flush()

  def run(self, n):
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"{self.name} exited ({self.proc.wait()})")
      if line.startswith("{"):
        return json.loads(line)

  def stop(self):
    from train_step import Worker  # the same shutdown as the train-step benchmark's workers
    Worker.stop(self)


def _hf_dir(shape: str, tok, out: pathlib.Path) -> pathlib.Path:
  """An HF sequence-classification directory of a random-init model of `shape` (what TRL loads)."""
  import jax
  from flax import nnx
  from hhh.model.transformer import Transformer
  from hhh.reward import hf_export
  if (out / "hf" / "config.json").exists():
    return out / "hf"
  cfg = _model_cfg(shape, tok.vocab_size)
  params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0))))
  params = jax.tree.map(lambda x: x, params)
  b = hf_export.write_bundle(out / "bundle", cfg, params, tok, objective="ranked", max_len=MAX_LEN,
                             normalization={"mean": 0.0, "std": 1.0, "n": 0, "reference": None})
  hf_export.export_hf(b, out / "hf")
  return out / "hf"


def _summ(rounds, need_per_comp: float, need_over_real: float):
  """Medians over rounds. Rates are in needed tokens/s (what the comparisons of a step must compute), divided by
  the window's mean needed tokens per comparison: for sides fed the same batches (hhh, TRL-default) that is their
  comparisons/s ratio exactly; TRL-best's length-grouped batches are longer or shorter than average, and this
  counts them at their length. A TRL step's needed tokens are its unpadded tokens times the window's
  needed/unpadded ratio (each context once instead of once per response)."""
  per = []
  for r in rounds:
    t = sum(r["times"])
    need = sum(r["needed_tokens"]) if "needed_tokens" in r else sum(r["real_tokens"]) * need_over_real
    per.append({"comparisons_per_s": need / t / need_per_comp, "needed_tokens_per_s": need / t,
                "raw_comparisons_per_s": sum(r["comparisons"]) / t,
                "processed_over_needed": sum(r["processed_tokens"]) / need, "s_per_step": t / len(r["times"]),
                "load_avg": r.get("loadavg") or r.get("load_avg")})
  out = {k: statistics.median(p[k] for p in per) for k in per[0] if k != "load_avg"}
  out["comparisons_per_s_rounds"] = [p["comparisons_per_s"] for p in per]
  out["load_avg_rounds"] = [p["load_avg"] for p in per]
  return out


def bench(shape: str, args, workload: str) -> dict:
  import numpy as np
  import trl_side
  from hhh.config import DataConfig
  from hhh.data import packing
  from hhh.data.pipeline import encode_all
  from hhh.pretrained import load_lm

  tok = load_lm("smollm2-135m-instruct").tokenizer
  work = pathlib.Path(args.work) / shape
  work.mkdir(parents=True, exist_ok=True)
  if workload == "hh_rlhf":
    comps = trl_side.load_comparisons(str(SHARED / "hh_rlhf"))
    max_k = 2
  else:
    comps = [c for c in trl_side.load_comparisons(str(args.kway_data)) if c.k >= 2]
    max_k = 4
  comps = [comps[i] for i in np.random.default_rng(0).permutation(len(comps))]
  total = args.warmup + args.rounds * args.steps
  # TRL runs pairs: a K-way ranking is several of them, so it needs more rows for the same number of steps.
  # TRL-best's length grouping sorts megabatches of 50 batches: it gets at least one whole megabatch of rows.
  comps = comps[:max(BATCH * total, 50 * BATCH)]
  data = work / f"{workload}.jsonl"
  with open(data, "w") as f:
    for c in comps:
      f.write(json.dumps({"context": c.context, "responses": list(c.responses), "scores": list(c.scores),
                          "id": c.id}) + "\n")
  rows = trl_side.encode_rows(comps, tok, MAX_LEN, max_k, DataConfig.context_cut)
  rows_path = trl_side.write_rows(rows, work / f"{workload}_rows.jsonl")
  examples, _ = encode_all(comps, tok, MAX_LEN, max_k, DataConfig.context_cut)
  need_per_comp = float(np.mean([packing.packed_length(e) for e in examples]))
  need_over_real = (sum(packing.packed_length(e) for e in examples)
                    / sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows))
  hf = _hf_dir(shape, tok, work)
  if args.restart_trl:
    total = args.warmup + args.steps  # every round runs the same measured batches
  workers = [HHHWorker("hhh_packed", shape, data, True, max_k, args.warmup, total, pack_len=args.pack_len)]
  if args.batch_tokens:
    workers.append(HHHWorker("hhh_budget", shape, data, True, max_k, args.warmup, total, args.batch_tokens))
  if not args.no_unpacked:
    workers.append(HHHWorker("hhh_unpacked", shape, data, False, max_k, args.warmup, total))
  for mode in ("default", "best"):
    for al in args.trl_allocators.split(","):
      workers.append(trl_side.TRLWorker(str(hf), str(rows_path), mode=mode, batch_size=BATCH, max_length=MAX_LEN,
                                        warmup=args.warmup, allocator=al, grad_accum=args.trl_grad_accum))
  got = {w.name: [] for w in workers}
  log = lambda s: print(f"[{shape} {workload}] {s}", file=sys.stderr, flush=True)
  trl = lambda w: isinstance(w, trl_side.TRLWorker)
  stopped = None
  try:
    for w in workers:
      if not (args.restart_trl and trl(w)):
        log(f"starting {w.name}")
        w.start()
    for r in range(args.rounds):
      try:
        for w in workers:
          if args.restart_trl and trl(w):
            # Memory for one SmolLM2-shape TRL worker at a time: each round starts it afresh (its warm-up steps
            # are the same batches every time), runs the measured steps, and stops it.
            w.start()
          elif args.restart_trl:
            w.rewind()
          res = w.run(args.steps)
          if args.restart_trl and trl(w):
            w.stop()
          res.setdefault("loadavg", os.getloadavg())
          got[w.name].append(res)
          log(f"round {r + 1}/{args.rounds} {w.name}: {statistics.median(res['times']):.2f} s/step, "
              f"load {res['loadavg'][0]:.2f}")
      except RuntimeError as e:  # a worker died (OOM): keep the rounds every side completed
        if r == 0:
          raise
        stopped = f"round {r + 1}: {e}"
        log(f"stopped: {stopped}")
        break
  finally:
    for w in workers:
      w.stop()
  done = min(len(v) for v in got.values())
  got = {k: v[:done] for k, v in got.items()}
  sides = {}
  for w in workers:
    # TRL rows carry the pairs' token counts; its comparisons are rankings (fractional for K-way).
    sides[w.name] = _summ(got[w.name], need_per_comp, need_over_real) | {
        "info": {k: v for k, v in w.info.items() if k != "ready"}}
  trl_best_of = lambda mode: max((n for n in sides if n.startswith(f"trl_{mode}")),
                                 key=lambda n: sides[n]["comparisons_per_s"])
  d, b = trl_best_of("default"), trl_best_of("best")
  p, u = sides["hhh_packed"], sides.get("hhh_unpacked")
  ratios = {
      "hhh_packed_over_trl_default": p["comparisons_per_s"] / sides[d]["comparisons_per_s"],
      "hhh_packed_over_trl_best": p["comparisons_per_s"] / sides[b]["comparisons_per_s"],
      "hhh_packed_over_hhh_unpacked": p["comparisons_per_s"] / u["comparisons_per_s"] if u else None,
      # At equal speed per processed token, a side's comparisons/s is inversely proportional to its overhead.
      "token_bound_over_trl_default": sides[d]["processed_over_needed"] / p["processed_over_needed"],
      "token_bound_over_trl_best": sides[b]["processed_over_needed"] / p["processed_over_needed"],
      "trl_default_side": d, "trl_best_side": b}
  if "hhh_budget" in sides:
    t = sides["hhh_budget"]
    ratios.update({
        "hhh_budget_over_trl_default": t["comparisons_per_s"] / sides[d]["comparisons_per_s"],
        "hhh_budget_over_trl_best": t["comparisons_per_s"] / sides[b]["comparisons_per_s"],
        "hhh_budget_over_hhh_packed": t["comparisons_per_s"] / p["comparisons_per_s"],
        "budget_token_bound_over_trl_default": sides[d]["processed_over_needed"] / t["processed_over_needed"],
        "budget_token_bound_over_trl_best": sides[b]["processed_over_needed"] / t["processed_over_needed"]})
  return {"workload": workload, "shape": shape, "comparisons_in_window": len(comps), "batch": BATCH,
          "restart_trl": args.restart_trl, "trl_grad_accum": args.trl_grad_accum, "batch_tokens": args.batch_tokens,
          "needed_over_unpadded_pairs": need_over_real,
          "max_len": MAX_LEN, "warmup_steps": args.warmup, "rounds": done, "rounds_asked": args.rounds,
          "stopped": stopped, "steps_per_round": args.steps,
          "needed_tokens_per_comparison": need_per_comp, "sides": sides, "ratios": ratios, "raw_rounds": got}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--worker", action="store_true")
  ap.add_argument("--shape", default="13m")
  ap.add_argument("--data")
  ap.add_argument("--pack", type=int, default=1)
  ap.add_argument("--max-k", type=int, default=2)
  ap.add_argument("--total", type=int, default=0)
  ap.add_argument("--shapes", default="13m,smollm2-135m")
  ap.add_argument("--kway", action="store_true", help="also the cardano Stack Exchange rankings")
  ap.add_argument("--kway-only", action="store_true", help="only the cardano Stack Exchange rankings")
  ap.add_argument("--kway-data", default="runs/cardano", help="`hhh data mine stackexchange` output")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--trl-allocators", default="glibc,jemalloc")
  ap.add_argument("--restart-trl", action="store_true",
                  help="start each TRL worker afresh every round (one at a time in memory); every round then runs "
                       "the same measured batches on every side")
  ap.add_argument("--no-unpacked", action="store_true", help="leave out the hhh unpacked side")
  ap.add_argument("--trl-grad-accum", type=int, default=1,
                  help="TRL steps as N micro-batches of 8/N pairs (what fits a 24 GB host at SmolLM2's shape)")
  ap.add_argument("--batch-tokens", type=int, default=0,
                  help="also an hhh side with data.batch_tokens=N (a multiple of 1024): token-budget steps over "
                       "the same comparisons")
  ap.add_argument("--pack-len", type=int, default=0,
                  help="longest packed row of the hhh packed side (0: what `hhh train` picks, data.pack_len=0; "
                       "on CPU 8 x 1024 tokens, a step's comparisons end to end; 1024: rows of the largest bucket)")
  ap.add_argument("--work", default="/tmp/hhh-train-real")
  ap.add_argument("--out", default=str(HERE / "results" / "train_real.json"))
  a = ap.parse_args()
  if a.worker:
    return hhh_worker(a)
  out = pathlib.Path(a.out)
  res = json.loads(out.read_text()) if out.exists() else {}
  res.update({"command": "python " + " ".join(sys.argv), "cpu": _cpu(), "nproc": os.cpu_count()})
  res.setdefault("results", {})
  ratios = res.setdefault("ratios", {})
  workloads = ([] if a.kway_only else ["hh_rlhf"]) + (["stackexchange_kway"] if a.kway or a.kway_only else [])
  for shape in a.shapes.split(","):
    for wl in workloads:
      r = bench(shape, a, wl)
      r["command"] = res["command"]  # the top-level one is the last run's; each result keeps its own
      res["results"][f"{wl}/{shape}"] = r
      key = shape if wl == "hh_rlhf" else f"{shape}_kway"
      ratios[key] = r["ratios"]
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(res, indent=2) + "\n")  # after each shape: a long run keeps what it measured
      print(json.dumps({key: r["ratios"]}, indent=2))


def _cpu() -> str:
  try:
    return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
  except (OSError, StopIteration):
    return ""


if __name__ == "__main__":
  main()
