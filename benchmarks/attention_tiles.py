"""Dense against tiled attention in hhh's packed train step, on packed HH-RLHF rows, on this machine.

    python benchmarks/attention_tiles.py                      # SmolLM2-135M's shape, rows of 1024 tokens
    python benchmarks/attention_tiles.py --shape 13m --rows 4

The same real comparisons (the four HH-RLHF test files in ../shared/data, fixed shuffled order, SmolLM2's
tokenizer, cut to 1024 tokens) packed into `--rows` rows of 1024 tokens, then one train step of hhh.train.step's
Steps with model.attention=dense and with model.attention=auto (on CPU: tiles of 128 that skip what a row does not
see). Both steps start from the same state, so their losses must agree (checked). Rounds interleave
(dense, tiled, dense, tiled, ...); medians; the load average beside every round. Writes
benchmarks/results/attention_tiles.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
sys.path.insert(0, str(HERE))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "13m"])
  ap.add_argument("--rows", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--out", default=str(HERE / "results" / "attention_tiles.json"))
  a = ap.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  import trl_side
  from train_real import _model_cfg
  from hhh import config as config_lib
  from hhh.data import packing
  from hhh.data.pipeline import encode_all
  from hhh.model import sharding as shd
  from hhh.pretrained import load_lm
  from hhh.model.params import abstract_params, graphdef_and_params
  from hhh.train.step import Steps

  tok = load_lm("smollm2-135m-instruct").tokenizer
  comps = trl_side.load_comparisons(str(SHARED / "hh_rlhf"))
  comps = [comps[i] for i in np.random.default_rng(0).permutation(len(comps))[:400]]
  examples, _ = encode_all(comps, tok, 1024, 2, config_lib.DataConfig.context_cut)
  plan = packing.TokenPlan([[len(p) for p in packing.pieces_of(e, 1024)[0]] for e in examples], row_len=1024,
                           rows=a.rows, max_comparisons=64, seed=0, shuffle=False)
  ix = [i for i in plan.epoch_plan(0)[0].tolist() if i >= 0]
  host = packing.collate_rows([examples[i] for i in ix] + [None] * (64 - len(ix)), K=2, pad_id=tok.pad_id,
                              buckets=(1024,), rows=a.rows)
  base = _model_cfg(a.shape, tok.vocab_size)
  sides = {}
  for attention in ("dense", "auto"):
    model_cfg = dataclasses.replace(base, attention=attention)
    cfg = config_lib.TrainConfig(model=model_cfg, batch_size=64, steps=10**6,
                                 data=config_lib.DataConfig(max_len=1024, buckets=(1024,), max_k=2),
                                 optim=config_lib.OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
    mesh = shd.make_mesh(cfg.mesh)
    graphdef, params_abs = abstract_params(model_cfg)
    steps = Steps(cfg, mesh, graphdef, params_abs, cfg.steps, packed=True)
    sides[attention] = (steps, model_cfg)

  def fresh(steps, model_cfg):
    params = jax.jit(lambda k: graphdef_and_params(model_cfg, k)[1], out_shardings=steps.param_sh)(jax.random.key(0))
    return {"params": params, "opt_state": steps.init_opt(params),
            "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
            "rng": jax.device_put(jax.random.key_data(jax.random.key(1)), steps.state_sh["rng"])}

  compile_s, losses, times, loads = {}, {}, {n: [] for n in sides}, []
  for n, (steps, mc) in sides.items():
    t = time.perf_counter()
    _, m = steps.train(fresh(steps, mc), steps.put_batch(host))
    losses[n] = float(m["loss"])
    compile_s[n] = time.perf_counter() - t
    print(f"{n}: first step (compile) {compile_s[n]:.1f} s, loss {losses[n]:.6f}", file=sys.stderr, flush=True)
  for r in range(a.rounds):
    for n, (steps, mc) in sides.items():
      state = fresh(steps, mc)
      jax.block_until_ready(state)
      t = time.perf_counter()
      _, m = steps.train(state, steps.put_batch(host))
      float(m["loss"])
      times[n].append(time.perf_counter() - t)
    loads.append(os.getloadavg())
    print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in sides) + f", load {loads[-1][0]:.2f}",
          file=sys.stderr, flush=True)
  med = {n: statistics.median(t) for n, t in times.items()}
  res = {"command": "python " + " ".join(sys.argv), "shape": a.shape, "rows": [a.rows, 1024],
         "comparisons": len(ix), "real_tokens": int((host["segments"] >= 0).sum()),
         "backend": jax.default_backend(), "cpu": trl_side._cpu() if hasattr(trl_side, "_cpu") else "",
         "nproc": os.cpu_count(), "first_step_s": compile_s, "loss": losses,
         "loss_abs_diff": abs(losses["dense"] - losses["auto"]), "s_per_step": med, "rounds": times,
         "load_avg_rounds": loads, "tiled_over_dense_speed": med["dense"] / med["auto"]}
  assert res["loss_abs_diff"] < 1e-4, res["loss_abs_diff"]
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2) + "\n")
  print(json.dumps({k: res[k] for k in ("s_per_step", "tiled_over_dense_speed", "loss_abs_diff")}))


if __name__ == "__main__":
  main()
