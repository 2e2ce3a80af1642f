"""hhh's preference-model train step against HF transformers + TRL's RewardTrainer, side by side on one machine.

    bash benchmarks/setup_torch_env.sh                      # once: torch + transformers + trl in their own venv
    python benchmarks/train_step.py                         # writes benchmarks/results/train_step.json

Every side is a persistent worker process that compiles / warms up once; then the rounds interleave (hhh, TRL,
plain torch, hhh, TRL, ...), each round timing a few steps of every side, and the figures are medians over
rounds. Each round also measures the machine's fp32 matmul rate (jnp.dot and torch.matmul, 2048^2) just before
its steps, and "% of peak" divides by the median of those. The load average is recorded beside every round,
since the machine may be shared.

Shapes (random weights, all sequences full length so no side gains from padding):
- `13m`: hhh's 13m family member with the byte vocabulary (12.7M parameters), B=8 comparisons, K=2, L=256;
- `smollm2-135m`: SmolLM2-135M's shape (30 layers, d 576, GQA 9/3, vocab 49,152, tied), same batch.
FLOPs per step are hhh's `family.step_flops_per_token` for a PM (matmuls only, full L x L attention, no LM head:
no side forms [B, L, V] logits), the same count for every side, so GFLOP/s compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent

SHAPES = {
    "13m": dict(vocab_size=259, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, d_ff=1368, max_len=2048,
                rope_theta=10000.0),
    "smollm2-135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                         max_len=2048, rope_theta=100000.0),
}


def _emit(obj):
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def hhh_worker(shape: dict, batch_size: int, length: int, warmup: int, dtype: str, pack: bool):
  """The hhh side of the worker protocol (see benchmarks/train_step_torch.py)."""
  if os.environ.get("HHH_BENCH_SRC"):
    # hhh from another checkout: ahead of the editable install's import hook, which would otherwise win.
    sys.path.insert(0, os.environ["HHH_BENCH_SRC"])
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
  import jax
  import jax.numpy as jnp
  import numpy as np

  from hhh import config as config_lib
  from hhh.model import sharding as shd
  from hhh.model.config import ModelConfig
  from hhh.model.params import abstract_params, graphdef_and_params
  from hhh.train.step import Steps

  model_cfg = ModelConfig(**shape, dtype=dtype)
  cfg = config_lib.TrainConfig(model=model_cfg, batch_size=batch_size, steps=100000)
  mesh = shd.make_mesh(cfg.mesh)
  graphdef, params_abs = abstract_params(model_cfg)
  steps = Steps(cfg, mesh, graphdef, params_abs, cfg.steps)
  params = jax.jit(lambda k: graphdef_and_params(model_cfg, k)[1], out_shardings=steps.param_sh)(
      jax.random.key(0))
  state = {"params": params, "opt_state": steps.init_opt(params),
           "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
           "rng": jax.device_put(jax.random.key_data(jax.random.key(1)), steps.state_sh["rng"])}
  rng = np.random.default_rng(0)

  def batch():
    return steps.put_batch({
        "tokens": rng.integers(3, shape["vocab_size"], (batch_size, 2, length)).astype(np.int32),
        "lengths": np.full((batch_size, 2), length, np.int32),
        "scores": np.tile(np.array([1.0, 0.0], np.float32), (batch_size, 1)),
        "response_start": np.full((batch_size, 2), length // 2, np.int32)})

  mm = jax.jit(lambda a, b: a @ b)
  a = jnp.asarray(np.random.default_rng(1).random((2048, 2048), np.float32))

  def matmul_gflops(reps=5):
    mm(a, a).block_until_ready()
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      mm(a, a).block_until_ready()
      ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(ts) / 1e9

  def run(n):
    """n steps, timed one by one; each step's metrics reach the host (as the training loop's logging does)."""
    nonlocal state
    ts, faults, sys_s = [], [], []
    for _ in range(n):
      b = batch()
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      t0 = time.perf_counter()
      state, metrics = steps.train(state, b)
      float(metrics["loss"])
      ts.append(time.perf_counter() - t0)
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      faults.append(r1.ru_minflt - r0.ru_minflt)
      sys_s.append(r1.ru_stime - r0.ru_stime)
    return ts, faults, sys_s

  _emit({"versions": {"jax": jax.__version__, "devices": str(jax.devices()),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}})
  t0 = time.perf_counter()
  warm = run(warmup)[0]
  _emit({"ready": True, "warmup_s": warm, "first_step_s": time.perf_counter() - t0})
  for line in sys.stdin:
    line = line.strip()
    if not line or line == "quit":
      return
    n = int(line.split()[1])
    peak = matmul_gflops()
    ts, faults, sys_s = run(n)
    _emit({"times": ts, "minflt": faults, "sys_s": sys_s, "peak_gflops": peak})


@dataclasses.dataclass
class Worker:
  name: str
  cmd: list[str]
  env: dict | None = None
  proc: subprocess.Popen | None = None
  info: dict = dataclasses.field(default_factory=dict)

  def start(self):
    env = dict(os.environ, **(self.env or {}))
    self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                 env=env)
    while True:
      msg = self._read()
      self.info.update(msg)
      if msg.get("ready"):
        return

  def _read(self) -> dict:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f"benchmark worker {self.name} exited (code {self.proc.wait()})")
      line = line.strip()
      if line.startswith("{"):
        return json.loads(line)

  def run(self, n: int) -> dict:
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    return self._read()

  def stop(self):
    if self.proc and self.proc.poll() is None:
      try:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()


def _cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


def bench_shape(name, args, torch_python):
  from hhh.model import family
  from hhh.model.config import ModelConfig

  shape = SHAPES[name]
  model_cfg = ModelConfig(**shape)
  B, L = args.batch_size, args.length
  flops_per_step = family.step_flops_per_token(model_cfg, L, "ranked") * B * 2 * L
  common = ["--shape", json.dumps(shape), "--batch-size", str(B), "--length", str(L), "--warmup",
            str(args.warmup)]
  hhh_cmd = [sys.executable, __file__, "--worker", "hhh", "--dtype", args.dtype] + common
  workers = [Worker("hhh", hhh_cmd)]
  for item in filter(None, args.hhh_variants.split(";")):
    # Extra hhh workers under other XLA flags, interleaved with the rest: flag ablations in the same run.
    vname, _, flags = item.partition("=")
    vname, _, path = vname.partition("@")  # NAME@DIR: hhh imported from DIR (another checkout, e.g. a baseline)
    env = {"XLA_FLAGS": flags, "HHH_XLA_DEFAULTS": "0", **({"HHH_BENCH_SRC": path} if path else {})}
    workers.append(Worker(f"hhh[{vname}]", hhh_cmd, env=env))
  if torch_python:
    for mode in args.torch_modes.split(","):
      workers.append(Worker(mode, [torch_python, str(HERE / "train_step_torch.py"), "--mode", mode] + common))
  rounds = {w.name: [] for w in workers}
  try:
    for w in workers:
      print(f"[{name}] starting {w.name} (compile and {args.warmup} warm-up steps)", file=sys.stderr, flush=True)
      w.start()
    for r in range(args.rounds):
      for w in workers:
        res = w.run(args.steps)
        res["load_avg"] = os.getloadavg()
        rounds[w.name].append(res)
        print(f"[{name}] round {r + 1}/{args.rounds} {w.name}: {statistics.median(res['times']):.3f} s/step "
              f"(matmul {res['peak_gflops']:.0f} GFLOP/s, {statistics.median(res['minflt']):.0f} page faults, "
              f"load {res['load_avg'][0]:.2f})", file=sys.stderr, flush=True)
  finally:
    for w in workers:
      w.stop()
  peaks = {"jnp.dot": statistics.median(r["peak_gflops"] for r in rounds["hhh"])}
  torch_rounds = [r for w in workers if w.name != "hhh" for r in rounds[w.name]]
  if torch_rounds:
    peaks["torch.matmul"] = statistics.median(r["peak_gflops"] for r in torch_rounds)
  peak = max(peaks.values())
  sides = {}
  for w in workers:
    per_round = [statistics.median(r["times"]) for r in rounds[w.name]]
    s = statistics.median(per_round)
    sides[w.name] = {
        "s_per_step": s, "s_per_step_rounds": per_round, "pairs_per_s": B / s, "tokens_per_s": B * 2 * L / s,
        "gflops": flops_per_step / s / 1e9, "pct_of_peak": 100 * flops_per_step / s / 1e9 / peak,
        "load_avg_rounds": [r["load_avg"] for r in rounds[w.name]],
        # Minor page faults and kernel CPU seconds per step: fresh pages for each step's buffers, zeroed by the
        # kernel, are a large share of a CPU step unless the allocator keeps freed memory.
        "minflt_per_step": statistics.median(f for r in rounds[w.name] for f in r["minflt"]),
        "sys_s_per_step": statistics.median(f for r in rounds[w.name] for f in r["sys_s"]),
        "worker_info": {k: v for k, v in w.info.items() if k != "ready"}}
  out = {"shape": name, "config": dict(shape, batch_comparisons=B, k=2, seq_len=L, dtype=args.dtype,
                                       optimizer="adamw, clip 1.0"),
         "params": family.param_counts(model_cfg)["total"], "flops_per_step": flops_per_step,
         "matmul_peak_gflops": peaks, "peak_used_gflops": peak, "sides": sides}
  if "trl" in sides:
    out["hhh_over_trl"] = sides["hhh"]["pairs_per_s"] / sides["trl"]["pairs_per_s"]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--shapes", default="13m,smollm2-135m")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--batch-size", type=int, default=8, help="comparisons per step (K=2 sequences each)")
  ap.add_argument("--length", type=int, default=256)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="hhh compute dtype")
  ap.add_argument("--torch-python", default=str(HERE / ".venv-torch" / "bin" / "python"),
                  help="the python of the torch environment ('' to time hhh alone)")
  ap.add_argument("--torch-modes", default="trl,torch")
  ap.add_argument("--hhh-variants", default="",
                  help="extra hhh workers, 'NAME[@DIR]=XLA_FLAGS;...', timed in the same interleaved rounds; "
                       "their XLA_FLAGS are exactly these (hhh's own CPU defaults off; 'ynn=' is JAX's stock "
                       "XLA:CPU), and @DIR imports hhh from another checkout (e.g. 'before@/tmp/old=')")
  ap.add_argument("--out", default=str(HERE / "results" / "train_step.json"))
  ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
  ap.add_argument("--shape", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker == "hhh":
    return hhh_worker(json.loads(args.shape), args.batch_size, args.length, args.warmup, args.dtype, False)
  torch_python = args.torch_python
  if torch_python and not pathlib.Path(torch_python).exists():
    sys.exit(f"benchmarks/train_step.py: no torch environment at {torch_python}; "
             f"run `bash benchmarks/setup_torch_env.sh` first, or pass --torch-python ''")
  results = {"command": " ".join(["python", "benchmarks/train_step.py"] + sys.argv[1:]),
             "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
             "load_avg_start": os.getloadavg(),
             # Every worker inherits these: the allocator changes a CPU step's page faults (see docs/benchmarks/train_step.md).
             "environment": {k: os.environ[k] for k in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES", "XLA_FLAGS")
                             if k in os.environ},
             "cpu_model": _cpu_model(), "shapes": []}
  for name in args.shapes.split(","):
    results["shapes"].append(bench_shape(name, args, torch_python))
  results["load_avg_end"] = os.getloadavg()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  for s in results["shapes"]:
    line = ", ".join(f"{k} {v['pairs_per_s']:.2f} pairs/s ({v['pct_of_peak']:.0f}% of peak)"
                     for k, v in s["sides"].items())
    ratio = f" | hhh/TRL {s['hhh_over_trl']:.2f}x" if "hhh_over_trl" in s else ""
    print(f"{s['shape']}: {line}{ratio}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
