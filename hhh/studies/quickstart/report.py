"""The quickstart's report: the objective-scaling and sample-efficiency figures, tables, and what they mean.

Error bars are the binomial standard error of each held-out accuracy, sqrt(p (1 - p) / pairs): the quickstart
runs one seed, so they show the noise of the held-out set, not seed-to-seed spread.
"""

from __future__ import annotations

import json
import math
import pathlib

PMP_STYLE = {"none": ("tab:gray", "no PMP"), "ranked": ("tab:red", "ranked PMP"),
             "binarized": ("tab:blue", "binarized PMP")}
OBJ_STYLE = {"imitation": ("tab:gray", "s"), "binary": ("tab:blue", "^"), "ranked": ("tab:red", "o")}
SIZE_MARKERS = ("v", "s", "o", "D", "^")


def stderr(acc: float, pairs: float | None) -> float:
  return math.sqrt(max(acc * (1 - acc), 0.0) / pairs) if pairs else 0.0


def _finetunes(results: dict) -> list[dict]:
  return [r for r in results.values() if r.get("stage") == "finetune"]


def _acc(r: dict) -> tuple[float, float]:
  m = r["metrics"]
  return m["accuracy"], stderr(m["accuracy"], m.get("pairs"))


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_objectives(fts: list[dict], targets, n_max: int, out_png: pathlib.Path) -> pathlib.Path:
  """One panel per target set: accuracy against non-embedding parameters, one line per objective (no PMP)."""
  plt = _plt()
  fig, axes = plt.subplots(1, len(targets), figsize=(4.3 * len(targets), 3.5), squeeze=False)
  for ax, target in zip(axes.flat, targets):
    for obj, (color, marker) in OBJ_STYLE.items():
      pts = sorted((r["params"], *_acc(r)) for r in fts if r["target"] == target and r["pmp"] == "none"
                   and r["n"] == n_max and r["objective"] == obj)
      if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                    marker=marker, capsize=3, label=obj)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels on a short log axis overlap
    ax.set_title(f"{target} ({n_max} comparisons, no PMP)")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.grid(alpha=0.3, which="both")
  axes.flat[0].legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)
  return out_png


def plot_sample_efficiency(fts: list[dict], targets, sizes, out_png: pathlib.Path) -> pathlib.Path:
  """One panel per target set: ranked-PM accuracy against fine-tuning comparisons (log2 x), colour = PMP variant,
  marker and line weight = model size."""
  plt = _plt()
  fig, axes = plt.subplots(1, len(targets), figsize=(4.8 * len(targets), 3.7), squeeze=False)
  for ax, target in zip(axes.flat, targets):
    for si, size in enumerate(sizes):
      for pmp, (color, label) in PMP_STYLE.items():
        pts = sorted((r["n"], *_acc(r)) for r in fts if r["target"] == target and r["size"] == size
                     and r["pmp"] == pmp and r["objective"] == "ranked")
        if pts:
          ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                      marker=SIZE_MARKERS[si % len(SIZE_MARKERS)], lw=0.8 + 0.8 * si, capsize=2,
                      alpha=0.5 + 0.5 * (si + 1) / len(sizes), label=f"{label}, {size}")
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_title(target)
    ax.set_xlabel("fine-tuning comparisons")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.grid(alpha=0.3, which="both")
  axes.flat[-1].legend(fontsize=6, loc="best", ncol=1 if len(sizes) < 3 else 2)
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)
  return out_png


def _fmt(r: dict | None) -> str:
  if r is None:
    return ""
  acc, se = _acc(r)
  return f"{acc:.3f} ± {se:.3f}"


def write(out: pathlib.Path, cfg, results: dict, mined: dict, hhh: list[dict], times: dict,
          workers: int = 1) -> dict:
  """DIR/report.md, the two PNGs and DIR/summary.json (every number of the report, machine-readable)."""
  from hhh.model import family
  fts = _finetunes(results)
  if not fts:
    raise ValueError(f"{out}: no finished fine-tuning runs to report")
  n_max = max(cfg.finetune_ns)
  targets = [t for t in cfg.targets if any(r["target"] == t for r in fts)]
  obj_png = plot_objectives(fts, targets, n_max, out / "objectives.png")
  se_png = plot_sample_efficiency(fts, targets, cfg.sizes, out / "sample_efficiency.png")
  cell = {(r["target"], r["size"], r["pmp"], r["n"], r["objective"]): r for r in fts}
  params = {r["size"]: r["params"] for r in results.values() if r.get("stage") == "lm"}

  lines = ["# hhh quickstart report", "",
           f"Generated world seed {cfg.seed}; sizes {', '.join(cfg.sizes)}; target sets {', '.join(targets)}. "
           f"Wall time {times['total']:.0f} s (generate {times['generate']:.0f}, mine {times['mine']:.0f}, "
           f"pretrain {times['pretrain']:.0f}, PMP {times['pmp']:.0f}, fine-tune {times['finetune']:.0f}, "
           f"evaluate {times['evaluate']:.0f}), trainings in {workers} process{'es' if workers > 1 else ''}.", "",
           "Every accuracy is held-out pairwise accuracy on comparisons no run trained on (chance 0.5); ± is "
           "its binomial standard error over the held-out pairs (one seed, so seed-to-seed spread is not "
           "shown). The target labels are the hidden quality itself: exact, with no annotator noise.", "",
           "## Data", "", "| source | format | records read | comparisons (train / validation / test) |",
           "|---|---|---|---|"]
  fmt = {"stackexchange": "Posts.xml + Votes.xml", "reddit": "Pushshift ndjson .zst (+ RS titles)",
         "wikipedia": "MediaWiki export 0.10 history"}
  for name, s in mined.items():
    k = s["kept"]
    lines.append(f"| {name} | {fmt.get(name, '')} | {s['records_read']} | {k['train']} / {k['validation']} / {k['test']} |")
  lines += ["", "## Base LMs and PMP", "", "| size | non-embedding params | LM held-out loss (nats/token) | "
            "ranked PMP acc | binarized PMP acc |", "|---|---|---|---|---|"]
  for size in cfg.sizes:
    lm = results.get(f"lm-{size}")
    pr, pb = results.get(f"pmp-ranked-{size}"), results.get(f"pmp-binarized-{size}")
    acc = lambda r: f"{r['metrics']['accuracy']:.3f}" if r else ""
    loss = f"{lm['metrics']['loss']:.3f}" if lm else ""
    lines.append(f"| {size} | {family.human_count(params.get(size, 0))} | {loss} | {acc(pr)} | {acc(pb)} |")
  lines += ["", "PMP accuracy is on the mined sources' held-out splits, in each variant's own form (binarized "
            "PMP is scored on GOOD:/BAD: pairs, which are easier), so the two columns are not comparable "
            "with each other.", "",
            "## The objective comparison", "", f"![objective scaling]({obj_png.name})", "",
            f"Fine-tuned from the base LM (no PMP) on {n_max} comparisons, {cfg.finetune_steps} steps of "
            f"{cfg.finetune_batch}. Imitation ranks the two responses by summed log-likelihood.", "",
            "| target | size | params | held-out pairs | " + " | ".join(OBJ_STYLE) + " |",
            "|---|---|---|---|" + "---|" * len(OBJ_STYLE)]
  for t in targets:
    for size in cfg.sizes:
      rs = [cell.get((t, size, "none", n_max, o)) for o in OBJ_STYLE]
      any_r = next((r for r in rs if r), None)
      if any_r:
        lines.append(f"| {t} | {size} | {family.human_count(any_r['params'])} | "
                     f"{int(any_r['metrics'].get('pairs', 0))} | " + " | ".join(_fmt(r) for r in rs) + " |")
  lines += ["", "## PMP sample efficiency", "", f"![sample efficiency]({se_png.name})", "",
            "Ranked-objective fine-tunes from the base LM (no PMP), the ranked PMP and the binarized PMP on "
            f"the first n target comparisons; every run takes {cfg.finetune_steps} steps, so a small set is "
            "repeated more often.", "",
            "| target | size | start | " + " | ".join(f"n={n}" for n in cfg.finetune_ns) + " |",
            "|---|---|---|" + "---|" * len(cfg.finetune_ns)]
  for t in targets:
    for size in cfg.sizes:
      for pmp in PMP_STYLE:
        lines.append(f"| {t} | {size} | {PMP_STYLE[pmp][1]} | " +
                     " | ".join(_fmt(cell.get((t, size, pmp, n, "ranked"))) for n in cfg.finetune_ns) + " |")
  if hhh:
    cats = list(hhh[0]["per_category"])
    lines += ["", "## HHH eval (BIG-bench layout, generated)", "",
              f"Ranked PMs of size {hhh[0]['size']}, fine-tuned on {hhh[0]['n_finetune']} {hhh[0]['target']} "
              "comparisons, exported as reward bundles and used as the judge (`hhh.evals.tasks.hhh_alignment`): "
              f"an item is right when the preferred response gets the higher reward; {hhh[0]['n']} items.", "",
              "| PM start | accuracy | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    for r in hhh:
      lines.append(f"| {PMP_STYLE[r['pmp']][1]} | {r['accuracy']:.3f} | " +
                   " | ".join(f"{r['per_category'][c]:.3f}" for c in cats) + " |")
  lines += ["", "## What this shows and what it does not", "",
            "- It shows the pipeline end to end on real code paths: the miners read the three raw formats, "
            "PMP mixes their outputs, fine-tunes start from PMP checkpoints, and every number comes from "
            "held-out data.",
            "- It shows how each stage behaves on a world built so that PMP *can* transfer: votes, karma and "
            "reverts follow the same hidden quality (fact right or wrong, tone, justification) that labels "
            "the target sets. Whether PMP helps here says that the transfer machinery works, not that PMP "
            "helps on human data.",
            "- It does not reproduce the paper's numbers or scaling: the models have at most ~10^5 "
            "parameters and train for seconds, and one seed is run. Differences within about two standard "
            "errors are noise.",
            f"- Every run's config, metrics and log are in `{out.name}/runs/NAME/`; `results.jsonl` holds all "
            "numbers above, and `summary.json` the report's inputs.", ""]
  (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
  summary = {"report": str(out / "report.md"), "plots": [str(obj_png), str(se_png)], "times": times,
             "workers": workers, "finetunes": fts, "lms": [r for r in results.values() if r.get("stage") == "lm"],
             "pmp": [r for r in results.values() if r.get("stage") == "pmp"], "mined": mined, "hhh_eval": hhh}
  (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
  return summary
