"""Prompted multiple choice (hhh_alignment after the HHH prompt): prompt KV cache computed once vs recomputed per row.

Both methods score the same rows with the same batches (`hhh.evals.score.Scorer`, whose layout is identical
with and without the cache):

  (a) cached     the prompt is prefilled once (batch 1) and each batch of (item, option) rows runs after it
  (b) uncached   every row is a full forward pass over prompt + context + option (`use_cache=False`)

Every program is compiled ahead of time (`jit(...).lower(...).compile()`) and the clock measures only
execution, so the numbers are steady-state throughput; compile seconds are reported apart. Cached items/s
counts the prefill (amortised over the N items) and is also given without it. Recomputing the prompt is
expensive, so (b) can be timed on the first `--uncached-limit` items only; items/s are compared per item.
The max |loglik difference| is over the rows both methods scored.

  python benchmarks/prompt_cache.py [--data ../shared/data/hhh_alignment] [--prompt data/prompts/hhh.txt]
      [--model smollm2-135m-instruct] [--limit 20] [--uncached-limit N] [--batch-size 4]
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
import sys
import time

import jax
import numpy as np

from hhh.data.tokenizer import ByteTokenizer
from hhh.evals import score as score_lib
from hhh.evals import tasks
from hhh.evals.score import Scorer
from hhh.model.config import ModelConfig
from hhh.pretrained import LM, load_lm
from hhh.train.step import graphdef_and_params

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hhh_alignment"
PROMPT = REPO / "data" / "prompts" / "hhh.txt"


def random_lm(max_len: int) -> LM:
  cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, max_len=max_len)
  _, params = graphdef_and_params(cfg, jax.random.PRNGKey(0))
  return LM(cfg, params, ByteTokenizer(), name="random (d_model 128, 4 layers, byte tokenizer)")


class Timed:
  """Runs batches through ahead-of-time compiled programs: compile and execution seconds kept apart."""

  def __init__(self):
    self.programs, self.compile_s, self.run_s = {}, 0.0, 0.0

  def __call__(self, fn, *args, **static):
    key = (fn, tuple((np.shape(a), str(a.dtype)) for a in jax.tree.leaves(args)))
    if key not in self.programs:
      t = time.perf_counter()
      self.programs[key] = fn.lower(*args, **static).compile()
      self.compile_s += time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(self.programs[key](*args))
    self.run_s += time.perf_counter() - t
    return out


def score_rows(scorer: Scorer, rows, timed: Timed, cache) -> np.ndarray:
  lp = np.zeros(len(rows))
  for idx in scorer.batches(rows):
    args = scorer.batch_arrays([rows[i] for i in idx])
    out, _ = timed(score_lib._score_rows, scorer.params, cache, *args, graphdef=scorer._graphdef)
    lp[idx] = np.asarray(out)[:len(idx)]
  return lp


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
                  "items only (default: all --limit items)")
  ap.add_argument("--batch-size", type=int, default=4)
  ap.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "prompt_cache.json")
  args = ap.parse_args(argv)
  for path in (args.data, args.prompt):
    if not path.exists():
      print(f"prompt_cache: {path} not found", file=sys.stderr)
      return 2
  prompt = args.prompt.read_text(encoding="utf-8")
  chars = args.prompt_chars or (4000 if args.random else None)
  if chars:
    prompt = prompt[:chars]
  lm = random_lm(max_len=8192) if args.random else load_lm(args.model)
  items, in_prefix, out_prefix = tasks.read_hhh_alignment(args.data)
  queries = [(f"{in_prefix}{it.input}{out_prefix}", [" " + o for o in it.options]) for it in items[:args.limit]]
  n_uncached = min(args.uncached_limit or len(queries), len(queries))

  cached = Scorer(lm, batch_size=args.batch_size, prompt=prompt)
  uncached = Scorer(lm, batch_size=args.batch_size, prompt=prompt, use_cache=False)
  rows = cached.rows(queries)
  rows_u = [r for r in rows if r.item < n_uncached]
  t_cached, t_uncached, t_prefill = Timed(), Timed(), Timed()
  cache = t_prefill(score_lib._prefill, lm.params, *cached.prefill_arrays(), graphdef=cached._graphdef)
  lp_cached = score_rows(cached, rows, t_cached, cache)
  lp_uncached = score_rows(uncached, rows_u, t_uncached, None)

  cached_total = t_prefill.run_s + t_cached.run_s
  per_item = {"cached": cached_total / len(queries), "cached_without_prefill": t_cached.run_s / len(queries),
              "uncached": t_uncached.run_s / n_uncached}
  lengths = np.asarray([len(r.ids) for r in rows])
  result = {
      "benchmark": "prompt_cache",
      "data": str(args.data), "items": len(queries), "rows": len(rows), "uncached_items": n_uncached,
      "uncached_rows": len(rows_u),
      "model": lm.name, "model_config": {"d_model": lm.cfg.d_model, "n_layers": lm.cfg.n_layers,
                                         "n_heads": lm.cfg.n_heads, "kv_heads": lm.cfg.kv_heads,
                                         "vocab_size": lm.cfg.vocab_size, "max_len": lm.cfg.max_len,
                                         "dtype": lm.cfg.dtype},
      "prompt": str(args.prompt), "prompt_chars": len(prompt), "prompt_tokens": cached.prompt_tokens,
      "prompt_cache_slots": cached._P,
      "row_tokens": {"mean": float(lengths.mean()), "max": int(lengths.max())},
      "batch_rows": args.batch_size,
      "device": str(jax.devices()[0]), "platform": platform.platform(), "cpu_count": os.cpu_count(),
      "seconds": {"prefill": t_prefill.run_s, "cached_rows": t_cached.run_s, "cached_total": cached_total,
                  "uncached_rows": t_uncached.run_s,
                  "compile": {"prefill": t_prefill.compile_s, "cached": t_cached.compile_s,
                              "uncached": t_uncached.compile_s}},
      "items_per_s": {k: 1.0 / v for k, v in per_item.items()},
      "speedup": per_item["uncached"] / per_item["cached"],
      "speedup_without_prefill": per_item["uncached"] / per_item["cached_without_prefill"],
      "goal": {"speedup_at_least": 10.0, "met": bool(per_item["uncached"] / per_item["cached"] >= 10.0)},
      "max_abs_loglik_diff": float(np.abs(lp_cached[:len(rows_u)] - lp_uncached).max()),
      "loglik_mean": float(lp_cached.mean()),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
