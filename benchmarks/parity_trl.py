"""hhh's PM training loss against TRL's RewardTrainer, step by step, from the same weights on the same batches.

    python benchmarks/parity_trl.py [--control]   # 5-10 min on 2 cores: benchmarks/results/parity_trl.{json,png}

Both sides train a ranked (Bradley-Terry) PM for 30 steps in fp32:
- the weights: one hhh init of the `13m` family size with SmolLM2-135M-Instruct's tokenizer (49,152 tokens),
  written once as an hhh checkpoint (`init_from=` for hhh) and once, through a reward bundle, as the HF directory
  `hhh export --format hf` writes (`LlamaForSequenceClassification`, which TRL loads from the path);
- the data: real HH-RLHF comparisons (the four test files in ../shared/data/hh_rlhf, read by hhh's loader: the
  context is the dialogue up to the last "Assistant:"), in a seeded order, keeping those whose sequences fit in
  256 tokens so neither side cuts anything (TRL would drop a longer one, hhh would cut its context);
- the hhh side is the real `hhh train` (`hhh.train.loop.train`) with log_every=1; its per-step `loss` comes from
  WORKDIR/metrics.jsonl;
- the TRL side is `trl.RewardTrainer` fed hhh's batches: the batch order is hhh's batch plan for the run's data seed
  (one length bucket, so one epoch of 30 batches is a permutation of them), and TRL reads it with a sequential
  sampler and per_device_train_batch_size = hhh's batch_size. It gets hhh's token ids per sequence
  (context + response + <eoc>), so both read the reward at the same token;
- the same AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices and embeddings, none on norms), the
  same schedule (linear warmup over 3 steps, then cosine to 0.1 of the peak: optax's warmup_cosine_decay_schedule
  and HF's cosine_with_min_lr are the same function) and global-norm clipping at 1.0.

The JSON also holds each side's per-step gradient norm (before clipping) and learning rate, and the rewards of the
first batch from the initial weights on both sides. When `data.pack` exists in hhh's config, hhh runs twice, packed
and unpacked, and both are compared with TRL. `--control` adds an hhh run with one known mismatch (its own default
b2=0.95), to show how far a real difference moves the curve.

What differs between the two unless set, and how it is matched here:
- tokens: TRL's text path appends `eos_token` to the text and then tokenizes with `add_special_tokens=True`; the
  export's eos_token is <eoc> and its post-processor appends <eoc> too, so every sequence would end <eoc><eoc> and
  TRL would read the reward at the second one (`trl_text_tokenization` counts it). TRL gets hhh's ids instead
  (`chosen_ids`/`rejected_ids`, which it takes as already processed). Joining context and response before
  tokenizing gives the same ids as hhh's separate encodings on all these rows.
- length: TRL drops a row longer than max_length (a filter, not a cut); hhh cuts the context from the left. Only
  comparisons that fit are used.
- the reward token: hhh reads the last valid token, transformers the last non-pad one; both are <eoc> under right
  padding with pad != <eoc> (checked: the first batch's rewards agree to 1e-6).
- the head's bias: hhh's head has one, HF's `score` none (the export keeps it in config.json). The pairwise loss
  does not depend on it, its gradient is exactly 0 and hhh does not decay vectors, so it never moves.
- optimizer: HF's AdamW defaults are b2=0.999 and no weight decay, hhh's b2=0.95 and 0.01: both are set. HF decays
  every parameter whose name has no bias/norm in it, hhh every one with ndim >= 2: the same set here (the norms'
  scales are the only exempt ones on both sides; embeddings and the reward head are decayed on both).
- schedule: HF's default is linear decay to 0; both use warmup + cosine to min_lr_ratio (the same function).
- clipping: optax scales by clip/norm, torch by clip/(norm + 1e-6): a 1e-6 relative difference on clipped steps.
- TRL defaults to bf16 and gradient checkpointing, and to a random sampler; here fp32, off, and sequential. Its
  logged loss is rounded to 4 decimals, so the TRL side records the unrounded loss from `compute_loss`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent.parent / "shared" / "data" / "hh_rlhf"


def select(comparisons, tok, n: int, max_len: int, seed: int):
  """The first `n` comparisons of a seeded order whose two sequences (with <eoc>) fit in `max_len` tokens."""
  out = []
  for i in np.random.default_rng(seed).permutation(len(comparisons)):
    c = comparisons[i]
    ctx = len(tok.encode(c.context))
    if all(ctx + len(tok.encode(r)) + 1 <= max_len for r in c.responses):
      out.append(c)
      if len(out) == n:
        break
  if len(out) < n:
    raise ValueError(f"only {len(out)} comparisons fit in {max_len} tokens; {n} wanted")
  return out


def write_jsonl(comparisons, path):
  with open(path, "w") as f:
    for c in comparisons:
      f.write(json.dumps({"context": c.context, "responses": list(c.responses), "scores": list(c.scores),
                          "id": c.id}) + "\n")


def write_weights(out: pathlib.Path, size: str, tok, max_len: int, seed: int):
  """One random hhh init as an hhh checkpoint (out/init) and as an HF directory (out/hf); returns (cfg, params)."""
  import jax
  from hhh.model import family
  from hhh.pretrained import LM
  from hhh.pretrained.convert import save_checkpoint
  from hhh.reward import hf_export
  from hhh.model.params import graphdef_and_params
  import shutil
  for d in ("init", "bundle", "hf"):
    shutil.rmtree(out / d, ignore_errors=True)  # this script's own earlier outputs
  cfg = family.get(size, vocab_size=tok.vocab_size, max_len=max_len)
  _, params = graphdef_and_params(cfg, jax.random.key(seed))
  save_checkpoint(LM(cfg, params, tok, f"{size} init"), out / "init")
  norm = {"mean": 0.0, "std": 1.0, "n": 0, "reference": None}
  hf_export.write_bundle(out / "bundle", cfg, params, tok, objective="ranked", max_len=max_len, normalization=norm)
  hf_export.export_hf(out / "bundle", out / "hf")
  return cfg, params


def train_config(a, workdir: pathlib.Path, **data_extra):
  from hhh import config as config_lib
  return config_lib.TrainConfig(
      objective="ranked",
      data=config_lib.DataConfig(train=str(workdir.parent / "train.jsonl"), validation=str(workdir.parent /
                                 "valid.jsonl"), max_len=a.max_len, buckets=(a.max_len,), max_k=2, **data_extra),
      optim=config_lib.OptimConfig(lr=a.lr, warmup_steps=a.warmup, min_lr_ratio=a.min_lr_ratio,
                                   weight_decay=a.weight_decay, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0),
      batch_size=a.batch_size, steps=a.steps, seed=a.seed, log_every=1, eval_every=10**9, checkpoint_every=10**9,
      keep_checkpoints=1, init_from=str(workdir.parent / "init"), peak_tflops=1.0, progress=False)


def hhh_batch_order(cfg, examples) -> list[int]:
  """Example indices in the order `hhh train` steps through them: its batch plan for the run's data seed."""
  import jax
  from hhh.data import pipeline
  from hhh.train import loop
  # The loop's data seed, drawn from its named "data" stream (hhh/train/loop.py, `_train`).
  data_seed = int(jax.random.randint(loop._named_keys(cfg.seed)["data"], (), 0, 2**31 - 1))
  plan = pipeline._BatchPlan([e.length for e in examples], cfg.batch_size, cfg.data.buckets, data_seed,
                             shuffle=True, epochs=None)
  order = [int(i) for s in range(cfg.steps) for i in plan[s][1]]
  # The same first batch as the loop's own iterator (when it yields [B, K, L] rows), as a guard against drift.
  src = pipeline.BatchSource(examples, batch_size=cfg.batch_size, max_k=2, buckets=cfg.data.buckets, pad_id=0,
                             seed=data_seed)
  first = next(src.train_iter())
  if "tokens" in first and first["tokens"].ndim == 3:
    want = [examples[i].seqs[0].tolist() for i in order[:cfg.batch_size]]
    got = [row[0, :n[0]].tolist() for row, n in zip(first["tokens"], first["lengths"])]
    if want != got:
      raise RuntimeError("hhh's batch plan no longer reproduces the training iterator's first batch")
  return order


def run_hhh(cfg, workdir: pathlib.Path) -> dict:
  import shutil
  from hhh.train import loop
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.perf_counter()
  loop.train(cfg, workdir)
  wall = time.perf_counter() - t0
  recs = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = sorted((r for r in recs if r["split"] == "train"), key=lambda r: r["step"])
  assert [r["step"] for r in train] == list(range(1, cfg.steps + 1)), "log_every=1 should log every step"
  return {"loss": [r["loss"] for r in train], "grad_norm": [r["grad_norm"] for r in train],
          "lr": [r["lr"] for r in train], "wall_s": wall}


def run_trl(a, hf_dir: pathlib.Path, rows: list[dict]) -> dict:
  import torch
  from transformers import TrainerCallback
  from trl import RewardTrainer
  import trl_side

  rec = {"loss": [], "grad_norm": [], "lr": []}

  class Recording(RewardTrainer):
    """Records each step's loss unrounded (the trainer's log rounds it to 4 decimals) and its gradient norm."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
      out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
      if self.model.training:
        rec["loss"].append(float((out[0] if return_outputs else out).detach()))
      return out

    def _clip_grad_norm(self, model):
      norm = super()._clip_grad_norm(model)
      rec["grad_norm"].append(float(norm))
      return norm

  class LR(TrainerCallback):
    def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
      rec["lr"].append(float(optimizer.param_groups[0]["lr"]))  # the rate this step used

  torch.manual_seed(a.seed)
  args = trl_side.reward_config(
      hf_dir.parent / "trl_out", batch_size=a.batch_size, max_length=a.max_len, mode="default", lr=a.lr,
      weight_decay=a.weight_decay, max_grad_norm=1.0, lr_scheduler_type="cosine_with_min_lr",
      lr_scheduler_kwargs={"min_lr_rate": a.min_lr_ratio}, warmup_steps=a.warmup, max_steps=a.steps,
      seed=a.seed)
  trainer = trl_side.make_trainer(hf_dir, rows, args, callbacks=[LR()], trainer_cls=Recording)
  decay = set(trainer.get_decay_parameter_names(trainer.model))
  no_decay = sorted(n for n, _ in trainer.model.named_parameters() if n not in decay)
  t0 = time.perf_counter()
  trainer.train()
  rec["wall_s"] = time.perf_counter() - t0
  opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
  defaults = {k: v for k, v in opt.defaults.items() if isinstance(v, (int, float, bool, tuple))}
  rec["optimizer"] = {"class": f"{type(opt).__module__}.{type(opt).__name__}", "defaults": defaults,
                      "no_weight_decay": no_decay}
  return rec


def initial_rewards(params, cfg, hf_dir, examples, order, batch_size) -> dict:
  """Both sides' rewards for the first batch's chosen and rejected sequences, from the initial weights."""
  import jax.numpy as jnp
  import torch
  from transformers import AutoModelForSequenceClassification
  from hhh.reward.api import make_reward_fn
  from hhh.reward import hf_export
  seqs = [s for i in order[:batch_size] for s in examples[i].seqs]
  L = max(len(s) for s in seqs)
  pad = json.loads((hf_dir / "config.json").read_text())["pad_token_id"]
  tokens = np.full((len(seqs), L), pad, np.int32)
  for j, s in enumerate(seqs):
    tokens[j, :len(s)] = s
  lengths = np.array([len(s) for s in seqs], np.int32)
  ours = np.asarray(make_reward_fn(cfg)(params, jnp.asarray(tokens), jnp.asarray(lengths)))
  rm = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    ids = torch.as_tensor(tokens, dtype=torch.long)
    logits = rm(input_ids=ids, attention_mask=(torch.arange(L)[None] < torch.as_tensor(lengths)[:, None]).long())
  bias = rm.config.hhh_reward["reward_bias"]
  theirs = logits.logits[:, 0].numpy() + bias
  return {"hhh": ours.tolist(), "hf_plus_bias": theirs.tolist(), "max_abs_diff": float(np.abs(ours - theirs).max()),
          "reward_bias": bias, "meta_key": hf_export.META}


def plot(res, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, dx) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
  steps = res["steps"]
  ax.plot(steps, res["trl_loss"], "-o", ms=3, lw=1.5, label="TRL RewardTrainer")
  packed = " (packed)" if res.get("hhh_pack") else ""
  ax.plot(steps, res["hhh_loss"], "--x", ms=4, lw=1.2, label=f"hhh train{packed}")
  if "hhh_loss_unpacked" in res:
    ax.plot(steps, res["hhh_loss_unpacked"], ":", lw=1.2, label="hhh train (unpacked)")
  ax.set_ylabel("training loss (-log sigmoid(r_chosen - r_rejected))")
  s = res["settings"]
  ax.set_title(f"hhh vs TRL on HH-RLHF: {s['model']} with SmolLM2's tokenizer, B={s['batch_size']}, fp32",
               fontsize=10)
  ax.legend()
  ax.grid(alpha=0.3)
  # Steps where the two losses are bit-equal are drawn at the floor of the log axis.
  floor = 1e-8
  dx.plot(steps, np.maximum(np.abs(np.array(res["hhh_loss"]) - np.array(res["trl_loss"])), floor), "-", color="k",
          lw=1, label="|hhh - TRL| (0 drawn at 1e-8)")
  if "control" in res:
    c = res["control"]
    dx.plot(steps, np.maximum(np.abs(np.array(c["hhh_loss"]) - np.array(res["trl_loss"])), floor), ":",
            color="gray", lw=1, label=f"control: hhh with {c['what']}")
  dx.axhline(1e-3, color="r", lw=0.8, ls="--", label="goal 1e-3")
  dx.set_yscale("log")
  dx.set_ylabel("|hhh - TRL|")
  dx.set_xlabel("step")
  dx.legend(fontsize=8)
  dx.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default="/tmp/hhh-parity-trl")
  ap.add_argument("--out", default=str(HERE / "results" / "parity_trl.json"))
  ap.add_argument("--model", default="13m", help="hhh family size (with SmolLM2's tokenizer)")
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--max-len", type=int, default=256)
  ap.add_argument("--lr", type=float, default=3e-4)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--min-lr-ratio", type=float, default=0.1)
  ap.add_argument("--weight-decay", type=float, default=0.01)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--control", action="store_true",
                  help="also run hhh once with its own default b2=0.95 (TRL: 0.999): how far a real mismatch moves")
  a = ap.parse_args()
  from hhh import config as config_lib
  from hhh.data import pipeline
  from hhh.pretrained import load_lm
  import trl_side

  work = pathlib.Path(a.workdir)
  work.mkdir(parents=True, exist_ok=True)
  load0 = list(os.getloadavg())
  tok = load_lm("smollm2-135m-instruct").tokenizer
  every = trl_side.load_comparisons(str(DATA))
  n_train = a.steps * a.batch_size  # exactly one epoch: the 30 steps see every comparison once
  chosen = select(every, tok, n_train + a.batch_size, a.max_len, a.seed)
  write_jsonl(chosen[:n_train], work / "train.jsonl")
  write_jsonl(chosen[n_train:], work / "valid.jsonl")
  cfg_model, params = write_weights(work, a.model, tok, a.max_len, a.seed)

  has_pack = "pack" in {f.name for f in dataclasses.fields(config_lib.DataConfig)}
  cfg = train_config(a, work / "hhh")
  examples, stats = pipeline.encode_all(chosen[:n_train], tok, a.max_len, 2)
  assert not (stats.contexts_truncated or stats.responses_truncated), "selected comparisons must fit"
  order = hhh_batch_order(cfg, examples)
  assert sorted(order) == list(range(n_train)), "one epoch visits every comparison once"
  rows = [{"chosen_ids": examples[i].seqs[0].tolist(), "rejected_ids": examples[i].seqs[1].tolist()} for i in order]

  # TRL's own text path, for the record: it appends eos_token (<eoc> in the export) to the text, then tokenizes
  # with add_special_tokens=True, and the export's post-processor appends <eoc> again.
  from transformers import AutoTokenizer
  ht = AutoTokenizer.from_pretrained(work / "hf")
  text_path = {"rows": 0, "equal": 0, "one_extra_eoc": 0}
  for i in order:
    c = chosen[i]
    for k, r in enumerate(c.responses):
      ids = ht(text=c.context + r + ht.eos_token)["input_ids"]
      ours = examples[i].seqs[k].tolist()
      text_path["rows"] += 1
      text_path["equal"] += ids == ours
      text_path["one_extra_eoc"] += ids == ours + [tok.eoc_id]

  init = initial_rewards(params, cfg_model, work / "hf", examples, order, a.batch_size)
  print(f"parity: initial rewards, first batch: max |hhh - (HF + bias)| = {init['max_abs_diff']:.2e}", flush=True)
  runs = {}
  for pack in ([True, False] if has_pack else [None]):
    extra = {} if pack is None else {"pack": pack}
    name = "hhh" if pack in (None, True) else "hhh_unpacked"
    print(f"parity: {name}: hhh train, {a.steps} steps", flush=True)
    runs[name] = run_hhh(train_config(a, work / name, **extra), work / name)
  if a.control:
    print("parity: control: hhh train with b2=0.95", flush=True)
    ccfg = train_config(a, work / "control")
    ccfg = dataclasses.replace(ccfg, optim=dataclasses.replace(ccfg.optim, b2=0.95))
    runs["control"] = run_hhh(ccfg, work / "control")
  print(f"parity: TRL RewardTrainer, {a.steps} steps", flush=True)
  trl = run_trl(a, work / "hf", rows)

  hhh = runs["hhh"]
  diff = np.abs(np.array(hhh["loss"]) - np.array(trl["loss"]))
  res = {
      "steps": list(range(1, a.steps + 1)), "hhh_loss": hhh["loss"], "trl_loss": trl["loss"],
      "max_abs_diff": float(diff.max()), "goal": 1e-3, "passed": bool(diff.max() <= 1e-3),
      "hhh_pack": bool(has_pack),
  }
  if "hhh_unpacked" in runs:
    u = np.array(runs["hhh_unpacked"]["loss"])
    res.update(hhh_loss_unpacked=u.tolist(), max_abs_diff_unpacked=float(np.abs(u - np.array(trl["loss"])).max()),
               max_abs_diff_packed_vs_unpacked=float(np.abs(u - np.array(hhh["loss"])).max()))
  if "control" in runs:
    c = np.array(runs["control"]["loss"])
    res["control"] = {"what": "b2=0.95 (hhh's default)", "hhh_loss": c.tolist(),
                      "max_abs_diff": float(np.abs(c - np.array(trl["loss"])).max())}
  res.update({
      "grad_norm": {"hhh": hhh["grad_norm"], "trl": trl["grad_norm"],
                    "max_rel_diff": float(np.max(np.abs(np.array(hhh["grad_norm"]) - trl["grad_norm"]) /
                                                 np.array(trl["grad_norm"])))},
      "lr": {"hhh": hhh["lr"], "trl": trl["lr"], "max_abs_diff": float(np.max(np.abs(np.array(hhh["lr"]) -
                                                                                     trl["lr"])))},
      "initial_rewards_first_batch": init,
      "trl_text_tokenization": text_path,
      "trl_optimizer": trl["optimizer"],
      "wall_s": {"hhh": hhh["wall_s"], "trl": trl["wall_s"]},
      "settings": {
          "model": a.model, "params": int(sum(np.asarray(x).size for x in __import__("jax").tree.leaves(params))),
          "tokenizer": "SmolLM2-135M-Instruct (GGUF)", "data": "HH-RLHF test files (4), seeded order, both "
          f"sequences <= {a.max_len} tokens with <eoc>", "comparisons": n_train, "batch_size": a.batch_size,
          "steps": a.steps, "max_len": a.max_len, "dtype": "float32",
          "optimizer": {"lr": a.lr, "schedule": f"linear warmup {a.warmup} steps, cosine to {a.min_lr_ratio} x lr "
                        f"at step {a.steps}", "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": a.weight_decay,
                        "clip_norm": 1.0},
          "trl": {"lr_scheduler_type": "cosine_with_min_lr", "min_lr_rate": a.min_lr_ratio,
                  "warmup_steps": a.warmup, "train_sampling_strategy": "sequential", "gradient_checkpointing": False,
                  "bf16": False},
          "seed": a.seed,
      },
      "loadavg": {"start": load0, "end": list(os.getloadavg())},
      "versions": _versions(),
  })
  out = pathlib.Path(a.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=1) + "\n")
  plot(res, out.with_suffix(".png"))
  print(f"parity: max |hhh - TRL| over {a.steps} steps = {res['max_abs_diff']:.2e} (goal 1e-3); wrote {out}")


def _versions():
  import importlib.metadata as md
  return {p: md.version(p) for p in ("jax", "flax", "optax", "torch", "transformers", "trl")}


if __name__ == "__main__":
  main()
