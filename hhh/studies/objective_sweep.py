"""The objective comparison (imitation vs binary discrimination vs ranked preference) across model sizes.

For each target dataset and model size, three fine-tunes start from the same base LM on the same training
comparisons and are scored on the same held-out comparisons by pairwise accuracy (imitation ranks the options by
their log-likelihood). `sweeps/objectives.py` drives it; the stages are importable and each is idempotent:

  prepare_data   loaders -> DIR/data/NAME/{train,heldout}.jsonl (capped; one fixed split per dataset)
  build_corpus   DIR/corpus/{train,validation}.jsonl: the base LMs' pretraining text (see `build_corpus`)
  plot / table   the objective-scaling figure (one panel per dataset) and a markdown table

sweeps/objectives.yaml holds the base LMs (`experiments/base_lm.py` per size) and the fine-tunes
(`experiments/objectives.py` per dataset, size, objective and seed).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import pathlib
import random
from typing import Any, Iterable, Sequence

from hhh.data import schema
from hhh.data.mine.common import MineStats, split_of
from hhh.model import family
from hhh.objectives import COMPARED_OBJECTIVES

OBJECTIVES = COMPARED_OBJECTIVES


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  loader: str                                   # hhh.data.load.<loader>, or "stackexchange" (the miner)
  options: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)


# What each target dataset's cell trains and tests on. Sources with a train and a test split keep them; a source
# with one split only (the HH-RLHF and HellaSwag files readable offline are test/validation files) is re-split by
# a hash of its group key, 80/20, so a group (a dialogue, a problem, a question) never straddles the two.
DATASETS = {
    "hh_rlhf": Dataset("hh_rlhf", "hh_rlhf"),
    "hellaswag": Dataset("hellaswag", "hellaswag"),
    "code": Dataset("code", "code"),
    "truthfulqa": Dataset("truthfulqa", "truthfulqa"),
    "summarize": Dataset("summarize", "summarize"),
    "stackexchange": Dataset("stackexchange", "stackexchange"),
}


def _iter_source(ds: Dataset, path: str, stats: MineStats):
  """(group_key, Comparison, split or None) from a loader, or from the Stack Exchange miner."""
  if ds.loader == "stackexchange":
    from hhh.data.mine import stackexchange as se
    for key, c in se.mine(path, se.Options(**ds.options), stats):
      yield key, c, None
    return
  mod = importlib.import_module(f"hhh.data.load.{ds.loader}")
  yield from mod.load(path, mod.Options(**ds.options), stats)


def prepare_data(paths: dict[str, str], out_dir, *, max_train: int = 2000, max_heldout: int = 500,
                 seed: int = 0) -> dict[str, dict]:
  """Writes DIR/data/NAME/{train,heldout}.jsonl for each dataset in `paths` (name -> local path or hf:...).

  Held-out comparisons are the source's test and validation splits when it has a train split too, else a
  hashed 20% of groups. Both files are capped by a seeded draw of whole groups. A dataset already prepared
  with the same inputs is left as it is.
  """
  out = {}
  for name, path in paths.items():
    ds = DATASETS[name]
    d = pathlib.Path(out_dir) / "data" / name
    info_path = d / "info.json"
    want = {"path": str(path), "loader": ds.loader, "options": ds.options, "max_train": max_train,
            "max_heldout": max_heldout, "seed": seed}
    if info_path.exists() and json.loads(info_path.read_text()).get("inputs") == want:
      out[name] = json.loads(info_path.read_text())
      continue
    stats = MineStats(source=name)
    groups: dict[str, dict[str, list]] = {}
    for key, c, split in _iter_source(ds, path, stats):
      groups.setdefault(split or split_of(f"{name}/{key}"), {}).setdefault(key, []).append(c)
    train, held = _assign(groups)
    rng = random.Random(seed)
    train_c, held_c = _cap(train, max_train, rng), _cap(held, max_heldout, rng)
    if not train_c or not held_c:
      raise ValueError(f"{name} ({path}): {len(train_c)} training and {len(held_c)} held-out comparisons; "
                       "need both")
    d.mkdir(parents=True, exist_ok=True)
    schema.write_jsonl(d / "train.jsonl", train_c)
    schema.write_jsonl(d / "heldout.jsonl", held_c)
    info = {"inputs": want, "train": len(train_c), "heldout": len(held_c),
            "available": {"train_groups": len(train), "heldout_groups": len(held)},
            "mean_k": {"train": _mean_k(train_c), "heldout": _mean_k(held_c)},
            "stats": stats.to_json()}
    info_path.write_text(json.dumps(info, indent=2))
    out[name] = info
  return out


def _assign(groups: dict[str, dict[str, list]]) -> tuple[dict, dict]:
  """(train groups, held-out groups) from the source's splits, re-splitting a single-split source by hash."""
  if "train" in groups and ("test" in groups or "validation" in groups):
    # Both held-out splits: a small source (one Stack Exchange site) has few groups in each.
    return groups["train"], {**groups.get("validation", {}), **groups.get("test", {})}
  merged = {k: v for g in groups.values() for k, v in g.items()}
  train, held = {}, {}
  for key, cs in merged.items():
    (held if split_of("heldout/" + key, (0.8, 0.2, 0.0)) == "validation" else train)[key] = cs
  return train, held


def _cap(groups: dict[str, list], limit: int, rng: random.Random) -> list:
  keys = sorted(groups)
  rng.shuffle(keys)
  out = []
  for k in keys:
    if len(out) >= limit:
      break
    out.extend(groups[k][: limit - len(out)])
  return out


def _mean_k(cs) -> float:
  return round(sum(c.k for c in cs) / max(1, len(cs)), 3)


def corpus_texts(data_dirs: Iterable[pathlib.Path], wikipedia: str | None = None) -> list[str]:
  """The base LMs' pretraining text, all readable offline on any machine:

  - Python's own documentation topics (`pydoc_data`, ~0.5 MB of English technical prose, shipped with every
    Python), for general English;
  - the latest revision of a Wikipedia article as plain prose (when a history dump is given);
  - the unlabeled text (contexts and every response, no preference labels) of the target datasets' TRAINING
    comparisons, so the base LMs know the domains' language the way a pretrained LM would. Held-out text is
    never included.
  """
  import pydoc_data.topics
  texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
  if wikipedia:
    from hhh.data import wikitext
    texts.extend(wikitext.article_paragraphs(wikipedia))
  for d in data_dirs:
    for c in schema.read_jsonl(pathlib.Path(d) / "train.jsonl"):
      texts.append(c.context + "".join(c.responses[:1]))
      texts.extend(c.responses[1:])
  return [t for t in texts if t.strip()]


def build_corpus(out_dir, data_names: Sequence[str], wikipedia: str | None = None,
                 validation_fraction: float = 0.02) -> pathlib.Path:
  d = pathlib.Path(out_dir) / "corpus"
  want = {"datasets": list(data_names), "wikipedia": wikipedia, "validation_fraction": validation_fraction}
  if (d / "info.json").exists() and json.loads((d / "info.json").read_text()).get("inputs") == want:
    return d
  texts = corpus_texts([pathlib.Path(out_dir) / "data" / n for n in data_names], wikipedia)
  rng = random.Random(0)
  rng.shuffle(texts)
  n_val = max(1, int(len(texts) * validation_fraction))
  d.mkdir(parents=True, exist_ok=True)
  for name, part in (("validation", texts[:n_val]), ("train", texts[n_val:])):
    with open(d / f"{name}.jsonl.tmp", "w", encoding="utf-8") as f:
      for t in part:
        f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    (d / f"{name}.jsonl.tmp").rename(d / f"{name}.jsonl")
  chars = sum(map(len, texts))
  (d / "info.json").write_text(json.dumps({"inputs": want, "documents": len(texts), "characters": chars}, indent=2))
  return d


def aggregate(results: Iterable[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
  """(dataset, size, objective) -> mean and standard error of held-out accuracy over seeds, and params."""
  cells: dict[tuple, list] = {}
  for r in results:
    if r.get("stage") == "finetune" and "error" not in r:
      cells.setdefault((r["dataset"], r["size"], r["objective"]), []).append(r)
  out = {}
  for key, rs in cells.items():
    acc = [r["metrics"]["accuracy"] for r in rs]
    mean = sum(acc) / len(acc)
    se = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1) / len(acc)) if len(acc) > 1 else 0.0
    out[key] = {"accuracy": mean, "stderr": se, "seeds": len(acc), "params": rs[0].get("params"),
                "pairs": rs[0]["metrics"].get("pairs")}
  return out


def plot(results: Iterable[dict], out_png) -> pathlib.Path:
  """One panel per dataset: held-out pairwise accuracy against non-embedding parameters (log x), one line per
  objective, error bars over seeds, chance at 0.5."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  agg = aggregate(results)
  datasets = sorted({k[0] for k in agg})
  if not datasets:
    raise ValueError("no finished fine-tuning runs to plot")
  cols = min(3, len(datasets))
  rows = math.ceil(len(datasets) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
  style = {"imitation": ("tab:gray", "s"), "binary": ("tab:blue", "^"), "ranked": ("tab:red", "o")}
  for ax, ds in zip(axes.flat, datasets):
    for obj in OBJECTIVES:
      pts = sorted((v["params"], v["accuracy"], v["stderr"]) for (d, _, o), v in agg.items()
                   if d == ds and o == obj and v["params"])
      if pts:
        color, marker = style[obj]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                    marker=marker, label=obj, capsize=3)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_title(ds)
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.grid(alpha=0.3, which="both")
  for ax in list(axes.flat)[len(datasets):]:
    ax.axis("off")
  axes.flat[0].legend(loc="best", fontsize=8)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=130)
  plt.close(fig)
  return out_png


def table(results: Iterable[dict]) -> str:
  """Markdown: one row per (dataset, size), one column per objective (accuracy +- stderr over seeds)."""
  agg = aggregate(results)
  rows = sorted({(d, s) for d, s, _ in agg}, key=lambda x: (x[0], agg[(x[0], x[1], next(
      o for o in OBJECTIVES if (x[0], x[1], o) in agg))]["params"] or 0))
  lines = ["| dataset | size | params | held-out pairs | " + " | ".join(OBJECTIVES) + " |",
           "|---|---|---|---|" + "---|" * len(OBJECTIVES)]
  for d, s in rows:
    any_cell = next(agg[(d, s, o)] for o in OBJECTIVES if (d, s, o) in agg)
    cells = []
    for o in OBJECTIVES:
      v = agg.get((d, s, o))
      cells.append("" if v is None else f"{v['accuracy']:.3f}" + (f" ± {v['stderr']:.3f}" if v["seeds"] > 1 else ""))
    pairs = any_cell["pairs"]
    lines.append(f"| {d} | {s} | {family.human_count(any_cell['params']) if any_cell['params'] else '?'} | "
                 f"{int(pairs) if pairs else '?'} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  out: str = "runs/objectives"
  shared: str = "../shared/data"              # where the default local paths of the datasets live
  datasets: tuple[str, ...] = ("hh_rlhf", "hellaswag", "code", "truthfulqa", "stackexchange")
  paths: tuple[str, ...] = ()                 # NAME=PATH items replacing a dataset's default path (or hf:NAME)
  wikipedia: str = "wikipedia/enwiki_Anarchism_full_history_2001-2010.xml.lzma"  # for the corpus; "" = none
  # The base LMs' corpus takes the training text of these datasets (see `corpus_texts`). Code is left out:
  # its candidates are machine-made mutants, and pydoc already gives the base LMs Python.
  corpus_datasets: tuple[str, ...] = ("hh_rlhf", "hellaswag", "truthfulqa", "stackexchange")
  max_train: int = 1000
  max_heldout: int = 300


# Default local files, relative to SweepConfig.shared (the public formats each loader reads).
DEFAULT_PATHS = {
    "hh_rlhf": "hh_rlhf",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
    "code": "code/mbpp.jsonl",
    "truthfulqa": "truthfulqa/mc_task.json",
    "stackexchange": "stackexchange/cardano.stackexchange.com",
}


def dataset_paths(cfg: SweepConfig) -> dict[str, str]:
  given = {}
  for item in cfg.paths:
    name, sep, path = item.partition("=")
    if not sep or name not in DATASETS:
      raise ValueError(f"paths item {item!r}: expected NAME=PATH with NAME one of {', '.join(DATASETS)}")
    given[name] = path
  out = {}
  for name in cfg.datasets:
    if name not in DATASETS:
      raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name in given:
      out[name] = given[name]
    elif name in DEFAULT_PATHS:
      out[name] = str(pathlib.Path(cfg.shared) / DEFAULT_PATHS[name])
    else:
      raise ValueError(f"dataset {name!r} has no local default; give paths={name}=PATH (or hf:NAME)")
    if not out[name].startswith("hf:") and not pathlib.Path(out[name]).exists():
      raise FileNotFoundError(f"dataset {name}: {out[name]} does not exist")
  return out


def prepare(cfg: SweepConfig) -> dict[str, dict]:
  """The data stage: DIR/data/NAME/ per dataset and DIR/corpus/ (idempotent); returns the datasets' infos."""
  out = pathlib.Path(cfg.out)
  paths = dataset_paths(cfg)
  infos = prepare_data(paths, out, max_train=cfg.max_train, max_heldout=cfg.max_heldout)
  for name, info in infos.items():
    print(f"hhh: {name}: {info['train']} train / {info['heldout']} held-out comparisons "
          f"(mean k {info['mean_k']['train']} / {info['mean_k']['heldout']})")
  wiki = ""
  if cfg.wikipedia:
    wiki = cfg.wikipedia if pathlib.Path(cfg.wikipedia).is_absolute() else str(pathlib.Path(cfg.shared) / cfg.wikipedia)
    wiki = wiki if pathlib.Path(wiki).exists() else ""
  missing = [n for n in cfg.corpus_datasets if n not in paths]
  if missing:
    prepare_data(dataset_paths(dataclasses.replace(cfg, datasets=tuple(missing))), out,
                 max_train=cfg.max_train, max_heldout=cfg.max_heldout)
  build_corpus(out, list(cfg.corpus_datasets), wiki or None)
  return infos


def records(spec) -> list[dict]:
  """A sweep file's finished trials (sweeps/objectives.yaml) as the records `aggregate`, `table` and `plot`
  read: the stage, the axis labels (dataset, size, objective, seed), metrics and params."""
  from hhh.sweep import report
  out = []
  for r in report.results(spec):
    labels = dict(r["labels"])
    if "seed" in labels:
      labels["seed"] = int(labels["seed"])
    out.append({"name": r["id"], "stage": r["stage"], **labels, "metrics": r.get("metrics", {}),
                "params": r.get("params"), "seconds": r.get("seconds")})
  return out


def write_sweep_report(spec) -> dict:
  """objectives.md and objectives.png in the sweep directory, over every finished fine-tune of the file."""
  out_dir = pathlib.Path(spec.out)
  every = records(spec)
  md = table(every)
  (out_dir / "objectives.md").write_text(md + "\n")
  return {"plot": str(plot(every, out_dir / "objectives.png")), "table": md}


def main(argv=None) -> int:
  """`python -m hhh.studies.objective_sweep prepare --set KEY=VALUE ...`: the data stage of sweeps/objectives.yaml."""
  import sys
  from hhh import config as config_lib
  _, cfg = config_lib.parse_script(argv, SweepConfig(), description=main.__doc__, what="SweepConfig",
                                   setup=lambda p: p.add_argument("stage", choices=("prepare",)))
  try:
    infos = prepare(cfg)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  # The trial's result: comparisons per dataset (HHH_TRIAL_DIR is set by the sweep runner).
  if os.environ.get("HHH_TRIAL_DIR"):
    metrics = {f"{n}_train": i["train"] for n, i in infos.items()} | {f"{n}_heldout": i["heldout"]
                                                                      for n, i in infos.items()}
    (pathlib.Path(os.environ["HHH_TRIAL_DIR"]) / "metrics.json").write_text(json.dumps(metrics))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
