"""Reward-model serving throughput (rewards/s) on HH-RLHF's length mix: pad-to-max vs bucketed vs shared-context packed.

The model is a RANDOM-INIT Transformer (d_model 256, 4 layers, 4 heads, byte
tokenizer by default), written as a bundle in a temporary directory: throughput
depends on shapes, not on what the weights learned. The comparisons are the
first N rows of HH-RLHF helpful-base test (read in place): context = the
dialogue up to and including its last "\\n\\nAssistant:", the two responses =
the chosen and rejected final Assistant turns (K = 2; rows whose prefixes differ
are skipped).

  (a) pad_to_max   every (context, response) sequence padded to max_len (RewardModel with one bucket)
  (b) bucketed     the 2N sequences by `RewardModel.score` (power-of-two buckets): "concatenated pairs"
  (c) packed       `score_many_shared`: one row per comparison, the context once (its fallbacks included),
                   with its default pack="cheaper" policy, and with pack="always" (packed_always)

All three score the same comparisons with the same batch rows. Every bucket is
compiled before the clock starts (one synthetic call per bucket); the JSON
records that no compile happened while timing. Wall time is the best of
`--repeats` passes.

  python benchmarks/reward_throughput.py [--n 500] [--max-len 1024] [--out benchmarks/results/reward_throughput.json]

With bytes as tokens an HH context is long (mean ~550 bytes): at max_len 512
most comparisons are truncated, which packing cannot share (they fall back), so
the default is 1024; `--max-len 512` shows that case.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings

import jax
import numpy as np
from flax import nnx

from hhh.data.tokenizer import ByteTokenizer
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer
from hhh.model import bundle as bundle_lib
from hhh.reward import packed as pk
from hhh.reward.api import RewardModel

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh_rlhf" / "helpful-base" / "test.jsonl.gz"
TURN = "\n\nAssistant:"


def load_comparisons(path: pathlib.Path, n: int) -> tuple[list[str], list[list[str]], int]:
  contexts, responses, skipped = [], [], 0
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      a, b = row["chosen"], row["rejected"]
      i, j = a.rfind(TURN), b.rfind(TURN)
      if i < 0 or a[:i] != b[:j]:
        skipped += 1  # the two dialogues diverge before their last turn: no shared context
        continue
      contexts.append(a[:i + len(TURN)])
      responses.append([a[i + len(TURN):], b[j + len(TURN):]])
      if len(contexts) == n:
        break
  return contexts, responses, skipped


def write_random_bundle(path: pathlib.Path, cfg: ModelConfig) -> pathlib.Path:
  """A bundle laid out as `hhh.reward.export.export` writes one, around random-init params."""
  path = path.absolute()
  params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0))))
  bundle_lib.write(path, cfg, params, ByteTokenizer().to_json(), objective="ranked", max_len=cfg.max_len,
                   normalization={"mean": 0.0, "std": 1.0, "n": 0, "reference": "random init (benchmark)"})
  return path


def ideal_ratio(tok, contexts, responses) -> float:
  """Tokens of the K separate sequences over tokens of the packed rows, untruncated, unpadded."""
  sep = packed = 0
  for c, rs in zip(contexts, responses):
    n_c, n_r = len(tok.encode(c)), [len(tok.encode(r)) + 1 for r in rs]
    sep += len(rs) * n_c + sum(n_r)
    packed += n_c + sum(n_r)
  return sep / packed


def _cache_size(fn) -> int:
  return fn._cache_size() if hasattr(fn, "_cache_size") else -1


def warm_up(rm_pad: RewardModel, rm: RewardModel, max_packed_len: int):
  """Compiles every bucket each method can use, with one synthetic input per bucket (cheaper than a full pass)."""
  M = rm.max_len
  rm_pad.score(["a"], ["b"])
  for L in rm.buckets:
    rm.score(["a" * (L - 2)], ["b"])                                  # L - 2 + 1 + <eoc> = L tokens
  for L in pk.packed_buckets(rm.buckets, max_packed_len):
    if L <= M:
      pk.score_many_shared(rm, ["a" * (L - 3)], [["b"]], pack="always")  # L - 3 + 1 + <eoc> = L - 1
    else:
      r = L - M - 1                                                    # each sequence exactly M: no truncation
      pk.score_many_shared(rm, ["a" * (M - 1 - r)], [["b" * r, "c" * r]], pack="always")  # M + r + 1 = L


def timed(fn, repeats: int) -> tuple[float, object]:
  best, out = float("inf"), None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data", type=pathlib.Path, default=DATA)
  ap.add_argument("--n", type=int, default=500, help="comparisons (K = 2 each)")
  ap.add_argument("--max-len", type=int, default=1024)
  ap.add_argument("--d-model", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--batch-size", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "reward_throughput.json")
  args = ap.parse_args(argv)
  if not args.data.exists():
    print(f"reward_throughput: {args.data} not found; it is HH-RLHF helpful-base test.jsonl.gz "
          "(pass --data PATH)", file=sys.stderr)
    return 2
  contexts, responses, skipped = load_comparisons(args.data, args.n)
  flat_c = [c for c, rs in zip(contexts, responses) for _ in rs]
  flat_r = [r for rs in responses for r in rs]
  n_rewards = len(flat_r)
  cfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, max_len=args.max_len)
  max_packed_len = 2 * cfg.max_len

  with tempfile.TemporaryDirectory() as tmp:
    path = write_random_bundle(pathlib.Path(tmp) / "bundle", cfg)
    rm_pad = RewardModel(path, batch_size=args.batch_size, buckets=(cfg.max_len,))
    rm = RewardModel(path, batch_size=args.batch_size)
    warnings.simplefilter("ignore")  # truncation warnings: counted below instead
    warm_up(rm_pad, rm, max_packed_len)
    packed_fn = pk._token_reward_fn(cfg)
    before = [_cache_size(f) for f in (rm_pad._fn, rm._fn, packed_fn)]
    t_pad, r_pad = timed(lambda: rm_pad.score(flat_c, flat_r), args.repeats)
    t_bucket, r_bucket = timed(lambda: rm.score(flat_c, flat_r), args.repeats)
    stats = {"cheaper": pk.PackStats(), "always": pk.PackStats()}

    def run_packed(policy):
      stats[policy] = pk.PackStats()
      return np.concatenate(pk.score_many_shared(rm, contexts, responses, max_packed_len=max_packed_len,
                                                 pack=policy, stats=stats[policy]))

    t_packed, r_packed = timed(lambda: run_packed("cheaper"), args.repeats)
    t_always, r_always = timed(lambda: run_packed("always"), args.repeats)
    after = [_cache_size(f) for f in (rm_pad._fn, rm._fn, packed_fn)]

  seqs, cut = rm.encode(flat_c, flat_r)
  lens = np.asarray([len(s) for s in seqs])
  result = {
      "benchmark": "reward_throughput",
      "data": str(args.data), "comparisons": len(contexts), "k": 2, "rewards": n_rewards, "skipped_rows": skipped,
      "model": {"init": "random (untrained)", "d_model": cfg.d_model, "n_layers": cfg.n_layers,
                "n_heads": cfg.n_heads, "max_len": cfg.max_len, "tokenizer": "byte"},
      "batch_rows": args.batch_size, "repeats": args.repeats,
      "device": str(jax.devices()[0]), "platform": platform.platform(), "cpu_count": os.cpu_count(),
      "lengths": {"sequence_mean": float(lens.mean()), "sequence_p50": float(np.median(lens)),
                  "sequence_max": int(lens.max()), "sequences_truncated": int(cut)},
      "buckets": list(rm.buckets), "packed_buckets": list(pk.packed_buckets(rm.buckets, max_packed_len)),
      "packing": {policy: {"packed": st.packed, "truncated": st.truncated, "too_long": st.too_long,
                           "not_cheaper": st.not_cheaper, "packed_rows_run": st.rows, "packed_row_slots": st.row_tokens,
                           "bucket_rows": {str(k): v for k, v in sorted(st.bucket_rows.items())}}
                  for policy, st in stats.items()},
      "seconds": {"pad_to_max": t_pad, "bucketed": t_bucket, "packed": t_packed, "packed_always": t_always},
      "rewards_per_s": {"pad_to_max": n_rewards / t_pad, "bucketed": n_rewards / t_bucket,
                        "packed": n_rewards / t_packed, "packed_always": n_rewards / t_always},
      "speedup": {"packed_vs_bucketed": t_bucket / t_packed, "packed_vs_pad_to_max": t_pad / t_packed,
                  "packed_always_vs_bucketed": t_bucket / t_always, "bucketed_vs_pad_to_max": t_pad / t_bucket},
      "goal": {"packed_vs_bucketed_at_least": 1.8, "met": bool(t_bucket / t_packed >= 1.8)},
      # Work in the linear layers is proportional to tokens: packing can at best drop the repeated context.
      "ideal_token_ratio_separate_over_packed": ideal_ratio(rm.tokenizer, contexts, responses),
      "max_abs_diff_vs_bucketed": {"pad_to_max": float(np.abs(r_pad - r_bucket).max()),
                                   "packed": float(np.abs(r_packed - r_bucket).max()),
                                   "packed_always": float(np.abs(r_always - r_bucket).max())},
      "compiles_during_timing": [a - b for a, b in zip(after, before)],
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
