"""`hhh sweep status` (done / running / failed / pending per trial) and `hhh sweep report` (report.md + PNGs).

Every point of a plot is the mean over the trials that differ only on the plot's `over` axes (seeds), with the
standard error as its error bar; report.md lists, under each plot, every point with the trial ids behind it,
each linked to the trial's trial.json (its resolved config).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Iterable

from hhh.sweep import trial as trial_lib
from hhh.sweep.spec import Plot, Spec, Trial

STATES = ("done", "running", "failed", "pending")


def state(spec: Spec, t: Trial) -> str:
  d = spec.trial_dir(t)
  if trial_lib.is_done(d):
    return "done"
  if trial_lib.is_locked(d):
    return "running"
  if (d / "failed.json").exists():
    return "failed"
  return "pending"


def results(spec: Spec) -> list[dict]:
  """The result records of the finished trials, in file order, each with its trial's stage and labels."""
  out = []
  for t in spec.trials:
    rec = trial_lib.read_result(spec.trial_dir(t))
    if rec is not None:
      out.append({**rec, "stage": t.stage, "labels": t.labels})
  return out


def status(spec: Spec) -> dict[str, Any]:
  rows = []
  for t in spec.trials:
    d = spec.trial_dir(t)
    st = state(spec, t)
    rec = trial_lib.read_json(d / ("result.json" if st == "done" else "failed.json")) or {}
    rows.append({"id": t.id, "stage": t.stage, "labels": t.labels, "state": st,
                 "attempts": trial_lib.attempts(d), "seconds": rec.get("seconds"),
                 "error": rec.get("error") if st == "failed" else None})
  counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
  return {"trials": rows, "counts": counts}


def format_status(st: dict[str, Any]) -> str:
  lines = [f"{'id':12}  {'state':8} {'tries':>5} {'secs':>7}  trial"]
  for r in st["trials"]:
    labels = ",".join(f"{k}={v}" for k, v in r["labels"].items())
    secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else ""
    line = f"{r['id']:12}  {r['state']:8} {r['attempts']:>5} {secs:>7}  {r['stage']}[{labels}]"
    if r["error"]:
      line += f"  {r['error'][:120]}"
    lines.append(line)
  c = st["counts"]
  lines.append(f"{len(st['trials'])} trials: " + ", ".join(f"{c[s]} {s}" for s in STATES))
  return "\n".join(lines)


def _value(rec: dict, key: str):
  """An axis label, a result field (params, step, seconds) or a metric."""
  if key in rec["labels"]:
    return rec["labels"][key]
  if key in rec and not isinstance(rec[key], dict):
    return rec[key]
  return rec.get("metrics", {}).get(key)


def _num(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return None


def points(plot: Plot, recs: Iterable[dict]) -> list[dict]:
  """(panel, line, x) -> mean and standard error of the metric over the `over` axes, with the trial ids."""
  cells: dict[tuple, list[dict]] = {}
  for r in recs:
    if r["stage"] != plot.stage or _num(_value(r, plot.metric)) is None:
      continue
    rest = [a for a in r["labels"] if a not in (plot.x, plot.panel, *plot.over)]
    line = r["labels"].get(plot.line, "") if plot.line else ",".join(f"{a}={r['labels'][a]}" for a in rest)
    panel = r["labels"].get(plot.panel, "") if plot.panel else ""
    cells.setdefault((panel, line, _value(r, plot.x)), []).append(r)
  out = []
  for (panel, line, x), rs in cells.items():
    ys = [_num(_value(r, plot.metric)) for r in rs]
    mean = sum(ys) / len(ys)
    se = math.sqrt(sum((y - mean) ** 2 for y in ys) / (len(ys) - 1) / len(ys)) if len(ys) > 1 else 0.0
    out.append({"panel": panel, "line": line, "x": x, "mean": mean, "stderr": se, "n": len(ys),
                "trials": [r["id"] for r in rs]})
  order = lambda p: (str(p["panel"]), str(p["line"]), _num(p["x"]) if _num(p["x"]) is not None else 0, str(p["x"]))
  return sorted(out, key=order)


def plot_png(plot: Plot, pts: list[dict], path) -> pathlib.Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = sorted({p["panel"] for p in pts}, key=str)
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
  numeric_x = all(_num(p["x"]) is not None for p in pts)
  cats = sorted({str(p["x"]) for p in pts}, key=lambda s: [p["x"] for p in pts if str(p["x"]) == s][0]) \
      if not numeric_x else []
  for ax, panel in zip(axes.flat, panels):
    for line in sorted({p["line"] for p in pts if p["panel"] == panel}, key=str):
      ps = [p for p in pts if p["panel"] == panel and p["line"] == line]
      xs = [_num(p["x"]) if numeric_x else cats.index(str(p["x"])) for p in ps]
      # Categories are not a continuum: points only, no line between them.
      ax.errorbar(xs, [p["mean"] for p in ps], yerr=[p["stderr"] for p in ps], marker="o", capsize=3,
                  ls="-" if numeric_x else "none", label=str(line) or plot.metric)
    if plot.chance is not None:
      ax.axhline(plot.chance, color="k", lw=0.6, ls=":")
    if numeric_x and plot.xscale == "log":
      ax.set_xscale("log")
    if not numeric_x:
      ax.set_xticks(range(len(cats)), cats)
      ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.set_title(str(panel) if plot.panel else (plot.title or plot.stage))
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.metric)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  if plot.title and plot.panel:
    fig.suptitle(plot.title)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def write(spec: Spec) -> pathlib.Path:
  """Writes OUT/report.md (and OUT/PLOT.png per plot) over every finished trial; returns report.md's path."""
  out = pathlib.Path(spec.out)
  out.mkdir(parents=True, exist_ok=True)
  recs = results(spec)
  st = status(spec)
  c = st["counts"]
  md = [f"# Sweep {spec.path.name}", "",
        f"{len(spec.trials)} trials: " + ", ".join(f"{c[s]} {s}" for s in STATES) + ".",
        "Each trial id links to its trial.json: the resolved config behind the number.", ""]
  for plot in spec.plots:
    pts = points(plot, recs)
    md += [f"## {plot.title or plot.name}: {plot.metric} against {plot.x} ({plot.stage})", ""]
    if not pts:
      md += ["No finished trials yet.", ""]
      continue
    png = plot_png(plot, pts, out / f"{plot.name}.png")
    over = ", ".join(plot.over)
    md += [f"![{plot.name}]({png.name})", "",
           f"Mean ± standard error over {over} (n trials per point).", "",
           f"| {plot.panel or 'panel'} | {plot.line or 'line'} | {plot.x} | {plot.metric} | n | trials |",
           "|---|---|---|---|---|---|"]
    for p in pts:
      ids = " ".join(f"[{i}](trials/{i}/trial.json)" for i in p["trials"])
      se = f" ± {p['stderr']:.4f}" if p["n"] > 1 else ""
      md.append(f"| {p['panel']} | {p['line']} | {_fmt(p['x'])} | {p['mean']:.4f}{se} | {p['n']} | {ids} |")
    md.append("")
  md += ["## Every trial", ""]
  by_stage: dict[str, list[dict]] = {}
  for r in recs:
    by_stage.setdefault(r["stage"], []).append(r)
  for stage, rs in by_stage.items():
    axes = list(dict.fromkeys(a for r in rs for a in r["labels"]))
    metrics = list(dict.fromkeys(k for r in rs for k, v in r.get("metrics", {}).items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)))[:8]
    md += [f"### {stage}", "", "| trial | " + " | ".join(axes + metrics) + " | seconds |",
           "|---|" + "---|" * (len(axes) + len(metrics) + 1)]
    for r in rs:
      cells = [str(r["labels"].get(a, "")) for a in axes] + [_fmt(r["metrics"].get(m, "")) for m in metrics]
      md.append(f"| [{r['id']}](trials/{r['id']}/trial.json) | " + " | ".join(cells) + f" | {r.get('seconds', '')} |")
    md.append("")
  failed = [r for r in st["trials"] if r["state"] == "failed"]
  if failed:
    md += ["## Failed", ""] + [f"- {r['id']} {r['stage']}{r['labels']}: {r['error']}" for r in failed] + [""]
  path = out / "report.md"
  tmp = out / ".report.md.tmp"
  tmp.write_text("\n".join(md), encoding="utf-8")
  tmp.replace(path)
  return path
