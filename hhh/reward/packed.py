"""Shared-context packing: score K responses to one context in ONE row instead of K rows.

Scored separately, a comparison's K sequences `context + response_j + <eoc>`
repeat the context K times. Packed, a row holds the context once, then each
response with its `<eoc>`:

    tokens     c0 c1 c2 | a0 a1 E | b0 E | pad
    positions   0  1  2 |  3  4 5 |  3 4 |  0
    segment     0  0  0 |  1  1 1 |  2 2 | -1

A tree attention mask (`packed_mask`) lets each token see, causally, the context
and its own response only, and positions restart after the context, so every
real token attends to exactly the keys, at exactly the positions, it has in its
own separate sequence: the hidden state at each `<eoc>`, hence the reward, is the
separate one up to float summation order (tested to 1e-5).

Exactness needs the K separate encodings to share one context. When
`RewardModel.encode` would cut the context (or a response) to fit max_len, each
response sees a different suffix of the context, so `score_many_shared` scores
that comparison separately instead (the fallback; `PackStats.fallback` counts
them). A packed row may be longer than max_len, because no position in it exceeds
what the separate sequences use (RoPE or learned positions alike), up to
`max_packed_len` (default 2 * max_len); a longer row falls back as well. By
default a comparison is also scored separately when packing would not shrink its
bucketed slots (`pack="cheaper"`); the numbers are the same either way.

Training: `collate_packed` + `packed_loss_fn` give the ranked/binary PM loss on
packed rows of one comparison each, equal in value and gradient to
`hhh.train.step.loss_fn` (without LM mixing or dropout). `hhh train` packs with
`hhh.data.packing` instead (several comparisons per row, LM mixing, batch shards).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh import objectives as obj
from hhh.data.pipeline import Encoded, EncodeStats, encode_comparison
from hhh.data.schema import Comparison
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer

PAD_SEGMENT = -1  # segment id of padding slots: never a valid key


def _pack_segments(context_ids, segments_with_eoc) -> dict[str, np.ndarray]:
  C = len(context_ids)
  tokens, positions, segment, eoc_index = [list(context_ids)], [np.arange(C)], [np.zeros(C, np.int32)], []
  end = C
  for j, seq in enumerate(segments_with_eoc):
    n = len(seq)
    tokens.append(list(seq))
    # Restarting at C puts response j where it sits in its own `context + response_j + <eoc>`.
    positions.append(np.arange(C, C + n))
    segment.append(np.full(n, j + 1, np.int32))
    end += n
    eoc_index.append(end - 1)
  return {"tokens_L": np.asarray([t for part in tokens for t in part], np.int32),
          "positions_L": np.concatenate(positions).astype(np.int32),
          "segment_L": np.concatenate(segment).astype(np.int32),
          "eoc_index_K": np.asarray(eoc_index, np.int32)}


def pack(context_ids: Sequence[int], response_ids: Sequence[Sequence[int]], eoc_id: int) -> dict[str, np.ndarray]:
  """One packed row: tokens_L, positions_L, segment_L (0 = context, j+1 = response j), eoc_index_K.

  Every response gets its own `<eoc>` (where its reward is read). Nothing is
  truncated here; `score_many_shared` decides what is packable.
  """
  return _pack_segments(context_ids, [list(r) + [eoc_id] for r in response_ids])


def packed_mask(segment_BxL, valid_BxL=None):
  """Tree attention mask [B, L(query), L(key)]: causal, key in the context or in the query's own segment, valid keys.

  Padding queries see the context only (their output is never read); a padding
  row with no valid key is fully masked, which the attention keeps finite.
  """
  segment_BxL = jnp.asarray(segment_BxL)
  if valid_BxL is None:
    valid_BxL = segment_BxL != PAD_SEGMENT
  L = segment_BxL.shape[-1]
  idx_L = jnp.arange(L)
  causal_LxL = idx_L[:, None] >= idx_L[None, :]
  seg_q_BxLx1, seg_k_Bx1xL = segment_BxL[:, :, None], segment_BxL[:, None, :]
  visible_BxLxL = (seg_k_Bx1xL == 0) | (seg_k_Bx1xL == seg_q_BxLx1)
  return causal_LxL[None] & visible_BxLxL & jnp.asarray(valid_BxL, bool)[:, None, :]


def _reward_head(model: Transformer, h_BxNxD):
  # Same arithmetic as Transformer.reward, on any number of read positions per row.
  h_BxNxD = h_BxNxD.astype(jnp.float32)
  return (h_BxNxD @ model.reward_head["kernel"][...])[..., 0] + model.reward_head["bias"][...][0]


def packed_rewards(model: Transformer, tokens_BxL, positions_BxL, mask_BxLxL, eoc_index_BxK, *,
                   dropout_rng=None):
  """Rewards [B, K] (float32) read by the reward head at each response's `<eoc>` in packed rows."""
  h_BxLxD = model(tokens_BxL, positions_BxL=positions_BxL, mask_BxLxL=mask_BxLxL, dropout_rng=dropout_rng)
  h_BxKxD = jnp.take_along_axis(h_BxLxD, eoc_index_BxK[..., None], axis=1)
  return _reward_head(model, h_BxKxD)


@functools.lru_cache(maxsize=None)
def _token_reward_fn(cfg: ModelConfig):
  """Jitted (params, tokens_BxL, positions_BxL, segment_BxL) -> reward at EVERY slot, [B, L].

  Reading every slot and picking the `<eoc>`s on the host keeps K out of the
  program's shapes, so a bucket compiles once whatever the number of responses;
  the head is one dot product per token, noise beside the transformer.
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))

  def fn(params, tokens_BxL, positions_BxL, segment_BxL):
    model = nnx.merge(graphdef, params)
    valid_BxL = segment_BxL != PAD_SEGMENT
    h_BxLxD = model(tokens_BxL, valid_BxL, positions_BxL=positions_BxL,
                    mask_BxLxL=packed_mask(segment_BxL, valid_BxL))
    return _reward_head(model, h_BxLxD)

  return jax.jit(fn)


@dataclasses.dataclass
class PackStats:
  comparisons: int = 0
  packed: int = 0               # comparisons scored as one packed row
  truncated: int = 0            # scored separately: `rm.encode` cuts them, so their responses share no context
  too_long: int = 0             # scored separately: packed row over max_packed_len
  not_cheaper: int = 0          # scored separately: the packed row's bucket holds no fewer slots (pack="cheaper")
  rows: int = 0                 # packed rows run, padding rows included
  row_tokens: int = 0           # slots of the packed batches run (rows x bucket length)
  bucket_rows: dict[int, int] = dataclasses.field(default_factory=dict)  # bucket length -> rows run in it

  @property
  def fallback(self) -> int:
    return self.truncated + self.too_long + self.not_cheaper


def packed_buckets(buckets: Sequence[int], max_packed_len: int) -> tuple[int, ...]:
  """The model's buckets, doubled on past its max_len up to `max_packed_len`."""
  out = sorted(b for b in buckets if b <= max_packed_len)
  b = out[-1] if out else 32
  while b < max_packed_len:
    b = min(2 * b, max_packed_len)
    out.append(b)
  return tuple(out)


def _encode_shared(context: str, responses: Sequence[str], tok, max_len: int):
  """(context ids, [response ids]) exactly as `RewardModel.encode` tokenizes them, or None if it would truncate."""
  stats = EncodeStats()
  k = len(responses)
  enc = encode_comparison(Comparison(context, tuple(responses), (0.0,) * k, "", ""), tok, max_len, k, stats)
  if stats.contexts_truncated or stats.responses_truncated:
    return None
  c = enc.starts[0]
  return enc.seqs[0][:c], [s[c:] for s in enc.seqs]  # response segments keep their <eoc>


def _bucket(n: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if n <= b)


def score_many_shared(rm, contexts: Sequence[str], responses_per_context: Sequence[Sequence[str]], *,
                      normalize: bool = False, max_packed_len: int | None = None,
                      pack: Literal["cheaper", "always"] = "cheaper",
                      stats: PackStats | None = None) -> list[np.ndarray]:
  """Rewards [K_i] for each context's responses, packed one comparison per row; same numbers as `rm.score`.

  Rows are grouped by packed length into buckets (`packed_buckets`) and run in
  batches of `rm.batch_size` rows, so each bucket compiles one program. These
  comparisons are scored separately instead, through `rm.score` (which warns
  about truncation as usual):
    - those `rm.encode` would truncate (their responses follow different context suffixes);
    - those whose packed row exceeds `max_packed_len` (default 2 * rm.max_len);
    - with pack="cheaper" (the default), those whose packed row's bucket is not
      shorter than the K separate sequences' buckets together: packing saves
      nothing in the linear layers there and costs more attention (one long row,
      quadratic, instead of K short ones). K = 1 is never packed then.
  pack="always" packs every comparison it can.
  """
  if len(contexts) != len(responses_per_context):
    raise ValueError(f"{len(contexts)} contexts but {len(responses_per_context)} response lists")
  if pack not in ("cheaper", "always"):
    raise ValueError(f"pack must be 'cheaper' or 'always', not {pack!r}")
  stats = stats if stats is not None else PackStats()
  max_packed_len = max_packed_len or 2 * rm.max_len
  buckets = packed_buckets(rm.buckets, max_packed_len)
  out = [np.zeros(len(rs), np.float32) for rs in responses_per_context]
  packed, fallback = [], []
  for i, (c, rs) in enumerate(zip(contexts, responses_per_context)):
    if not rs:
      continue
    stats.comparisons += 1
    enc = _encode_shared(c, list(rs), rm.tokenizer, rm.max_len)
    if enc is None:
      stats.truncated += 1
      fallback.append(i)
      continue
    row = _pack_segments(*enc)
    n = len(row["tokens_L"])
    if n > max_packed_len:
      stats.too_long += 1
      fallback.append(i)
    elif pack == "cheaper" and _bucket(n, buckets) >= sum(_bucket(len(enc[0]) + len(r), rm.buckets) for r in enc[1]):
      stats.not_cheaper += 1
      fallback.append(i)
    else:
      packed.append((i, row))
  stats.packed += len(packed)

  fn, B = _token_reward_fn(rm.cfg), rm.batch_size
  by_bucket: dict[int, list] = {}
  for item in sorted(packed, key=lambda it: len(it[1]["tokens_L"])):
    by_bucket.setdefault(_bucket(len(item[1]["tokens_L"]), buckets), []).append(item)
  for L, items in by_bucket.items():
    for start in range(0, len(items), B):
      chunk = items[start:start + B]
      tokens_BxL = np.full((B, L), rm.tokenizer.pad_id, np.int32)
      positions_BxL = np.zeros((B, L), np.int32)
      segment_BxL = np.full((B, L), PAD_SEGMENT, np.int32)  # padding rows stay all-pad, their output is dropped
      for j, (_, row) in enumerate(chunk):
        n = len(row["tokens_L"])
        tokens_BxL[j, :n], positions_BxL[j, :n], segment_BxL[j, :n] = (
            row["tokens_L"], row["positions_L"], row["segment_L"])
      r_BxL = np.asarray(fn(rm.params, tokens_BxL, positions_BxL, segment_BxL))
      for j, (i, row) in enumerate(chunk):
        out[i] = r_BxL[j, row["eoc_index_K"]]
      stats.rows += B
      stats.row_tokens += B * L
      stats.bucket_rows[L] = stats.bucket_rows.get(L, 0) + B

  if fallback:
    ctxs = [contexts[i] for i in fallback for _ in responses_per_context[i]]
    resps = [r for i in fallback for r in responses_per_context[i]]
    r = rm.score(ctxs, resps)
    at = 0
    for i in fallback:
      k = len(responses_per_context[i])
      out[i] = r[at:at + k]
      at += k
  if normalize:
    out = [((r - rm.mean) / rm.std).astype(np.float32) for r in out]
  return out


def score_shared_context(rm, context: str, responses: Sequence[str], *, normalize: bool = False,
                         max_packed_len: int | None = None,
                         pack: Literal["cheaper", "always"] = "cheaper") -> np.ndarray:
  """Rewards [K] of K responses to one context, from one packed row: `rm.score([context] * K, responses)`.

  A single comparison still runs a full batch of `rm.batch_size` rows; batch
  many with `score_many_shared`.
  """
  return score_many_shared(rm, [context], [list(responses)], normalize=normalize,
                           max_packed_len=max_packed_len, pack=pack)[0]


# --- PM training on packed rows ---------------------------------------------------------------------------------


def packable(ex: Encoded) -> bool:
  """Whether every response of an encoded comparison follows the same context (nothing was cut per response)."""
  c = ex.starts[0]
  return all(st == c and np.array_equal(s[:c], ex.seqs[0][:c]) for s, st in zip(ex.seqs, ex.starts))


def packed_length(ex: Encoded) -> int:
  """Tokens of an encoded comparison packed: the context once, then every response with its <eoc>."""
  return ex.starts[0] + sum(len(s) - st for s, st in zip(ex.seqs, ex.starts))


def collate_packed(examples: Sequence[Encoded | None], L: int, K: int, pad_id: int) -> dict[str, np.ndarray]:
  """Packed [B, L] rows (one comparison each) from `encode_comparison` outputs.

  Returns tokens, positions, segments (PAD_SEGMENT on padding) [B, L] and
  eoc_index, lengths (response tokens + <eoc>; 0 = no response), scores [B, K].
  None entries are padding rows. Raises on an example that is not `packable`:
  collate it unpacked with `hhh.data.pipeline.collate`.
  """
  B = len(examples)
  tokens = np.full((B, L), pad_id, np.int32)
  positions = np.zeros((B, L), np.int32)
  segments = np.full((B, L), PAD_SEGMENT, np.int32)
  eoc_index = np.zeros((B, K), np.int32)
  lengths = np.zeros((B, K), np.int32)
  scores = np.zeros((B, K), np.float32)
  for b, ex in enumerate(examples):
    if ex is None:
      continue
    if not packable(ex):
      raise ValueError(f"row {b}: its responses follow differently truncated contexts, so they cannot share one")
    if len(ex.seqs) > K or packed_length(ex) > L:
      raise ValueError(f"row {b}: {len(ex.seqs)} responses in {packed_length(ex)} packed tokens exceed K={K}, L={L}")
    c = ex.starts[0]
    row = _pack_segments(ex.seqs[0][:c], [s[c:] for s in ex.seqs])
    n = len(row["tokens_L"])
    tokens[b, :n], positions[b, :n], segments[b, :n] = row["tokens_L"], row["positions_L"], row["segment_L"]
    k = len(ex.seqs)
    eoc_index[b, :k] = row["eoc_index_K"]
    lengths[b, :k] = [len(s) - c for s in ex.seqs]
    scores[b, :len(ex.scores)] = ex.scores
  return {"tokens": tokens, "positions": positions, "segments": segments, "eoc_index": eoc_index,
          "lengths": lengths, "scores": scores}


def packed_loss_fn(params, graphdef, batch, objective: str, rng=None):
  """(loss, metrics) of the ranked or binary PM objective on a `collate_packed` batch.

  Equals `hhh.train.step.loss_fn(..., lm_coef=0)` on the same comparisons, in
  value and gradient, when no dropout is drawn (`rng=None`); with dropout the
  context shares one dropout draw across its responses. No LM mixing.
  """
  if objective not in obj.PM_OBJECTIVES:
    raise ValueError(f"packed training covers the preference objectives (ranked, binary), not {objective!r}")
  model = nnx.merge(graphdef, params)
  mask_BxLxL = packed_mask(batch["segments"])
  r_BxK = packed_rewards(model, batch["tokens"], batch["positions"], mask_BxLxL, batch["eoc_index"],
                         dropout_rng=rng)
  valid_BxK = batch["lengths"] > 0
  r_BxK = jnp.where(valid_BxK, r_BxK, 0.0)
  return obj.pm_loss(objective)(r_BxK, batch["scores"], valid_BxK)
