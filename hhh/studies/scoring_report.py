"""Scoring-rule report for hhh_alignment and the HellaSwag alignment tax, with honest intervals.

    python experiments/hhh_scoring.py      # results/hhh_scoring/{results.json,report.md}
    python experiments/alignment_tax.py    # results/alignment_tax/{results.json,report.md}

Scoring. `SharedContextScorer` gives exactly what `hhh.evals.score.Scorer` gives (same tokens, same layout,
tested equal on a tiny model) but runs each distinct context once: a batch of contexts is run after the
prompt's cache (one shared prefix, never copied per row), and every option row then reads the prompt and its
own context's cache. `Scorer` recomputes the context for every option; after a 7k-token prompt that is most
of the cost (hhh_alignment items have 2 options, and several items share one input; HellaSwag items have 4
endings).

Layout, per context (as Scorer's, with prompt + context standing in for the prompt):
  seq = prompt[-1:] + context tokens          (no prompt and an empty context: [<eos>])
  stage 1: the prompt cache + seq[:-1]        (batch of contexts, right-padded; padding is inert)
  stage 2: each option row = [seq[-1]] + option tokens, read after its context's cache
Length policy: when prompt + context + the context's LONGEST option exceed max_len, the context loses
tokens from the left for all its options (Scorer cuts per option); `truncated` counts such contexts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh import stats
from hhh.evals import rules
from hhh.evals import tasks as tasks_lib
from hhh.evals.score import Scorer, Scores, next_pow2, option_lengths

_MIN_ROW = 16


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _extend(params, prompt, tokens_BxC, valid_BxC, *, graphdef):
  """Each row's context cache (C slots per row) after the prompt (or nothing); the prompt stays one shared
  prefix (`Transformer(prefix=...)`), never copied per row."""
  model = nnx.merge(graphdef, params)
  B, C = tokens_BxC.shape
  cache = model.init_cache(B, C, dtype=jnp.dtype(model.cfg.dtype))
  if prompt is not None:
    cache["next_pos"] = jnp.broadcast_to(prompt["next_pos"], (B,))
  _, cache = model(tokens_BxC, valid_BxC, cache=cache, prefix=prompt)
  return {"layers": cache["layers"], "valid": cache["valid"], "next_pos": cache["next_pos"]}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_options(params, prompt, ctx, row_ctx_R, tokens_RxL, valid_RxL, targets_RxL, tmask_RxL, *, graphdef):
  """Sum of target log-probs [R]: row r reads the prompt (shared) and context row_ctx_R[r]'s cache; targets[t]
  is predicted at t."""
  model = nnx.merge(graphdef, params)
  R, L = tokens_RxL.shape
  S = ctx["valid"].shape[1]

  def pick(x, axis):
    """Each row's context cache, with L free slots after it on the slot axis."""
    sel = jnp.take(x, row_ctx_R, axis=0)
    shape = list(sel.shape)
    shape[axis] = L
    return jnp.concatenate([sel, jnp.zeros(shape, x.dtype)], axis=axis)

  cache = {"layers": [{"k": pick(c["k"], 2), "v": pick(c["v"], 2)} for c in ctx["layers"]],
           "valid": pick(ctx["valid"], 1), "index": jnp.int32(S), "next_pos": jnp.take(ctx["next_pos"], row_ctx_R)}
  h_RxLxD, _ = model(tokens_RxL, valid_RxL, cache=cache, prefix=prompt)
  logp_RxLxV = jax.nn.log_softmax(model.lm_logits(h_RxLxD), axis=-1)
  lp_RxL = jnp.take_along_axis(logp_RxLxV, targets_RxL[:, :, None], axis=-1)[:, :, 0]
  return jnp.where(tmask_RxL, lp_RxL, 0.0).sum(-1)


class SharedContextScorer:
  """`Scorer.score_many`'s results (loglik, n_tokens, n_bytes; greedy is not computed and is all False),
  each distinct context run once. `contexts_per_batch` contexts share a stage-1 call and `rows_per_batch`
  option rows a stage-2 call; the prompt's cache is shared by all, and each row holds a copy of its own
  context's cache only."""

  def __init__(self, scorer: Scorer, *, contexts_per_batch: int = 4, rows_per_batch: int = 8):
    if contexts_per_batch < 1 or rows_per_batch < 1:
      raise ValueError("contexts_per_batch and rows_per_batch must be >= 1")
    self.scorer, self.cb, self.rb = scorer, contexts_per_batch, rows_per_batch
    self.truncated = 0

  def _encode(self, context: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    sc = self.scorer
    ctx, opts = sc.encode_item(context, options)
    head = sc.prompt_ids[-1:]
    if not head and not ctx:
      ctx = [sc.tokenizer.eos_id]
    over = len(sc._cached_ids) + len(head) + len(ctx) + max(len(o) for o in opts) - sc.max_len
    if over > 0:
      # As Scorer: the context loses tokens from the left; the prompt (its last token included) is kept whole.
      if len(ctx) - over < (0 if head else 1):
        raise ValueError(f"an option of context {context[:60]!r} does not fit in max_len={sc.max_len} after a "
                         f"{len(sc.prompt_ids)}-token prompt")
      ctx = ctx[over:]
      self.truncated += 1
    return head + ctx, opts

  def score_many(self, items: Sequence[tuple[str, Sequence[str]]],
                 progress: Callable[[int], None] | None = None) -> list[Scores]:
    sc = self.scorer
    groups: dict[str, list[int]] = {}
    for i, (context, _) in enumerate(items):
      groups.setdefault(context, []).append(i)
    contexts = list(groups)
    # Every distinct option of a context is scored once, whichever items it belongs to.
    ctx_opts = [list(dict.fromkeys(o for i in groups[c] for o in items[i][1])) for c in contexts]
    enc = [self._encode(c, opts) for c, opts in zip(contexts, ctx_opts)]
    lp: dict[tuple[int, str], float] = {}
    ntok: dict[tuple[int, str], int] = {}
    order = sorted(range(len(contexts)), key=lambda g: len(enc[g][0]))
    pad = sc.tokenizer.pad_id
    for s in range(0, len(order), self.cb):
      batch = order[s:s + self.cb]
      B = next_pow2(len(batch))
      C = max(_MIN_ROW, next_pow2(max(len(enc[g][0]) - 1 for g in batch)))
      tok = np.full((B, C), pad, np.int32)
      val = np.zeros((B, C), bool)
      for b, g in enumerate(batch):
        head = enc[g][0][:-1]
        tok[b, :len(head)], val[b, :len(head)] = head, True
      ctx_cache = _extend(sc.params, sc.prompt_cache, tok, val, graphdef=sc._graphdef)
      rows = [(b, g, o, ids) for b, g in enumerate(batch) for o, ids in zip(ctx_opts[g], enc[g][1])]
      rows.sort(key=lambda r: len(r[3]))
      for r0 in range(0, len(rows), self.rb):
        chunk = rows[r0:r0 + self.rb]
        R = next_pow2(len(chunk))
        L = max(_MIN_ROW, next_pow2(max(len(ids) for *_, ids in chunk) + 1))
        tokens, valid = np.full((R, L), pad, np.int32), np.zeros((R, L), bool)
        targets, tmask = np.zeros((R, L), np.int32), np.zeros((R, L), bool)
        row_ctx = np.zeros((R,), np.int32)
        for r, (b, g, _, ids) in enumerate(chunk):
          row = [enc[g][0][-1]] + list(ids)
          tokens[r, :len(row)], valid[r, :len(row)] = row, True
          targets[r, :len(ids)], tmask[r, :len(ids)] = ids, True
          row_ctx[r] = b
        out = np.asarray(_score_options(sc.params, sc.prompt_cache, ctx_cache, row_ctx, tokens, valid, targets, tmask,
                                        graphdef=sc._graphdef), np.float64)
        for r, (_, g, o, ids) in enumerate(chunk):
          lp[(g, o)], ntok[(g, o)] = float(out[r]), len(ids)
      if progress is not None:
        progress(sum(len(groups[contexts[g]]) for g in batch))
    index = {c: g for g, c in enumerate(contexts)}
    result = []
    for context, options in items:
      g = index[context]
      result.append(Scores(loglik=np.asarray([lp[(g, o)] for o in options]),
                           n_tokens=np.asarray([ntok[(g, o)] for o in options]),
                           greedy=np.zeros(len(options), bool), **option_lengths(options)))
    return result


# ---------------------------------------------------------------- scoring

def _scores_json(s: Scores) -> dict:
  d = {"loglik": [float(x) for x in s.loglik], "n_tokens": [int(x) for x in s.n_tokens],
       "n_bytes": [int(x) for x in s.n_bytes]}
  if s.n_chars is not None:
    d.update(n_chars=[int(x) for x in s.n_chars], choice_bytes=[int(x) for x in s.choice_bytes])
  return d


def _scores_from(d: dict, options: Sequence[str] | None = None) -> Scores:
  """Scores from `_scores_json`; results written before n_chars existed take it from the options' text."""
  k = len(d["loglik"])
  lengths = {"n_bytes": np.asarray(d["n_bytes"])}
  if "n_chars" in d:
    lengths.update(n_chars=np.asarray(d["n_chars"]), choice_bytes=np.asarray(d["choice_bytes"]))
  elif options is not None:
    lengths = option_lengths(options)
  return Scores(loglik=np.asarray(d["loglik"], np.float64), n_tokens=np.asarray(d["n_tokens"]),
                greedy=np.zeros(k, bool), **lengths)


def _fingerprint(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def score_conditions(lm, conditions: Sequence[tuple[str, str]], queries: Sequence[tuple[str, Sequence[str]]],
                     neutral: str | None = None, *, contexts_per_batch: int = 4, rows_per_batch: int = 8,
                     desc: str = "", partial_dir: str | pathlib.Path | None = None, chunk_items: int = 100) -> dict:
  """{condition: {"scores": [...], "unconditional": [...] (with `neutral`), "seconds", "truncated", "prompt_tokens"}}
  for each (name, prompt text): every query's options after prompt + context, and after prompt + neutral.

  With `partial_dir`, each condition's scores are appended to PARTIAL/NAME.jsonl every `chunk_items` items and
  a rerun continues after the last chunk written (a file made for other queries, prompt or model is refused);
  `seconds` then sums every run's chunks."""
  from tqdm import tqdm
  out = {}
  for name, prompt in conditions:
    scorer = SharedContextScorer(Scorer(lm, prompt=prompt), contexts_per_batch=contexts_per_batch,
                                 rows_per_batch=rows_per_batch)
    key = _fingerprint(getattr(lm, "name", ""), prompt, neutral, [[c, list(o)] for c, o in queries], chunk_items)
    chunks: list[dict] = []
    path = None
    if partial_dir is not None:
      path = pathlib.Path(partial_dir) / f"{name}.jsonl"
      if path.exists():
        lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        if not lines or lines[0].get("key") != key:
          raise ValueError(f"{path} holds scores of other queries, prompt or model: move it away to start afresh")
        chunks = lines[1:]
      else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "condition": name, "items": len(queries)}) + "\n")
    done = sum(len(c["scores"]) for c in chunks)
    passes = 1 if neutral is None else 2  # the bar counts the neutral pass's items too
    with tqdm(total=passes * len(queries), initial=passes * done, desc=f"{desc}{name}", unit="item",
              file=sys.stderr, dynamic_ncols=True) as bar:
      for start in range(done, len(queries), chunk_items):
        t0 = time.perf_counter()
        part = queries[start:start + chunk_items]
        truncated_before = scorer.truncated
        c = {"start": start, "scores": [_scores_json(x) for x in scorer.score_many(part, bar.update)]}
        if neutral is not None:
          c["unconditional"] = [_scores_json(x) for x in scorer.score_many([(neutral, o) for _, o in part],
                                                                           bar.update)]
        c.update(truncated=scorer.truncated - truncated_before, seconds=time.perf_counter() - t0)
        chunks.append(c)
        if path is not None:
          with path.open("a") as f:
            f.write(json.dumps(c) + "\n")
    rec = {"prompt_tokens": scorer.scorer.prompt_tokens,
           "scores": [x for c in chunks for x in c["scores"]]}
    if neutral is not None:
      rec["unconditional"] = [x for c in chunks for x in c["unconditional"]]
    rec["truncated_contexts"] = sum(c["truncated"] for c in chunks)
    rec["seconds"] = sum(c["seconds"] for c in chunks)
    out[name] = rec
  return out


# ---------------------------------------------------------------- hhh_alignment analysis

def _acc_record(hits: np.ndarray, clusters: Sequence[str] | None = None, *, seed: int = 0) -> dict:
  k, n = int(hits.sum()), len(hits)
  lo, hi = stats.binomial_ci(k, n)
  rec = {"n": n, "correct": k, "accuracy": k / n, "wilson_lo": lo, "wilson_hi": hi}
  if clusters is not None:
    b = stats.clustered_mean_shift(hits.astype(np.float64), clusters, seed=seed)
    rec["cluster_lo"], rec["cluster_hi"] = b["lo"], b["hi"]
  return rec


def analyse_hhh(items: Sequence[tasks_lib.HHHItem], raw: dict, *, seed: int = 0) -> dict:
  """Accuracy per condition, rule and category; length statistics; paired margin shifts (prompt - no prompt).

  `raw` is `score_conditions`' output (each condition with scores and unconditional scores, item order).
  Bootstrap intervals cluster items by their input text (items that share an input are not independent).
  """
  clusters = [it.input for it in items]
  labels = [np.asarray(it.labels, bool) for it in items]
  cats = list(dict.fromkeys(it.category for it in items))
  pref_bytes = np.asarray([len(it.options[int(np.argmax(l))].encode()) for it, l in zip(items, labels)])
  other_bytes = np.asarray([len(it.options[int(np.argmin(l))].encode()) for it, l in zip(items, labels)])
  out = {"n": len(items), "n_inputs": len(set(clusters)), "rules": list(rules.RULES),
         "length": {"preferred_longer": int((pref_bytes > other_bytes).sum()),
                    "preferred_shorter": int((pref_bytes < other_bytes).sum()),
                    "equal_length": int((pref_bytes == other_bytes).sum()),
                    "preferred_longer_share": float(np.mean(pref_bytes > other_bytes))},
         "conditions": {}}
  margins = {}
  for cond, rec in raw.items():
    sc = [_scores_from(d, [" " + o for o in it.options]) for d, it in zip(rec["scores"], items)]
    unc = ([_scores_from(d, [" " + o for o in it.options]) for d, it in zip(rec["unconditional"], items)]
           if "unconditional" in rec else None)
    c = {"prompt_tokens": rec.get("prompt_tokens"), "seconds": rec.get("seconds"),
         "truncated_contexts": rec.get("truncated_contexts"), "rules": {}}
    for rule in rules.RULES:
      if rule == "pmi" and unc is None:
        continue
      hits = np.asarray([tasks_lib.correct(rules.rule_scores(rule, s, u), l)
                         for s, u, l in zip(sc, unc or [None] * len(sc), labels)])
      r = _acc_record(hits, clusters, seed=seed)
      r["per_category"] = {cat: _acc_record(hits[[it.category == cat for it in items]]) for cat in cats}
      r["hits"] = hits.astype(int).tolist()
      c["rules"][rule] = r
      if rule in rules.MODEL_RULES:
        margins[(cond, rule)] = np.asarray([rules.margin(rule, s, l, u)
                                            for s, u, l in zip(sc, unc or [None] * len(sc), labels)])
    # How much of the sum rule's behaviour is "pick the shorter option"? (byte ties excluded)
    ch_sum = rules.choices("acc", sc)
    ch_short = rules.choices("shorter", sc)
    ok = ch_short >= 0
    c["sum_agrees_with_shorter"] = {"n": int(ok.sum()), "agree": int((ch_sum[ok] == ch_short[ok]).sum()),
                                    "share": float(np.mean(ch_sum[ok] == ch_short[ok]))}
    out["conditions"][cond] = c
  if "prompt" in raw and "no_prompt" in raw:
    shifts, tests = {}, {}
    for rule in rules.RULES:
      if ("prompt", rule) in margins and ("no_prompt", rule) in margins:
        d = margins[("prompt", rule)] - margins[("no_prompt", rule)]
        shifts[rule] = stats.clustered_mean_shift(d, clusters, seed=seed)
      pr, npr = out["conditions"]["prompt"]["rules"], out["conditions"]["no_prompt"]["rules"]
      if rule in pr and rule in npr:
        a, b = np.asarray(pr[rule]["hits"], bool), np.asarray(npr[rule]["hits"], bool)
        tests[rule] = {"accuracy_difference": float(a.mean() - b.mean()), **stats.mcnemar(b, a),
                       "clustered": stats.clustered_mean_shift(a.astype(float) - b.astype(float), clusters,
                                                               seed=seed)}
    out["margin_shift_prompt_minus_no_prompt"] = shifts
    out["accuracy_prompt_minus_no_prompt"] = tests
  return out


def hhh_report_md(res: dict, reviewer: dict | None = None) -> str:
  """report.md: the rules table, categories, length statistics, the paired shifts, and what reproduces."""
  conds = list(res["conditions"])
  L = [f"# hhh_alignment under {len(res['rules'])} scoring rules ({res['model']})", "",
       f"Command: `{res['command']}`", "",
       f"{res['n']} items, {res['n_inputs']} distinct inputs (items that share an input are one cluster). "
       "Accuracy with the Wilson 95% interval [lo, hi] and, in braces, the 95% cluster-bootstrap interval "
       "(resampling inputs). PMI's neutral context: " + f"`{res['neutral_context']!r}`" + " after the same prompt.",
       "", "| rule | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
  for rule in res["rules"]:
    cells = []
    for c in conds:
      r = res["conditions"][c]["rules"].get(rule)
      cells.append("" if r is None else f"{r['accuracy']:.3f} [{r['wilson_lo']:.3f}, {r['wilson_hi']:.3f}] "
                                        f"{{{r['cluster_lo']:.3f}, {r['cluster_hi']:.3f}}}")
    L.append(f"| {rule} | " + " | ".join(cells) + " |")
  for c in conds:
    L += ["", f"Per category, {c}:", "", "| rule | " + " | ".join(
        f"{cat} ({v['n']})" for cat, v in res["conditions"][c]["rules"]["acc"]["per_category"].items()) + " |",
          "|---|" + "---|" * len(res["conditions"][c]["rules"]["acc"]["per_category"])]
    for rule, r in res["conditions"][c]["rules"].items():
      L.append(f"| {rule} | " + " | ".join(f"{v['accuracy']:.3f} [{v['wilson_lo']:.2f}, {v['wilson_hi']:.2f}]"
                                           for v in r["per_category"].values()) + " |")
  ln = res["length"]
  L += ["", "## Length", "",
        f"- The preferred option is longer (UTF-8 bytes) in {ln['preferred_longer']} of {res['n']} items "
        f"({ln['preferred_longer_share']:.3f}), shorter in {ln['preferred_shorter']}, equal in {ln['equal_length']}."]
  for c in conds:
    a = res["conditions"][c]["sum_agrees_with_shorter"]
    L.append(f"- {c}: the sum rule picks the shorter option in {a['agree']} of {a['n']} items ({a['share']:.3f}).")
  if "margin_shift_prompt_minus_no_prompt" in res:
    L += ["", "## The prompt's effect, paired per item", "",
          "Margin = score(preferred) - score(other) under the rule (for sum: the pair's log-odds, nats). Shift = "
          "margin with the prompt minus without; mean over items, 95% cluster-bootstrap interval over inputs. "
          "Accuracy difference: exact McNemar p, and the cluster-bootstrap interval.", "",
          "| rule | margin shift [95% CI] | p (bootstrap) | accuracy diff [95% CI] | McNemar b01 / b10, p |",
          "|---|---|---|---|---|"]
    for rule, t in res["accuracy_prompt_minus_no_prompt"].items():
      s = res["margin_shift_prompt_minus_no_prompt"].get(rule)
      sc = f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}] | {s['p_two_sided']:.3f}" if s else "| "
      cl = t["clustered"]
      L.append(f"| {rule} | {sc} | {t['accuracy_difference']:+.3f} [{cl['lo']:+.3f}, {cl['hi']:+.3f}] | "
               f"{t['b01']} / {t['b10']}, {t['p']:.3f} |")
  if reviewer:
    L += ["", "## The review's numbers (no prompt)", "", "| claim | review | measured | reproduces |",
          "|---|---|---|---|"]
    for key, (claim, value, measured) in reviewer.items():
      # Reproduced = equal at the precision the review stated.
      digits = len(str(value).split(".")[1])
      L.append(f"| {claim} | {value} | {measured:.3f} | {'yes' if round(measured, digits) == value else 'no'} |")
  L += ["", "Timing: " + ", ".join(f"{c} {res['conditions'][c]['seconds']:.0f} s "
                                  f"({res['conditions'][c]['prompt_tokens']}-token prompt, "
                                  f"{res['conditions'][c]['truncated_contexts']} contexts cut to fit)"
                                  for c in conds) + f"; wall time {res['wall_seconds']:.0f} s.", ""]
  return "\n".join(L)


# Numbers from the review of the committed baseline (no prompt), checked by `hhh_report_md`. Its per-byte figure
# (0.624) divided by the bytes of " " + option, a rule hhh no longer computes; acc_bytes leaves the space out.
REVIEW_CLAIMS = {"acc": ("accuracy, sum", 0.41), "per_token": ("accuracy, per token", 0.548),
                 "pmi": ("accuracy, PMI", 0.615),
                 "longer_share": ("preferred option longer", 0.63), "shorter_explains": ("sum picks the shorter", 0.85)}


def review_check(res: dict) -> dict:
  c = res["conditions"].get("no_prompt")
  if c is None:
    return {}
  measured = {rule: c["rules"][rule]["accuracy"] for rule in ("acc", "per_token", "pmi")
              if rule in c["rules"]}
  measured["longer_share"] = res["length"]["preferred_longer_share"]
  measured["shorter_explains"] = c["sum_agrees_with_shorter"]["share"]
  return {k: (REVIEW_CLAIMS[k][0], REVIEW_CLAIMS[k][1], v) for k, v in measured.items()}


def hhh_queries(items, in_prefix: str, out_prefix: str) -> list[tuple[str, list[str]]]:
  """The queries of `hhh.evals.tasks.hhh_alignment`: "{in}{input}{out}", options with a leading space."""
  return [(f"{in_prefix}{it.input}{out_prefix}", [" " + o for o in it.options]) for it in items]


def run_hhh(lm, data, *, prompt_text: str, limit: int = 0, contexts_per_batch: int = 4,
            rows_per_batch: int = 8, seed: int = 0, partial_dir=None) -> tuple[dict, dict]:
  """(raw scores, analysis) of hhh_alignment with no prompt and with `prompt_text` (resumable: `score_conditions`)."""
  items, in_prefix, out_prefix = tasks_lib.read_hhh_alignment(data)
  if limit:
    items = items[:limit]
  neutral = f"{in_prefix}{out_prefix}"
  conditions = [("no_prompt", "")] + ([("prompt", prompt_text)] if prompt_text else [])
  raw = score_conditions(lm, conditions, hhh_queries(items, in_prefix, out_prefix), neutral,
                         contexts_per_batch=contexts_per_batch, rows_per_batch=rows_per_batch,
                         desc="hhh_alignment ", partial_dir=partial_dir)
  res = analyse_hhh(items, raw, seed=seed)
  res["neutral_context"] = neutral
  return raw, res


# ---------------------------------------------------------------- the alignment tax on HellaSwag

def hellaswag_subset(tasks_list: Sequence, n: int, seed: int) -> list[int]:
  """Indices of a fixed seeded sample of n tasks (sorted), or all of them when n <= 0 or n >= len."""
  if n <= 0 or n >= len(tasks_list):
    return list(range(len(tasks_list)))
  return sorted(np.random.default_rng(seed).choice(len(tasks_list), size=n, replace=False).tolist())


TAX_METRICS = ("acc", "acc_norm", "acc_bytes")


def analyse_tax(labels: Sequence[int], raw: dict, *, options: Sequence[Sequence[str]] | None = None,
                seed: int = 0) -> dict:
  """acc, acc_norm and acc_bytes (lm-eval's definitions, `hhh.evals.rules`) per condition, and prompt - no prompt
  paired per item (McNemar, bootstrap, power). `options`: each task's scored continuations, for raw scores
  written before they carried the options' characters."""
  out = {"n": len(labels), "conditions": {}, "prompt_minus_no_prompt": {}}
  hits = {}
  for cond, rec in raw.items():
    sc = [_scores_from(d, options[i] if options is not None else None) for i, d in enumerate(rec["scores"])]
    c = {"prompt_tokens": rec.get("prompt_tokens"), "seconds": rec.get("seconds"),
         "truncated_contexts": rec.get("truncated_contexts")}
    for metric in TAX_METRICS:
      rule = metric
      onehot = lambda s, t: [int(i == t) for i in range(len(s.loglik))]
      h = np.asarray([tasks_lib.correct(rules.rule_scores(rule, s), onehot(s, t)) for s, t in zip(sc, labels)])
      hits[(cond, metric)] = h
      c[metric] = _acc_record(h)
    out["conditions"][cond] = c
  if "prompt" in raw and "no_prompt" in raw:
    for metric in TAX_METRICS:
      a, b = hits[("prompt", metric)], hits[("no_prompt", metric)]
      mc = stats.mcnemar(b, a)
      diff = stats.paired_difference(a.astype(float), b.astype(float), seed=seed)
      share = (mc["b01"] + mc["b10"]) / len(a)
      out["prompt_minus_no_prompt"][metric] = {
          **diff, "mcnemar": mc, "discordant_share": share,
          # Smallest true difference this n detects with 80% power at the 5% level (paired, normal approx.).
          "mde_80_power": stats.paired_mde(share, len(a))}
  return out


def run_tax(lm, data, *, prompt_text: str, n: int, seed: int = 0, contexts_per_batch: int = 4,
            rows_per_batch: int = 8, partial_dir=None) -> tuple[dict, dict]:
  """(raw scores, analysis) of HellaSwag validation on a seeded subset of n tasks, without and with the prompt
  (resumable: `score_conditions`)."""
  all_tasks = tasks_lib.read_hellaswag(data)
  idx = hellaswag_subset(all_tasks, n, seed)
  chosen = [all_tasks[i] for i in idx]
  queries = [(f"{t.activity_label}: {t.ctx}", [" " + e for e in t.endings]) for t in chosen]
  raw = score_conditions(lm, [("no_prompt", ""), ("prompt", prompt_text)], queries,
                         contexts_per_batch=contexts_per_batch, rows_per_batch=rows_per_batch, desc="hellaswag ",
                         partial_dir=partial_dir)
  res = analyse_tax([t.label for t in chosen], raw, options=[o for _, o in queries], seed=seed)
  res.update(indices=idx, subset_seed=seed, n_available=len(all_tasks),
             query_format="'{activity_label}: {ctx}' + ' {ending}'")
  return raw, res


def tax_report_md(res: dict) -> str:
  L = [f"# Alignment tax on HellaSwag ({res['model']}, {res['prompt']} prompt)", "",
       f"Command: `{res['command']}`", "",
       f"{res['n']} validation tasks of {res['n_available']}, a fixed sample (seed {res['subset_seed']}); both "
       "conditions score the same tasks. acc: summed log-likelihood; acc_norm: per character of the ending; "
       "acc_bytes: per UTF-8 byte of the ending (lm-eval's definitions; the ending without its leading space). "
       "Wilson 95% intervals.", "", "| metric | no_prompt | prompt | prompt - no_prompt [95% paired bootstrap] | "
       "McNemar b01 / b10, p | detectable at 80% power |", "|---|---|---|---|---|---|"]
  for metric in (m for m in TAX_METRICS if m in res["prompt_minus_no_prompt"]):
    cells = [f"{res['conditions'][c][metric]['accuracy']:.3f} [{res['conditions'][c][metric]['wilson_lo']:.3f}, "
             f"{res['conditions'][c][metric]['wilson_hi']:.3f}]" for c in ("no_prompt", "prompt")]
    d = res["prompt_minus_no_prompt"][metric]
    L.append(f"| {metric} | " + " | ".join(cells) + f" | {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | "
             f"{d['mcnemar']['b01']} / {d['mcnemar']['b10']}, {d['mcnemar']['p']:.3f} | ±{d['mde_80_power']:.3f} |")
  L += ["", "b01: items right only with the prompt; b10: right only without it. The last column is the smallest "
        "true difference this n would detect with 80% power at the 5% level (paired normal approximation, from "
        "the observed share of discordant items).", "",
        "Timing: " + ", ".join(f"{c} {res['conditions'][c]['seconds']:.0f} s" for c in res["conditions"]) +
        f"; wall time {res['wall_seconds']:.0f} s.", ""]
  return "\n".join(L)
