"""The prompt-based HHH baselines in one run: a model with no prompt, with the HHH prompt, and context-distilled.

For each condition the judge (and so the prompt's KV cache) is built once and every task reuses it. Each
(condition, task) result is written to OUT/CONDITION/TASK.json as it finishes, and a re-run skips results that
exist, so an interrupted run loses nothing. `table` turns the results into the markdown of docs/results/hhh_baselines.md.

sweeps/hhh_baselines.yaml is the sweep-file form: one trial per condition, each a process running `main`, so the
conditions can run side by side or on a cluster; `records_from_sweep` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

from tqdm import tqdm

from hhh.evals import commands
from hhh.evals import tasks as tasks_lib

# Local files (relative to BaselinesConfig.shared) in each task's public format.
LOCAL_DATA = {
    "hhh_alignment": "hhh_alignment",
    # BIG-bench's TruthfulQA MC (mc1 targets, ~5 answers per question): fewer rows per item than mc_task.json,
    # whose mc1 and mc2 answers together are ~10 per question.
    "truthfulqa_mc": "truthfulqa/task_mc.json",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2",
    "lambada_wiki": "wikipedia/enwiki_Anarchism_full_history_2001-2010.xml.lzma",
}


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
  out: str = "runs/baselines"
  shared: str = "../shared/data"
  model: str = "smollm2-135m-instruct"
  distilled: str = "runs/distill/student"   # the `hhh distill` student; "" leaves that condition out
  prompt: str = "hhh"
  tasks: tuple[str, ...] = ("hhh_alignment", "truthfulqa_mc", "lambada_wiki", "hellaswag")
  # First-N limits (TASK=N) for CPU time: after a 7k-token prompt a scored row costs ~8 s on 2 CPU cores.
  limits: tuple[str, ...] = ("truthfulqa_mc=40", "hellaswag=60")
  batch_size: int = 8
  only: tuple[str, ...] = ()               # run just these conditions (e.g. two processes side by side)


def conditions(cfg: BaselinesConfig) -> list[tuple[str, str, str]]:
  """(name, model, prompt) per condition."""
  out = [("no_prompt", cfg.model, "none"), ("prompt", cfg.model, cfg.prompt)]
  if cfg.distilled:
    out.append(("distilled", cfg.distilled, "none"))
  unknown = set(cfg.only) - {c[0] for c in out}
  if unknown:
    raise ValueError(f"only={','.join(sorted(unknown))}: conditions are no_prompt, prompt and distilled")
  return [c for c in out if not cfg.only or c[0] in cfg.only]


def _limits(cfg) -> dict[str, int]:
  out = {}
  for item in cfg.limits:
    task, sep, n = item.partition("=")
    if not sep or task not in tasks_lib.TASKS or not n.isdigit():
      raise ValueError(f"limits item {item!r}: expected TASK=N with TASK one of {', '.join(tasks_lib.TASKS)}")
    out[task] = int(n)
  return out


def run(cfg: BaselinesConfig) -> list[dict]:
  limits = _limits(cfg)
  out = pathlib.Path(cfg.out)
  records = []
  for name, model, prompt in conditions(cfg):
    todo = [t for t in cfg.tasks if not (out / name / f"{t}.json").exists()]
    records += [json.loads((out / name / f"{t}.json").read_text()) for t in cfg.tasks if t not in todo]
    if not todo:
      continue
    if name == "distilled" and not pathlib.Path(model).exists():
      print(f"hhh: {model} does not exist yet (run `hhh distill`); skipping the distilled condition",
            file=sys.stderr)
      continue
    prompt_name, prompt_text = commands.resolve_prompt(prompt)
    judge, prompt_tokens = commands.make_judge("lm", model, prompt_text, cfg.batch_size)
    # The distilled model learned to act as if the prompt were there: ask it in the prompt's dialogue form.
    judge.dialogue = name == "distilled"
    for task in todo:
      data = str(pathlib.Path(cfg.shared) / LOCAL_DATA[task])
      bar = tqdm(desc=f"{name} {task}", unit="item", dynamic_ncols=True)
      t0 = time.perf_counter()
      try:
        result = tasks_lib.run(task, judge, data, limit=limits.get(task), progress=bar.update)
      finally:
        bar.close()
      rec = {"condition": name, "task": task, "model": model, "judge": "lm", "data": data, "prompt": prompt_name,
             "prompt_tokens": prompt_tokens, "limit": limits.get(task),
             **{k: v for k, v in result.items() if k != "task"}, "seconds": time.perf_counter() - t0,
             "truncated_rows": judge.scorer.truncated}
      (out / name).mkdir(parents=True, exist_ok=True)
      (out / name / f"{task}.json").write_text(json.dumps(rec, indent=2) + "\n")
      records.append(rec)
  return records


def records_from_sweep(spec) -> list[dict]:
  """The finished trials of a baselines sweep file (one per condition) as `table` reads them: one record per
  (condition, task)."""
  from hhh.sweep import report
  return [rec for r in report.results(spec) for rec in r["metrics"].values() if isinstance(rec, dict)]


def main(argv=None) -> int:
  """`python -m hhh.studies.baselines --set only=CONDITION --set out=DIR ...`: one trial of
  sweeps/hhh_baselines.yaml. Writes DIR/metrics.json ({task: record}) and exits 1 if nothing was scored."""
  from hhh import config as config_lib
  _, cfg = config_lib.parse_script(argv, BaselinesConfig(), description=main.__doc__, what="BaselinesConfig")
  try:
    records = run(cfg)
  except (FileNotFoundError, ValueError) as e:
    print(f"hhh: error: {e}", file=sys.stderr)
    return 2
  if not records:
    print("hhh: error: no task was scored", file=sys.stderr)
    return 1
  out = pathlib.Path(cfg.out)
  tmp = out / ".metrics.json.tmp"
  tmp.write_text(json.dumps({f"{r['condition']}/{r['task']}": r for r in records}, indent=2) + "\n")
  tmp.replace(out / "metrics.json")
  return 0


def _headline(rec: dict) -> tuple[str, float]:
  task = rec["task"]
  key = {"hhh_alignment": "accuracy", "truthfulqa_mc": "mc1", "hellaswag": "acc_norm",
         "lambada_wiki": "accuracy"}[task]
  return key, rec[key]


def table(records: list[dict]) -> str:
  """Rows = tasks (headline metric and n), columns = conditions; accuracies with a binomial standard error."""
  by = {(r["condition"], r["task"]): r for r in records}
  conds = [c for c in ("no_prompt", "prompt", "distilled") if any(k[0] == c for k in by)]
  tasks = [t for t in tasks_lib.TASKS if any(k[1] == t for k in by)]
  lines = ["| task (metric, items) | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
  for t in tasks:
    any_rec = next(by[(c, t)] for c in conds if (c, t) in by)
    key, _ = _headline(any_rec)
    cells = []
    for c in conds:
      r = by.get((c, t))
      if r is None:
        cells.append("")
        continue
      _, v = _headline(r)
      se = (v * (1 - v) / max(r["n"], 1)) ** 0.5
      cells.append(f"{v:.3f} ± {se:.3f}")
    lines.append(f"| {t} ({key}, {any_rec['n']}) | " + " | ".join(cells) + " |")
    if t == "hhh_alignment":
      for cat in ("harmless", "helpful", "honest", "other"):
        row = []
        for c in conds:
          r = by.get((c, t))
          v = r and r.get("per_category", {}).get(cat)
          row.append(f"{v['accuracy']:.3f}" if v else "")
        n = any_rec.get("per_category", {}).get(cat, {}).get("n", "?")
        lines.append(f"| &nbsp;&nbsp;{cat} ({n}) | " + " | ".join(row) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
