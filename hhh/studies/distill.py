"""Context distillation: a student without the prompt learns the prompted teacher's next-token distributions.

The teacher is the frozen model conditioned on a prompt P (the HHH prompt); the student starts as a copy of
the same weights and sees only the text x. Over a text set the student minimises

    KL(p(. | P, x_<t) || p_theta(. | x_<t))   summed over the vocabulary, averaged over the positions t of x,

so that afterwards it behaves as if the prompt were there, without paying for it at inference. The text set
is dialogue-shaped text sampled from the prompted teacher itself (starting each sample at "\\n\\nHuman:"),
which the project can produce offline from the model alone.

The prompt's KV cache is computed once and read by every batch row as one shared prefix, for sampling and for
the teacher's targets alike: a batch never recomputes the prompt, and no row copies it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from hhh.config import OptimConfig
from hhh.evals import score as score_lib
from hhh.generate import sample_logits
from hhh.model.transformer import prefix_slots
from hhh.train.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  model: str = "smollm2-135m-instruct"   # any `hhh.pretrained.load_lm` spec
  prompt: str = "hhh"                     # "hhh" (data/prompts/hhh.txt) or a prompt file
  start: str = "\n\nHuman:"               # every sampled text begins here (after the prompt, for the teacher)
  samples: int = 64                       # texts sampled from the prompted teacher
  sample_tokens: int = 96                 # tokens per sampled text (after `start`)
  temperature: float = 1.0
  top_p: float = 0.95
  steps: int = 40
  batch_size: int = 4
  lr: float = 1e-5
  warmup_steps: int = 5
  seed: int = 0
  log_every: int = 5


def prompt_text(spec: str) -> str:
  """"hhh" -> data/prompts/hhh.txt; "none" -> ""; else a file path (the same specs as `hhh eval --prompt`)."""
  from hhh.evals.commands import resolve_prompt
  return resolve_prompt(spec)[1]


def prefill(graphdef, params, prompt_ids) -> dict:
  """The prompt's cache (batch 1, padded to whole 512-token prefill chunks), read by every row as one shared
  prefix (`Transformer(prefix=...)`): rows never copy it."""
  P, chunk = prefix_slots(len(prompt_ids))
  tokens_1xP = np.zeros((1, P), np.int32)
  tokens_1xP[0, :len(prompt_ids)] = prompt_ids
  return score_lib.prefill(params, tokens_1xP, np.arange(P)[None] < len(prompt_ids), graphdef=graphdef,
                            chunk=chunk)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "pad_id"))
def _sample(params, prefix, start_BxS, keys_B, temperature, top_p, *, graphdef, steps: int, pad_id: int):
  """Continues `start` after the prompt (a shared prefix) for `steps` tokens: ids [B, steps]. Each row's cache
  holds only its own start + sampled tokens."""
  model = nnx.merge(graphdef, params)
  B, S = start_BxS.shape
  cache = model.init_cache(B, S + steps, dtype=jnp.dtype(model.cfg.dtype))
  cache["next_pos"] = jnp.broadcast_to(prefix["next_pos"], (B,))
  h, cache = model(start_BxS, jnp.ones_like(start_BxS, bool), cache=cache, prefix=prefix)
  logits_BxV = model.lm_logits(h[:, -1])

  def body(t, carry):
    cache, logits_BxV, out_BxT = carry
    logits_BxV = logits_BxV.at[:, pad_id].set(-jnp.inf)
    key_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, t)
    next_B = sample_logits(logits_BxV, key_B, temperature, top_p, greedy=False, use_top_p=True)
    out_BxT = out_BxT.at[:, t].set(next_B)
    h, cache = model(next_B[:, None], jnp.ones((B, 1), bool), cache=cache, prefix=prefix)
    return cache, model.lm_logits(h[:, 0]), out_BxT

  _, _, out_BxT = jax.lax.fori_loop(0, steps, body, (cache, logits_BxV, jnp.zeros((B, steps), jnp.int32)))
  return out_BxT


def sample_texts(lm, prompt_ids, cfg: DistillConfig) -> list[list[int]]:
  """`cfg.samples` token sequences (start + sampled continuation) from the prompted model."""
  start = lm.tokenizer.encode(cfg.start)
  graphdef = lm.graphdef
  cache = prefill(graphdef, lm.params, prompt_ids)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)  # the "sample" stream
  out = []
  B = cfg.batch_size * 2
  for i in tqdm(range(0, cfg.samples, B), desc="sample texts", unit="batch", dynamic_ncols=True):
    n = min(B, cfg.samples - i)
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(i, i + B))
    start_BxS = jnp.asarray([start] * B, jnp.int32)
    ids = np.asarray(_sample(lm.params, cache, start_BxS, keys_B, jnp.float32(cfg.temperature),
                             jnp.float32(cfg.top_p), graphdef=graphdef, steps=cfg.sample_tokens,
                             pad_id=lm.tokenizer.pad_id))
    out.extend([start + row.tolist() for row in ids[:n]])
  return out


def distill_loss(student_logits_BxLxV, teacher_logits_BxLxV, mask_BxL):
  """Mean over masked positions of KL(teacher || student) at each position; returns (loss, metrics)."""
  t_logp = jax.nn.log_softmax(teacher_logits_BxLxV.astype(jnp.float32), axis=-1)
  s_logp = jax.nn.log_softmax(student_logits_BxLxV.astype(jnp.float32), axis=-1)
  kl_BxL = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)
  m = mask_BxL.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  loss = (kl_BxL * m).sum() / n
  agree = ((jnp.argmax(t_logp, -1) == jnp.argmax(s_logp, -1)) * m).sum() / n
  return loss, {"kl": loss, "top1_agreement": agree}


def teacher_logits(graphdef, params, prefix, tokens_BxL):
  """Next-token logits of the prompted teacher at every position of x (the prompt a shared prefix)."""
  model = nnx.merge(graphdef, params)
  return model.lm_logits(model(tokens_BxL, jnp.ones_like(tokens_BxL, bool), prefix=prefix))


def train_step(state, tokens_BxL, teacher_params, cache, *, graphdef, tx):
  """One student update. Position t's target is the teacher's distribution over x_{t+1}; the student's first
  position has no context and the teacher's last position predicts past x, so both ends are dropped."""
  t_logits = jax.lax.stop_gradient(teacher_logits(graphdef, teacher_params, cache, tokens_BxL))

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    s_logits = model.lm_logits(model(tokens_BxL))
    mask = jnp.ones(tokens_BxL.shape, bool).at[:, -1].set(False)
    return distill_loss(s_logits, t_logits, mask)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def distill(cfg: DistillConfig, out_dir, lm=None, force: bool = False) -> dict:
  """Samples the text set, trains the student, writes OUT/{student checkpoint, texts.jsonl, metrics.jsonl}.
  OUT appears when all is written; it is refused, or with `force` replaced, as hhh/outdir.py says."""
  from hhh import outdir
  sources = [cfg.model] if pathlib.Path(cfg.model).exists() else []  # an hhh run or HF dir as the teacher
  with outdir.staged(out_dir, "hhh distill", sources=sources, force=force) as tmp:
    tmp.mkdir()
    return _distill(cfg, tmp, lm)


def _distill(cfg: DistillConfig, out_dir: pathlib.Path, lm) -> dict:
  from hhh.pretrained import load_lm
  from hhh.pretrained.convert import write_checkpoint
  lm = lm or load_lm(cfg.model)
  prompt = prompt_text(cfg.prompt)
  if not prompt:
    raise ValueError("context distillation needs a prompt (prompt='none' distills nothing)")
  prompt_ids = lm.tokenizer.encode(prompt)
  t0 = time.perf_counter()
  texts = sample_texts(lm, prompt_ids, cfg)
  with open(out_dir / "texts.jsonl", "w", encoding="utf-8") as f:
    for ids in texts:
      f.write(json.dumps({"text": lm.tokenizer.decode(ids)}, ensure_ascii=False) + "\n")
  sample_s = time.perf_counter() - t0
  graphdef = lm.graphdef
  L = len(texts[0])
  cache = prefill(graphdef, lm.params, prompt_ids)
  # Adam without clipping or weight decay: hhh's AdamW with those off is the same update.
  tx, _ = make_optimizer(OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=0.1, weight_decay=0.0,
                                     b1=0.9, b2=0.999, eps=1e-8, clip_norm=math.inf), cfg.steps)
  teacher = lm.params
  student = jax.tree.map(jnp.array, lm.params)   # a copy: the teacher stays frozen
  state = {"params": student, "opt_state": tx.init(student), "step": jnp.int32(0)}
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx), donate_argnums=0)
  data_NxL = np.asarray(texts, np.int32)
  rng = np.random.default_rng(cfg.seed)
  order = np.concatenate([rng.permutation(len(data_NxL)) for _ in range(-(-cfg.steps * cfg.batch_size
                                                                            // len(data_NxL)))])
  log = open(out_dir / "metrics.jsonl", "w", encoding="utf-8")
  pending, history = None, []
  bar = tqdm(total=cfg.steps, desc="distill", dynamic_ncols=True)
  t1 = time.perf_counter()
  for step in range(cfg.steps):
    batch = data_NxL[order[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
    state, metrics = step_fn(state, jnp.asarray(batch), teacher, cache)
    if pending is not None:  # read step N-1's metrics after dispatching step N
      _log(pending, history, log, bar, cfg)
    pending = (step + 1, metrics)
    bar.update(1)
  if pending is not None:
    _log(pending, history, log, bar, cfg, force=True)
  bar.close()
  log.close()
  train_s = time.perf_counter() - t1
  student_lm = dataclasses.replace(lm, params=state["params"], name=f"{lm.name}+distilled({cfg.prompt})")
  write_checkpoint(student_lm, out_dir / "student", extra_meta={"distill": dataclasses.asdict(cfg)})
  summary = {"first": history[0] if history else None, "last": history[-1] if history else None,
             "prompt_tokens": len(prompt_ids), "texts": len(texts), "text_tokens": L,
             "sample_seconds": round(sample_s, 1), "train_seconds": round(train_s, 1)}
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _log(pending, history, f, bar, cfg, force=False):
  step, metrics = pending
  m = {k: float(v) for k, v in metrics.items()}
  history.append({"step": step, **m})
  if step % cfg.log_every == 0 or step == 1 or force:
    f.write(json.dumps({"step": step, **m}) + "\n")
    f.flush()
    bar.set_postfix(kl=f"{m['kl']:.4f}", agree=f"{m['top1_agreement']:.3f}", refresh=False)


def distill_command(args) -> None:
  from hhh import config as config_lib
  cfg = config_lib.apply_overrides(config_lib.load_experiment(args.config), args.set)
  if not isinstance(cfg, DistillConfig):
    raise config_lib.ConfigError(f"{args.config}: config() must return a DistillConfig for `hhh distill`")
  s = distill(cfg, args.out, force=args.force)
  print(f"hhh: distilled {cfg.model} without its {s['prompt_tokens']}-token prompt on {s['texts']} sampled texts: "
        f"KL {s['first']['kl']:.4f} -> {s['last']['kl']:.4f}, top-1 agreement {s['first']['top1_agreement']:.3f} "
        f"-> {s['last']['top1_agreement']:.3f}; student at {args.out}/student")


def add_cli(sub) -> None:
  from hhh import config as config_lib
  p = sub.add_parser("distill", help="context distillation: train a model to act as if a prompt were there")
  p.add_argument("config", help="experiment file returning a DistillConfig (e.g. experiments/context_distill.py)")
  p.add_argument("--out", required=True, help="output dir: student/ (an hhh checkpoint), texts.jsonl, metrics")
  config_lib.add_set_argument(p)
  p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier `hhh distill` output")
  p.set_defaults(func=distill_command)
