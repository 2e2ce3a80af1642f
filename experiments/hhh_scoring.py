"""hhh_alignment under six scoring rules, without and with the HHH prompt; intervals clustered by input.

    python experiments/hhh_scoring.py                         # SmolLM2-135M-Instruct, all 221 items
    python experiments/hhh_scoring.py --reanalyse             # recompute the report from results.json's raw scores

Writes OUT/results.json (raw per-option scores, the analysis, command and wall time) and OUT/report.md.
The logic is in hhh/studies/scoring_report.py.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
  if argv is None:  # run from the command line: the allocator is chosen first (hhh/cpu_malloc.py)
    from hhh import cpu_malloc
    cpu_malloc.reexec_under_jemalloc(script=__file__)
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m-instruct", help="a hhh.pretrained.load_lm spec")
  p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hhh_alignment"))
  p.add_argument("--prompt", default="hhh", help="hhh, none, or a prompt text file")
  p.add_argument("--limit", type=int, default=0, help="first N items only (0 = all)")
  p.add_argument("--out", default=str(REPO / "results" / "hhh_scoring"))
  p.add_argument("--contexts-per-batch", type=int, default=4)
  p.add_argument("--rows-per-batch", type=int, default=8)
  p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  p.add_argument("--reanalyse", action="store_true", help="no model: re-read OUT/results.json's raw scores")
  args = p.parse_args(argv)
  from hhh.evals import commands, tasks
  from hhh.studies import scoring_report
  out = pathlib.Path(args.out)
  command = commands.command_line(argv)
  try:
    t0 = time.perf_counter()
    if args.reanalyse:
      prev = json.loads((out / "results.json").read_text())
      items, in_prefix, out_prefix = tasks.read_hhh_alignment(args.data)
      items = items[:prev["n"]]
      raw = prev["raw"]
      res = scoring_report.analyse_hhh(items, raw, seed=args.seed)
      res["neutral_context"] = f"{in_prefix}{out_prefix}"
      for k in ("command", "wall_seconds", "model", "prompt"):
        res[k] = prev[k]
    else:
      from hhh.pretrained import load_lm
      _, prompt_text = commands.resolve_prompt(args.prompt)
      raw, res = scoring_report.run_hhh(load_lm(args.model), args.data, prompt_text=prompt_text, limit=args.limit,
                                        contexts_per_batch=args.contexts_per_batch,
                                        rows_per_batch=args.rows_per_batch, seed=args.seed,
                                        partial_dir=out / "partial")
      res.update(command=command, wall_seconds=time.perf_counter() - t0, model=args.model, prompt=args.prompt)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({**res, "raw": raw}, indent=1) + "\n")
  (out / "report.md").write_text(scoring_report.hhh_report_md(res, scoring_report.review_check(res)))
  print((out / "report.md").read_text())
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
