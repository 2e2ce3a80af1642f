"""The PyTorch side of benchmarks/step_parts.py: the same blocks at the `13m` shape, printed as one JSON line."""

from __future__ import annotations

import json
import math
import sys
import time

import torch


def _ms(fn, reps=5):
  fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return sorted(ts)[len(ts) // 2] * 1e3


def main():
  B, L, D, H, F = (int(a) for a in sys.argv[1:6])
  torch.set_num_threads(int(sys.argv[6]))
  Dh, half = D // H, D // H // 2
  x = torch.randn(B, L, D, requires_grad=True)
  q, k, v, o = (torch.nn.Linear(D, D, bias=False) for _ in range(4))
  ang = torch.arange(L)[:, None] * 10000.0 ** (-torch.arange(half) / half)
  cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

  def rope(t):
    return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

  def attn():
    heads = lambda lin: lin(x).view(B, L, H, Dh).transpose(1, 2)
    a = torch.nn.functional.scaled_dot_product_attention(rope(heads(q)), rope(heads(k)), heads(v), is_causal=True)
    (o(a.transpose(1, 2).reshape(B, L, D)) ** 2).sum().backward()

  g, u, dn = torch.nn.Linear(D, F, bias=False), torch.nn.Linear(D, F, bias=False), torch.nn.Linear(F, D, bias=False)

  def mlp():
    (dn(torch.nn.functional.silu(g(x)) * u(x)) ** 2).sum().backward()

  out = {"attention_block_ms": _ms(attn), "mlp_block_ms": _ms(mlp)}
  for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
    a = torch.ones(2048, 2048, dtype=dt)
    out[f"matmul_gflops_{name}"] = 2 * 2048**3 / _ms(lambda: a @ a, reps=10) * 1e3 / 1e9
  out["torch"] = torch.__version__
  print(json.dumps(out))


if __name__ == "__main__":
  main()
