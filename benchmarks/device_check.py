"""The GPU checks of the real-training work, in one short run: bf16 train-step MFU at the ~1B `800m` shape, and
packed HH-RLHF PM training throughput at SmolLM2-135M's shape (bf16), packed against unpacked, and at rows of
2048 tokens, dense attention against tiled (`model.attention`).

    bash benchmarks/device_check.sh            # writes $OUT/device_check.json (or benchmarks/results/)

Both parts use hhh's real jitted train step (hhh.train.step.Steps) on random weights. MFU is the step's matmul
FLOPs (`family.step_flops_per_token`) over a bf16 matmul peak measured in the same process. The HH-RLHF part
reads a comparisons file made here beforehand (`--hh`: a dataset dir or .jsonl; the device machine has no
../shared), takes SmolLM2's tokenizer from its cached GGUF when it travels, else bytes, caps at 1024 tokens and
runs batches of 8 comparisons in a fixed order, each shape compiled before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time


def _state(steps, model_cfg):
  import jax
  import jax.numpy as jnp
  from hhh.model.params import graphdef_and_params
  params = jax.jit(lambda k: graphdef_and_params(model_cfg, k)[1], out_shardings=steps.param_sh)(jax.random.key(0))
  return {"params": params, "opt_state": steps.init_opt(params),
          "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
          "rng": jax.device_put(jax.random.key_data(jax.random.key(1)), steps.state_sh["rng"])}


def _timed(steps, state, batches, reps):
  for b in batches:  # compile every shape first
    state, m = steps.train(state, steps.put_batch(b))
  float(m["loss"])
  t = time.perf_counter()
  for _ in range(reps):
    for b in batches:
      state, m = steps.train(state, steps.put_batch(b))
  float(m["loss"])
  return (time.perf_counter() - t) / (reps * len(batches)), state


def mfu(shape: str, B: int, L: int, reps: int) -> dict:
  import numpy as np
  from hhh import config as config_lib
  from hhh.model import family, sharding as shd
  from hhh.train.logger import measure_matmul_peak
  from hhh.model.params import abstract_params
  from hhh.train.step import Steps
  model_cfg = family.get(shape, dtype="bfloat16", max_len=L)
  cfg = config_lib.TrainConfig(model=model_cfg, batch_size=B, steps=10**6,
                               data=config_lib.DataConfig(max_len=L, buckets=(L,)))
  mesh = shd.make_mesh(cfg.mesh)
  graphdef, pa = abstract_params(model_cfg)
  steps = Steps(cfg, mesh, graphdef, pa, cfg.steps)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(3, model_cfg.vocab_size, (B, 2, L)).astype(np.int32),
           "lengths": np.full((B, 2), L, np.int32), "scores": np.tile(np.array([1.0, 0.0], np.float32), (B, 1)),
           "response_start": np.full((B, 2), L // 2, np.int32)}
  s, _ = _timed(steps, _state(steps, model_cfg), [batch], reps)
  peak = measure_matmul_peak("bfloat16")
  flops = family.step_flops_per_token(model_cfg, L, "ranked") * B * 2 * L
  return {"shape": shape, "batch_comparisons": B, "seq_len": L, "s_per_step": s, "tflops": flops / s / 1e12,
          "peak_tflops": peak["flops"] / 1e12, "peak_what": peak["what"], "mfu": flops / s / peak["flops"]}


def hh_packed(hh: str, n_batches: int, reps: int) -> dict:
  import dataclasses
  from hhh import config as config_lib
  from hhh.data import packing, pipeline, sources, tokenizer as tokenizer_lib
  from hhh.model import sharding as shd
  from hhh.model.params import abstract_params
  from hhh.train.step import Steps
  try:
    from hhh.pretrained import load_lm
    lm_cfg, tok = (lambda lm: (lm.cfg, lm.tokenizer))(load_lm("smollm2-135m-instruct"))
  except Exception as e:  # no cached GGUF on the device machine: SmolLM2's shape with bytes
    print(f"device_check: SmolLM2 tokenizer unavailable ({e}); byte tokenizer", file=sys.stderr)
    from hhh.model.config import ModelConfig
    tok = tokenizer_lib.ByteTokenizer()
    lm_cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                         max_len=2048, rope_theta=100000.0)
  model_cfg = dataclasses.replace(lm_cfg, dtype="bfloat16", dropout=0.0)
  buckets = (128, 256, 512, 1024)
  dcfg = config_lib.DataConfig(train=hh, max_len=1024, buckets=buckets)
  comps = sources.load_comparisons(hh, dcfg, "train", 0)[:8 * n_batches]
  examples, _ = pipeline.encode_all(comps, tok, 1024, 2, dcfg.context_cut)
  out = {}
  for pack in (True, False):
    cfg = config_lib.TrainConfig(model=model_cfg, batch_size=8, steps=10**6, data=dcfg)
    mesh = shd.make_mesh(cfg.mesh)
    graphdef, pa = abstract_params(model_cfg)
    steps = Steps(cfg, mesh, graphdef, pa, cfg.steps, packed=pack)
    batches = []
    for j in range(n_batches):
      exs = examples[8 * j:8 * j + 8]
      batches.append(packing.collate_rows(exs, K=2, pad_id=tok.pad_id, buckets=packing.row_buckets(buckets, 1024))
                     if pack else pipeline.collate(exs, pipeline.bucket_of(max(e.length for e in exs), buckets), 2,
                                                   tok.pad_id))
    s, _ = _timed(steps, _state(steps, model_cfg), batches, reps)
    need = sum(packing.packed_length(e) for e in examples[:8 * n_batches]) / n_batches
    slots = statistics.mean(b["tokens"].size for b in batches)
    out["packed" if pack else "unpacked"] = {"s_per_step": s, "comparisons_per_s": 8 / s,
                                             "needed_tokens_per_s": need / s, "processed_over_needed": slots / need}
  out["packed_over_unpacked"] = out["packed"]["comparisons_per_s"] / out["unpacked"]["comparisons_per_s"]
  return out


def attention_2048(hh: str, n_batches: int, reps: int, smoke: bool = False) -> dict:
  """Packed HH-RLHF rows of 2048 tokens (16 comparisons a step), bf16, SmolLM2's shape: model.attention dense
  ([B, L, L] mask and probabilities per layer) against tiled (mask from segment ids per tile, probabilities
  recomputed in the backward). Step time and the device's peak memory where it reports one."""
  import dataclasses
  import jax
  from hhh import config as config_lib
  from hhh.data import packing, pipeline, sources, tokenizer as tokenizer_lib
  from hhh.model import family, sharding as shd
  from hhh.model.config import ModelConfig
  from hhh.model.params import abstract_params
  from hhh.train.step import Steps
  tok = tokenizer_lib.ByteTokenizer()
  base = (family.get("13m", vocab_size=tok.vocab_size, max_len=2048) if smoke else
          ModelConfig(vocab_size=tok.vocab_size, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                      max_len=2048, rope_theta=100000.0))
  dcfg = config_lib.DataConfig(train=hh, max_len=1024, buckets=(1024,), pack_len=2048)
  comps = sources.load_comparisons(hh, dcfg, "train", 0)[:16 * n_batches]
  examples, _ = pipeline.encode_all(comps, tok, 1024, 2, dcfg.context_cut)
  batches = [packing.collate_rows(examples[16 * j:16 * j + 16], K=2, pad_id=tok.pad_id, buckets=(2048,))
             for j in range(n_batches)]
  out = {"rows": [list(b["tokens"].shape) for b in batches]}
  for attention in ("dense", "tiled"):
    model_cfg = dataclasses.replace(base, dtype="bfloat16", attention=attention)
    cfg = config_lib.TrainConfig(model=model_cfg, batch_size=16, steps=10**6, data=dcfg)
    mesh = shd.make_mesh(cfg.mesh)
    graphdef, pa = abstract_params(model_cfg)
    steps = Steps(cfg, mesh, graphdef, pa, cfg.steps, packed=True)
    try:
      s, _ = _timed(steps, _state(steps, model_cfg), batches, reps)
      stats = jax.devices()[0].memory_stats() or {}
      out[attention] = {"s_per_step": s, "comparisons_per_s": 16 / s, "peak_bytes": stats.get("peak_bytes_in_use")}
    except Exception as e:  # dense can run out of memory where tiled does not: that is a result too
      out[attention] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
  if "s_per_step" in out["dense"] and "s_per_step" in out["tiled"]:
    out["tiled_over_dense_speed"] = out["dense"]["s_per_step"] / out["tiled"]["s_per_step"]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--hh", default="runs/hh_rlhf_conv", help="HH-RLHF comparisons (dataset dir or .jsonl)")
  ap.add_argument("--batches", type=int, default=12)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--smoke", action="store_true", help="13m shape for the 2048-token attention part (a CPU check "
                  "of the script)")
  ap.add_argument("--out", default=os.path.join(os.environ.get("OUT") or "benchmarks/results", "device_check.json"))
  a = ap.parse_args()
  import jax
  res = {"devices": [str(d) for d in jax.devices()], "command": "bash benchmarks/device_check.sh"}
  t = time.perf_counter()
  res["mfu_800m_bf16"] = mfu("800m", 8, 1024, a.reps)
  print(json.dumps(res["mfu_800m_bf16"]), flush=True)
  if pathlib.Path(a.hh).exists():
    res["hh_rlhf_smollm2_bf16"] = hh_packed(a.hh, a.batches, a.reps)
    print(json.dumps(res["hh_rlhf_smollm2_bf16"]), flush=True)
  else:
    res["hh_rlhf_smollm2_bf16"] = f"skipped: {a.hh} not found (make it with `hhh data load hh_rlhf ... --out` and carry it)"
  if pathlib.Path(a.hh).exists():
    res["attention_2048_smollm2_bf16"] = attention_2048(a.hh, max(1, a.batches // 4), a.reps, a.smoke)
    print(json.dumps(res["attention_2048_smollm2_bf16"]), flush=True)
  res["wall_s"] = time.perf_counter() - t
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
  main()
