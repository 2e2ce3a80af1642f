"""Objectives and preference metrics against hand-computed values.

Notation: sp(x) = log(1 + e^x) = -log sigmoid(-x), s(x) = sigmoid(x), l2 = log 2.
  sp(-2) = 0.126928011  sp(-1) = 0.313261688  sp(1) = 1.313261688  sp(2) = 2.126928011
  sp(0.5) = 0.974076984  sp(4) = 4.018149928  s(1) = 0.731058579  s(2) = 0.880797078
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hhh import objectives as obj

T, F = True, False
L2 = math.log(2.0)


# Jitted, as the train step uses them (and one compile per shape is much cheaper than op-by-op dispatch).
ranked_loss = jax.jit(obj.ranked_loss)
preference_metrics = jax.jit(obj.preference_metrics)
binary_labels = jax.jit(obj.binary_labels)
binary_loss = jax.jit(obj.binary_loss)
token_logprobs = jax.jit(obj.token_logprobs)
target_mask = jax.jit(obj.target_mask, static_argnums=2)
lm_loss = jax.jit(obj.lm_loss)
imitation_loss = jax.jit(obj.imitation_loss)
response_loglik = jax.jit(obj.response_loglik)


def close(x, want, tol=1e-6):
  np.testing.assert_allclose(np.asarray(x, np.float64), want, rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------------
# ranked_loss


def test_ranked_loss_k3_ranking_with_tie():
  # One 3-way comparison. scores [3, 1, 1]: response 0 beats 1 and 2; 1 and 2 tie, so no pair.
  # Pairs (i > j) and d = r_i - r_j: (0>1) d = 2 - 0 = 2, (0>2) d = 2 - 1 = 1.
  # loss = mean(-log s(2), -log s(1)) = (sp(-2) + sp(-1)) / 2 = (0.126928011 + 0.313261688) / 2 = 0.220094849
  r = jnp.array([[2.0, 0.0, 1.0]])
  loss, m = ranked_loss(r, jnp.array([[3.0, 1.0, 1.0]]), jnp.array([[T, T, T]]))
  close(loss, 0.220094849)
  assert float(m["pairs"]) == 2                    # a k=3 ranking with one tie gives 2 pairs, not 1 or 3
  # Without the tie, the same ranking gives all 3 pairs: + (1>2) d = 0 - 1 = -1, -log s(-1) = sp(1).
  # loss = (0.126928011 + 0.313261688 + 1.313261688) / 3 = 0.584483796
  loss3, m3 = ranked_loss(r, jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[T, T, T]]))
  close(loss3, 0.584483796)
  assert float(m3["pairs"]) == 3


def test_ranked_loss_padded_responses_form_no_pairs():
  # Example 0 as above: pairs d = 2 and d = 1.
  # Example 1 has K padded: response 2 is invalid (its score 5 and reward 9 would otherwise make
  # two pairs). Valid: scores [1, 2], r [0.5, -0.5], so one pair (1>0) with d = -0.5 - 0.5 = -1.
  # loss = (sp(-2) + sp(-1) + sp(1)) / 3 = (0.126928011 + 0.313261688 + 1.313261688) / 3 = 0.584483796
  r = jnp.array([[2.0, 0.0, 1.0], [0.5, -0.5, 9.0]])
  scores = jnp.array([[3.0, 1.0, 1.0], [1.0, 2.0, 5.0]])
  valid = jnp.array([[T, T, T], [T, T, F]])
  loss, m = ranked_loss(r, scores, valid)
  close(loss, 0.584483796)
  assert float(m["pairs"]) == 3
  # The invalid response's reward and score do not matter at all.
  loss2, m2 = ranked_loss(r.at[1, 2].set(-30.0), scores.at[1, 2].set(-4.0), valid)
  close(loss2, 0.584483796)
  for k in m:
    close(m2[k], float(m[k]))


def test_ranked_loss_gradient_single_pair():
  # One pair, 0 preferred, d = r0 - r1 = 1.5 - 0.5 = 1. loss = -log s(d), dloss/dd = -(1 - s(d)).
  # grad = (-(1 - s(1)), +(1 - s(1))) = (-0.268941421, 0.268941421); the padded third response: 0.
  scores, valid = jnp.array([[1.0, 0.0, 3.0]]), jnp.array([[T, T, F]])
  g = jax.grad(lambda r: ranked_loss(r, scores, valid)[0])(jnp.array([[1.5, 0.5, 7.0]]))
  close(g, [[-0.268941421, 0.268941421, 0.0]])


# ---------------------------------------------------------------------------------------------------
# preference_metrics


def test_preference_metrics_by_hand():
  # The padded batch above. Pairs (d): (2, right), (1, right), (-1, wrong).
  r = jnp.array([[2.0, 0.0, 1.0], [0.5, -0.5, 9.0]])
  scores = jnp.array([[3.0, 1.0, 1.0], [1.0, 2.0, 5.0]])
  m = preference_metrics(r, scores, jnp.array([[T, T, T], [T, T, F]]))
  close(m["accuracy"], 2 / 3)
  close(m["margin"], (2 + 1 - 1) / 3)              # 0.666667
  # Valid rewards 2, 0, 1, 0.5, -0.5 (not 9): mean 3/5 = 0.6;
  # deviations 1.4, -0.6, 0.4, -0.1, -1.1 -> squares 1.96 + 0.36 + 0.16 + 0.01 + 1.21 = 3.7;
  # population variance 3.7 / 5 = 0.74, std = sqrt(0.74) = 0.860232527.
  close(m["reward_mean"], 0.6)
  close(m["reward_std"], 0.860232527)
  # ECE. Confidence s(|d|): s(2) = 0.880797 -> bin floor((0.880797 - 0.5) * 20) = 7;
  # s(1) = 0.731059 -> bin floor(4.62) = 4 (twice). Gaps sum(correct - conf) per bin:
  #   bin 7: 1 - 0.880797078 = 0.119202922
  #   bin 4: (1 - 0.731058579) + (0 - 0.731058579) = -0.462117158
  # ECE = (|0.119202922| + |-0.462117158|) / 3 pairs = 0.581320080 / 3 = 0.193773360
  # (a per-pair |correct - conf| would give (0.119203 + 0.268941 + 0.731059) / 3 = 0.373068 instead).
  close(m["ece"], 0.193773360)
  assert float(m["pairs"]) == 3


def test_preference_metrics_model_tie_counts_half():
  # scores [2, 1, 0] -> pairs (0>1), (0>2), (1>2); r [1, 1, 3] -> d = 0 (tie), -2, -2.
  # accuracy = (0.5 + 0 + 0) / 3 = 1/6; margin = (0 - 2 - 2) / 3 = -4/3.
  # mean 5/3, deviations -2/3, -2/3, 4/3 -> variance (4 + 4 + 16) / 9 / 3 = 8/9, std = 0.942809042.
  # ECE: tie conf s(0) = 0.5 -> bin 0, gap 0.5 - 0.5 = 0; the two wrong pairs conf s(2) -> bin 7,
  # gap 2 * (0 - 0.880797078) -> ECE = 1.761594156 / 3 = 0.587198052.
  m = preference_metrics(jnp.array([[1.0, 1.0, 3.0]]), jnp.array([[2.0, 1.0, 0.0]]),
                             jnp.array([[T, T, T]]))
  close(m["accuracy"], 1 / 6)
  close(m["margin"], -4 / 3)
  close(m["reward_mean"], 5 / 3)
  close(m["reward_std"], 0.942809042)
  close(m["ece"], 0.587198052)
  # ranked_loss on it: (-log s(0) + 2 * -log s(-2)) / 3 = (l2 + 2 * sp(2)) / 3
  #   = (0.693147181 + 4.253856022) / 3 = 1.649001068
  close(ranked_loss(jnp.array([[1.0, 1.0, 3.0]]), jnp.array([[2.0, 1.0, 0.0]]),
                        jnp.array([[T, T, T]]))[0], 1.649001068)


def test_preference_metrics_ece_separates_bins():
  # Two comparisons, one pair each: d = 1 - 0 = 1 (right, conf s(1) = 0.731059, bin 4) and
  # d = 0 - 2 = -2 (wrong, conf s(2) = 0.880797, bin 7). Separate bins, so the gaps do not cancel:
  # ECE = ((1 - 0.731058579) + |0 - 0.880797078|) / 2 = (0.268941421 + 0.880797078) / 2 = 0.574869250
  # (one shared bin would give |0.268941 - 0.880797| / 2 = 0.305928).
  m = preference_metrics(jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([[1.0, 0.0], [1.0, 0.0]]),
                             jnp.array([[T, T], [T, T]]))
  close(m["ece"], 0.574869250)
  close(m["accuracy"], 0.5)
  close(m["margin"], (1 - 2) / 2)


def test_preference_metrics_no_pairs_is_finite():
  # All tied: no pairs; accuracy, margin and ECE are 0/max(0, 1e-9) = 0, not NaN.
  m = preference_metrics(jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 1.0]]), jnp.array([[T, T]]))
  assert float(m["pairs"]) == 0
  for k in ("accuracy", "margin", "ece"):
    assert float(m[k]) == 0.0
  close(m["reward_mean"], 1.5)
  close(m["reward_std"], 0.5)


# ---------------------------------------------------------------------------------------------------
# binary_loss


def test_binary_labels_and_loss():
  r = jnp.array([[2.0, -1.0, 0.5], [0.3, -0.2, 0.0], [1.0, 4.0, 0.0]])
  scores = jnp.array([[3.0, 1.0, 1.0], [2.0, 2.0, 0.0], [5.0, 1.0, 9.0]])
  valid = jnp.array([[T, T, T], [T, T, F], [T, T, F]])
  labels, labelled = binary_labels(scores, valid)
  # Comparison 0: top score 3 -> labels [1, 0, 0], all labelled.
  # Comparison 1: its valid responses tie (2, 2) -> no labels (the invalid score 0 does not count).
  # Comparison 2: top over valid is 5 (the invalid 9 is ignored) -> [1, 0], invalid unlabelled.
  np.testing.assert_array_equal(labelled, [[T, T, T], [F, F, F], [T, T, F]])
  np.testing.assert_array_equal(np.where(labelled, labels, -1), [[1, 0, 0], [-1, -1, -1], [1, 0, -1]])

  # Cross-entropy per labelled response: label 1 -> -log s(r) = sp(-r); label 0 -> -log s(-r) = sp(r).
  #   sp(-2) + sp(-1) + sp(0.5) + sp(-1) + sp(4)
  #   = 0.126928011 + 0.313261688 + 0.974076984 + 0.313261688 + 4.018149928 = 5.745678299
  # loss = 5.745678299 / 5 = 1.149135660
  loss, m = binary_loss(r, scores, valid)
  close(loss, 1.149135660)
  # binary_accuracy: (r > 0) == label on labelled: 2>0 & 1 yes; -1 & 0 yes; 0.5 & 0 no; 1 & 1 yes;
  # 4 & 0 no -> 3/5.
  close(m["binary_accuracy"], 0.6)
  # The pairwise metrics ride along: pairs (0>1) d=3, (0>2) d=1.5, (2: 0>1) d=-3 -> accuracy 2/3.
  assert float(m["pairs"]) == 3
  close(m["accuracy"], 2 / 3)


def test_binary_loss_all_tied_is_zero_not_nan():
  loss, m = binary_loss(jnp.array([[0.3, -0.2]]), jnp.array([[1.0, 1.0]]), jnp.array([[T, T]]))
  assert float(loss) == 0.0 and float(m["binary_accuracy"]) == 0.0


# ---------------------------------------------------------------------------------------------------
# token_logprobs / target_mask / lm_loss / imitation_loss / response_loglik


def _lm_example():
  """V = 3, L = 5, B = 2. logits = log P + c_t, so log_softmax(logits) = log P at every position.

  row 0: tokens [2, 0, 1, 1, 2], length 5, response_start 2 (context = tokens 0..1, eoc = token 4)
  row 1: tokens [1, 2, 0, 0, 0], length 3, response_start 1 (tokens 3, 4 are padding)
  Position t predicts token t+1; P[b, t, tokens[b, t+1]] is marked with *.
  """
  probs = np.array([
      [[.5, .25, .25], [.25, .5, .25], [.5, .25, .25], [.5, .375, .125], [1, 1, 1]],
      [[.5, .25, .25], [.5, .25, .25], [.25, .25, .5], [.25, .25, .5], [1, 1, 1]],
  ])  # the last row is overwritten below
  #   row 0: t0 -> tok 0: .5*   t1 -> tok 1: .5*   t2 -> tok 1: .25*   t3 -> tok 2: .125*
  #   row 1: t0 -> tok 2: .25*  t1 -> tok 0: .5*   t2 -> tok 0: .25*   t3 -> tok 0: .25*
  c = np.array([0.0, 1.5, -2.0, 3.0, 0.0])[None, :, None]    # per-position shifts: log_softmax ignores them
  logits = np.log(probs) + c
  logits[:, 4] = [50.0, -50.0, 0.0]                # the last position predicts nothing
  tokens = np.array([[2, 0, 1, 1, 2], [1, 2, 0, 0, 0]], np.int32)
  return jnp.asarray(logits, jnp.float32), jnp.asarray(tokens), jnp.array([5, 3]), jnp.array([2, 1])


def test_token_logprobs_and_target_mask():
  logits, tokens, lengths, start = _lm_example()
  lp = token_logprobs(logits, tokens)
  assert lp.shape == (2, 4) and lp.dtype == jnp.float32
  close(lp, np.log([[.5, .5, .25, .125], [.25, .5, .25, .25]]), 1e-5)
  # Targets t+1 in [start, length): row 0 -> targets 2, 3, 4 (4 = the <eoc> token, included; the
  # context target 1 excluded); row 1 -> targets 1, 2 (pads at 3, 4 excluded).
  mask = target_mask(lengths, start, 5)
  np.testing.assert_array_equal(mask, [[F, T, T, T], [T, T, F, F]])


def test_imitation_lm_and_response_loglik():
  logits, tokens, lengths, start = _lm_example()
  # Scored log-probs: row 0: log .5 + log .25 + log .125 = -(1 + 2 + 3) l2 = -6 l2 = -4.158883083
  #                   row 1: log .25 + log .5 = -3 l2 = -2.079441542
  total, mean = response_loglik(logits, tokens, lengths, start)
  close(total, [-6 * L2, -3 * L2], 1e-5)           # [-4.158883083, -2.079441542]
  close(mean, [-2 * L2, -1.5 * L2], 1e-5)          # per token: -6 l2 / 3, -3 l2 / 2 = [-1.386294, -1.039721]
  # imitation_loss: mean NLL over the 5 scored tokens = (6 + 3) l2 / 5 = 1.247664925.
  # (Scoring row 0's context target too would give (9 + 1) l2 / 6 = 1.155245.)
  loss, m = imitation_loss(logits, tokens, lengths, start)
  close(loss, 9 * L2 / 5, 1e-5)
  close(m["lm_loss"], 1.247664925, 1e-5)
  assert float(m["tokens"]) == 5
  # lm_loss with start 0 (plain LM on the whole sequence, as used for LM mixing): row 0 targets 1..4
  # cost (1 + 1 + 2 + 3) l2, row 1 targets 1..2 cost (2 + 1) l2 -> 10 l2 / 6 = 1.155245301.
  lm, m_lm = lm_loss(logits, tokens, target_mask(lengths, jnp.zeros(2, jnp.int32), 5))
  close(lm, 1.155245301, 1e-5)
  assert float(m_lm["tokens"]) == 6
  # Context and padding tokens do not matter: changing them (and their logits) changes nothing.
  tokens2 = tokens.at[0, 1].set(2).at[1, 3:].set(1)
  logits2 = logits.at[0, 0].set(jnp.array([9.0, -9.0, 0.0])).at[1, 2:].set(jnp.array([0.0, 7.0, -3.0]))
  close(imitation_loss(logits2, tokens2, lengths, start)[0], 9 * L2 / 5, 1e-5)
  close(response_loglik(logits2, tokens2, lengths, start)[0], [-6 * L2, -3 * L2], 1e-5)


# ---------------------------------------------------------------------------------------------------
# with_lm_mixing


@pytest.mark.parametrize("coef,want", [(0.25, 0.7 + 0.25 * 2.0), (0.0, 0.7), (1.0, 2.7)])
def test_with_lm_mixing(coef, want):
  # loss = pm + coef * lm: 0.7 + 0.25 * 2 = 1.2; 0.7 + 0 = 0.7; 0.7 + 1 * 2 = 2.7.
  loss, m = obj.with_lm_mixing(jnp.float32(0.7), {"accuracy": jnp.float32(0.75)}, jnp.float32(2.0), coef)
  close(loss, want)
  close(m["pm_loss"], 0.7)
  close(m["lm_loss"], 2.0)
  close(m["accuracy"], 0.75)
