"""`RewardModel`: score (context, response) pairs with a bundled PM, in fixed-shape length buckets.

Any number of pairs is scored in batches of `batch_size` rows padded to the
smallest bucket length that holds them, so only one program per bucket is ever
compiled, and a reward does not depend on what else is in the batch.
"""

from __future__ import annotations

import pathlib
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.data.pipeline import encode_comparison, EncodeStats
from hhh.data.schema import Comparison
from hhh.model.transformer import Transformer
from hhh.model import bundle as bundle_lib


def default_buckets(max_len: int) -> tuple[int, ...]:
  out, b = [], 32
  while b < max_len:
    out.append(b)
    b *= 2
  return tuple(out) + (max_len,)


def make_reward_fn(cfg):
  """Pure JAX reward: (params, tokens_NxL, lengths_N) -> rewards_N, read at each row's last valid token.

  Sequences are right-padded `context + response + <eoc>` rows of length `lengths`.
  Usable inside a jitted RL loop; `RewardModel.score` calls exactly this.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))

  def reward_fn(params, tokens_NxL, lengths_N):
    model = nnx.merge(graphdef, params)
    valid_NxL = jnp.arange(tokens_NxL.shape[1])[None, :] < lengths_N[:, None]
    return model.reward(model(tokens_NxL, valid_NxL), valid_NxL)

  return reward_fn


class RewardModel:

  def __init__(self, path, *, batch_size: int = 16, buckets: tuple[int, ...] | None = None):
    self.path = pathlib.Path(path)
    self.cfg, self.params, self.tokenizer, self.info = bundle_lib.read(self.path)
    self.max_len = int(self.info["max_len"])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    self.batch_size = batch_size
    self.buckets = tuple(sorted(buckets)) if buckets else default_buckets(self.max_len)
    if self.buckets[0] < 1 or self.buckets[-1] < self.max_len:
      raise ValueError(f"buckets {self.buckets} must be positive and reach max_len={self.max_len}")
    norm = self.info["normalization"]
    self.mean, self.std = float(norm["mean"]), float(norm["std"])
    self._fn = jax.jit(make_reward_fn(self.cfg))
    self.truncated = 0  # pairs whose context (or response) was cut to fit max_len, over this object's life
    self.warn_truncation = True  # `hhh serve` turns it off: one warning per batch floods a server's log
    self._lock = threading.Lock()

  def reward_fn(self):
    return make_reward_fn(self.cfg)

  def encode(self, contexts, responses) -> tuple[list[np.ndarray], int]:
    if len(contexts) != len(responses):
      raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    stats = EncodeStats()
    seqs, cut = [], 0
    for c, r in zip(contexts, responses):
      before = stats.contexts_truncated + stats.responses_truncated
      seqs.append(encode_comparison(Comparison(c, (r,), (0.0,), "", ""), self.tokenizer, self.max_len, 1,
                                    stats).seqs[0])
      # Pairs, not cuts: a response cut to max_len - 1 leaves no room for its context, so one pair can bump
      # both counters (which once gave "62 of 58 sequences were truncated").
      cut += stats.contexts_truncated + stats.responses_truncated > before
    return seqs, cut

  def score(self, contexts, responses, *, normalize: bool = False) -> np.ndarray:
    """Rewards [N] (float32) for each (context, response) pair; `normalize` maps them to (r - mean) / std."""
    seqs, cut = self.encode(list(contexts), list(responses))
    if cut:
      with self._lock:
        self.truncated += cut
    if cut and self.warn_truncation:
      warnings.warn(f"{cut} of {len(seqs)} sequences were longer than max_len={self.max_len} tokens and were "
                    f"truncated (context from the left); {self.truncated} so far", stacklevel=2)
    out = np.zeros(len(seqs), np.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    by_bucket: dict[int, list[int]] = {}
    for i in order:
      by_bucket.setdefault(next(b for b in self.buckets if len(seqs[i]) <= b), []).append(i)
    for L, idx in by_bucket.items():
      for start in range(0, len(idx), self.batch_size):
        rows = idx[start:start + self.batch_size]
        tokens = np.full((self.batch_size, L), self.tokenizer.pad_id, np.int32)
        lengths = np.ones((self.batch_size,), np.int32)  # padding rows: one token, ignored
        for j, i in enumerate(rows):
          tokens[j, :len(seqs[i])] = seqs[i]
          lengths[j] = len(seqs[i])
        r = np.asarray(self._fn(self.params, tokens, lengths))
        out[rows] = r[:len(rows)]
    return (out - self.mean) / self.std if normalize else out

  def compare(self, context: str, responses) -> dict:
    """Rewards of K responses to one context, their ranking (best first) and P(i preferred to j)."""
    r = self.score([context] * len(responses), list(responses))
    p = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
    return {"rewards": r.tolist(), "ranking": [int(i) for i in np.argsort(-r, kind="stable")],
            "preference_probabilities": p.tolist()}


def load(path, **kwargs) -> RewardModel:
  return RewardModel(path, **kwargs)
