"""Where a `13m` PM step's time goes, block by block, against the same blocks in PyTorch.

    python benchmarks/step_parts.py        # writes benchmarks/results/step_parts.json

Forward + backward of (a) hhh's attention block (q/k/v/o projections, RoPE, causal attention), (b) the attention
core alone with 1 and with 4 causal query blocks, (c) the SwiGLU MLP block; and the fp32 and bf16 2048^2 matmul
rates of `jnp.dot` and `torch.matmul`. Shape: 16 rows of 256 tokens (8 comparisons x 2), d 512, 8 heads, MLP
1368. The loss is sum(y^2) on every side. Rounds alternate hhh and torch (its own process, from the venv of
benchmarks/setup_torch_env.sh); figures are medians over rounds, with the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
B, L, D, H, F = 16, 256, 512, 8, 1368


def _ms(fn, *args, reps=5):
  import jax
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts) * 1e3


def hhh_parts() -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from hhh.model.config import ModelConfig
  from hhh.model.transformer import MLP, Attention, attention_core, row_layout

  cfg = ModelConfig(vocab_size=259, d_model=D, n_layers=4, n_heads=H, d_ff=F, max_len=2048)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
  positions, mask = row_layout(jnp.ones((B, L), bool))
  out = {}
  for name, module in (("attention_block_ms", Attention(cfg, nnx.Rngs(0))), ("mlp_block_ms", MLP(cfg, nnx.Rngs(0)))):
    graphdef, params = nnx.split(module)

    def loss(params, x, graphdef=graphdef, attention=name.startswith("attention")):
      m = nnx.merge(graphdef, params)
      y = m(x, positions, mask, None, 0)[0] if attention else m(x)
      return jnp.sum(y ** 2)

    out[name] = _ms(jax.jit(jax.grad(loss, argnums=(0, 1))), params, x)
  q, k, v = (jnp.asarray(rng.standard_normal((B, H, L, D // H)), jnp.float32) for _ in range(3))
  for n in (1, 4):
    core = lambda q, k, v, n=n: jnp.sum(attention_core(q[:, :, None], k, v, mask, n) ** 2)
    out[f"attention_core_{n}_blocks_ms"] = _ms(jax.jit(jax.grad(core, argnums=(0, 1, 2))), q, k, v)
  for dt in ("float32", "bfloat16"):
    a = jnp.ones((2048, 2048), dt)
    out[f"matmul_gflops_{dt}"] = 2 * 2048**3 / _ms(jax.jit(lambda a: a @ a), a, reps=10) * 1e3 / 1e9
  out["jax"] = jax.__version__
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--torch-python", default=str(HERE / ".venv-torch" / "bin" / "python"))
  ap.add_argument("--out", default=str(HERE / "results" / "step_parts.json"))
  args = ap.parse_args()
  threads = str(os.cpu_count() or 1)
  rounds = {"hhh": [], "torch": []}
  for r in range(args.rounds):
    rounds["hhh"].append(dict(hhh_parts(), load_avg=os.getloadavg()))
    res = subprocess.run([args.torch_python, str(HERE / "step_parts_torch.py"), *map(str, (B, L, D, H, F)), threads],
                         capture_output=True, text=True, check=True)
    rounds["torch"].append(dict(json.loads(res.stdout.strip().splitlines()[-1]), load_avg=os.getloadavg()))
    print(f"round {r + 1}/{args.rounds}: hhh {rounds['hhh'][-1]} | torch {rounds['torch'][-1]}", file=sys.stderr)
  medians = {side: {k: statistics.median(rr[k] for rr in rs) for k, v in rs[0].items() if isinstance(v, float)}
             for side, rs in rounds.items()}
  result = {"command": " ".join(["python", "benchmarks/step_parts.py"] + sys.argv[1:]),
            "shape": {"rows": B, "seq_len": L, "d_model": D, "n_heads": H, "d_ff": F, "dtype": "float32"},
            "cpu_count": os.cpu_count(), "medians": medians, "rounds": rounds}
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(medians, indent=1))


if __name__ == "__main__":
  main()
