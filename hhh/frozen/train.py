"""Train and evaluate tails on cached trunk states: the three objectives, the text readout, per-comparison results.

    run = RunConfig(objective="ranked", depth=16, tier="lora", steps=300, lr=1e-3, seed=0)
    trainable, log = train(lm, run, train_cache)
    result = evaluate(lm, run, trainable, heldout_cache)   # per-comparison correctness, for the bootstrap

Objectives (losses from `hhh.objectives`): "ranked" (every ordered pair of a ranking), "binary" (the top response
good, the rest bad, each classified alone), "imitation" (LM loss on the top response's tokens and <eoc>, through
the readout; options then ranked by per-token mean log-likelihood, the pre-registered primary, and by sum).

Randomness: one root key per seed, split into named streams "lora" (adapter init), "head" (reward head init) and
"data" (the order of training comparisons), so seeds vary all three.

Every batch has one static shape [batch_size, max_k, L] (L: the cache's longest row rounded up to a multiple of
32): the step compiles once. The step reads step N-1's loss only after dispatching step N.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hhh import objectives as obj
from hhh.config import OptimConfig
from hhh.frozen import tail as tail_lib
from hhh.frozen.cache import Cache
from hhh.train.optim import make_optimizer

OBJECTIVES = obj.COMPARED_OBJECTIVES


@dataclasses.dataclass(frozen=True)
class RunConfig:
  objective: str = "ranked"
  depth: int = 30
  tier: str = "head"
  steps: int = 200
  batch_size: int = 16
  lr: float = 1e-3
  weight_decay: float = 0.0
  warmup_steps: int = 10
  clip_norm: float = 1.0
  seed: int = 0
  lora_rank: int = 16
  lora_alpha: float = 32.0

  def __post_init__(self):
    if self.objective not in OBJECTIVES + ("lm",):
      raise ValueError(f"objective must be one of {OBJECTIVES + ('lm',)}, not {self.objective!r}")

  @property
  def tail(self) -> tail_lib.TailSpec:
    return tail_lib.TailSpec(self.depth, self.tier, self.lora_rank, self.lora_alpha)


def keys(seed: int) -> dict[str, jax.Array]:
  root = jax.random.PRNGKey(seed)
  return dict(zip(("lora", "head", "data"), jax.random.split(root, 3)))


def _round_up(n: int, m: int = 32) -> int:
  return max(m, -(-n // m) * m)


def response_window(cache: Cache, comps: Sequence[int] | None = None) -> int:
  """T: the longest response (+ <eoc>) of these comparisons, rounded up to a multiple of 8 (the imitation
  window; every position past a response's end is padding that still costs a full-vocabulary softmax)."""
  comps = range(len(cache)) if comps is None else comps
  n = max(int(cache.rows_Rx4[r, 1] - cache.rows_Rx4[r, 2]) for c in comps for r in cache.rows_of(c))
  return _round_up(n, 8)


def _flat(batch: dict) -> tuple:
  B, K, L = batch["tokens_BxKxL"].shape
  x = batch["x_BxKxLxD"].reshape(B * K, L, -1)
  tokens = batch["tokens_BxKxL"].reshape(B * K, L)
  lengths = batch["lengths_BxK"].reshape(B * K)
  valid_NxL = jnp.arange(L)[None, :] < lengths[:, None]
  return x, tokens, lengths, batch["starts_BxK"].reshape(B * K), valid_NxL


def response_scores(cfg, spec, objective: str, trainable, frozen, batch, T: int):
  """Per response [B, K]: the reward (binary, ranked) or (sum, per-token mean) log-likelihood (imitation, lm)."""
  B, K, _ = batch["tokens_BxKxL"].shape
  x, tokens, lengths, starts, valid_NxL = _flat(batch)
  h = tail_lib.hidden(cfg, spec, trainable, frozen, x, valid_NxL)
  if objective in obj.PM_OBJECTIVES:
    return tail_lib.rewards(trainable, h, valid_NxL).reshape(B, K)
  logp_NxT, mask_NxT = tail_lib.response_logprobs(trainable, frozen, h, tokens, lengths, starts, T)
  total = logp_NxT.sum(-1)
  mean = total / jnp.maximum(mask_NxT.sum(-1), 1)
  return total.reshape(B, K), mean.reshape(B, K)


def loss_fn(trainable, frozen, batch, *, cfg, spec, objective: str, T: int):
  """(loss, metrics) for one batch; imitation trains on each comparison's top response only."""
  if objective in obj.PM_OBJECTIVES:
    r_BxK = response_scores(cfg, spec, objective, trainable, frozen, batch, T)
    return obj.pm_loss(objective)(r_BxK, batch["scores_BxK"], batch["valid_BxK"])
  B, K, L = batch["tokens_BxKxL"].shape
  if objective == "imitation":
    top_B = jnp.argmax(jnp.where(batch["valid_BxK"], batch["scores_BxK"], -jnp.inf), axis=-1)
    pick = lambda a: jnp.take_along_axis(a, top_B.reshape((B, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]
    sub = {k: pick(v)[:, None] for k, v in batch.items() if k != "scores_BxK"}
  else:   # "lm": every valid row is text
    sub = batch
  x, tokens, lengths, starts, valid_NxL = _flat(sub)
  h = tail_lib.hidden(cfg, spec, trainable, frozen, x, valid_NxL)
  logp_NxT, mask_NxT = tail_lib.response_logprobs(trainable, frozen, h, tokens, lengths, starts, T)
  n = jnp.maximum(mask_NxT.sum(), 1)
  loss = -logp_NxT.sum() / n
  return loss, {"lm_loss": loss, "tokens": mask_NxT.sum()}


class HeadFeatures:
  """The head tier's inputs, computed once per (cache, depth): final_norm of the depth-d states at each row's
  <eoc> (e_RxD) and at the T positions that predict its response tokens and <eoc> (w_RxTxD, in the cache's
  dtype), with those targets (tgt_RxT) and their mask. Nothing below the heads depends on what trains, so
  every step of every head-tier run reads these instead of the [L, D] states."""

  def __init__(self, lm, cache: Cache, depth: int, *, need_windows: bool = True, T: int | None = None):
    scale = np.asarray(lm.params["final_norm"]["scale"], np.float32)
    bias = lm.params["final_norm"].get("bias")
    bias = None if bias is None else np.asarray(bias, np.float32)
    kind, eps = lm.cfg.norm, lm.cfg.norm_eps

    def norm(x):
      x = x.astype(np.float32)
      if kind == "layer":
        x = x - x.mean(-1, keepdims=True)
      y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale
      return y + bias if bias is not None else y

    R, D = len(cache.rows_Rx4), cache.d_model
    self.T = T or response_window(cache)
    self.e_RxD = np.zeros((R, D), np.float32)
    # Windows keep the cache's own precision: no rounding beyond what the cache already did.
    wdtype = np.dtype(cache.fingerprint["dtype"])
    self.w_RxTxD = np.zeros((R, self.T, D), wdtype) if need_windows else None
    self.tgt_RxT = np.zeros((R, self.T), np.int32)
    self.mask_RxT = np.zeros((R, self.T), bool)
    for r in range(R):
      n, start = int(cache.rows_Rx4[r, 1]), int(cache.rows_Rx4[r, 2])
      x = cache.row_states(depth, r)
      self.e_RxD[r] = norm(x[n - 1])
      targets = np.arange(max(start, 1), min(n, max(start, 1) + self.T))
      m = len(targets)
      self.mask_RxT[r, :m] = True
      self.tgt_RxT[r, :m] = cache.row_tokens(r)[targets]
      if need_windows:
        self.w_RxTxD[r, :m] = norm(np.asarray(x[targets - 1])).astype(wdtype)
    self.cache, self.depth = cache, depth
    self.scores_R = cache.scores_R   # the labels batches read (a relabelled copy swaps only these)

  def batch(self, comps, K: int) -> dict:
    """A PM batch: the <eoc> features, scores and validity of `comps`, padded to K responses."""
    B = len(comps)
    rows_BxK = np.zeros((B, K), np.int64)
    valid_BxK = np.zeros((B, K), bool)
    scores_BxK = np.zeros((B, K), np.float32)
    for b, c in enumerate(comps):
      rs = list(self.cache.rows_of(int(c)))
      if len(rs) > K:
        raise ValueError(f"comparison {c} has {len(rs)} responses, the batch holds {K}")
      rows_BxK[b, :len(rs)], valid_BxK[b, :len(rs)] = rs, True
      scores_BxK[b, :len(rs)] = self.scores_R[rs]
    return {"e_BxKxD": self.e_RxD[rows_BxK], "scores_BxK": scores_BxK, "valid_BxK": valid_BxK}


  def packed(self, comps, *, top_only: bool, bucket: int = 256) -> dict:
    """The response positions of `comps` (each comparison's top response, or all its rows) flattened to
    N tokens, N padded up to a multiple of `bucket`: a few static shapes, and no softmax over padding."""
    rows = []
    for c in comps:
      rs = np.asarray(self.cache.rows_of(int(c)))
      rows.append(rs[np.argmax(self.scores_R[rs])] if top_only else rs)
    rows_N, pos_N = np.nonzero(self.mask_RxT[np.hstack(rows)])
    r_N = np.hstack(rows)[rows_N]
    n = len(r_N)
    N = max(bucket, -(-n // bucket) * bucket)
    w = np.zeros((N, self.w_RxTxD.shape[-1]), self.w_RxTxD.dtype)
    tgt, mask = np.zeros((N,), np.int32), np.zeros((N,), bool)
    w[:n], tgt[:n], mask[:n] = self.w_RxTxD[r_N, pos_N], self.tgt_RxT[r_N, pos_N], True
    return {"w_NxD": w, "tgt_N": tgt, "mask_N": mask}


_token_logprobs_jit = jax.jit(tail_lib.token_logprobs)


def head_rewards(trainable, batch):
  """r_BxK of the head tier's reward head, from a `HeadFeatures.batch`."""
  head = trainable["reward_head"]
  return (batch["e_BxKxD"] @ head["kernel"])[..., 0] + head["bias"][0]


def head_loss_fn(trainable, frozen, batch, *, objective: str):
  """PMs: a `HeadFeatures.batch`. Imitation and lm: a `HeadFeatures.packed` batch (the positions to learn)."""
  if objective in obj.PM_OBJECTIVES:
    return obj.pm_loss(objective)(head_rewards(trainable, batch), batch["scores_BxK"], batch["valid_BxK"])
  lp_N = jnp.where(batch["mask_N"], tail_lib.token_logprobs(trainable, frozen, batch["w_NxD"], batch["tgt_N"]), 0.0)
  n = jnp.maximum(batch["mask_N"].sum(), 1)
  loss = -lp_N.sum() / n
  return loss, {"lm_loss": loss, "tokens": batch["mask_N"].sum()}


def _tx(run: RunConfig, total_steps: int) -> optax.GradientTransformation:
  """hhh's optimizer with the peak learning rate in its state (one compiled step for a grid of rates), at
  optax's default AdamW moments, decaying to a tenth of the peak."""
  ocfg = OptimConfig(lr=run.lr, warmup_steps=run.warmup_steps, min_lr_ratio=0.1, weight_decay=run.weight_decay,
                     b1=0.9, b2=0.999, eps=1e-8, clip_norm=run.clip_norm)
  return make_optimizer(ocfg, total_steps, lr_in_state=True)[0]


def make_step(cfg, run: RunConfig, T: int, total_steps: int):
  """(tx, jitted step); the step is compiled once per program shape and shared across learning rates and seeds."""
  return _tx(run, total_steps), _step(cfg, dataclasses.replace(run, lr=0.0, seed=0), T, total_steps)


@functools.lru_cache(maxsize=64)
def _step(cfg, run: RunConfig, T: int, total_steps: int):
  spec = run.tail
  tx = _tx(run, total_steps)   # its update reads the learning rate from the state it is given
  if run.tier == "head":
    lf = functools.partial(head_loss_fn, objective=run.objective)
  else:
    lf = functools.partial(loss_fn, cfg=cfg, spec=spec, objective=run.objective, T=T)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(trainable, opt_state, frozen, batch):
    (loss, metrics), grads = jax.value_and_grad(lf, has_aux=True)(trainable, frozen, batch)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, dict(metrics, loss=loss)

  return step


def _order(n: int, steps: int, batch: int, key) -> np.ndarray:
  """steps x batch comparison indices: successive seeded permutations (epochs) of range(n), concatenated."""
  need = steps * batch
  perms, k = [], key
  while sum(len(p) for p in perms) < need:
    k, sub = jax.random.split(k)
    perms.append(np.asarray(jax.random.permutation(sub, n)))
  return np.concatenate(perms)[:need].reshape(steps, batch)


def features(lm, run: RunConfig, cache: Cache, feats: HeadFeatures | None = None) -> HeadFeatures | None:
  """The head tier's `HeadFeatures` for this cache (made once; pass them back in to reuse them)."""
  if run.tier != "head":
    return None
  windows = run.objective in ("imitation", "lm")
  if feats is not None and feats.cache is cache and feats.depth == run.depth and (
      feats.w_RxTxD is not None or not windows):
    return feats
  return HeadFeatures(lm, cache, run.depth, need_windows=windows)


def _head_ok(feats: HeadFeatures, run: RunConfig) -> HeadFeatures:
  if run.objective in ("imitation", "lm") and feats.w_RxTxD is None:
    raise ValueError("these head features were made without response windows (a PM objective's)")
  return feats


def train(lm, run: RunConfig, cache: Cache, *, comps: Sequence[int] | None = None, readout=None,
          init: dict | None = None, progress: bool = True, log_every: int = 0,
          feats: HeadFeatures | None = None):
  """(trainable params, log) after `run.steps` steps on comparisons `comps` of `cache` (all by default).

  `init` starts from given trainable parameters (a PMP'd tail); otherwise they are fresh from the seed's keys,
  with `readout` as imitation's starting readout (the depth's text-trained one)."""
  from tqdm.auto import tqdm
  spec = run.tail
  if spec.input_layer not in cache.layers:
    raise ValueError(f"{cache.path.name} has layers {list(cache.layers)}; depth {run.depth} tier {run.tier} "
                     f"reads layer {spec.input_layer}")
  comps = np.arange(len(cache)) if comps is None else np.asarray(comps)
  if len(comps) == 0:
    raise ValueError("no training comparisons")
  k = keys(run.seed)
  trainable = init if init is not None else tail_lib.init_trainable(
      lm.cfg, spec, run.objective, lora_key=k["lora"], head_key=k["head"], readout=readout)
  trainable = jax.tree.map(jnp.array, trainable)   # a private copy: the step donates it
  frozen = tail_lib.frozen_params(lm.params, spec)
  K = cache.fingerprint["max_k"] if run.objective != "lm" else 1
  L = min(_round_up(cache.max_row_len(comps)), cache.fingerprint["max_len"])
  feats = features(lm, run, cache, feats)
  T = feats.T if feats is not None else response_window(cache, comps)
  tx, step = make_step(lm.cfg, run, T, run.steps)
  opt_state = tx.init(trainable)
  order = _order(len(comps), run.steps, min(run.batch_size, len(comps)) if run.objective == "lm"
                 else run.batch_size, k["data"])
  log, prev, t0 = [], None, time.time()
  bar = tqdm(range(run.steps), desc=f"{run.objective} d{run.depth} {run.tier} s{run.seed}", disable=not progress,
             leave=False)
  for i in bar:
    if feats is not None and run.objective in ("imitation", "lm"):
      batch = _head_ok(feats, run).packed(comps[order[i]], top_only=run.objective == "imitation")
    elif feats is not None:
      batch = feats.batch(comps[order[i]], K)
    else:
      batch = cache.batch(comps[order[i]], layer=spec.input_layer, K=K, L=L)
    trainable, opt_state, metrics = step(trainable, opt_state, frozen, batch)
    if prev is not None:   # step i-1's metrics, read after step i is dispatched
      log.append({"step": i, **{m: float(v) for m, v in prev.items()}})
      if log_every and i % log_every == 0:
        bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
    prev = metrics
  log.append({"step": run.steps, **{m: float(v) for m, v in prev.items()}})
  log[-1]["train_seconds"] = round(time.time() - t0, 2)
  return trainable, log


@functools.partial(jax.jit, static_argnames=("cfg", "spec", "objective", "T"))
def _scores_jit(trainable, frozen, batch, *, cfg, spec, objective, T):
  return response_scores(cfg, spec, objective, trainable, frozen, batch, T)


PACK = 1024   # response tokens per call of the head tier's packed imitation scorer


def head_row_scores(run: RunConfig, trainable, frozen, feats: HeadFeatures) -> dict[str, np.ndarray]:
  """Every cached row's score(s) at once: {"reward": [R]} or {"sum": [R], "mean": [R]} (imitation, lm).

  Imitation reads only real response positions, packed PACK at a time (padded rows and positions would each
  cost a full-vocabulary softmax), and gives both variants from one pass."""
  if run.objective in obj.PM_OBJECTIVES:
    head = trainable["reward_head"]
    r = np.asarray(feats.e_RxD @ np.asarray(head["kernel"], np.float32))[:, 0] + float(head["bias"][0])
    return {"reward": r.astype(np.float64)}
  _head_ok(feats, run)
  rows_N, pos_N = np.nonzero(feats.mask_RxT)
  lp_N = np.zeros(len(rows_N), np.float64)
  for i in range(0, len(rows_N), PACK):
    r, t = rows_N[i:i + PACK], pos_N[i:i + PACK]
    n = len(r)
    w = np.zeros((PACK, feats.w_RxTxD.shape[-1]), feats.w_RxTxD.dtype)
    tgt = np.zeros((PACK,), np.int32)
    w[:n], tgt[:n] = feats.w_RxTxD[r, t], feats.tgt_RxT[r, t]
    lp_N[i:i + n] = np.asarray(_token_logprobs_jit(trainable, frozen, w, tgt))[:n]
  R = len(feats.mask_RxT)
  total = np.bincount(rows_N, weights=lp_N, minlength=R)
  count = np.bincount(rows_N, minlength=R)
  return {"sum": total, "mean": total / np.maximum(count, 1)}


def comparison_scores(lm, run: RunConfig, trainable, cache: Cache, *, comps: Sequence[int] | None = None,
                      batch_size: int = 16, feats: HeadFeatures | None = None) -> dict[str, list[np.ndarray]]:
  """Each comparison's response scores (higher = preferred), in `comps` order, per variant, from one pass:
  {"reward": ...} for PMs, {"mean": ..., "sum": ...} (per-token mean and summed log-likelihood) otherwise."""
  spec = run.tail
  comps = list(range(len(cache))) if comps is None else list(comps)
  if run.tier == "head":
    feats = features(lm, run, cache, feats)
    rows = head_row_scores(run, trainable, tail_lib.frozen_params(lm.params, spec), feats)
    return {v: [vals[np.asarray(cache.rows_of(c))] for c in comps] for v, vals in rows.items()}
  K = cache.fingerprint["max_k"]
  L = min(_round_up(cache.max_row_len(comps)), cache.fingerprint["max_len"])
  T = response_window(cache, comps)
  frozen = tail_lib.frozen_params(lm.params, spec)
  out: dict[str, list[np.ndarray]] = {}
  for i in range(0, len(comps), batch_size):
    chunk = comps[i:i + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))   # one static shape
    batch = cache.batch(padded, layer=spec.input_layer, K=K, L=L)
    s = _scores_jit(trainable, frozen, batch, cfg=lm.cfg, spec=spec, objective=run.objective, T=T)
    by_variant = {"sum": s[0], "mean": s[1]} if isinstance(s, tuple) else {"reward": s}
    for v, s_BxK in by_variant.items():
      s_BxK = np.asarray(s_BxK)
      out.setdefault(v, []).extend(s_BxK[b, :cache.comparisons[c]["k"]].astype(np.float64)
                                   for b, c in enumerate(chunk))
  return out


def score(lm, run: RunConfig, trainable, cache: Cache, *, comps: Sequence[int] | None = None,
          batch_size: int = 16, variant: str = "mean", feats: HeadFeatures | None = None) -> list[np.ndarray]:
  """One variant of `comparison_scores` (PMs have only "reward"; imitation "mean", the primary, or "sum")."""
  got = comparison_scores(lm, run, trainable, cache, comps=comps, batch_size=batch_size, feats=feats)
  return got["reward"] if "reward" in got else got[variant]


def correctness(scores: Sequence[np.ndarray], true_scores: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
  """Per comparison: "top1" (the best-labelled responses' top score strictly above every other response's, as
  multiple-choice accuracy counts it) and "pairwise" (share of strictly ordered pairs the scores order the same
  way; a tie is half right)."""
  top1, pairwise = [], []
  for s, y in zip(scores, true_scores):
    s, y = np.asarray(s, np.float64), np.asarray(y, np.float64)
    best = y == y.max()
    top1.append(float(s[best].max() > s[~best].max()) if (~best).any() else math.nan)
    better = y[:, None] > y[None, :]
    d = s[:, None] - s[None, :]
    n = better.sum()
    pairwise.append(float((((d > 0) + 0.5 * (d == 0)) * better).sum() / n) if n else math.nan)
  return {"top1": np.asarray(top1), "pairwise": np.asarray(pairwise)}


def true_scores(cache: Cache, comps: Sequence[int] | None = None) -> list[np.ndarray]:
  comps = range(len(cache)) if comps is None else comps
  return [np.asarray([cache.scores_R[r] for r in cache.rows_of(c)]) for c in comps]


def evaluate(lm, run: RunConfig, trainable, cache: Cache, *, comps: Sequence[int] | None = None,
             feats: HeadFeatures | None = None) -> dict:
  """Per-comparison correctness on `cache` (both imitation variants for imitation), with ids and groups."""
  comps = list(range(len(cache))) if comps is None else list(comps)
  y = true_scores(cache, comps)
  out = {"ids": [cache.comparisons[c]["id"] for c in comps], "groups": [cache.comparisons[c]["group"] for c in comps]}
  for v, scores in comparison_scores(lm, run, trainable, cache, comps=comps, feats=feats).items():
    for metric, vals in correctness(scores, y).items():
      out[f"{metric}_{v}"] = vals.tolist()
  return out
