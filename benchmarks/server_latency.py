"""`hhh serve` under load: 64 clients x 20 requests, a fresh TCP connection for every request.

The server is a separate process (`hhh serve`, exactly as a user runs it) around a tiny RANDOM-INIT bundle
written on the fly (d_model 32, 1 layer, byte tokenizer, max_len 128): latency here is the server's
overhead (accept, parse, batch, answer) plus a small model, not a big model's forward pass. Each request is
an OpenRLHF-style POST /get_reward of `--queries` prompt + response texts. Before the clock starts, one
request per length bucket compiles every program the timed requests need.

Recorded: latency p50/p90/p99/max (ms, per request, connect included), errors (any non-200 answer or
socket error), requests/s and pairs/s over the timed wall, how many `model.score` calls served them (the
batching) and the seconds spent inside them (the model's share of the wall), and the 1-minute load average before and after (the machine is shared: read the latencies
against it).

  python benchmarks/server_latency.py [--clients 64] [--requests 20] [--out benchmarks/results/server_latency.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hhh.model.config import ModelConfig  # noqa: E402
from hhh.model import bundle as bundle_lib  # noqa: E402
from hhh.model.params import graphdef_and_params  # noqa: E402

WORDS = "the a helpful harmless honest assistant answer question why how please thanks sure no yes".split()


def _texts(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
  prompts = [f"Human: {' '.join(rng.choices(WORDS, k=rng.randint(1, 12)))}?\n\nAssistant:" for _ in range(n)]
  return prompts, [p + " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for p in prompts]


def _post(host: str, port: int, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
  conn = http.client.HTTPConnection(host, port, timeout=timeout)  # fresh connection per request, on purpose
  try:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())
  finally:
    conn.close()


def _get(host: str, port: int, path: str) -> dict:
  conn = http.client.HTTPConnection(host, port, timeout=60)
  try:
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())
  finally:
    conn.close()


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--clients", type=int, default=64)
  ap.add_argument("--requests", type=int, default=20, help="per client")
  ap.add_argument("--queries", type=int, default=2, help="texts per /get_reward request")
  ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "server_latency.json"))
  args = ap.parse_args()

  cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=128)
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "bundle"
    _, params = graphdef_and_params(cfg, jax.random.key(0))
    bundle_lib.write(path, cfg, params, {"kind": "byte"}, objective="ranked", max_len=128,
                     normalization={"mean": 0.0, "std": 1.0, "n": 0, "reference": "none (random init)"})
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "hhh.cli", "serve", str(path), "--port", "0"], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
      line = proc.stdout.readline().strip()
      if " on http://" not in line:
        raise SystemExit(f"hhh serve did not start: {line!r}")
      host, port = line.rsplit("http://", 1)[1].split(":")
      port = int(port)
      # Compile every bucket (32, 64, 128) before timing.
      for n in (10, 50, 120):
        status, _ = _post(host, port, "/get_reward", {"query": ["x" * n]})
        assert status == 200
      rng = random.Random(0)
      plans = [[_texts(rng, args.queries) for _ in range(args.requests)] for _ in range(args.clients)]
      stats_before = _get(host, port, "/health")["stats"]
      load_before = os.getloadavg()[0]

      def client(plan):
        out = []
        for prompts, queries in plan:
          t0 = time.perf_counter()
          try:
            status, body = _post(host, port, "/get_reward", {"query": queries, "prompts": prompts})
            ok = status == 200 and len(body["rewards"]) == len(queries)
            err = None if ok else f"{status}: {str(body)[:100]}"
          except (OSError, ValueError) as e:
            err = repr(e)[:100]
          out.append((time.perf_counter() - t0, err))
        return out

      start = time.perf_counter()
      with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        results = [r for rs in pool.map(client, plans) for r in rs]
      wall = time.perf_counter() - start
      load_after = os.getloadavg()[0]
      health = _get(host, port, "/health")
    finally:
      proc.send_signal(signal.SIGINT)
      rc = proc.wait(60)

  lat_ms = np.asarray([t for t, _ in results]) * 1000
  errors = [e for _, e in results if e]
  n = len(results)
  report = {
      "benchmark": "server_latency",
      "setup": {"clients": args.clients, "requests_per_client": args.requests, "queries_per_request": args.queries,
                "connection": "fresh TCP connection per request", "endpoint": "POST /get_reward",
                "model": "random-init d_model 32, 1 layer, 2 heads, byte tokenizer, max_len 128",
                "server": "hhh serve (Starlette on uvicorn/h11, one batching worker), defaults"},
      "requests": n,
      "errors": len(errors),
      "error_examples": errors[:5],
      "latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 2),
                     "p90": round(float(np.percentile(lat_ms, 90)), 2),
                     "p99": round(float(np.percentile(lat_ms, 99)), 2),
                     "max": round(float(lat_ms.max()), 2), "mean": round(float(lat_ms.mean()), 2)},
      "wall_s": round(wall, 3),
      "requests_per_s": round(n / wall, 1),
      "pairs_per_s": round(n * args.queries / wall, 1),
      "score_calls": health["stats"]["score_calls"] - stats_before["score_calls"],
      # Time the worker spent in model.score while the clients ran: the model's share of the wall.
      "model_score_s": round(health["stats"]["score_s"] - stats_before["score_s"], 3),
      "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
      "server_exit_code_on_sigint": rc,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                  "jax": jax.__version__, "backend": os.environ.get("JAX_PLATFORMS", "cpu")},
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
