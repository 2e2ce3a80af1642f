"""How much padding each packed-row layout computes, and how many row shapes it compiles, on real HH-RLHF steps.

    python benchmarks/row_layouts.py                 # the first 200 steps of train_real.py's order

No training: hhh.data.packing lays out each step of 8 comparisons (train_real.py's fixed shuffled order of the
four HH-RLHF test files, SmolLM2's tokenizer, cut to 1024 tokens) three ways and counts token slots against the
tokens needed (each context once plus each response):
  rows_1024       rows of up to 1,024 tokens, bin-packed, fewest slots (data.pack_len=1024)
  long_row        one row a step on the grid of `row_buckets` up to 8,192 (data.pack_len=0 on CPU)
  long_fewest     the same grid, fewest slots over any row count (what one_row=False would pick)
and, for token-budget steps (data.batch_tokens=4096, at most 16 comparisons a step, over the same comparisons):
  budget_rows_1024  4 rows of 1,024 (data.pack_len=1024; the layout on accelerators)
  budget_long_row   one row of 4,096 (data.pack_len=0 on CPU)
and, over all 8,486 comparisons in that order, what cutting long contexts per response (data.context_cut=each)
would change against the shared cut: the comparisons whose responses then follow different contexts (they
cannot share one), the steps of 8 that hold one, and the tokens each cut needs unpadded.
Writes benchmarks/results/row_layouts.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
BUCKETS = (128, 256, 512, 1024)
BUDGET = 4096


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--out", default=str(HERE / "results" / "row_layouts.json"))
  a = ap.parse_args()

  import numpy as np
  import trl_side
  from train_real import BATCH
  from hhh.data import packing
  from hhh.config import DataConfig
  from hhh.data.pipeline import encode_all
  from hhh.pretrained import load_lm

  tok = load_lm("smollm2-135m-instruct").tokenizer
  comps = trl_side.load_comparisons(str(SHARED / "hh_rlhf"))
  comps = [comps[i] for i in np.random.default_rng(0).permutation(len(comps))]
  examples, _ = encode_all(comps, tok, 1024, 2, DataConfig.context_cut)
  each, _ = encode_all(comps, tok, 1024, 2, "each")
  apart = [i for i, e in enumerate(each) if not packing.packable(e)]
  apart_steps = sorted({i // BATCH for i in apart})
  unpadded = {"shared": sum(packing.packed_length(e) for e in examples),
              # a comparison that cannot share its context computes it once per response
              "each": sum(packing.packed_length(e) if packing.packable(e) else sum(len(s) for s in e.seqs)
                          for e in each)}
  examples = examples[:BATCH * a.steps]
  long_len = packing.row_length(BUCKETS, backend="cpu")
  layouts = {"rows_1024": (1024, False), "long_row": (long_len, True), "long_fewest": (long_len, False)}
  res = {"command": "python " + " ".join(sys.argv), "steps": a.steps, "comparisons_per_step": BATCH, "layouts": {},
         "context_cut_each": {"comparisons": len(comps), "cut_apart": len(apart), "steps": -(-len(comps) // BATCH),
                              "steps_holding_one": len(apart_steps), "first_steps_holding_one": apart_steps[:10],
                              "unpadded_tokens": unpadded,
                              "each_over_shared_tokens": unpadded["each"] / unpadded["shared"]}}
  print(f"context_cut=each: {len(apart)} of {len(comps)} comparisons cut apart, in {len(apart_steps)} steps; "
        f"{unpadded['each'] / unpadded['shared']:.3f}x the shared cut's tokens", file=sys.stderr)
  for name, (row_len, one_row) in layouts.items():
    grid = packing.row_buckets(BUCKETS, row_len)
    slots, needed, shapes = 0, 0, collections.Counter()
    for j in range(a.steps):
      exs = examples[j * BATCH:(j + 1) * BATCH]
      pieces = [[len(p) for p in packing.pieces_of(e, row_len)[0]] for e in exs]
      R, L = packing.packed_shape(pieces, buckets=grid, one_row=one_row)
      slots += R * L
      needed += sum(packing.packed_length(e) for e in exs)
      shapes[f"{R}x{L}"] += 1
    res["layouts"][name] = {"row_len": row_len, "one_row": one_row, "processed_over_needed": slots / needed,
                            "row_shapes": len(shapes), "shape_counts": dict(sorted(shapes.items()))}
    print(f"{name}: processed/needed {slots / needed:.3f}, {len(shapes)} row shapes", file=sys.stderr)
  window = examples[:BATCH * a.steps]
  needed = sum(packing.packed_length(e) for e in window)
  for name, row_len in (("budget_rows_1024", 1024), ("budget_long_row", packing.row_length(BUCKETS, 0, BUDGET))):
    plan = packing.TokenPlan([[len(p) for p in packing.pieces_of(e, row_len)[0]] for e in window], row_len=row_len,
                             rows=BUDGET // row_len, max_comparisons=2 * BATCH, seed=0, shuffle=False)
    steps = len(plan.epoch_plan(0))
    res["layouts"][name] = {"row_len": row_len, "batch_tokens": BUDGET, "steps": steps,
                            "processed_over_needed": steps * BUDGET / needed, "row_shapes": 1}
    print(f"{name}: processed/needed {steps * BUDGET / needed:.3f} in {steps} steps", file=sys.stderr)
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
  main()
