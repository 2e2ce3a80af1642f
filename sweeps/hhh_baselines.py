"""The prompt-based HHH baselines: hhh_alignment, TruthfulQA MC and the alignment tax (HellaSwag, LAMBADA-style
last words) for a model with no prompt, with the HHH prompt, and context-distilled without it.

  hhh distill experiments/context_distill.py --out runs/distill     # the distilled student first
  python sweeps/hhh_baselines.py [sweeps/hhh_baselines.yaml] [--max-parallel 3]

Runs the sweep file (one trial per condition and task; re-running skips finished trials), then writes
OUT/baselines.md.
"""

import argparse
import pathlib
import sys

from hhh import sweep
from hhh.studies import baselines

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("file", nargs="?", default=str(HERE / "hhh_baselines.yaml"))
  p.add_argument("--out", default=None, help="the sweep directory (default: the file's `out`)")
  p.add_argument("--backend", choices=("local", "ray"), default="local")
  p.add_argument("--max-parallel", type=int, default=None)
  args = p.parse_args(argv)
  try:
    spec = sweep.load(args.file, out=args.out)
    failed = sweep.run_sweep(spec, backend=args.backend, max_parallel=args.max_parallel)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  md = baselines.table(baselines.records_from_sweep(spec))
  (pathlib.Path(spec.out) / "baselines.md").write_text(md + "\n")
  print(md)
  if failed:
    print(f"hhh: {len(failed)} trials failed (a missing distilled student is one: run `hhh distill` first); "
          f"see `hhh sweep status {args.file}`", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
