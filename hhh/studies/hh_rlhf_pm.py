"""A real preference model: SmolLM2-135M-Instruct fine-tuned in full on HH-RLHF, and its held-out report.

The four HH-RLHF test files (8,486 comparisons) are split by conversation, never by row: a comparison's group is
its opening Human turn, hashed into train (80%) or held-out (20%), so no conversation is in both
(`hhh data load hh_rlhf ... --resplit 0.8,0.2,0`). Training is `hhh train experiments/hh_rlhf_pm.py` (packed
rows, the whole model trained). `report` then:
- exports the run as a reward bundle and as an HF sequence-classification directory;
- scores the held-out comparisons with the bundle (packed: each context once), and the first `hf_pairs` of them
  with transformers from the HF directory (pairs that fit max_len), which must give the same decisions;
- reports pairwise accuracy with a bootstrap interval that resamples conversations, beside the length rules
  (pick the longer / the shorter response, in tokens), and the run's wall time and comparisons/s from its
  metrics.jsonl;
- writes summary.json and report.md.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from hhh import stats

ASSISTANT = "\n\nAssistant:"


def conversation(context: str) -> str:
  """A comparison's group: its opening Human turn (what the split hashed)."""
  i = context.find(ASSISTANT)
  return context[:i] if i >= 0 else context


def training_time(metrics_path) -> dict:
  """Wall time and comparisons/s of a run's training, from its train rows' clocks. An interval much slower per step
  than the run's median (over 5x) holds a stop and a resume, not training, and is left out."""
  rows = [json.loads(l) for l in open(metrics_path) if l.strip()]
  train = [r for r in rows if r["split"] == "train" and "time" in r]
  cfg = json.loads((pathlib.Path(metrics_path).parent / "config.json").read_text())
  spans = [(b["time"] - a["time"], b["step"] - a["step"]) for a, b in zip(train, train[1:]) if b["step"] > a["step"]]
  per_step = float(np.median([dt / n for dt, n in spans])) if spans else 0.0
  kept = [(dt, n) for dt, n in spans if 0 < dt <= 5 * per_step * n]
  total, steps = sum(dt for dt, _ in kept), sum(n for _, n in kept)
  last = max((r["step"] for r in rows if r["split"] == "train"), default=0)
  return {"steps_done": last, "timed_steps": steps, "wall_s": total,
          "comparisons_per_s": steps * cfg["batch_size"] / total if total else None,
          "batch_size": cfg["batch_size"]}


def length_rules(responses_Nx2, tok) -> dict[str, np.ndarray]:
  """Per-comparison correctness (1, 0, or 0.5 on a tie) of picking the longer or the shorter response, in tokens;
  the chosen response is index 0."""
  n = np.asarray([[len(tok.encode(r)) for r in rs] for rs in responses_Nx2])
  longer = np.where(n[:, 0] > n[:, 1], 1.0, np.where(n[:, 0] == n[:, 1], 0.5, 0.0))
  return {"longer": longer, "shorter": 1.0 - longer}


def _acc(correct, groups) -> dict:
  r = stats.clustered_mean_shift(np.asarray(correct, np.float64), groups)
  return {k: r[k] for k in ("mean", "lo", "hi", "n", "n_clusters")}


def report(run, data, out, *, limit: int = 0, hf_pairs: int = 32, seed: int = 0, log=print) -> dict:
  """Exports `run`, scores the held-out split of `data` (the first `limit` comparisons of a fixed shuffle when
  limit > 0) and writes OUT/summary.json and OUT/report.md; returns the summary."""
  from hhh.data import store
  from hhh.reward import export as export_lib
  from hhh.reward import hf_export
  from hhh.reward.api import RewardModel
  from hhh.reward.packed import score_many_shared
  run, out = pathlib.Path(run), pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  held = list(store.DataSource(str(data), "validation"))
  order = np.random.default_rng(seed).permutation(len(held))
  held = [held[i] for i in order][:limit or None]
  work = run.parent / f"{run.name}_export"
  bdir, hdir = work / "bundle", work / "hf"
  t0 = time.perf_counter()
  export_lib.export(run, bdir, reference=str(data), max_reference=64, force=True)
  hf_export.export_hf(bdir, hdir, force=True)
  log(f"hh_rlhf_pm: exported {bdir} and {hdir} in {time.perf_counter() - t0:.0f} s")
  rm = RewardModel(bdir, batch_size=8)
  t0 = time.perf_counter()
  r = score_many_shared(rm, [c.context for c in held], [list(c.responses) for c in held], pack="always")
  score_s = time.perf_counter() - t0
  r_Nx2 = np.stack(r)
  correct = np.where(r_Nx2[:, 0] > r_Nx2[:, 1], 1.0, np.where(r_Nx2[:, 0] == r_Nx2[:, 1], 0.5, 0.0))
  groups = [conversation(c.context) for c in held]
  rules = length_rules([c.responses for c in held], rm.tokenizer)
  # Pairs longer than max_len are cut by hhh's rule (context from the left), which a caller's tokenizer call does not
  # reproduce; the check reads the pairs that fit, as a user's RL pipeline feeds them.
  fit = [i for i, c in enumerate(held) if _fits(c, rm)][:hf_pairs]
  hf = _hf_check(hdir, [held[i] for i in fit], r_Nx2[fit]) if fit else None
  summary = {
      "run": str(run), "data": str(data), "held_out": len(held), "limit": limit,
      "accuracy": _acc(correct, groups),
      "length_rules": {k: _acc(v, groups) for k, v in rules.items()},
      "training": training_time(run / "metrics.jsonl"),
      "scoring": {"seconds": score_s, "comparisons_per_s": len(held) / score_s},
      "hf_check": hf,
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  (out / "report.md").write_text(_markdown(summary))
  return summary


def _fits(c, rm) -> bool:
  from hhh.data.pipeline import EncodeStats, encode_comparison
  st = EncodeStats()
  encode_comparison(c, rm.tokenizer, rm.max_len, c.k, st)
  return not (st.contexts_truncated or st.responses_truncated)


def _hf_check(hdir, comps, bundle_r_Nx2) -> dict:
  """The HF directory, read by transformers as a user would, against the bundle on the same pairs."""
  import torch
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(hdir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(hdir, torch_dtype=torch.float32).eval()
  meta = json.loads((pathlib.Path(hdir) / "config.json").read_text())["hhh_reward"]
  rs = []
  with torch.no_grad():
    for c in comps:
      row = []
      for resp in c.responses:
        ids = tok(c.context, resp, return_tensors="pt")  # context and response: the export's pair template
        row.append(float(model(**ids).logits[0, 0]) + meta["reward_bias"])
      rs.append(row)
  hf_r = np.asarray(rs)
  return {"pairs": len(comps), "max_abs_diff": float(np.abs(hf_r - bundle_r_Nx2).max()),
          "same_decisions": int(np.sum((hf_r[:, 0] > hf_r[:, 1]) == (bundle_r_Nx2[:, 0] > bundle_r_Nx2[:, 1])))}


def _markdown(s: dict) -> str:
  a, lr, t = s["accuracy"], s["length_rules"], s["training"]
  fmt = lambda x: f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"
  lines = [
      "# A real PM: SmolLM2-135M-Instruct on HH-RLHF", "",
      f"Run `{s['run']}`, {t['steps_done']} steps of {t['batch_size']} comparisons; held-out: {s['held_out']} "
      f"comparisons of conversations never trained on ({a['n_clusters']} conversations).", "",
      "| scorer | held-out pairwise accuracy (95% interval, resampling conversations) |", "|---|---|",
      f"| this PM | {fmt(a)} |", f"| pick the longer response | {fmt(lr['longer'])} |",
      f"| pick the shorter response | {fmt(lr['shorter'])} |", "",
  ]
  if t["wall_s"]:
    lines += [f"Training: {t['wall_s'] / 60:.1f} min over {t['timed_steps']} timed steps, "
              f"{t['comparisons_per_s']:.3f} comparisons/s.", ""]
  if s["hf_check"]:
    h = s["hf_check"]
    lines += [f"HF directory read by transformers on {h['pairs']} held-out pairs: max |reward difference| "
              f"{h['max_abs_diff']:.2e}, same decision on {h['same_decisions']} of {h['pairs']}.", ""]
  return "\n".join(lines)
