"""Best-of-n sampling: draw n completions per prompt from a policy and keep the one a reward model likes best.

    hhh bestofn --policy runs/tiny_lm --reward runs/tiny_pm_bundle --n 8 --prompts prompts.jsonl --out best.jsonl
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from hhh.generate import Generator, SamplingConfig, add_sampling_flags, sampling_config


def best_of_n(generator: Generator, reward_model, prompts: Sequence[str], n: int, sc: SamplingConfig) -> list[dict]:
  """Per prompt: {"prompt", "samples" [n], "rewards" [n] (raw), "best", "best_index"}.

  Each sample is scored as (context=prompt, response=sample). Ties go to the lowest index.
  """
  prompts = list(prompts)
  samples = generator.generate(prompts, sc, n=n)
  # One score call for every pair: the reward model batches them by length itself.
  contexts = [p for p in prompts for _ in range(n)]
  rewards_N = np.asarray(reward_model.score(contexts, [s for row in samples for s in row]), np.float32)
  out = []
  for i, (prompt, row) in enumerate(zip(prompts, samples)):
    r_n = rewards_N[i * n:(i + 1) * n]
    best = int(np.argmax(r_n))
    out.append({"prompt": prompt, "samples": row, "rewards": [float(x) for x in r_n], "best": row[best],
                "best_index": best})
  return out


def read_prompts(path) -> list[str]:
  """A .jsonl of {"prompt": ...} objects, or plain text with one prompt per non-empty line."""
  path = pathlib.Path(path)
  text = path.read_text(encoding="utf-8")
  if path.suffix == ".jsonl":
    prompts = []
    for k, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      obj = json.loads(line)
      if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise ValueError(f"{path}:{k}: expected a JSON object with a string 'prompt'")
      prompts.append(obj["prompt"])
    return prompts
  return [line for line in text.splitlines() if line.strip()]


def cli_bestofn(args) -> None:
  from hhh import reward
  prompts = read_prompts(args.prompts)
  if not prompts:
    raise ValueError(f"{args.prompts} holds no prompts")
  generator = Generator.from_checkpoint(args.policy, batch_size=args.batch_size)
  results = best_of_n(generator, reward.load(args.reward), prompts, args.n, sampling_config(args))
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
  if args.out:
    pathlib.Path(args.out).write_text(lines, encoding="utf-8")
  else:
    sys.stdout.write(lines)
    sys.stdout.flush()


def add_cli(sub) -> None:
  p = sub.add_parser("bestofn", help="best-of-n sampling: n completions per prompt, ranked by a reward bundle")
  p.add_argument("--policy", required=True, help="the sampling model: a training workdir or checkpoint dir")
  p.add_argument("--reward", required=True, help="a reward bundle (written by `hhh export`)")
  p.add_argument("--n", type=int, required=True, help="samples per prompt")
  p.add_argument("--prompts", required=True, help="one prompt per line, or a .jsonl of {\"prompt\": ...}")
  p.add_argument("--out", default=None, help="JSONL results (default: stdout)")
  add_sampling_flags(p)
  p.set_defaults(func=cli_bestofn)
