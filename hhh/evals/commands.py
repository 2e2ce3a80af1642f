"""`hhh eval TASK --model MODEL ...`: run one evaluation task, print a table and write the results as JSON.

    hhh eval hhh_alignment --model smollm2-135m-instruct --data ../shared/data/hhh_alignment --prompt hhh
    hhh eval truthfulqa_mc --model runs/pm/bundle --judge pm --data mc_task.json --limit 100 --out tqa.json

--data defaults to the task's HF hub dataset (`hf:...`, online); local files are always named explicitly.
--prompt: "none" (default), "hhh" (data/prompts/hhh.txt in the repository) or a text file.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import sys
import time

from hhh.evals import tasks as tasks_lib


def command_line(argv: list[str] | None) -> str:
  """The command as a user would retype it: the script relative to the working directory when it lies below
  it (the allocator re-exec hands scripts an absolute sys.argv[0]), then the arguments, shell-quoted."""
  script = sys.argv[0]
  if os.path.isabs(script):
    rel = os.path.relpath(script)
    script = rel if not rel.startswith("..") else script
  return "python " + " ".join(shlex.quote(a) for a in [script, *(argv if argv is not None else sys.argv[1:])])


def hhh_prompt_path() -> pathlib.Path:
  import hhh
  return pathlib.Path(hhh.__file__).resolve().parents[1] / "data" / "prompts" / "hhh.txt"


def resolve_prompt(spec: str) -> tuple[str, str]:
  """(name, text) of --prompt: none, hhh, or a file path."""
  if spec == "none":
    return "none", ""
  path = hhh_prompt_path() if spec == "hhh" else pathlib.Path(spec)
  if not path.is_file():
    what = "the HHH prompt" if spec == "hhh" else "prompt file"
    raise FileNotFoundError(f"{what} not found: {path}")
  return (spec if spec == "hhh" else str(path)), path.read_text(encoding="utf-8")


def make_judge(kind: str, model: str, prompt: str, batch_size: int):
  """(judge, prompt tokens) for --judge lm (any `load_lm` spec) or pm (a reward bundle)."""
  if kind == "lm":
    from hhh.evals.score import Scorer
    from hhh.pretrained import load_lm
    scorer = Scorer(load_lm(model), batch_size=batch_size, prompt=prompt)
    return tasks_lib.LMJudge(scorer), scorer.prompt_tokens
  if kind == "pm":
    if prompt:
      raise ValueError("--judge pm scores the bare Human/Assistant query; use --prompt none")
    from hhh.reward import api
    return tasks_lib.PMJudge(api.load(model, batch_size=batch_size)), 0
  raise ValueError(f"unknown judge {kind!r} (lm or pm)")


def evaluate(task: str, model: str, *, data=None, prompt: str = "none", limit: int | None = None,
             judge: str = "lm", batch_size: int = 16, progress: bool = True) -> dict:
  """The full results record of one task (what `hhh eval` writes)."""
  if task not in tasks_lib.TASKS:
    raise ValueError(f"unknown task {task!r} (known: {', '.join(tasks_lib.TASKS)})")
  if batch_size < 1:
    raise ValueError(f"--batch-size {batch_size} must be >= 1")
  data = data if data is not None else tasks_lib.DEFAULT_DATA[task]
  if data is None:
    raise ValueError(f"{task} has no hub dataset: pass --data PATH")
  prompt_name, prompt_text = resolve_prompt(prompt)
  j, prompt_tokens = make_judge(judge, model, prompt_text, batch_size)
  from tqdm import tqdm
  # Shown in a log file too (an eval on CPU runs for an hour), at most every 30 s there; not before 2 s, so a
  # command that fails at once prints its one-line error alone.
  bar = tqdm(desc=task, unit="item", file=sys.stderr, disable=not progress, delay=2,
             mininterval=0.1 if sys.stderr.isatty() else 30)
  t0 = time.perf_counter()
  try:
    result = tasks_lib.run(task, j, str(data), limit=limit, progress=bar.update)
  finally:
    bar.close()
  seconds = time.perf_counter() - t0
  record = {"task": task, "model": model, "judge": judge, "data": str(data), "prompt": prompt_name,
            "prompt_tokens": prompt_tokens, "limit": limit, **{k: v for k, v in result.items() if k != "task"},
            "seconds": seconds}
  if judge == "lm":
    record["truncated_rows"] = j.scorer.truncated
  return record


def format_table(record: dict) -> str:
  """The headline numbers, one per line, and the per-category accuracies."""
  rows = [("task", record["task"]), ("model", record["model"]), ("judge", record["judge"]),
          ("prompt", f"{record['prompt']} ({record['prompt_tokens']} tokens)"), ("items", record["n"])]
  for key in ("accuracy", "mc1", "mc2", "acc", "acc_norm", "acc_bytes", "target_loglik_mean"):
    if record.get(key) is not None:
      rows.append((key, f"{record[key]:.4f}"))
  for cat, v in record.get("per_category", {}).items():
    rows.append((f"  {cat}", f"{v['accuracy']:.4f} ({v['n']})"))
  rows.append(("seconds", f"{record['seconds']:.1f}"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cli_eval(args) -> None:
  record = evaluate(args.task, args.model, data=args.data, prompt=args.prompt, limit=args.limit or None,
                    judge=args.judge, batch_size=args.batch_size)
  print(format_table(record))
  text = json.dumps(record, indent=2) + "\n"
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"hhh: wrote {out}")
  else:
    print(text, end="")
  sys.stdout.flush()


def add_cli(sub) -> None:
  p = sub.add_parser("eval", help="prompted evaluations (hhh_alignment, truthfulqa_mc, hellaswag, lambada_wiki) "
                                  "and reward-model evaluation (rm)")
  names = (*tasks_lib.TASKS, "rm", "rm-compare")
  tasks = p.add_subparsers(dest="task", required=True, metavar="{" + ",".join(names) + "}")
  for task in tasks_lib.TASKS:
    t = tasks.add_parser(task, help=f"{task}: {'an LM or a PM judge' if task in ('hhh_alignment', 'truthfulqa_mc') else 'an LM'}")
    t.add_argument("--model", required=True,
                   help="an LM (load_lm spec: name, hhh checkpoint or bundle, HF dir, .gguf); a reward bundle for "
                        "--judge pm")
    t.add_argument("--data", default=None,
                   help="local data (a file or BIG-bench folder) or hf:NAME[:CONFIG]; default: the task's hub dataset")
    t.add_argument("--prompt", default="none", help="none, hhh (data/prompts/hhh.txt) or a prompt text file")
    t.add_argument("--limit", type=int, default=0, help="score only the first N items (0 = all)")
    t.add_argument("--out", default=None, help="write the results JSON here (default: print it)")
    t.add_argument("--judge", choices=("lm", "pm"), default="lm",
                   help="lm: option log-likelihood; pm: a preference model's reward (hhh_alignment, truthfulqa_mc)")
    t.add_argument("--batch-size", type=int, default=16, help="rows (item options) per forward pass")
    t.set_defaults(func=cli_eval)
  from hhh.evals import rm, rm_compare
  rm.add_cli(tasks)
  rm_compare.add_cli(tasks)
