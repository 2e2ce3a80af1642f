"""The train and eval steps: pure functions of (state, batch), jitted once with explicit shardings.

State is a dict of arrays: params (a pure dict of the NNX model's parameters),
opt_state, step and rng. The NNX graph definition is static and closed over, so
the hot step merges it with the parameter arrays instead of walking a Python
object graph on every call.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hhh import objectives as obj
from hhh.model import sharding as shd
from hhh.train.optim import make_optimizer

State = dict[str, Any]


def valid_tokens(tokens_NxL, lengths_N):
  return jnp.arange(tokens_NxL.shape[-1])[None, :] < lengths_N[:, None]


def preferred_index(scores_BxK, valid_BxK):
  return jnp.argmax(jnp.where(valid_BxK, scores_BxK, -jnp.inf), axis=-1)


def loss_fn(params, graphdef, batch, rng, objective: str, lm_coef: float):
  """(loss, metrics) for one batch of [B, K, L] sequences."""
  model = nnx.merge(graphdef, params)
  tokens_BxKxL, lengths_BxK = batch["tokens"], batch["lengths"]
  scores_BxK, start_BxK = batch["scores"], batch["response_start"]
  B, K, L = tokens_BxKxL.shape
  valid_BxK = lengths_BxK > 0
  if objective in ("lm", "imitation"):
    # Only the preferred sequence is needed: one forward over B sequences, not B*K.
    pick_B = preferred_index(scores_BxK, valid_BxK) if objective == "imitation" else jnp.zeros((B,), jnp.int32)
    take = lambda x: jnp.take_along_axis(x, pick_B.reshape((B,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
    tokens_BxL, lengths_B = take(tokens_BxKxL), take(lengths_BxK)
    start_B = take(start_BxK) if objective == "imitation" else jnp.zeros((B,), jnp.int32)
    h = model(tokens_BxL, valid_tokens(tokens_BxL, lengths_B), dropout_rng=rng)
    return obj.imitation_loss(model.lm_logits(h), tokens_BxL, lengths_B, start_B)
  # Preference objectives: all B*K sequences in one forward pass, scores read at each <eoc>.
  tokens_NxL, lengths_N = tokens_BxKxL.reshape(B * K, L), lengths_BxK.reshape(B * K)
  valid_NxL = valid_tokens(tokens_NxL, lengths_N)
  h_NxLxD = model(tokens_NxL, valid_NxL, dropout_rng=rng)
  r_BxK = model.reward(h_NxLxD, valid_NxL).reshape(B, K)
  r_BxK = jnp.where(valid_BxK, r_BxK, 0.0)
  loss, metrics = obj.pm_loss(objective)(r_BxK, scores_BxK, valid_BxK)
  if lm_coef:
    pick_B = preferred_index(scores_BxK, valid_BxK)
    rows_B = jnp.arange(B) * K + pick_B
    h_BxLxD, tokens_BxL, lengths_B = h_NxLxD[rows_B], tokens_NxL[rows_B], lengths_N[rows_B]
    lm, _ = obj.lm_loss(model.lm_logits(h_BxLxD), tokens_BxL,
                        obj.target_mask(lengths_B, jnp.zeros_like(lengths_B), L))
    loss, metrics = obj.with_lm_mixing(loss, metrics, lm, lm_coef)
  return loss, metrics


def packed_loss_fn(params, graphdef, batch, rng, objective: str, lm_coef: float):
  """(loss, metrics) of a preference objective on packed rows: `loss_fn`'s value and gradient on the same
  comparisons (with LM mixing too), without dropout; with dropout a context shares one draw across its
  responses."""
  model = nnx.merge(graphdef, params)
  segments_RxL = batch["segments"]
  R, L = segments_RxL.shape
  h_RxLxD = model(batch["tokens"], segments_RxL >= 0, positions_BxL=batch["positions"],
                  segments_BxL=segments_RxL, contexts_BxL=batch["contexts"], dropout_rng=rng)
  # The head is one dot product per slot; reading rewards after it gathers R*L scalars, not [R*L, D] states.
  r_RL = model.reward_all(h_RxLxD).reshape(R * L)
  lengths_CxK = batch["lengths"]
  valid_CxK = lengths_CxK > 0
  r_CxK = jnp.where(valid_CxK, r_RL[batch["reward_index"]], 0.0)
  loss, metrics = obj.pm_loss(objective)(r_CxK, batch["scores"], valid_CxK)
  if lm_coef:
    logp_RxLxV = jax.nn.log_softmax(model.lm_logits(h_RxLxD), axis=-1)
    lp_RxL = jnp.take_along_axis(logp_RxLxV, batch["lm_target"][..., None], axis=-1)[..., 0]
    w_RxL = batch["lm_weight"]
    lm = -(lp_RxL * w_RxL).sum() / jnp.maximum(w_RxL.sum(), 1e-9)
    loss, metrics = obj.with_lm_mixing(loss, metrics, lm, lm_coef)
  return loss, metrics


def train_step(state: State, batch, *, graphdef, tx, schedule, objective: str, lm_coef: float, packed: bool = False):
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  grad_fn = jax.value_and_grad(packed_loss_fn if packed else loss_fn, has_aux=True)
  (loss, metrics), grads = grad_fn(state["params"], graphdef, batch, rng, objective, lm_coef)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]))
  return {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}, metrics


def eval_scores(params, batch, *, graphdef, objective: str):
  """Per-response scores for held-out pairwise accuracy.

  PM objectives: the reward at <eoc>. Imitation and LM: the response's
  log-likelihood, as (sum, per-token mean). Also the LM loss of each sequence.
  """
  model = nnx.merge(graphdef, params)
  tokens_BxKxL, lengths_BxK, start_BxK = batch["tokens"], batch["lengths"], batch["response_start"]
  B, K, L = tokens_BxKxL.shape
  tokens_NxL, lengths_N = tokens_BxKxL.reshape(B * K, L), lengths_BxK.reshape(B * K)
  valid_NxL = valid_tokens(tokens_NxL, lengths_N)
  h_NxLxD = model(tokens_NxL, valid_NxL)
  out = {}
  if objective in obj.PM_OBJECTIVES:
    out["reward"] = model.reward(h_NxLxD, valid_NxL).reshape(B, K)
  else:
    logits = model.lm_logits(h_NxLxD)
    total, mean = obj.response_loglik(logits, tokens_NxL, lengths_N, start_BxK.reshape(B * K))
    out["loglik_sum"], out["loglik_mean"] = total.reshape(B, K), mean.reshape(B, K)
    lp = obj.token_logprobs(logits, tokens_NxL)
    m = obj.target_mask(lengths_N, jnp.zeros_like(lengths_N), L)
    out["nll_sum"], out["n_tokens"] = -(lp * m).sum(-1).reshape(B, K), m.sum(-1).reshape(B, K)
  return out


class Steps:
  """The jitted steps, with shardings fixed at the jit boundary and the state donated."""

  def __init__(self, cfg, mesh, graphdef, params_abstract, total_steps: int, packed: bool = False):
    self.mesh, self.graphdef = mesh, graphdef
    self.tx, self.schedule = make_optimizer(cfg.optim, total_steps)
    self.param_sh = shd.param_shardings(params_abstract, mesh)
    rep = shd.replicated(mesh)
    opt_abstract = jax.eval_shape(self.tx.init, params_abstract)
    # Optimizer moments live where their parameters live; counters are replicated.
    self.opt_sh = _like_params(opt_abstract, params_abstract, self.param_sh, rep)
    self.state_sh = {"params": self.param_sh, "opt_state": self.opt_sh, "step": rep, "rng": rep}
    self.batch_sh = shd.batch_sharding(mesh)
    self.train = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=self.tx, schedule=self.schedule,
                          objective=cfg.objective, lm_coef=cfg.lm_coef, packed=packed),
        in_shardings=(self.state_sh, self.batch_sh), out_shardings=(self.state_sh, rep), donate_argnums=0)
    # Eval outputs are gathered (replicated) so every process can read all of them.
    self.eval = jax.jit(functools.partial(eval_scores, graphdef=graphdef, objective=cfg.objective),
                        in_shardings=(self.param_sh, self.batch_sh), out_shardings=rep)
    self.init_opt = jax.jit(self.tx.init, in_shardings=(self.param_sh,), out_shardings=self.opt_sh)

  def abstract_state(self, params_abstract):
    with_sh = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    return {
        "params": jax.tree.map(with_sh, params_abstract, self.param_sh),
        "opt_state": jax.tree.map(with_sh, jax.eval_shape(self.tx.init, params_abstract), self.opt_sh),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=self.state_sh["step"]),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self.state_sh["rng"])}

  def put_batch(self, local_batch):
    """This process's rows -> one global array per field, split over the batch axes."""
    return {k: jax.make_array_from_process_local_data(self.batch_sh, v) for k, v in local_batch.items()}


def _like_params(opt_abstract, params_abstract, param_sh, rep):
  """Sharding for each optimizer-state leaf: its parameter's, when the subtree mirrors the params."""
  params_struct = jax.tree.structure(params_abstract)

  def visit(node):
    if jax.tree.structure(node) == params_struct:
      return param_sh
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
      return tuple(visit(n) for n in node)
    if hasattr(node, "_fields"):  # NamedTuple optimizer states (ScaleByAdamState, ...)
      return type(node)(*(visit(n) for n in node))
    if isinstance(node, dict):
      return {k: visit(v) for k, v in node.items()}
    return jax.tree.map(lambda _: rep, node)

  return visit(opt_abstract)
