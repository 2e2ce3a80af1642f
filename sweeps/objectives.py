"""The objective comparison sweep: imitation vs binary vs ranked preference, per dataset, across model sizes.

  python sweeps/objectives.py                                  # sweeps/objectives.yaml, on this host
  python sweeps/objectives.py sweeps/objectives.yaml --backend ray --max-parallel 8

Runs the sweep file (`hhh sweep run`: resumable, finished trials never run again), then writes
OUT/{objectives.md, objectives.png} (the table and figure of docs/results/objectives_cpu.md) and OUT/report.md.
"""

import argparse
import pathlib
import sys

from hhh import sweep
from hhh.studies import objective_sweep
from hhh.sweep import report

HERE = pathlib.Path(__file__).resolve().parent


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("file", nargs="?", default=str(HERE / "objectives.yaml"))
  p.add_argument("--out", default=None, help="the sweep directory (default: the file's `out`)")
  p.add_argument("--backend", choices=("local", "ray"), default="local")
  p.add_argument("--max-parallel", type=int, default=None)
  p.add_argument("--address", default=None, help="ray: an existing cluster")
  args = p.parse_args(argv)
  try:
    spec = sweep.load(args.file, out=args.out)
    failed = sweep.run_sweep(spec, backend=args.backend, max_parallel=args.max_parallel, address=args.address)
    report.write(spec)
    out = objective_sweep.write_sweep_report(spec)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  print(out["table"])
  if failed:
    print(f"hhh: {len(failed)} trials failed: {', '.join(r['id'] for r in failed)} (`hhh sweep status "
          f"{args.file}`)", file=sys.stderr)
    return 1
  print(f"hhh: figure {out['plot']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
