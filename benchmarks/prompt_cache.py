"""Prompted multiple choice (hhh_alignment after the HHH prompt): prompt KV cache computed once vs recomputed per row.

Both methods score the same rows with the same batches (`hhh.evals.score.Scorer`, whose layout is identical
with and without the cache):

  (a) cached     the prompt is prefilled once (batch 1) and each batch of (item, option) rows runs after it
  (b) uncached   every row is a full forward pass over prompt + context + option (`use_cache=False`)

Every program is compiled ahead of time (`jit(...).lower(...).compile()`) and the clock measures only
execution, so the numbers are steady-state throughput; compile seconds are reported apart. Cached items/s
counts the prefill (amortised over the N items) and is also given without it. Recomputing the prompt is
expensive, so (b) can be timed on the first `--uncached-limit` items only (0: not at all); items/s are compared
per item. The max |loglik difference| is over the rows both methods scored.

`--before DIR` also times (a) with hhh imported from DIR (another checkout), each side a fresh worker process,
rounds alternating (after, before, after, before, ...), medians over `--rounds`: a change to the cached path
measured against its baseline in one run, with the load average beside each round.

  python benchmarks/prompt_cache.py [--data ../shared/data/hhh_alignment] [--prompt data/prompts/hhh.txt]
      [--model smollm2-135m-instruct] [--limit 20] [--uncached-limit N] [--batch-size 4] [--before DIR --rounds 2]
  python benchmarks/prompt_cache.py --random --limit 8     # a small random model, byte tokens, for a quick run

With --random the prompt is cut to its first --prompt-chars characters (default 4000): bytes are tokens, and
the whole HHH prompt would be ~28k of them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hhh_alignment"
PROMPT = REPO / "data" / "prompts" / "hhh.txt"


def _use_source(src: str | None):
  if src:
    # hhh from another checkout: ahead of the editable install's import hook, which would otherwise win.
    sys.path.insert(0, src)
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]


def random_lm(max_len: int):
  import jax

  from hhh.data.tokenizer import ByteTokenizer
  from hhh.model.config import ModelConfig
  from hhh.pretrained import LM
  from hhh.model.params import graphdef_and_params
  cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, max_len=max_len)
  _, params = graphdef_and_params(cfg, jax.random.PRNGKey(0))
  return LM(cfg, params, ByteTokenizer(), name="random (d_model 128, 4 layers, byte tokenizer)")


class Timed:
  """Runs batches through ahead-of-time compiled programs: compile and execution seconds kept apart."""

  def __init__(self):
    self.programs, self.compile_s, self.run_s = {}, 0.0, 0.0

  def __call__(self, fn, *args, **static):
    import jax
    import numpy as np
    key = (fn, tuple((np.shape(a), str(a.dtype)) for a in jax.tree.leaves(args)))
    if key not in self.programs:
      t = time.perf_counter()
      self.programs[key] = fn.lower(*args, **static).compile()
      self.compile_s += time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(self.programs[key](*args))
    self.run_s += time.perf_counter() - t
    return out


def score_rows(scorer, rows, timed: Timed, cache):
  import numpy as np

  from hhh.evals import score as score_lib
  lp = np.zeros(len(rows))
  for idx in scorer.batches(rows):
    args = scorer.batch_arrays([rows[i] for i in idx])
    out, _ = timed(score_lib._score_rows, scorer.params, cache, *args, graphdef=scorer._graphdef)
    lp[idx] = np.asarray(out)[:len(idx)]
  return lp


def measure(args, src: str | None, uncached_items: int) -> dict:
  """One worker's figures: the prefill, the cached rows and (on the first uncached_items items) uncached rows."""
  _use_source(src)
  import numpy as np

  from hhh.evals import score as score_lib
  from hhh.evals import tasks
  from hhh.evals.score import Scorer
  from hhh.pretrained import load_lm
  prompt = args.prompt.read_text(encoding="utf-8")
  chars = args.prompt_chars or (4000 if args.random else None)
  if chars:
    prompt = prompt[:chars]
  lm = random_lm(max_len=8192) if args.random else load_lm(args.model)
  items, in_prefix, out_prefix = tasks.read_hhh_alignment(args.data)
  queries = [(f"{in_prefix}{it.input}{out_prefix}", [" " + o for o in it.options]) for it in items[:args.limit]]
  cached = Scorer(lm, batch_size=args.batch_size, prompt=prompt)
  rows = cached.rows(queries)
  t_cached, t_uncached, t_prefill = Timed(), Timed(), Timed()
  # A baseline checkout may predate chunked prefill (no `_chunk`): it prefills in one pass.
  chunk = {"chunk": cached._chunk} if hasattr(cached, "_chunk") else {}
  cache = t_prefill(score_lib.prefill, lm.params, *cached.prefill_arrays(), graphdef=cached._graphdef, **chunk)
  lp_cached = score_rows(cached, rows, t_cached, cache)
  out = {"code": src or str(REPO), "items": len(queries), "rows": len(rows), "prompt_chars": len(prompt),
         "prompt_tokens": cached.prompt_tokens, "prompt_cache_slots": cached._P,
         "row_tokens": {"mean": float(np.mean([len(r.ids) for r in rows])), "max": max(len(r.ids) for r in rows)},
         "model": lm.name, "model_config": {"d_model": lm.cfg.d_model, "n_layers": lm.cfg.n_layers,
                                            "n_heads": lm.cfg.n_heads, "kv_heads": lm.cfg.kv_heads,
                                            "vocab_size": lm.cfg.vocab_size, "max_len": lm.cfg.max_len,
                                            "dtype": lm.cfg.dtype},
         "seconds": {"prefill": t_prefill.run_s, "cached_rows": t_cached.run_s,
                     "cached_total": t_prefill.run_s + t_cached.run_s,
                     "compile": {"prefill": t_prefill.compile_s, "cached": t_cached.compile_s}},
         "loglik": [float(x) for x in lp_cached], "load_avg": os.getloadavg()}
  if uncached_items:
    uncached = Scorer(lm, batch_size=args.batch_size, prompt=prompt, use_cache=False)
    rows_u = [r for r in rows if r.item < uncached_items]
    lp_uncached = score_rows(uncached, rows_u, t_uncached, None)
    out.update(uncached_items=uncached_items, uncached_rows=len(rows_u))
    out["seconds"].update(uncached_rows=t_uncached.run_s)
    out["seconds"]["compile"]["uncached"] = t_uncached.compile_s
    out["max_abs_loglik_diff_uncached"] = float(np.abs(lp_cached[:len(rows_u)] - lp_uncached).max())
  return out


def run_worker(args, src: str | None, uncached_items: int) -> dict:
  cmd = [sys.executable, __file__, "--worker", "--uncached-limit", str(uncached_items), "--data", str(args.data),
         "--prompt", str(args.prompt), "--model", args.model, "--limit", str(args.limit),
         "--batch-size", str(args.batch_size)] + (["--random"] if args.random else []) + (
         ["--prompt-chars", str(args.prompt_chars)] if args.prompt_chars else []) + (["--src", src] if src else [])
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", type=pathlib.Path, default=DATA, help="BIG-bench hhh_alignment directory")
  ap.add_argument("--prompt", type=pathlib.Path, default=PROMPT)
  ap.add_argument("--model", default="smollm2-135m-instruct", help="a load_lm spec")
  ap.add_argument("--random", action="store_true", help="a small random model with the byte tokenizer instead")
  ap.add_argument("--prompt-chars", type=int, default=None, help="keep the prompt's first N characters "
                  "(default: all; 4000 with --random)")
  ap.add_argument("--limit", type=int, default=20, help="items (the first N of hhh_alignment)")
  ap.add_argument("--uncached-limit", type=int, default=None, help="time the uncached method on the first N "
                  "items only, in the first round (default: all --limit items; 0: not at all)")
  ap.add_argument("--batch-size", type=int, default=4)
  ap.add_argument("--before", default=None, metavar="DIR", help="also time the cached path of the checkout at DIR")
  ap.add_argument("--rounds", type=int, default=1)
  ap.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "prompt_cache.json")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--src", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  for path in (args.data, args.prompt):
    if not path.exists():
      print(f"prompt_cache: {path} not found", file=sys.stderr)
      return 2
  n_uncached = args.limit if args.uncached_limit is None else args.uncached_limit
  if args.worker:
    print(json.dumps(measure(args, args.src, min(n_uncached, args.limit))))
    return 0
  sides = {"after": None} | ({"before": str(pathlib.Path(args.before).resolve())} if args.before else {})
  rounds: dict[str, list[dict]] = {name: [] for name in sides}
  for r in range(args.rounds):
    for name, src in sides.items():
      res = run_worker(args, src, min(n_uncached, args.limit) if (r == 0 and name == "after") else 0)
      rounds[name].append(res)
      print(f"round {r + 1}/{args.rounds} {name}: prefill {res['seconds']['prefill']:.1f} s, "
            f"{res['items']} items {res['seconds']['cached_rows']:.1f} s (load {res['load_avg'][0]:.2f})",
            file=sys.stderr, flush=True)
  first = rounds["after"][0]

  def med(name, key):
    return statistics.median(r["seconds"][key] for r in rounds[name])

  result = {
      "benchmark": "prompt_cache", "data": str(args.data), "prompt": str(args.prompt),
      "platform": platform.platform(), "cpu_count": os.cpu_count(), "batch_rows": args.batch_size,
      "rounds": args.rounds, **{k: first[k] for k in ("items", "rows", "prompt_chars", "prompt_tokens",
                                                       "prompt_cache_slots", "row_tokens", "model", "model_config")},
      "seconds": {name: {k: med(name, k) for k in ("prefill", "cached_rows", "cached_total")} for name in sides},
      "items_per_s": {"cached": first["items"] / med("after", "cached_total"),
                      "cached_without_prefill": first["items"] / med("after", "cached_rows")},
      "per_round": rounds,
  }
  if "uncached_rows" in first["seconds"]:
    per_item_uncached = first["seconds"]["uncached_rows"] / first["uncached_items"]
    result.update(uncached_items=first["uncached_items"], uncached_rows=first["uncached_rows"])
    result["items_per_s"]["uncached"] = 1.0 / per_item_uncached
    result["speedup_over_uncached"] = per_item_uncached / (med("after", "cached_total") / first["items"])
    result["max_abs_loglik_diff_uncached"] = first["max_abs_loglik_diff_uncached"]
  if args.before:
    result["speedup_over_before"] = {k: med("before", k) / med("after", k)
                                     for k in ("prefill", "cached_rows", "cached_total")}
    result["max_abs_loglik_diff_before"] = max(
        abs(a - b) for a, b in zip(rounds["after"][0]["loglik"], rounds["before"][0]["loglik"]))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps({k: v for k, v in result.items() if k != "per_round"}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
