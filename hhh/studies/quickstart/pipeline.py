"""`hhh quickstart`: the whole pipeline on a generated world, offline, resumable.

Stages (each prints its progress; every training run is `hhh.train.loop.train` on a typed config):

  1 generate   raw dumps, target sets, HHH eval and LM corpus (`hhh.studies.quickstart.synth`)
  2 mine       the real Stack Exchange, Reddit and Wikipedia miners -> TFDS datasets (as `hhh data mine`)
  3 pretrain   one base LM per size on the corpus (BPE tokenizer trained on it)
  4 pmp        per size, a PM pre-trained on the mined mixture, ranked and binarized (`data.train=A:w:binarize,...`)
  5 finetune   per size and target set: {no PMP, ranked PMP, binarized PMP} x 2^k comparisons (ranked objective),
               and imitation / binary / ranked at the largest k without PMP
  6 evaluate   held-out pairwise accuracy (every run), and the HHH eval (BIG-bench layout) scored by reward
               bundles of the largest size's fine-tunes
  7 report     DIR/report.md, DIR/objectives.png, DIR/sample_efficiency.png, DIR/summary.json

DIR/results.jsonl gets one line per finished run; re-running skips those runs and resumes an interrupted one
from its checkpoint. A stage's runs are independent, so on a CPU-only machine they go to one worker process per
core (`--workers`); a tiny model's step keeps about one core busy. The persistent compilation cache in
DIR/cache/jax lets every worker compile a (size, objective) program once between them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

from tqdm import tqdm

from hhh.config import DataConfig, OptimConfig, TrainConfig
from hhh.model.config import ModelConfig
from hhh.objectives import COMPARED_OBJECTIVES
from hhh.studies.quickstart import synth

# Three tiny shapes (d_model, n_layers, n_heads); "100k" is the family's smallest size.
SIZES = {"20k": (32, 1, 2), "50k": (48, 2, 2), "100k": (64, 2, 2)}
PMP_VARIANTS = ("none", "ranked", "binarized")
OBJECTIVES = COMPARED_OBJECTIVES
MINED = ("stackexchange", "reddit", "wikipedia")


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  out: str = "runs/quickstart"
  seed: int = 0
  sizes: tuple[str, ...] = tuple(SIZES)
  targets: tuple[str, ...] = synth.TARGETS
  finetune_ns: tuple[int, ...] = (8, 32, 128)   # 2^k target comparisons
  objectives: tuple[str, ...] = OBJECTIVES      # compared at the largest n without PMP (ranked is always run)
  world: synth.WorldSize = synth.WorldSize()
  vocab: int = 512               # BPE trained on the corpus; every later run inherits it
  max_len: int = 64              # tokens; contexts lose tokens from the left
  lm_steps: int = 150
  pmp_steps: int = 150
  finetune_steps: int = 40       # the same for every n, so a small set is seen more often, as in the paper
  batch_size: int = 16
  finetune_batch: int = 8
  eval_hhh: bool = True
  # Real data instead of (or beside) the generated world, for `experiments/sample_efficiency.py`:
  target_dirs: tuple[str, ...] = ()  # NAME=DIR items, DIR holding train.jsonl and heldout.jsonl (any loader's)
  mined_dirs: tuple[str, ...] = ()   # NAME=DIR items: the PMP mixture is these datasets instead of the mined world
  corpus: str = ""                   # a dir with train.jsonl / validation.jsonl of {"text": ...} for the base LMs


def fast_config(out: str, seed: int = 0) -> QuickstartConfig:
  """The reduced mode (`--fast`, the test): one size, one target set, two set sizes, fewer steps."""
  return QuickstartConfig(
      out=out, seed=seed, sizes=("20k",), targets=("assistant",), finetune_ns=(8, 64),
      world=synth.WorldSize(se_questions=120, reddit_threads=120, wiki_revisions=10, target_train=64,
                            target_heldout=100, eval_per_category=8, corpus_docs=600),
      lm_steps=30, pmp_steps=30, finetune_steps=20)


def _model(size: str, max_len: int) -> ModelConfig:
  """A quickstart shape, or any family size (`hhh model list`) for runs on accelerators."""
  from hhh.model import family
  if size not in SIZES:
    try:
      return family.get(size, max_len=max_len)
    except (KeyError, ValueError):
      raise ValueError(f"unknown size {size!r} (quickstart sizes: {', '.join(SIZES)}; or a family size)") from None
  d, layers, heads = SIZES[size]
  return ModelConfig(d_model=d, n_layers=layers, n_heads=heads, max_len=max_len)


def _base(cfg: QuickstartConfig, **kw) -> TrainConfig:
  return TrainConfig(progress=False, seed=cfg.seed, log_every=10, keep_checkpoints=1, **kw)


def lm_config(cfg: QuickstartConfig, size: str, corpus: str) -> TrainConfig:
  return _base(cfg, objective="lm", model=_model(size, cfg.max_len),
               data=DataConfig(train=f"{corpus}/train.jsonl", validation=f"{corpus}/validation.jsonl",
                               tokenizer=f"bpe:{cfg.vocab}", max_len=cfg.max_len, buckets=(cfg.max_len,)),
               optim=OptimConfig(lr=3e-3, warmup_steps=15), batch_size=cfg.batch_size, steps=cfg.lm_steps,
               eval_every=cfg.lm_steps, checkpoint_every=cfg.lm_steps)


def pmp_mixture(mined: dict[str, str], binarize: bool) -> str:
  """Equal weights per source: "DIR:1[:binarize],..." (the `data.train` mixture syntax)."""
  return ",".join(f"{d}:1" + (":binarize" if binarize else "") for d in mined.values())


def pmp_config(cfg: QuickstartConfig, size: str, base: str, mined: dict[str, str], binarize: bool) -> TrainConfig:
  # max_k 4 for both variants: one compiled program serves the rankings and the GOOD:/BAD: pairs alike.
  mix = pmp_mixture(mined, binarize)
  return _base(cfg, objective="ranked", init_from=base, model=_model(size, cfg.max_len),
               data=DataConfig(train=mix, validation=mix, max_len=cfg.max_len, buckets=(cfg.max_len,), max_k=4),
               optim=OptimConfig(lr=2e-3, warmup_steps=15), batch_size=cfg.batch_size, steps=cfg.pmp_steps,
               eval_every=cfg.pmp_steps, checkpoint_every=cfg.pmp_steps)


def finetune_config(cfg: QuickstartConfig, size: str, init: str, train: str, heldout: str,
                    objective: str) -> TrainConfig:
  return _base(cfg, objective=objective, init_from=init, model=_model(size, cfg.max_len),
               data=DataConfig(train=train, validation=heldout, max_len=cfg.max_len, buckets=(cfg.max_len,),
                               max_k=2),
               optim=OptimConfig(lr=1e-3, warmup_steps=5), batch_size=cfg.finetune_batch,
               steps=cfg.finetune_steps, eval_every=cfg.finetune_steps, checkpoint_every=cfg.finetune_steps)


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  stage: str
  cfg: TrainConfig
  tags: dict[str, Any]


def finetune_jobs(cfg: QuickstartConfig, out: pathlib.Path, heldout: dict[str, str]) -> list[Job]:
  """The sample-efficiency grid (ranked objective) plus imitation and binary at the largest n without PMP."""
  jobs = []
  n_max = max(cfg.finetune_ns)
  for target in cfg.targets:
    d = out / "data" / "subsets" / target
    for size in cfg.sizes:
      for pmp in PMP_VARIANTS:
        init = str(out / "runs" / (f"lm-{size}" if pmp == "none" else f"pmp-{pmp}-{size}"))
        for n in cfg.finetune_ns:
          extra = [o for o in cfg.objectives if o != "ranked"] if pmp == "none" and n == n_max else []
          for objective in (*extra, "ranked"):
            jobs.append(Job(f"ft-{target}-{size}-{pmp}-n{n}-{objective}", "finetune",
                            finetune_config(cfg, size, init, str(d / f"train_{n}.jsonl"), heldout[target],
                                            objective),
                            {"target": target, "size": size, "pmp": pmp, "n": n, "objective": objective}))
  return jobs


# ------------------------------------------------------------------------------------------- running

def _read_results(path: pathlib.Path) -> dict[str, dict]:
  out = {}
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a crash mid-write; the run simply runs again
      out[rec["name"]] = rec
  return out


def _train_job(job: Job, out: pathlib.Path) -> dict:
  """One run, its result record; the same in this process or in a worker."""
  from hhh import config as config_lib
  from hhh.model import family
  from hhh.train import loop
  workdir = out / "runs" / job.name
  workdir.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  # A run's own output (its config line, data notes, final metrics) goes to its log, not the tour's.
  with open(workdir / "train.log", "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
    metrics = loop.train(job.cfg, workdir)
  model = json.loads((workdir / "config.json").read_text())["model"]
  params = family.param_counts(config_lib.from_dict(ModelConfig, model))["non_embedding"]
  return {"name": job.name, "stage": job.stage, **job.tags, "params": params,
          "metrics": {k: float(v) for k, v in metrics.items()}, "seconds": round(time.perf_counter() - t0, 2)}


def _worker_init(out: pathlib.Path) -> None:
  # XLA_FLAGS come with the environment, so a worker compiles exactly as this process does.
  _setup_jax(out)


def auto_workers() -> int:
  """Runs in parallel: one per CPU core (up to 4) on a CPU-only machine, where a tiny model's step keeps
  about one core busy; 1 where an accelerator is in reach, since every process would claim its memory."""
  from hhh.cpu_malloc import accelerator_plugin
  if os.environ.get("JAX_PLATFORMS", "cpu") not in ("cpu", "") or accelerator_plugin():
    return 1
  return max(1, min(4, os.cpu_count() or 1))


class Runner:
  """Trains jobs, one result line each in DIR/results.jsonl (written by this process only, as each
  finishes); finished jobs are skipped. With workers > 1 the jobs of a stage run in that many spawned
  processes; each run is deterministic in its config, so the results do not depend on the count."""

  def __init__(self, out: pathlib.Path, log=print, workers: int = 1):
    self.out, self.log, self.workers = out, log, max(1, workers)
    self.results_path = out / "results.jsonl"
    self.results = _read_results(self.results_path)

  def _record(self, rec: dict, bar) -> None:
    with open(self.results_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
    self.results[rec["name"]] = rec
    bar.update(1)

  def run(self, jobs: list[Job], desc: str) -> list[dict]:
    todo = [j for j in jobs if j.name not in self.results]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="run", dynamic_ncols=True,
               file=sys.stdout)
    try:
      if self.workers == 1 or len(todo) <= 1:
        for job in todo:
          bar.set_postfix_str(job.name, refresh=True)
          self._record(_train_job(job, self.out), bar)
      else:
        self._parallel(todo, bar)
    finally:
      bar.close()
    # Job order, not finishing order, so the summary is the same for any worker count.
    stage = {j.name: self.results[j.name] for j in jobs}
    self.results = {**{k: v for k, v in self.results.items() if k not in stage}, **stage}
    return list(stage.values())

  def _parallel(self, todo: list[Job], bar) -> None:
    import concurrent.futures
    pool = spawn_pool(min(self.workers, len(todo)), initializer=_worker_init, initargs=(self.out,))
    try:
      pending = {pool.submit(_train_job, job, self.out): job for job in todo}
      while pending:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for fut in done:
          job = pending.pop(fut)
          bar.set_postfix_str(job.name, refresh=True)
          self._record(fut.result(), bar)  # a failed run raises here, after the finished ones are kept
    finally:
      pool.shutdown(wait=True, cancel_futures=True)


# The models are tiny, so compiling dominates: ask XLA for quick compiles over fast code. Only takes effect when
# the backend is not started yet (the `hhh quickstart` process); a user's own XLA_FLAGS come first.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def fast_compile_env() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def _setup_jax(out: pathlib.Path) -> None:
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(out / "cache" / "jax"))
    # Tiny programs compile in well under a second each, but there are many; cache all of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _subsets(train: pathlib.Path, out_dir: pathlib.Path, ns) -> None:
  """train_N.jsonl = the first N training comparisons, so each larger set contains every smaller one."""
  if not train.is_file():
    raise FileNotFoundError(f"target training set not found: {train}")
  lines = [ln for ln in train.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
  out_dir.mkdir(parents=True, exist_ok=True)
  for n in ns:
    if n > len(lines):
      raise ValueError(f"finetune_ns has {n} but {train} has only {len(lines)} comparisons")
    (out_dir / f"train_{n}.jsonl").write_text("".join(lines[:n]), encoding="utf-8")


def _named_dirs(items, what: str) -> dict[str, str]:
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"{what} item {item!r}: expected NAME=DIR")
    if not pathlib.Path(path).exists():
      raise FileNotFoundError(f"{what} {name}: {path} does not exist")
    out[name] = path
  return out


def mine(paths: dict, mined_dir: pathlib.Path) -> dict[str, dict]:
  """Each miner's public entry point into the TFDS store, as `hhh data mine NAME` does; returns the summaries."""
  from hhh.data import store
  from hhh.data.mine import reddit, stackexchange, wikipedia
  from hhh.data.mine.common import MineStats
  summaries = {}
  inputs = {"stackexchange": (stackexchange, paths["stackexchange"], stackexchange.Options()),
            "reddit": (reddit, paths["reddit"], reddit.Options(submissions=paths["reddit_submissions"])),
            # Short windows: the quickstart's models read 64 tokens.
            "wikipedia": (wikipedia, paths["wikipedia"], wikipedia.Options(window_chars=160))}
  for name in MINED:
    d = mined_dir / name
    if (d / "summary.json").exists():
      summaries[name] = json.loads((d / "summary.json").read_text())
      continue
    mod, path, options = inputs[name]
    stats = MineStats(source=name)
    summaries[name] = store.write_dataset(d, mod.mine(path, options, stats), stats,
                                          description=f"hhh quickstart: {name} comparisons mined from {path}",
                                          extra_summary={"input": path, "options": dataclasses.asdict(options)})
  return summaries


def hhh_eval(out: pathlib.Path, jobs: list[Job], eval_dir: str) -> list[dict]:
  """The HHH eval (BIG-bench layout) with each given PM as the judge, through an exported reward bundle."""
  from hhh.evals import tasks
  from hhh.reward import api, bundle
  records = []
  path = out / "hhh_eval.jsonl"
  done = {r["name"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
  for job in jobs:
    if job.name in done:
      records.append(done[job.name])
      continue
    b = out / "bundles" / job.name
    if not (b / "bundle.json").exists():
      with contextlib.redirect_stdout(sys.stderr):
        bundle.export(out / "runs" / job.name, b, force=True)  # ours: an earlier try's may be replaced
    res = tasks.hhh_alignment(tasks.PMJudge(api.load(b)), eval_dir)
    rec = {"name": job.name, **{k: v for k, v in job.tags.items() if k != "n"}, "n_finetune": job.tags["n"],
           "accuracy": res["accuracy"], "n": res["n"],
           "per_category": {k: v["accuracy"] for k, v in res["per_category"].items()}}
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
    records.append(rec)
  return records


def run(cfg: QuickstartConfig, log=print, workers: int = 1) -> dict:
  """All stages; returns the summary (also DIR/summary.json). Safe to re-run: finished work is kept.
  `workers` runs a stage's trainings in that many processes (`auto_workers()` picks for the machine)."""
  out = pathlib.Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  for size in cfg.sizes:
    _model(size, cfg.max_len)
  given = _named_dirs(cfg.target_dirs, "target_dirs")
  mined_given = _named_dirs(cfg.mined_dirs, "mined_dirs")
  for t in cfg.targets:
    if t not in synth.TARGETS and t not in given:
      raise ValueError(f"unknown target set {t!r} (generated: {', '.join(synth.TARGETS)}; others need "
                       "target_dirs=NAME=DIR)")
  bad = [o for o in cfg.objectives if o not in OBJECTIVES]
  if bad:
    raise ValueError(f"objectives: unknown {', '.join(bad)} (known: {', '.join(OBJECTIVES)})")
  if not cfg.finetune_ns or min(cfg.finetune_ns) < 1:
    raise ValueError("finetune_ns needs at least one set size >= 1")
  # Finished runs are found by name, so a directory must hold one set of settings only.
  cfg_path, cfg_json = out / "quickstart_config.json", json.loads(json.dumps(dataclasses.asdict(cfg)))
  if cfg_path.exists() and json.loads(cfg_path.read_text()) != {**cfg_json, "out": json.loads(
      cfg_path.read_text()).get("out")}:
    raise ValueError(f"{out} holds a quickstart with other settings ({cfg_path}); use a new --out")
  cfg_path.write_text(json.dumps(cfg_json, indent=2) + "\n")
  _setup_jax(out)
  times: dict[str, float] = {}
  t_all = time.perf_counter()

  def stage(i: int, name: str, what: str):
    log(f"hhh quickstart [{i}/7] {name}: {what}", flush=True)
    return time.perf_counter()

  t = stage(1, "generate", f"raw dumps, {len(cfg.targets)} target sets, HHH eval and corpus (seed {cfg.seed})")
  data = out / "data"
  paths_file = data / "paths.json"
  want = {"seed": cfg.seed, "world": dataclasses.asdict(cfg.world)}
  if paths_file.exists() and json.loads(paths_file.read_text()).get("inputs") == want:
    paths = json.loads(paths_file.read_text())["paths"]
  else:
    paths = synth.generate(data, cfg.world, cfg.seed)
    paths_file.write_text(json.dumps({"inputs": want, "paths": paths}, indent=2) + "\n")
  heldout = {}
  for target in cfg.targets:
    src = pathlib.Path(given.get(target) or paths[f"target_{target}"])
    _subsets(src / "train.jsonl", data / "subsets" / target, cfg.finetune_ns)
    heldout[target] = str(src / "heldout.jsonl")
  corpus = cfg.corpus or paths["corpus"]
  times["generate"] = time.perf_counter() - t

  t = stage(2, "mine", "Stack Exchange XML, Pushshift .zst and MediaWiki history with the real miners")
  summaries = mine(paths, data / "mined") if not mined_given else {}
  mined = mined_given or {m: str(data / "mined" / m) for m in MINED}
  for name, s in summaries.items():
    log(f"  {name}: {s['records_read']} records read, {s['total_kept']} comparisons kept "
        f"(train {s['kept']['train']}, validation {s['kept']['validation']}, test {s['kept']['test']})")
  times["mine"] = time.perf_counter() - t

  runner = Runner(out, log, workers)
  t = stage(3, "pretrain", f"{len(cfg.sizes)} base LMs ({', '.join(cfg.sizes)}), {cfg.lm_steps} steps each")
  lms = runner.run([Job(f"lm-{s}", "lm", lm_config(cfg, s, corpus), {"size": s}) for s in cfg.sizes],
                   "pretrain")
  for r in lms:
    log(f"  lm-{r['size']}: {r['params']:,} non-embedding params, held-out loss {r['metrics']['loss']:.3f} "
        f"nats/token ({r['seconds']:.0f} s)")
  times["pretrain"] = time.perf_counter() - t

  t = stage(4, "pmp", f"ranked and binarized PMP on the mined mixture, {cfg.pmp_steps} steps each")
  pmp_jobs = [Job(f"pmp-{v}-{s}", "pmp", pmp_config(cfg, s, str(out / "runs" / f"lm-{s}"), mined, v == "binarized"), {"size": s, "pmp": v})
              for s in cfg.sizes for v in ("ranked", "binarized")]
  for r in runner.run(pmp_jobs, "pmp"):
    log(f"  {r['name']}: held-out accuracy on mined comparisons {r['metrics']['accuracy']:.3f} "
        f"({r['seconds']:.0f} s)")
  times["pmp"] = time.perf_counter() - t

  ft = finetune_jobs(cfg, out, heldout)
  t = stage(5, "finetune", f"{len(ft)} fine-tunes of {cfg.finetune_steps} steps "
                           f"(n = {', '.join(map(str, cfg.finetune_ns))} comparisons)")
  runner.run(ft, "finetune")
  times["finetune"] = time.perf_counter() - t

  t = stage(6, "evaluate", "held-out accuracy per run (above); the HHH eval with the largest size's PMs")
  hhh = []
  if cfg.eval_hhh:
    top = cfg.sizes[-1]
    judged = [j for j in ft if j.tags["size"] == top and j.tags["objective"] == "ranked"
              and j.tags["n"] == max(cfg.finetune_ns) and j.tags["target"] == cfg.targets[0]]
    hhh = hhh_eval(out, judged, paths["hhh_eval"])
    for r in hhh:
      log(f"  {r['name']}: HHH eval accuracy {r['accuracy']:.3f} over {r['n']} pairs")
  times["evaluate"] = time.perf_counter() - t

  t = stage(7, "report", f"{out / 'report.md'}")
  from hhh.studies.quickstart import report
  times["total"] = time.perf_counter() - t_all
  summary = report.write(out, cfg, runner.results, summaries, hhh, times, workers=runner.workers)
  times["report"] = time.perf_counter() - t
  log(f"hhh quickstart: done in {times['total'] + times['report']:.0f} s; open {out / 'report.md'}")
  return summary


def spawn_pool(workers: int, **kw):
  """A process pool of spawned workers (not forked: this process may hold JAX's threads already).

  A spawned worker starts as `python -c ...`, which would put the current directory first on its import path, so
  a multiprocessing.py there would run: PYTHONSAFEPATH keeps it off (Python 3.11+)."""
  import concurrent.futures
  import multiprocessing
  os.environ["PYTHONSAFEPATH"] = "1"
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **kw)
