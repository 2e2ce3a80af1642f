"""Sweeps: YAML grids over experiments (`sweeps/*.yaml`), run as resumable trials on this host or on Ray.

  hhh sweep run FILE [--backend local|ray] [--max-parallel N]   # every unfinished trial; re-run to resume
  hhh sweep status FILE                                          # done / running / failed / pending per trial
  hhh sweep report FILE                                          # OUT/report.md with tables and PNGs

spec.py reads and expands the file, trial.py runs one trial, local.py and ray_backend.py schedule them, report.py
reads the results.
"""

from __future__ import annotations

from hhh.sweep.spec import Spec, SpecError, Trial, load  # noqa: F401


class SweepFailed(ValueError):
  """Some trials failed after their retries (the CLI prints it as one line and exits 1)."""


def run_sweep(spec: Spec, *, backend: str = "local", max_parallel: int | None = None, address: str | None = None,
              devices: str | None = None, device_kind: str = "auto", progress: bool = True,
              ray_host: str = "127.0.0.1") -> list[dict]:
  """Runs every unfinished trial of `spec`; returns the records of the trials that failed."""
  if max_parallel is not None and max_parallel < 1:
    raise ValueError(f"--max-parallel {max_parallel} must be >= 1")
  if backend == "local":
    from hhh.sweep import local
    return local.run(spec, max_parallel=max_parallel, pool=local.detect(device_kind, devices), progress=progress)
  if backend == "ray":
    from hhh.sweep import ray_backend
    return ray_backend.run(spec, address=address, max_parallel=max_parallel, progress=progress, ray_host=ray_host)
  raise ValueError(f"--backend {backend!r}: expected local or ray")


def results(spec: Spec) -> list[dict]:
  from hhh.sweep import report
  return report.results(spec)


def _cli_run(args):
  spec = load(args.file, out=args.out)
  failed = run_sweep(spec, backend=args.backend, max_parallel=args.max_parallel, address=args.address,
                     devices=args.devices, device_kind=args.device_kind, ray_host=args.ray_host)
  from hhh.sweep import report
  if spec.plots:
    print(f"hhh: report {report.write(spec)}")
  counts = report.status(spec)["counts"]
  print(f"hhh: sweep {spec.out}: " + ", ".join(f"{counts[s]} {s}" for s in report.STATES))
  if failed:
    raise SweepFailed(f"{len(failed)} trials failed ({', '.join(r['id'] for r in failed[:5])}); "
                      f"see `hhh sweep status {args.file}` and their attempt logs")


def _cli_status(args):
  from hhh.sweep import report
  print(report.format_status(report.status(load(args.file, out=args.out))))


def _cli_report(args):
  from hhh.sweep import report
  print(f"hhh: wrote {report.write(load(args.file, out=args.out))}")


def add_cli(sub) -> None:
  p = sub.add_parser("sweep", help="run, inspect and report a sweep file (sweeps/*.yaml)")
  ssub = p.add_subparsers(dest="sweep_command", required=True)
  for name, func, helptext in (("run", _cli_run, "run every unfinished trial (re-run to resume)"),
                               ("status", _cli_status, "done / running / failed / pending per trial"),
                               ("report", _cli_report, "write OUT/report.md with tables and plots")):
    q = ssub.add_parser(name, help=helptext)
    q.add_argument("file", help="a sweep file, e.g. sweeps/tiny.yaml")
    q.add_argument("--out", default=None, help="the sweep directory (default: the file's `out`)")
    q.set_defaults(func=func)
    if name == "run":
      q.add_argument("--backend", choices=("local", "ray"), default="local")
      q.add_argument("--max-parallel", type=int, default=None, help="at most N trials at once")
      q.add_argument("--address", default=None, help="ray: an existing cluster (HOST:PORT or auto)")
      q.add_argument("--ray-host", default="127.0.0.1",
                     help="ray: the address a new local Ray instance binds its ports to (default 127.0.0.1, "
                     "loopback only; give this machine's IP to let other nodes join)")
      q.add_argument("--devices", default=None, help="local: the device ids to use (default: all visible)")
      q.add_argument("--device-kind", choices=("auto", "cuda", "tpu", "cpu"), default="auto")
