"""The alignment tax: HellaSwag acc and acc_norm with and without the HHH prompt, paired per item.

    python experiments/alignment_tax.py --n 1000          # a fixed seeded sample of 1000 validation tasks
    python experiments/alignment_tax.py --n 0             # all 10042 (hours on 2 CPU cores)

Writes OUT/results.json (per-option scores, the analysis, the command and wall time) and OUT/report.md.
Scores are saved to OUT/partial/ every 100 tasks; a rerun of the same command continues from there.
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
  p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"))
  p.add_argument("--prompt", default="hhh", help="hhh or a prompt text file")
  p.add_argument("--n", type=int, default=2000, help="tasks in the seeded sample (0 = all)")
  p.add_argument("--seed", type=int, default=0, help="sample and bootstrap seed")
  p.add_argument("--out", default=str(REPO / "results" / "alignment_tax"))
  p.add_argument("--contexts-per-batch", type=int, default=4)
  p.add_argument("--rows-per-batch", type=int, default=8)
  args = p.parse_args(argv)
  from hhh.evals import commands
  from hhh.studies import scoring_report
  command = commands.command_line(argv)
  try:
    if args.n < 0:
      raise ValueError(f"--n {args.n} must be >= 0 (0 = all)")
    _, prompt_text = commands.resolve_prompt(args.prompt)
    if not prompt_text:
      raise ValueError("--prompt none leaves nothing to compare: pass hhh or a prompt file")
    from hhh.pretrained import load_lm
    t0 = time.perf_counter()
    raw, res = scoring_report.run_tax(load_lm(args.model), args.data, prompt_text=prompt_text, n=args.n,
                                      seed=args.seed, contexts_per_batch=args.contexts_per_batch,
                                      rows_per_batch=args.rows_per_batch,
                                      partial_dir=pathlib.Path(args.out) / "partial")
    res.update(command=command, wall_seconds=time.perf_counter() - t0, model=args.model, prompt=args.prompt)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({**res, "raw": raw}, indent=1) + "\n")
  (out / "report.md").write_text(scoring_report.tax_report_md(res))
  print((out / "report.md").read_text())
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
