"""PMP sample efficiency on a frozen SmolLM2 trunk (head tier): does preference-model pre-training on mined
comparisons let fine-tuning on human preferences reach the same accuracy from fewer comparisons?

  prepare   the PMP mixture (Stack Exchange votes, Reddit karma, Wikipedia reverts; each ranking cut to its best
            and worst response, split by thread/question/page) and the target, HH-RLHF, split by dialogue
            -> WORK/data/{pmp,hh_rlhf}/{train,validation,test}.jsonl
  cache     every split through the trunk once (`hhh.frozen.cache`)
  pmp       per condition, a reward head trained on the mixture, its learning rate chosen on the mixture's
            validation split: "ranked" (the pairwise loss), "binarized" (each response classified good or bad
            on its own), "shuffled" (ranked on labels swapped at random within each pair: the control for what
            the mined labels carry, at the ranked condition's learning rate); "none" is a fresh head
  ceiling   a fresh head on the whole training pool, long: how much of the target this tier can fit at all
  finetune  per condition, N and seed: the ranked objective on N target comparisons, each seed its own subset
            of the training pool; the learning rate tuned per (condition, N) on the validation split (seed 0)
  report    test accuracy against N (cluster bootstrap over test dialogues x seeds), each condition minus no
            PMP (paired), and the data multiplier: how many comparisons no PMP needs to match a condition at N,
            over N, bootstrapped with the same resamples -> OUT/report.md, OUT/summary.json, OUT/pmp.png

The head tier is a linear reward head on the final-normed state at SmolLM2's end-of-turn token, so PMP here can
only hand fine-tuning a starting direction in a fixed feature space; what it shows is that, not what PMP of a
whole model does. `experiments/frozen_pmp.py` is the entry point.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pathlib
import time

import numpy as np

from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison
from hhh.frozen import cache as cache_lib
from hhh.frozen import data as data_lib
from hhh.frozen import train as train_lib

CONDITIONS = ("none", "ranked", "binarized", "shuffled")
SOURCES = ("stackexchange", "reddit", "wikipedia")


@dataclasses.dataclass(frozen=True)
class PMPStudyConfig:
  trunk: str = "smollm2-135m-instruct"
  shared_data: str = "../shared/data"
  work: str = "runs/frozen_pmp"
  cache_root: str = "~/.cache/hhh/frozen"
  out: str = "results/frozen_pmp"
  depth: int = 30
  conditions: tuple[str, ...] = CONDITIONS
  ns: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  lr_grid: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
  steps: int = 100                    # fine-tuning steps at least; more where 2 epochs of N need them
  batch_size: int = 16
  pmp_steps: int = 400
  pmp_batch_size: int = 32
  pmp_lr_grid: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
  pmp_caps: tuple[int, int, int] = (700, 300, 300)     # stackexchange, reddit, wikipedia: comparisons at most
  target_sizes: tuple[int, int, int] = (1024, 200, 600)  # HH-RLHF train pool, validation, test
  max_len: int = 256
  n_boot: int = 2000
  lora_ceiling_steps: int = 300       # --stage lora-ceiling: LoRA's steps on the whole pool, per learning rate
  lora_ceiling_lrs: tuple[float, ...] = (1e-3,)

  def path(self, which: str) -> pathlib.Path:
    return pathlib.Path(getattr(self, which)).expanduser()

  def __post_init__(self):
    bad = [c for c in self.conditions if c not in CONDITIONS]
    if bad or "none" not in self.conditions:
      raise ValueError(f"conditions must include 'none' and come from {CONDITIONS}, got {self.conditions}")
    if max(self.ns) > self.target_sizes[0]:
      raise ValueError(f"largest N {max(self.ns)} exceeds the training pool ({self.target_sizes[0]})")


# ---------------------------------------------------------------- data

def best_worst(c: Comparison, key: str) -> Comparison | None:
  """The ranking cut to a pair: its best and its worst response (None when every score ties)."""
  s = np.asarray(c.scores, np.float64)
  hi, lo = int(np.argmax(s)), int(np.argmin(s))
  if s[hi] == s[lo]:
    return None
  return Comparison(c.context, (c.responses[hi], c.responses[lo]), (float(s[hi]), float(s[lo])), c.source, c.id,
                    {**(c.meta or {}), "group": key})


def mined(shared_data, source: str) -> list[tuple[str, Comparison]]:
  """(group key, comparison) from one raw dump in `shared_data` with the miner's default options."""
  from hhh.data.mine import reddit, stackexchange, wikipedia
  root = pathlib.Path(shared_data)
  stats = MineStats(f"pmp-{source}")
  if source == "stackexchange":
    got = stackexchange.mine(root / "stackexchange" / "cardano.stackexchange.com", stackexchange.Options(), stats)
  elif source == "reddit":
    got = reddit.mine(root / "reddit" / "RC_2005-12.zst", reddit.Options(), stats)
  elif source == "wikipedia":
    got = wikipedia.mine(root / "wikipedia" / "enwiki_Anarchism_full_history_2001-2010.xml.lzma",
                         wikipedia.Options(), stats)
  else:
    raise ValueError(f"unknown PMP source {source!r}")
  return list(got)


def pmp_sets(pairs_by_source: dict[str, list[tuple[str, Comparison]]], caps: dict[str, int], *,
             validation: float = 0.2, seed: int = 0) -> dict[str, list[Comparison]]:
  """The mixture's train and validation splits: each source's rankings cut to pairs, a seeded subset of at most
  caps[source], split by a hash of the group key (one thread, question or page never straddles the two)."""
  out = {"train": [], "validation": []}
  rng = np.random.default_rng(seed)
  for source, items in pairs_by_source.items():
    pairs = [p for p in (best_worst(c, key) for key, c in items) if p is not None]
    keep = sorted(rng.permutation(len(pairs))[:caps[source]])
    for i in keep:
      split = "validation" if data_lib.hash_unit(pairs[i].meta["group"]) < validation else "train"
      out[split].append(pairs[i])
  return out


def hh_rlhf_sets(path, sizes: tuple[int, int, int], *, seed: int = 0) -> dict[str, list[Comparison]]:
  """HH-RLHF (every file under `path`) split by dialogue into train pool / validation / test, seeded subsets of
  `sizes`. Only the test files are public offline, so all three parts come from them."""
  from hhh.data.load import hh_rlhf
  pools = {s: [] for s in data_lib.SPLITS}
  for key, c, _ in hh_rlhf.load(path, hh_rlhf.Options(), MineStats("frozen-pmp")):
    c = Comparison(c.context, c.responses, c.scores, c.source, c.id, {**c.meta, "group": key})
    pools[data_lib.hash_split(key, 0.35, 0.1)].append(c)
  rng = np.random.default_rng(seed)
  caps = dict(zip(("train", "validation", "test"), sizes))
  for s in data_lib.SPLITS:
    if len(pools[s]) < caps[s]:
      raise ValueError(f"hh_rlhf {s}: {len(pools[s])} comparisons, fewer than the {caps[s]} asked for")
  return {s: [pools[s][i] for i in sorted(rng.permutation(len(pools[s]))[:caps[s]])] for s in data_lib.SPLITS}


def prepare(cfg: PMPStudyConfig) -> dict:
  data_dir = cfg.path("work") / "data"
  done = data_dir / "counts.json"
  if done.exists():
    return json.loads(done.read_text())
  by_source = {s: mined(cfg.shared_data, s) for s in SOURCES}
  sets = {"pmp": pmp_sets(by_source, dict(zip(SOURCES, cfg.pmp_caps))),
          "hh_rlhf": hh_rlhf_sets(pathlib.Path(cfg.shared_data) / "hh_rlhf", cfg.target_sizes)}
  counts = data_lib.write_sets(sets, data_dir)
  counts["pmp_sources"] = {s: {"mined": len(v), "kept": sum(c.source == v[0][1].source for c in
                                                             sets["pmp"]["train"] + sets["pmp"]["validation"])
                               if v else 0} for s, v in by_source.items()}
  done.write_text(json.dumps(counts, indent=1))
  return counts


def caches(cfg: PMPStudyConfig, lm, *, layer: int | None = None,
           names: tuple[str, ...] = ("pmp", "hh_rlhf")) -> dict[tuple[str, str], cache_lib.Cache]:
  """(set, split) -> its cache of the trunk's layer `layer` (the depth's output, the head tier's input, unless
  given: the LoRA tier reads depth - 2)."""
  counts = json.loads((cfg.path("work") / "data" / "counts.json").read_text())
  spec = cache_lib.CacheSpec(layers=(cfg.depth if layer is None else layer,), max_len=cfg.max_len, max_k=2)
  digest = cache_lib.params_digest(lm.params)
  out = {}
  for name in names:
    for split in counts[name]:
      cs = data_lib.read_set(cfg.path("work") / "data", name, split)
      if cs:
        out[(name, split)] = cache_lib.build(lm, cs, cfg.path("cache_root"), spec, name=f"pmp-{name}-{split}",
                                             trunk_digest=digest)
  return out


def shuffled(feats: train_lib.HeadFeatures, seed: int = 0) -> train_lib.HeadFeatures:
  """The same features with each comparison's scores permuted at random (a swap with probability 1/2 for a
  pair): the label-shuffled control keeps the inputs and throws away what the labels say."""
  out = copy.copy(feats)
  scores = np.array(feats.scores_R, copy=True)
  rng = np.random.default_rng(seed)
  for c in range(len(feats.cache)):
    rs = np.asarray(list(feats.cache.rows_of(c)))
    scores[rs] = scores[rs[rng.permutation(len(rs))]]
  out.scores_R = scores
  return out


# ---------------------------------------------------------------- runs

def _json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
  tmp.replace(path)


def _acc(res: dict) -> float:
  v = np.asarray(res["top1_reward"], np.float64)
  return float(np.nanmean(v))


def pmp_heads(cfg: PMPStudyConfig, lm, feats: dict) -> dict[str, dict]:
  """condition -> {"head": trainable, "info": ...}; "none" has no head (fine-tuning starts fresh)."""
  out = {}
  d = cfg.path("work") / "pmp"
  order = [c for c in ("ranked", "binarized", "shuffled") if c in cfg.conditions]
  if "shuffled" in order and "ranked" not in order:
    order.insert(0, "ranked")   # the control reuses ranked's learning rate
  for cond in order:
    meta, npz = d / f"{cond}.json", d / f"{cond}.npz"
    if meta.exists() and npz.exists():
      with np.load(npz) as z:
        head = {"reward_head": {"kernel": z["kernel"], "bias": z["bias"]}}
      out[cond] = {"head": head, "info": json.loads(meta.read_text())}
      continue
    objective = "binary" if cond == "binarized" else "ranked"
    tr = shuffled(feats[("pmp", "train")]) if cond == "shuffled" else feats[("pmp", "train")]
    grid = (out["ranked"]["info"]["lr"],) if cond == "shuffled" else cfg.pmp_lr_grid
    tried = {}
    t = time.time()
    for lr in grid:
      run = train_lib.RunConfig(objective=objective, depth=cfg.depth, tier="head", steps=cfg.pmp_steps,
                                batch_size=cfg.pmp_batch_size, lr=lr, seed=0)
      head, log = train_lib.train(lm, run, tr.cache, feats=tr, progress=False)
      val = train_lib.evaluate(lm, run, head, feats[("pmp", "validation")].cache, feats=feats[("pmp", "validation")])
      tried[lr] = (_acc(val), head, log)
    lr = max(grid, key=lambda x: (tried[x][0], -x))
    _, head, log = tried[lr]
    run = train_lib.RunConfig(objective="ranked", depth=cfg.depth, tier="head")
    target = train_lib.evaluate(lm, run, head, feats[("hh_rlhf", "test")].cache, feats=feats[("hh_rlhf", "test")])
    info = {"condition": cond, "objective": objective, "lr": lr, "steps": cfg.pmp_steps,
            "pmp_validation_top1": {str(k): v[0] for k, v in tried.items()},
            "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"], "seconds": round(time.time() - t, 1),
            "target_test_zero_shot": target["top1_reward"]}
    d.mkdir(parents=True, exist_ok=True)
    np.savez(npz, kernel=np.asarray(head["reward_head"]["kernel"]), bias=np.asarray(head["reward_head"]["bias"]))
    _json(meta, info)
    out[cond] = {"head": head, "info": info}
  return out


def subset(pool_size: int, n: int, seed: int) -> np.ndarray:
  """Seed `seed`'s N training comparisons: a prefix of its own permutation of the pool (nested in N)."""
  return np.sort(np.random.default_rng(10_000 + seed).permutation(pool_size)[:n])


def finetune_steps(cfg: PMPStudyConfig, n: int) -> int:
  return max(cfg.steps, math.ceil(2 * n / cfg.batch_size))


def _run_path(cfg, cond, n, lr, seed) -> pathlib.Path:
  return cfg.path("work") / "finetune" / f"{cond}-n{n:04d}-lr{lr:g}-s{seed}.json"


def finetune_one(cfg, lm, feats, heads, *, cond, n, lr, seed) -> dict:
  path = _run_path(cfg, cond, n, lr, seed)
  if path.exists():
    return json.loads(path.read_text())
  tr = feats[("hh_rlhf", "train")]
  run = train_lib.RunConfig(objective="ranked", depth=cfg.depth, tier="head", steps=finetune_steps(cfg, n),
                            batch_size=cfg.batch_size, lr=lr, seed=seed)
  init = None if cond == "none" else copy.deepcopy(heads[cond]["head"])
  t = time.time()
  head, log = train_lib.train(lm, run, tr.cache, comps=subset(len(tr.cache), n, seed), init=init, feats=tr,
                              progress=False)
  res = {"condition": cond, "n": n, "lr": lr, "seed": seed, "steps": run.steps,
         "seconds": round(time.time() - t, 2), "loss_first": log[0]["loss"], "loss_last": log[-1]["loss"]}
  for split in ("validation", "test"):
    f = feats[("hh_rlhf", split)]
    got = train_lib.evaluate(lm, run, head, f.cache, feats=f)
    res[split] = got["top1_reward"]
    if split == "test":
      res["test_groups"] = got["groups"]
  _json(path, res)
  return res


def finetune(cfg, lm, feats, heads) -> list[dict]:
  """Tune each (condition, N)'s learning rate on validation with seed 0, then every seed at the chosen one."""
  from tqdm.auto import tqdm
  chosen = []
  cells = [(cond, n) for cond in cfg.conditions for n in cfg.ns]
  for cond, n in tqdm(cells, desc="fine-tune cells"):
    tuned = {lr: finetune_one(cfg, lm, feats, heads, cond=cond, n=n, lr=lr, seed=cfg.seeds[0]) for lr in cfg.lr_grid}
    best = max(cfg.lr_grid, key=lambda lr: (float(np.nanmean(tuned[lr]["validation"])), -lr))
    for seed in cfg.seeds[1:]:
      finetune_one(cfg, lm, feats, heads, cond=cond, n=n, lr=best, seed=seed)
    chosen.append({"condition": cond, "n": n, "lr": best,
                   "validation": {str(lr): float(np.nanmean(tuned[lr]["validation"])) for lr in cfg.lr_grid}})
  _json(cfg.path("work") / "chosen.json", chosen)
  return chosen


def target_lora_caches(cfg: PMPStudyConfig, lm) -> dict[str, cache_lib.Cache]:
  """split -> the target's cache of the input of the trunk's last two blocks (what the LoRA tier trains on)."""
  return {split: c for (_, split), c in caches(cfg, lm, layer=cfg.depth - 2, names=("hh_rlhf",)).items()}


def _fit_pool(lm, run: train_lib.RunConfig, got: dict, feats: dict | None = None) -> dict:
  """One ceiling run: `run` trained on the whole training pool, then its accuracy on the pool, validation, test.
  `got` and `feats` map split -> cache and -> head features (None for the LoRA tier)."""
  feats = feats or {}
  t = time.time()
  trainable, log = train_lib.train(lm, run, got["train"], feats=feats.get("train"), progress=run.tier != "head")
  r = {"loss_first": log[0]["loss"], "loss_last20": float(np.mean([l["loss"] for l in log[-20:]]))}
  for split in ("train", "validation", "test"):
    r[split] = _acc(train_lib.evaluate(lm, run, trainable, got[split], feats=feats.get(split)))
  r["seconds"] = round(time.time() - t, 1)
  return r


def lora_ceiling(cfg: PMPStudyConfig, lm, got: dict[str, cache_lib.Cache], *, cache_seconds: float = 0.0) -> dict:
  """The head tier's ceiling check one tier up: rank-16 LoRA on the last two blocks plus a fresh reward head,
  trained on the WHOLE pool for `cfg.lora_ceiling_steps` steps per learning rate (seed 0). Whether it fits the
  pool, and whether that carries to held-out dialogues, says if more capacity than a linear head changes the
  picture before any PMP grid is run at this tier."""
  path = cfg.path("work") / "lora_ceiling.json"
  out = {"tier": "lora", "steps": cfg.lora_ceiling_steps, "n": len(got["train"]), "batch_size": cfg.batch_size,
         "cache_seconds": round(cache_seconds, 1), "by_lr": {}}
  if path.exists():   # learning rates already run are kept; a longer grid adds only the new ones
    done = json.loads(path.read_text())
    if (done["steps"], done["n"], done["batch_size"]) != (out["steps"], out["n"], out["batch_size"]):
      raise ValueError(f"{path} holds a ceiling of {done['steps']} steps of {done['batch_size']} on {done['n']} "
                       f"comparisons; move it away to run another")
    out = done
  for lr in cfg.lora_ceiling_lrs:
    if str(lr) in out["by_lr"]:
      continue
    run = train_lib.RunConfig(objective="ranked", depth=cfg.depth, tier="lora", steps=cfg.lora_ceiling_steps,
                              batch_size=cfg.batch_size, lr=lr, seed=0)
    out["by_lr"][str(lr)] = _fit_pool(lm, run, got)
    _json(path, out)
  return out


def ceiling(cfg: PMPStudyConfig, lm, feats, *, steps: int = 1000) -> dict:
  """What the head tier can get from the target at all: a fresh head on the WHOLE training pool for `steps`
  steps at each learning rate of the grid (seed 0), with its accuracy on the pool itself, validation and test.
  A pool it cannot fit caps every fine-tuning curve, and with them any difference PMP could make."""
  path = cfg.path("work") / "ceiling.json"
  if path.exists():
    return json.loads(path.read_text())
  target = {split: f for (name, split), f in feats.items() if name == "hh_rlhf"}
  out = {"steps": steps, "n": len(target["train"].cache), "by_lr": {}}
  for lr in cfg.lr_grid:
    run = train_lib.RunConfig(objective="ranked", depth=cfg.depth, tier="head", steps=steps,
                              batch_size=cfg.batch_size, lr=lr, seed=0)
    out["by_lr"][str(lr)] = _fit_pool(lm, run, {s: f.cache for s, f in target.items()}, target)
  _json(path, out)
  return out


# ---------------------------------------------------------------- statistics

def equivalent_n(acc_none_N: np.ndarray, ns: np.ndarray, acc: float) -> tuple[float, str]:
  """The N at which no PMP reaches `acc`, interpolated in log N on no PMP's running-max curve; with "<" or ">"
  when `acc` lies below its first or above its best point (then the nearest end is returned)."""
  curve = np.maximum.accumulate(np.asarray(acc_none_N, np.float64))
  logn = np.log2(np.asarray(ns, np.float64))
  if acc <= curve[0]:
    return float(ns[0]), "<=" if acc < curve[0] else "="
  if acc > curve[-1]:
    return float(ns[-1]), ">"
  i = int(np.searchsorted(curve, acc))            # curve[i-1] < acc <= curve[i]
  lo, hi = curve[i - 1], curve[i]
  frac = 1.0 if hi == lo else (acc - lo) / (hi - lo)
  return float(2 ** (logn[i - 1] + frac * (logn[i] - logn[i - 1]))), "="


def multipliers(A_QxNxCxS: np.ndarray, ns, *, n_boot: int, seed: int = 0) -> np.ndarray:
  """Data multipliers [conditions, N, 1 + n_boot] (index 0: the point estimate) of every condition against
  condition 0 (no PMP), from accuracies [conditions, N, contexts, seeds]; each replicate resamples contexts and
  seeds once for every curve. A censored value is the nearest end of no PMP's range, over N."""
  Q, NN, C, S = A_QxNxCxS.shape
  rng = np.random.default_rng(seed)
  out = np.zeros((Q, NN, 1 + n_boot))
  ns_ = np.asarray(ns, np.float64)
  for b in range(1 + n_boot):
    if b == 0:
      acc = np.nanmean(A_QxNxCxS, axis=(2, 3))
    else:
      ci, si = rng.integers(0, C, C), rng.integers(0, S, S)
      acc = np.nanmean(A_QxNxCxS[:, :, ci][:, :, :, si], axis=(2, 3))
    for q in range(Q):
      for j in range(NN):
        out[q, j, b] = equivalent_n(acc[0], ns_, acc[q, j])[0] / ns_[j]
  return out


def summarize(cfg: PMPStudyConfig, chosen: list[dict], heads: dict, counts: dict) -> dict:
  from hhh import stats
  conds, ns = list(cfg.conditions), list(cfg.ns)
  lr_of = {(c["condition"], c["n"]): c["lr"] for c in chosen}
  A = None
  for qi, cond in enumerate(conds):
    for ni, n in enumerate(ns):
      res = [json.loads(_run_path(cfg, cond, n, lr_of[(cond, n)], s).read_text()) for s in cfg.seeds]
      m = np.asarray([r["test"] for r in res], np.float64).T    # [contexts, seeds]
      if A is None:
        A = np.full((len(conds), len(ns)) + m.shape, np.nan)
      A[qi, ni] = m
  summary = {"cells": [], "paired": [], "multiplier": [], "zero_shot": {}, "pmp": {}, "counts": counts}
  for qi, cond in enumerate(conds):
    for ni, n in enumerate(ns):
      summary["cells"].append({"condition": cond, "n": n, "lr": lr_of[(cond, n)],
                               **stats.cluster_bootstrap(A[qi, ni], n_boot=cfg.n_boot, seed=0),
                               "seed_means": np.nanmean(A[qi, ni], axis=0).tolist()})
      if cond != "none":
        summary["paired"].append({"condition": cond, "n": n, "difference": f"{cond} - none",
                                  **stats.paired_difference(A[qi, ni], A[conds.index("none"), ni],
                                                            n_boot=cfg.n_boot, seed=0)})
  order = [conds.index("none")] + [i for i, c in enumerate(conds) if c != "none"]
  mult = multipliers(A[order], ns, n_boot=cfg.n_boot, seed=0)
  acc_none = np.nanmean(A[conds.index("none")], axis=(1, 2))
  for k, qi in enumerate(order[1:], start=1):
    for ni, n in enumerate(ns):
      point = float(mult[k, ni, 0])
      _, flag = equivalent_n(acc_none, np.asarray(ns), float(np.nanmean(A[qi, ni])))
      boots = mult[k, ni, 1:]
      summary["multiplier"].append({"condition": conds[qi], "n": n, "multiplier": point, "censored": flag,
                                    "lo": float(np.quantile(boots, 0.025)), "hi": float(np.quantile(boots, 0.975))})
  for cond, h in heads.items():
    summary["pmp"][cond] = {k: v for k, v in h["info"].items() if k != "target_test_zero_shot"}
    summary["zero_shot"][cond] = stats.cluster_bootstrap(
        np.asarray(h["info"]["target_test_zero_shot"], np.float64)[:, None], n_boot=cfg.n_boot, seed=0)
  test = data_lib.read_set(cfg.path("work") / "data", "hh_rlhf", "test")
  rules = data_lib.rules_table(test)
  summary["rules"] = {r: stats.cluster_bootstrap(np.asarray(v["top1"], np.float64)[:, None], n_boot=cfg.n_boot,
                                                 seed=0) for r, v in rules.items() if r in ("longer", "shorter")}
  return summary


def _fmt(r: dict) -> str:
  return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def write_report(cfg: PMPStudyConfig, summary: dict, out_dir) -> pathlib.Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  _json(out / "summary.json", summary)
  conds, ns = list(cfg.conditions), list(cfg.ns)
  cell = {(c["condition"], c["n"]): c for c in summary["cells"]}
  counts = summary["counts"]
  sources = ", ".join(f"{s} {v['kept']} of {v['mined']} mined" for s, v in counts["pmp_sources"].items())
  lines = ["# PMP sample efficiency on a frozen SmolLM2-135M-Instruct trunk (head tier)", "",
           f"Depth {cfg.depth}; a linear reward head at the end-of-turn state. PMP mixture: "
           f"{counts['pmp']['train']} train / {counts['pmp']['validation']} validation pairs "
           f"({sources}). "
           f"Target: HH-RLHF, pool {counts['hh_rlhf']['train']}, validation {counts['hh_rlhf']['validation']}, "
           f"test {counts['hh_rlhf']['test']}. Seeds {list(cfg.seeds)} (each its own subset, head init and order); "
           f"learning rate per (condition, N) tuned on validation with seed 0. Intervals: 95% cluster bootstrap "
           f"over test dialogues x seeds ({cfg.n_boot} resamples).", "",
           "## Test accuracy (chance 0.5)", "",
           "| N | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
  lines.append("| 0 (PMP head alone) | - | " + " | ".join(
      _fmt(summary["zero_shot"][c]) if c in summary["zero_shot"] else "-" for c in conds if c != "none") + " |")
  for n in ns:
    lines.append(f"| {n} | " + " | ".join(_fmt(cell[(c, n)]) for c in conds) + " |")
  lines += ["", "## Each condition minus no PMP (paired, 95% interval)", "",
            "| N | " + " | ".join(c for c in conds if c != "none") + " |", "|---|" + "---|" * (len(conds) - 1)]
  pair = {(p["condition"], p["n"]): p for p in summary["paired"]}
  for n in ns:
    lines.append(f"| {n} | " + " | ".join(
        f"{pair[(c, n)]['mean']:+.3f} [{pair[(c, n)]['lo']:+.3f}, {pair[(c, n)]['hi']:+.3f}]"
        for c in conds if c != "none") + " |")
  lines += ["", "## Data multiplier (comparisons no PMP needs to match the condition at N, over N)", "",
            "'>' or '<=': the condition lies beyond no PMP's measured range, so the figure is a bound.", "",
            "| N | " + " | ".join(c for c in conds if c != "none") + " |", "|---|" + "---|" * (len(conds) - 1)]
  mul = {(m["condition"], m["n"]): m for m in summary["multiplier"]}
  for n in ns:
    row = []
    for c in conds:
      if c == "none":
        continue
      m = mul[(c, n)]
      flag = {"=": "", ">": ">", "<=": "<="}[m["censored"]]
      row.append(f"{flag}{m['multiplier']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]")
    lines.append(f"| {n} | " + " | ".join(row) + " |")
  lines += ["", "## PMP heads", ""]
  for c, p in summary["pmp"].items():
    lines.append(f"- {c}: objective {p['objective']}, lr {p['lr']:g}, {p['steps']} steps, mixture validation top-1 "
                 + ", ".join(f"{v:.3f} (lr {k})" for k, v in p["pmp_validation_top1"].items()))
  if "ceiling" in summary:
    c = summary["ceiling"]
    lines += ["", f"## Ceiling: a fresh head on the whole pool ({c['n']} comparisons, {c['steps']} steps, seed 0)", "",
              "| lr | final loss | pool (train) | validation | test |", "|---|---|---|---|---|"]
    for lr, r in c["by_lr"].items():
      lines.append(f"| {lr} | {r['loss_last20']:.3f} | {r['train']:.3f} | {r['validation']:.3f} | {r['test']:.3f} |")
  if "lora_ceiling" in summary:
    c = summary["lora_ceiling"]
    lines += ["", f"## LoRA ceiling: rank-16 LoRA on blocks {cfg.depth - 2}-{cfg.depth - 1} plus a fresh head, on the "
              f"whole pool ({c['n']} comparisons, {c['steps']} steps of {c['batch_size']}, seed 0)", "",
              "`python experiments/frozen_pmp.py --stage lora-ceiling --set lora_ceiling_lrs="
              + ",".join(c["by_lr"]) + "`", "",
              "| lr | final loss | pool (train) | validation | test | seconds |", "|---|---|---|---|---|---|"]
    for lr, r in c["by_lr"].items():
      lines.append(f"| {lr} | {r['loss_last20']:.3f} | {r['train']:.3f} | {r['validation']:.3f} | {r['test']:.3f} "
                   f"| {r['seconds']:.0f} |")
  lines += ["", "Rules on the test split: " + ", ".join(f"{r} {_fmt(v)}" for r, v in summary["rules"].items()), ""]
  fig, ax = plt.subplots(figsize=(6, 4))
  for c in conds:
    rs = [cell[(c, n)] for n in ns]
    ax.errorbar(ns, [r["mean"] for r in rs], yerr=[[r["mean"] - r["lo"] for r in rs], [r["hi"] - r["mean"] for r in rs]],
                marker="o", capsize=3, label=f"{c} PMP" if c != "none" else "no PMP")
  ax.axhline(0.5, ls=":", color="gray", lw=1)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("fine-tuning comparisons (HH-RLHF)")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"PMP sample efficiency, frozen SmolLM2 d{cfg.depth}, head tier")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "pmp.png", dpi=120)
  plt.close(fig)
  lines += ["![PMP sample efficiency](pmp.png)", ""]
  (out / "report.md").write_text("\n".join(lines) + "\n")
  return out / "report.md"


def main(cfg: PMPStudyConfig, *, stage: str = "all") -> dict | None:
  from hhh.pretrained import load_lm
  t = time.time()
  counts = prepare(cfg)
  lm = load_lm(cfg.trunk)
  if stage == "lora-ceiling":
    return add_lora_ceiling(cfg, lm)
  got = caches(cfg, lm)
  print(f"data and caches ready in {time.time() - t:.0f} s")
  if stage == "cache":
    return None
  feats = {k: train_lib.HeadFeatures(lm, c, cfg.depth, need_windows=False) for k, c in got.items()}
  heads = pmp_heads(cfg, lm, feats)
  chosen = finetune(cfg, lm, feats, heads)
  summary = summarize(cfg, chosen, heads, counts)
  summary["ceiling"] = ceiling(cfg, lm, feats)
  if (cfg.path("work") / "lora_ceiling.json").exists():
    summary["lora_ceiling"] = json.loads((cfg.path("work") / "lora_ceiling.json").read_text())
  summary["wall_seconds"] = round(time.time() - t, 1)
  write_report(cfg, summary, cfg.path("out"))
  return summary


def add_lora_ceiling(cfg: PMPStudyConfig, lm) -> dict:
  """The LoRA ceiling on its own (an hour on 2 cores, beside the head tier's 40 minutes), added to the study's
  summary and report in OUT when a finished study is there."""
  t = time.time()
  got = target_lora_caches(cfg, lm)
  res = lora_ceiling(cfg, lm, got, cache_seconds=time.time() - t)
  done = cfg.path("out") / "summary.json"
  if done.exists():
    summary = json.loads(done.read_text())
    summary["lora_ceiling"] = res
    write_report(cfg, summary, cfg.path("out"))
  else:
    _json(cfg.path("out") / "lora_ceiling.json", res)
  return res
