"""The objective comparison on a frozen SmolLM2 trunk, stage by stage (each stage resumable and idempotent).

  prepare   target sets and offline text -> WORK/data/NAME/{train,validation,test}.jsonl
  cache     every split through the trunk once -> CACHE_ROOT (see `hhh.frozen.cache`)
  readouts  per depth, the LM readout fitted on offline text; its held-out LM loss before and after
  tune      per (tier, dataset, depth, objective): the learning rate with the best validation accuracy (seed 0)
  runs      per cell and seed on the test split -> WORK/runs/*.json (per-comparison correctness)
  report    baselines, cluster bootstrap over test contexts x seeds, paired differences -> OUT/report.md

`experiments/frozen_objectives.py` is the entry point; `StudyConfig` is its configuration.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np

from hhh.frozen import cache as cache_lib
from hhh.frozen import data as data_lib
from hhh.frozen import train as train_lib



def layers_for(depths) -> tuple[int, ...]:
  """The cached layers: each depth's output (head tier) and the input of its last two blocks (LoRA tier)."""
  return tuple(sorted({d for d in depths} | {d - 2 for d in depths if d >= 2}))


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  trunk: str = "smollm2-135m-instruct"
  shared_data: str = "../shared/data"
  work: str = "runs/frozen"                     # data, runs (small JSON)
  cache_root: str = "~/.cache/hhh/frozen"       # the states (GBs)
  out: str = "results/frozen"
  datasets: tuple[str, ...] = ("truthfulqa", "hellaswag", "mbpp")
  depths: tuple[int, ...] = (8, 16, 30)
  tiers: tuple[str, ...] = ("head",)
  objectives: tuple[str, ...] = ("imitation", "binary", "ranked")
  seeds: tuple[int, ...] = (0, 1, 2)
  lr_grid: tuple[float, ...] = ()   # the learning rates tuned on validation; () = LR_GRID / LORA_LR_GRID per objective
  steps: int = 100                  # every objective; imitation's full-vocabulary softmax makes its steps the cost
  lora_steps: int = 200
  batch_size: int = 16
  hellaswag_sizes: tuple[int, int, int] = (600, 150, 500)   # train, validation, test
  mbpp_mutants: int = 3
  max_len: int = 256
  readout_steps: int = 150
  readout_lr: float = 1e-3
  n_boot: int = 2000

  def path(self, which: str) -> pathlib.Path:
    return pathlib.Path(getattr(self, which)).expanduser()


MAX_K = {"truthfulqa": 13, "hellaswag": 4, "mbpp": 4, "text": 1}


def prepare(cfg: StudyConfig) -> dict:
  root = pathlib.Path(cfg.shared_data)
  data_dir = cfg.path("work") / "data"
  done = data_dir / "counts.json"
  counts = json.loads(done.read_text()) if done.exists() else {}
  for name in cfg.datasets + ("text",):
    if name in counts:
      continue
    if name == "truthfulqa":
      sets = data_lib.truthfulqa(root / "truthfulqa" / "mc_task.json")
    elif name == "hellaswag":
      n_train, n_val, n_test = cfg.hellaswag_sizes
      sets = data_lib.hellaswag(root / "hellaswag" / "hellaswag_val_full.txt.bz2", n_train=n_train,
                                n_validation=n_val, n_test=n_test)
    elif name == "mbpp":
      sets = data_lib.mbpp(root / "code" / "mbpp.jsonl", mutants=cfg.mbpp_mutants)
    else:
      text = data_lib.offline_text(root)
      cut = len(text) // 5
      sets = {"validation": text[:cut], "train": text[cut:]}
    counts.update(data_lib.write_sets({name: sets}, data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(counts, indent=1))
  return counts


def caches(cfg: StudyConfig, lm=None, *, build: bool = True) -> dict[tuple[str, str], cache_lib.Cache]:
  """(dataset, split) -> Cache, built where missing (the trunk loads only then)."""
  from hhh.pretrained import load_lm
  data_dir = cfg.path("work") / "data"
  counts = json.loads((data_dir / "counts.json").read_text())
  out, digest = {}, None
  for name in cfg.datasets + ("text",):
    for split in counts[name]:
      cs = data_lib.read_set(data_dir, name, split)
      if not cs:
        continue
      lm = lm or load_lm(cfg.trunk)
      digest = digest or cache_lib.params_digest(lm.params)
      spec = cache_lib.CacheSpec(layers=layers_for(cfg.depths), max_len=cfg.max_len, max_k=MAX_K[name])
      out[(name, split)] = cache_lib.build(lm, cs, cfg.path("cache_root"), spec, name=f"{name}-{split}",
                                           trunk_digest=digest)
  return out


def main_cache(cfg: StudyConfig) -> None:
  prepare(cfg)
  t = time.time()
  got = caches(cfg)
  for (name, split), c in got.items():
    print(f"{name}/{split}: {len(c)} comparisons, {c.manifest['tokens']} tokens, built in "
          f"{c.manifest['build_seconds']} s -> {c.path}")
  print(f"caches ready in {time.time() - t:.0f} s")


def _json(path: pathlib.Path, obj: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
  tmp.replace(path)


# ---------------------------------------------------------------- readouts

READOUT_WINDOW = 64    # targets per text row the readout trains and is scored on (the LM head is 49152 wide)


def _lm_loss(lm, run, trainable, feats) -> float:
  """Mean next-token loss of the text rows in `feats`, through the run's readout."""
  frozen = {"embed": lm.params["embed"]}
  rows = train_lib.head_row_scores(run, trainable, frozen, feats)
  return float(-rows["sum"].sum() / max(int(feats.mask_RxT.sum()), 1))


def readouts(cfg: StudyConfig, lm, got) -> dict[int, dict]:
  """Per depth: the readout fitted on offline text (saved as .npy) and the validation LM loss with the identity
  readout and with the fitted one. Depth n_layers with the identity is the pretrained model itself."""
  out = {}
  d_dir = cfg.path("work") / "readouts"
  for depth in cfg.depths:
    npy, meta = d_dir / f"d{depth:02d}.npy", d_dir / f"d{depth:02d}.json"
    if npy.exists() and meta.exists():
      out[depth] = {**json.loads(meta.read_text()), "readout": np.load(npy)}
      continue
    run = train_lib.RunConfig(objective="lm", depth=depth, tier="head", steps=cfg.readout_steps, batch_size=8,
                              lr=cfg.readout_lr, warmup_steps=20)
    tr = train_lib.HeadFeatures(lm, got[("text", "train")], depth, T=READOUT_WINDOW)
    va = train_lib.HeadFeatures(lm, got[("text", "validation")], depth, T=READOUT_WINDOW)
    ident = {"readout": np.eye(lm.cfg.d_model, dtype=np.float32)}
    before = _lm_loss(lm, run, ident, va)
    t = time.time()
    trainable, log = train_lib.train(lm, run, tr.cache, feats=tr)
    after = _lm_loss(lm, run, trainable, va)
    info = {"depth": depth, "lm_loss_identity": before, "lm_loss_fitted": after, "steps": run.steps,
            "lr": run.lr, "window": READOUT_WINDOW, "train_rows": len(tr.cache), "validation_rows": len(va.cache),
            "seconds": round(time.time() - t, 1), "train_loss_first": log[0]["loss"], "train_loss_last": log[-1]["loss"]}
    d_dir.mkdir(parents=True, exist_ok=True)
    np.save(npy, np.asarray(trainable["readout"]))
    _json(meta, info)
    print(f"readout d{depth}: validation LM loss {before:.3f} (identity) -> {after:.3f} (fitted)")
    out[depth] = {**info, "readout": np.asarray(trainable["readout"])}
  return out


# ---------------------------------------------------------------- runs

PRIMARY = {"truthfulqa": "top1", "hellaswag": "top1", "mbpp": "pairwise"}
VARIANT = {"imitation": "mean", "binary": "reward", "ranked": "reward"}   # imitation's per-token mean: pre-registered
LR_GRID = {"imitation": (1e-4, 1e-3), "binary": (3e-3, 1e-2, 3e-2), "ranked": (3e-3, 1e-2, 3e-2)}
LORA_LR_GRID = {"imitation": (1e-4, 1e-3), "binary": (3e-4, 1e-3, 3e-3), "ranked": (3e-4, 1e-3, 3e-3)}


def _run_path(cfg, tier, name, depth, objective, lr, seed) -> pathlib.Path:
  return cfg.path("work") / "runs" / tier / name / f"d{depth:02d}-{objective}-lr{lr:g}-s{seed}.json"


def one_run(cfg: StudyConfig, lm, got, feats_cache: dict, *, tier, name, depth, objective, lr, seed,
            readout) -> dict:
  path = _run_path(cfg, tier, name, depth, objective, lr, seed)
  if path.exists():
    return json.loads(path.read_text())
  steps = cfg.steps if tier == "head" else cfg.lora_steps
  run = train_lib.RunConfig(objective=objective, depth=depth, tier=tier, steps=steps, batch_size=cfg.batch_size,
                            lr=lr, seed=seed)
  windows = objective == "imitation"

  def feats(split):
    if tier != "head":
      return None
    key = (name, split, depth, windows)
    if key not in feats_cache:
      feats_cache[key] = train_lib.HeadFeatures(lm, got[(name, split)], depth, need_windows=windows)
    return feats_cache[key]

  t = time.time()
  trainable, log = train_lib.train(lm, run, got[(name, "train")], readout=readout, feats=feats("train"),
                                   progress=False)
  res = {"config": dataclasses.asdict(run), "dataset": name, "train_seconds": round(time.time() - t, 2),
         "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"],
         "validation": train_lib.evaluate(lm, run, trainable, got[(name, "validation")], feats=feats("validation")),
         "test": train_lib.evaluate(lm, run, trainable, got[(name, "test")], feats=feats("test"))}
  _json(path, res)
  return res


def _mean(vals) -> float:
  v = np.asarray(vals, np.float64)
  return float(np.nanmean(v)) if v.size else float("nan")


def runs(cfg: StudyConfig, lm, got, ro) -> list[dict]:
  """Tune each cell's learning rate on validation (seed 0), then the other seeds at the chosen one."""
  from tqdm.auto import tqdm
  cells = [(tier, name, depth, objective) for tier in cfg.tiers for name in cfg.datasets for depth in cfg.depths
           for objective in cfg.objectives]
  feats_cache: dict = {}
  chosen = []
  for tier, name, depth, objective in tqdm(cells, desc="cells"):
    grid = cfg.lr_grid or (LR_GRID if tier == "head" else LORA_LR_GRID)[objective]
    readout = ro[depth]["readout"] if objective == "imitation" else None
    kw = dict(tier=tier, name=name, depth=depth, objective=objective, readout=readout)
    metric = f"{PRIMARY[name]}_{VARIANT[objective]}"
    tuned = {lr: one_run(cfg, lm, got, feats_cache, lr=lr, seed=cfg.seeds[0], **kw) for lr in grid}
    best = max(grid, key=lambda lr: (_mean(tuned[lr]["validation"][metric]), -lr))
    for seed in cfg.seeds[1:]:
      one_run(cfg, lm, got, feats_cache, lr=best, seed=seed, **kw)
    chosen.append({"tier": tier, "dataset": name, "depth": depth, "objective": objective, "lr": best,
                   "validation": {lr: _mean(tuned[lr]["validation"][metric]) for lr in grid}})
    # Features of a dataset are large (response windows); keep only the current dataset's.
    for k in [k for k in feats_cache if k[0] != name]:
      del feats_cache[k]
  _json(cfg.path("work") / "chosen.json", chosen)
  return chosen


# ---------------------------------------------------------------- baselines

def baselines(cfg: StudyConfig, lm, got, ro) -> dict:
  """Per dataset, on the test split: the zero-shot LM (the full trunk, identity readout), each depth's
  text-readout LM before any task training, and the rule baselines. Per-comparison correctness."""
  path = cfg.path("work") / "baselines.json"
  out = json.loads(path.read_text()) if path.exists() else {}
  for name in cfg.datasets:
    if name in out:
      continue
    test = got[(name, "test")]
    entry = {"rules": data_lib.rules_table(data_lib.read_set(cfg.path("work") / "data", name, "test")),
             "zero_shot": {}, "text_readout": {}}
    ident = {"readout": np.eye(lm.cfg.d_model, dtype=np.float32)}
    full = lm.cfg.n_layers
    run = train_lib.RunConfig(objective="imitation", depth=full, tier="head")
    entry["zero_shot"][str(full)] = train_lib.evaluate(lm, run, ident, test)
    for depth in cfg.depths:
      run = train_lib.RunConfig(objective="imitation", depth=depth, tier="head")
      entry["text_readout"][str(depth)] = train_lib.evaluate(lm, run, {"readout": ro[depth]["readout"]}, test)
    out[name] = entry
    _json(path, out)
  return out


# ---------------------------------------------------------------- report

def _matrix(per_seed: list[list[float]]) -> np.ndarray:
  """[contexts, seeds] from per-seed lists over the same test comparisons (each test comparison is one context:
  every target set here has one comparison per question, task or problem)."""
  return np.asarray(per_seed, np.float64).T


def collect(cfg: StudyConfig, chosen: list[dict]) -> dict:
  """(tier, dataset, depth, objective) -> {"lr", metric name -> [contexts, seeds] correctness}."""
  cells = {}
  for ch in chosen:
    tier, name, depth, objective, lr = ch["tier"], ch["dataset"], ch["depth"], ch["objective"], ch["lr"]
    res = [json.loads(_run_path(cfg, tier, name, depth, objective, lr, s).read_text()) for s in cfg.seeds]
    metrics = {k: _matrix([r["test"][k] for r in res]) for k in res[0]["test"] if k not in ("ids", "groups")}
    cells[(tier, name, depth, objective)] = {"lr": lr, "metrics": metrics,
                                            "train_seconds": [r["train_seconds"] for r in res]}
  return cells


def summarize(cfg: StudyConfig, chosen, base, ro) -> dict:
  from hhh import stats
  cells = collect(cfg, chosen)
  boot = lambda m: stats.cluster_bootstrap(m, n_boot=cfg.n_boot, seed=0)
  summary = {"cells": [], "baselines": [], "paired": [], "readouts": {
      str(d): {k: v for k, v in ro[d].items() if k != "readout"} for d in cfg.depths}}
  for (tier, name, depth, objective), c in cells.items():
    primary = PRIMARY[name]
    for variant in (("mean", "sum") if objective == "imitation" else ("reward",)):
      m = c["metrics"][f"{primary}_{variant}"]
      summary["cells"].append({"tier": tier, "dataset": name, "depth": depth, "objective": objective,
                               "variant": variant, "metric": primary, "lr": c["lr"], **boot(m),
                               "seed_means": np.nanmean(m, axis=0).tolist(),
                               "train_seconds_median": float(np.median(c["train_seconds"]))})
    # Pre-registered: each PM objective against imitation, and ranked against binary (expected ~0 on
    # TruthfulQA, whose one true answer per question gives "top vs rest" the ranking's information).
    pairs = [(objective, "reward", "imitation", "mean")] if objective != "imitation" else []
    if objective == "ranked":
      pairs.append(("ranked", "reward", "binary", "reward"))
    for oa, va, ob, vb in pairs:
      if (tier, name, depth, ob) not in cells:
        continue
      a = c["metrics"][f"{primary}_{va}"]
      b = cells[(tier, name, depth, ob)]["metrics"][f"{primary}_{vb}"]
      d = stats.paired_difference(a, b, n_boot=cfg.n_boot, seed=0)
      summary["paired"].append({"tier": tier, "dataset": name, "depth": depth,
                                "difference": f"{oa} - {ob}", "metric": primary, **d})
  summary["chance"] = {}
  for name in base:
    ks = [len(c.responses) for c in data_lib.read_set(cfg.path("work") / "data", name, "test")]
    summary["chance"][name] = float(np.mean([1.0 / k for k in ks]))   # top1 when one response is best
  for name, entry in base.items():
    primary = PRIMARY[name]
    for rule, vals in entry["rules"].items():
      summary["baselines"].append({"dataset": name, "baseline": f"rule:{rule}", "metric": primary,
                                   **boot(np.asarray(vals[primary], np.float64)[:, None])})
    for kind in ("zero_shot", "text_readout"):
      for depth, res in entry[kind].items():
        for variant in ("mean", "sum"):
          summary["baselines"].append({
              "dataset": name, "baseline": f"{kind}:d{depth}:{variant}", "metric": primary,
              **boot(np.asarray(res[f"{primary}_{variant}"], np.float64)[:, None])})
  return summary


def _fmt(r: dict) -> str:
  return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def write_report(cfg: StudyConfig, summary: dict, counts: dict, out_dir) -> pathlib.Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _json(out / "summary.json", summary)
  lines = ["# Objective comparison on a frozen SmolLM2-135M-Instruct trunk", "",
           f"Tiers: {', '.join(cfg.tiers)}; depths {list(cfg.depths)}; seeds {list(cfg.seeds)} (adapter/head init "
           "and data order); learning rate per cell tuned on the validation split with seed 0. Intervals: 95% "
           f"cluster bootstrap over test contexts x seeds ({cfg.n_boot} resamples).", "",
           "Test sizes: " + ", ".join(f"{n} {counts[n]['test']}" for n in cfg.datasets), ""]
  for name in cfg.datasets:
    metric = PRIMARY[name]
    lines += [f"## {name} ({metric})", "", "| depth | " + " | ".join(
        f"{o}" + (" (mean)" if o == "imitation" else "") for o in cfg.objectives) + " | imitation (sum) |",
              "|---|" + "---|" * (len(cfg.objectives) + 1)]
    for tier in cfg.tiers:
      for depth in cfg.depths:
        row = {(r["objective"], r["variant"]): r for r in summary["cells"]
               if r["tier"] == tier and r["dataset"] == name and r["depth"] == depth}
        cells = [_fmt(row[(o, "mean" if o == "imitation" else "reward")]) if (o, "mean" if o == "imitation"
                 else "reward") in row else "-" for o in cfg.objectives]
        cells.append(_fmt(row[("imitation", "sum")]) if ("imitation", "sum") in row else "-")
        lines.append(f"| {tier} d{depth} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (95% interval, p):", ""]
    for p in summary["paired"]:
      if p["dataset"] == name:
        floor = p["p_two_sided"] <= 1.0 / cfg.n_boot   # every resample on one side: p is below the resolution
        pv = f"p < {2.0 / cfg.n_boot:.2g}" if floor else f"p = {p['p_two_sided']:.3g}"
        lines.append(f"- {p['tier']} d{p['depth']} {p['difference']}: {p['mean']:+.3f} [{p['lo']:+.3f}, "
                     f"{p['hi']:+.3f}], {pv}")
    if name in summary.get("chance", {}) and metric == "top1":
      lines += ["", f"Chance (top1, the mean of 1/k over test comparisons): {summary['chance'][name]:.3f}"]
    lines += ["", "Baselines:", ""]
    for b in summary["baselines"]:
      if b["dataset"] == name:
        lines.append(f"- {b['baseline']}: {_fmt(b)}")
    lines.append("")
  lines += ["## LM readouts (offline text, validation next-token loss)", "",
            "| depth | identity readout | fitted readout |", "|---|---|---|"]
  for d, r in summary["readouts"].items():
    lines.append(f"| {d} | {r['lm_loss_identity']:.3f} | {r['lm_loss_fitted']:.3f} |")
  fig, axes = plt.subplots(1, len(cfg.datasets), figsize=(4.5 * len(cfg.datasets), 3.6), squeeze=False)
  for ax, name in zip(axes[0], cfg.datasets):
    for tier in cfg.tiers:
      for o in cfg.objectives:
        v = "mean" if o == "imitation" else "reward"
        rs = sorted((r for r in summary["cells"] if r["tier"] == tier and r["dataset"] == name and
                     r["objective"] == o and r["variant"] == v), key=lambda r: r["depth"])
        if rs:
          x = [r["depth"] for r in rs]
          ax.errorbar(x, [r["mean"] for r in rs], yerr=[[r["mean"] - r["lo"] for r in rs],
                                                        [r["hi"] - r["mean"] for r in rs]],
                      marker="o", capsize=3, label=f"{o} ({tier})")
    for b in summary["baselines"]:
      if b["dataset"] == name and b["baseline"] in ("zero_shot:d30:mean", "rule:longer", "rule:negation"):
        ax.axhline(b["mean"], ls="--", lw=1, color="gray" if "zero" in b["baseline"] else "tab:brown")
        ax.text(min(cfg.depths), b["mean"], b["baseline"], fontsize=7, va="bottom")
    ax.set_title(f"{name} ({PRIMARY[name]})")
    ax.set_xlabel("trunk depth (layers)")
    ax.set_ylabel("test accuracy")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "objectives.png", dpi=120)
  plt.close(fig)
  lines += ["", "![objectives](objectives.png)", ""]
  (out / "report.md").write_text("\n".join(lines) + "\n")
  return out / "report.md"


def main(cfg: StudyConfig) -> dict:
  counts = prepare(cfg)
  from hhh.pretrained import load_lm
  lm = load_lm(cfg.trunk)
  got = caches(cfg, lm)
  ro = readouts(cfg, lm, got)
  base = baselines(cfg, lm, got, ro)
  chosen = runs(cfg, lm, got, ro)
  summary = summarize(cfg, chosen, base, ro)
  write_report(cfg, summary, counts, cfg.path("out"))
  return summary
