"""Training objectives and preference metrics: pure functions of arrays and masks returning (loss, metrics).

Shapes: B comparisons, K responses per comparison, L tokens, V vocab.
`scores_BxK` are the data's scores (higher is better); `r_BxK` are model scores;
`valid_BxK` marks real responses (K is padded to a static maximum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OBJECTIVES = ("lm", "imitation", "binary", "ranked")
PM_OBJECTIVES = ("ranked", "binary")  # the objectives that train a reward head
# The paper's comparison: imitation against binary discrimination against ranked preference modeling.
COMPARED_OBJECTIVES = ("imitation", "binary", "ranked")


def _safe_div(a, b):
  return a / jnp.maximum(b, 1e-9)


def ordered_pairs(scores_BxK, valid_BxK):
  """better_BxKxK[b, i, j] is True when response i is strictly preferred to j; ties never form a pair."""
  v = valid_BxK.astype(bool)
  return (scores_BxK[:, :, None] > scores_BxK[:, None, :]) & v[:, :, None] & v[:, None, :]


def preference_metrics(r_BxK, scores_BxK, valid_BxK, n_bins: int = 10):
  """Pairwise accuracy, mean margin, reward mean/std and ECE over every ordered pair of every ranking.

  A tie in model score counts as half right. ECE bins each pair by the model's
  confidence max(p, 1-p) with p = sigmoid(r_i - r_j), over [0.5, 1] in `n_bins`
  equal bins, and averages |accuracy - confidence| weighted by bin size.
  """
  r_BxK = r_BxK.astype(jnp.float32)
  better = ordered_pairs(scores_BxK, valid_BxK).astype(jnp.float32)
  n_pairs = better.sum()
  diff_BxKxK = r_BxK[:, :, None] - r_BxK[:, None, :]
  correct = (diff_BxKxK > 0).astype(jnp.float32) + 0.5 * (diff_BxKxK == 0)
  conf = jax.nn.sigmoid(jnp.abs(diff_BxKxK))
  bins = jnp.clip(jnp.floor((conf - 0.5) * 2 * n_bins), 0, n_bins - 1).astype(jnp.int32)
  onehot_BxKxKxN = jax.nn.one_hot(bins, n_bins) * better[..., None]
  gap_N = jnp.einsum("bijn,bij->n", onehot_BxKxKxN, correct - conf)
  v = valid_BxK.astype(jnp.float32)
  n_resp = v.sum()
  mean = _safe_div((r_BxK * v).sum(), n_resp)
  var = _safe_div((((r_BxK - mean) ** 2) * v).sum(), n_resp)
  return {
      "accuracy": _safe_div((correct * better).sum(), n_pairs),
      "margin": _safe_div((diff_BxKxK * better).sum(), n_pairs),
      "reward_mean": mean,
      "reward_std": jnp.sqrt(var),
      "ece": _safe_div(jnp.abs(gap_N).sum(), n_pairs),
      "pairs": n_pairs,
  }


def ranked_loss(r_BxK, scores_BxK, valid_BxK):
  """Mean of -log sigmoid(r_i - r_j) over all ordered pairs (i preferred to j) of each k-way ranking."""
  better = ordered_pairs(scores_BxK, valid_BxK).astype(jnp.float32)
  diff_BxKxK = r_BxK[:, :, None] - r_BxK[:, None, :]
  loss = _safe_div((-jax.nn.log_sigmoid(diff_BxKxK) * better).sum(), better.sum())
  return loss, preference_metrics(r_BxK, scores_BxK, valid_BxK)


def binary_labels(scores_BxK, valid_BxK):
  """Good = the top-scored response(s) of a comparison, bad = the rest.

  Returns (labels_BxK, labelled_BxK); comparisons whose valid responses all tie carry no label.
  """
  v = valid_BxK.astype(bool)
  top = jnp.max(jnp.where(v, scores_BxK, -jnp.inf), axis=-1, keepdims=True)
  low = jnp.min(jnp.where(v, scores_BxK, jnp.inf), axis=-1, keepdims=True)
  labelled = v & (top > low)
  return (scores_BxK >= top).astype(jnp.float32), labelled


def binary_loss(r_BxK, scores_BxK, valid_BxK):
  """Each response classified good or bad on its own: sigmoid cross-entropy on its scalar score."""
  labels, labelled = binary_labels(scores_BxK, valid_BxK)
  w = labelled.astype(jnp.float32)
  ce = -(labels * jax.nn.log_sigmoid(r_BxK) + (1 - labels) * jax.nn.log_sigmoid(-r_BxK))
  loss = _safe_div((ce * w).sum(), w.sum())
  metrics = preference_metrics(r_BxK, scores_BxK, valid_BxK)
  metrics["binary_accuracy"] = _safe_div((((r_BxK > 0) == (labels > 0.5)) * w).sum(), w.sum())
  return loss, metrics


def pm_loss(objective: str):
  """The preference loss of a PM objective: `ranked_loss` or `binary_loss`, (r_BxK, scores_BxK, valid_BxK) ->
  (loss, metrics)."""
  if objective not in PM_OBJECTIVES:
    raise ValueError(f"{objective!r} is not a preference objective ({', '.join(PM_OBJECTIVES)})")
  return ranked_loss if objective == "ranked" else binary_loss


def token_logprobs(logits_BxLxV, tokens_BxL):
  """log p(tokens[t+1] | tokens[:t+1]) for t < L-1, shape [B, L-1], in float32."""
  logp = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens_BxL[:, 1:, None], axis=-1)[..., 0]


def target_mask(lengths_B, start_B, L: int):
  """Mask over the [B, L-1] next-token targets: target index t+1 in [start, length)."""
  t_1 = jnp.arange(1, L)[None, :]
  return (t_1 >= start_B[:, None]) & (t_1 < lengths_B[:, None])


def lm_loss(logits_BxLxV, tokens_BxL, mask_BxLm1):
  """Mean next-token negative log-likelihood over masked targets."""
  lp = token_logprobs(logits_BxLxV, tokens_BxL)
  m = mask_BxLm1.astype(jnp.float32)
  loss = _safe_div(-(lp * m).sum(), m.sum())
  return loss, {"lm_loss": loss, "tokens": m.sum()}


def imitation_loss(logits_BxLxV, tokens_BxL, lengths_B, response_start_B):
  """LM loss on the preferred response's tokens only (and its end-of-context token), not on the context."""
  return lm_loss(logits_BxLxV, tokens_BxL, target_mask(lengths_B, response_start_B, tokens_BxL.shape[1]))


def response_loglik(logits_BxLxV, tokens_BxL, lengths_B, response_start_B):
  """How imitation scores an option at evaluation: (sum, per-token mean) of its response log-likelihood."""
  mask = target_mask(lengths_B, response_start_B, tokens_BxL.shape[1]).astype(jnp.float32)
  total = (token_logprobs(logits_BxLxV, tokens_BxL) * mask).sum(-1)
  return total, _safe_div(total, mask.sum(-1))


def with_lm_mixing(pm_loss, pm_metrics, lm_loss_value, lm_coef: float):
  """PM loss plus `lm_coef` times an LM loss (the paper mixes LM loss into PM training)."""
  metrics = dict(pm_metrics, pm_loss=pm_loss, lm_loss=lm_loss_value)
  return pm_loss + lm_coef * lm_loss_value, metrics
