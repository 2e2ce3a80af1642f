"""Log-likelihood scoring of multiple-choice options after a long prompt that is run through the model once.

    scorer = Scorer(load_lm("smollm2-135m-instruct"), prompt=hhh_prompt)
    scorer.loglik("\\nHuman: Hi!\\nAssistant:", [" Hello!", " Go away."])   # -> array([-9.1, -15.3])

Layout. The prompt's tokens p[0..n-1] are run through the model ONCE (batch 1, when the first batch is
scored), into a KV cache of P = n - 1 slots rounded up to a multiple of 64, or of the 512-token prefill chunk
when longer (unused slots are invalid and change nothing). Each (item, option) pair is one row placed after that cache:

    row = [p[n-1]] + context tokens + option tokens          (no prompt: context tokens + option tokens)

The row starts with the prompt's last token so that a row always holds the position that predicts the
first context (or option) token; without a prompt an empty context becomes [<eos>], the token a document
follows in LM data. Rows are right-padded to a power-of-two length L (>= 16) and batched; every row reads
the prompt cache as one shared prefix (`Transformer(prefix=...)`, never copied per row), so only one program
is compiled per (rows, L, T) bucket (T: the longest option's tokens, rounded up to a power of two), and the
prompt prefill once.
Only the T positions that predict option tokens go through the LM head and the log-softmax.

`use_cache=False` is the reference (and the benchmark's baseline): every row is a full forward pass over
[prompt[:-1] padded to P] + row, the same layout without the cache, so the prompt is recomputed for
every (item, option) row. The two agree to float rounding (tests/test_evals.py).

Tokenization boundary. Each join is tokenized jointly and split when the split is clean:
`split_encode(a, b)` encodes a + b and takes the tokens after len(encode(a)) when encode(a) is a prefix of
it, else encodes b on its own. The prompt's tokens are always encode(prompt) (they are the cache); the
context's tokens come from splitting encode(prompt + context) at the prompt, and each option's from
splitting encode(context + option) at the context. So an option with its leading space (" Paris")
gets the tokens it would get in running text, whatever the context ends with.

Length policy: a row whose prompt + context + option exceeds the model's max_len loses context tokens
from the left, with a warning (the end of the context matters most; `Scorer.truncated` counts the rows).
A prompt that does not leave room for the option and one token before it is a ValueError.

Per-option results (`Scores`): the summed log-probability of the option's tokens, its token count, the UTF-8
byte count of the scored continuation (" " + option), the option's characters and UTF-8 bytes without that one
leading space (what lm-eval's acc_norm and acc_bytes divide by: `hhh.evals.rules`), and whether every option
token is the argmax at its position (greedy reproduction, for LAMBADA-style tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.model.transformer import PREFILL_CHUNK, prefill_prefix, prefix_slots

_MIN_ROW = 16     # narrower rows are padded to this (one program serves all short items)
_MIN_OPTION = 4
_PROMPT_ALIGN = 64


def next_pow2(x: int) -> int:
  return 1 << max(x - 1, 0).bit_length()


def split_encode(tokenizer, a: str, b: str, a_ids: Sequence[int] | None = None) -> list[int]:
  """Tokens of `b` as it continues `a`: encode(a + b) split after encode(a) when that is a prefix, else encode(b)."""
  a_ids = list(tokenizer.encode(a)) if a_ids is None else list(a_ids)
  joint = list(tokenizer.encode(a + b))
  if joint[:len(a_ids)] == a_ids:
    return joint[len(a_ids):]
  return list(tokenizer.encode(b))


def choice_text(option: str) -> str:
  """The option as lm-eval's `doc_to_choice` holds it: without the one leading space hhh scores it with."""
  return option[1:] if option.startswith(" ") else option


@dataclasses.dataclass(frozen=True)
class Scores:
  """One item's options: loglik [K] (float64 sums of token log-probs), n_tokens [K], n_bytes [K] (UTF-8 bytes
  of the scored continuation), greedy [K]; n_chars [K] and choice_bytes [K]: characters and UTF-8 bytes of
  `choice_text(option)` (None when a stored result predates them)."""
  loglik: np.ndarray
  n_tokens: np.ndarray
  n_bytes: np.ndarray
  greedy: np.ndarray
  n_chars: np.ndarray | None = None
  choice_bytes: np.ndarray | None = None


def option_lengths(options: Sequence[str]) -> dict:
  """n_bytes, n_chars and choice_bytes of each option (the length fields of `Scores`)."""
  return {"n_bytes": np.asarray([len(o.encode("utf-8")) for o in options]),
          "n_chars": np.asarray([len(choice_text(o)) for o in options]),
          "choice_bytes": np.asarray([len(choice_text(o).encode("utf-8")) for o in options])}


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def prefill(params, tokens_1xP, valid_1xP, *, graphdef, chunk: int | None = None):
  """The prompt's KV cache (batch 1, P slots), filled `chunk` tokens at a time (`prefill_prefix`)."""
  return prefill_prefix(nnx.merge(graphdef, params), tokens_1xP, valid_1xP, chunk)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_rows(params, prompt, tokens_BxL, valid_BxL, start_B, targets_BxT, tmask_BxT, *, graphdef):
  """(sum of target log-probs [B], all targets greedy [B]); targets[t] is predicted at row position start + t.

  `prompt` is a prefilled cache every row continues (a shared prefix, never copied per row) or None.
  """
  model = nnx.merge(graphdef, params)
  L = tokens_BxL.shape[1]
  h_BxLxD = model(tokens_BxL, valid_BxL, prefix=prompt)
  T = targets_BxT.shape[1]
  idx_BxT = jnp.minimum(start_B[:, None] + jnp.arange(T)[None, :], L - 1)
  h_BxTxD = jnp.take_along_axis(h_BxLxD, idx_BxT[:, :, None], axis=1)
  logits_BxTxV = model.lm_logits(h_BxTxD)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  lp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[:, :, None], axis=-1)[:, :, 0]
  hit_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
  return jnp.where(tmask_BxT, lp_BxT, 0.0).sum(-1), jnp.all(hit_BxT | ~tmask_BxT, axis=-1)


@dataclasses.dataclass(frozen=True)
class Row:
  """One (item, option) pair as the model sees it after the prompt cache."""
  item: int
  option: int
  ids: tuple[int, ...]
  start: int      # row position whose output predicts the option's first token
  n_option: int


class Scorer:
  """Scores options of multiple-choice items by log-likelihood after `prompt` (see the module docstring)."""

  def __init__(self, lm, *, batch_size: int = 16, prompt: str = "", use_cache: bool = True,
               prefill_chunk: int = PREFILL_CHUNK):
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self.lm, self.tokenizer, self.params = lm, lm.tokenizer, lm.params
    self.max_len = int(lm.cfg.max_len)
    self.batch_size, self.prompt, self.use_cache = batch_size, prompt, use_cache
    self._graphdef = lm.graphdef
    self.prompt_ids = list(self.tokenizer.encode(prompt)) if prompt else []
    if len(self.prompt_ids) + 1 > self.max_len:
      raise ValueError(f"the prompt is {len(self.prompt_ids)} tokens; the model's max_len={self.max_len} leaves no "
                       "room for an option after it")
    # Slots held by the cache: the prompt but its last token, which starts every row.
    self._cached_ids = self.prompt_ids[:-1]
    n = len(self._cached_ids)
    # A whole number of prefill chunks (the extra slots are invalid: they change nothing).
    self._P, self._chunk = prefix_slots(n, _PROMPT_ALIGN, prefill_chunk)
    self._prompt_cache = None  # filled by the first batch (`prompt_cache`)
    self.truncated = 0  # rows whose context lost tokens to fit max_len, over this scorer's life

  def prefill_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [1, P], valid [1, P]) of the cached part of the prompt: all its tokens but the last."""
    n = len(self._cached_ids)
    tokens = np.full((1, self._P), self.tokenizer.pad_id, np.int32)
    tokens[0, :n] = self._cached_ids
    return tokens, np.arange(self._P)[None] < n

  @property
  def prompt_cache(self):
    """The prompt's KV cache (batch 1), computed once, on first use; None without a cache or a prompt."""
    if self._prompt_cache is None and self.use_cache and self._cached_ids:
      self._prompt_cache = prefill(self.params, *self.prefill_arrays(), graphdef=self._graphdef, chunk=self._chunk)
    return self._prompt_cache

  @property
  def prompt_tokens(self) -> int:
    return len(self.prompt_ids)

  def encode_item(self, context: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """(context tokens, tokens of each option), split as described in the module docstring."""
    if not options:
      raise ValueError(f"an item needs at least one option (context {context[:60]!r})")
    if self.prompt:
      ctx = split_encode(self.tokenizer, self.prompt, context, self.prompt_ids)
    else:
      ctx = list(self.tokenizer.encode(context))
    ctx_alone = list(self.tokenizer.encode(context))
    opts = [split_encode(self.tokenizer, context, o, ctx_alone) for o in options]
    for o, ids in zip(options, opts):
      if not ids:
        raise ValueError(f"option {o!r} encodes to no tokens (context {context[:60]!r})")
    return ctx, opts

  def _rows(self, item: int, context: str, options: Sequence[str]) -> list[Row]:
    ctx, opts = self.encode_item(context, options)
    head = self.prompt_ids[-1:]
    if not head and not ctx:
      ctx = [self.tokenizer.eos_id]
    rows = []
    for k, opt in enumerate(opts):
      c = ctx
      over = len(self._cached_ids) + len(head) + len(c) + len(opt) - self.max_len
      if over > 0:
        keep_min = 0 if head else 1  # something must precede the option
        if len(c) - over < keep_min:
          raise ValueError(f"option {options[k][:60]!r} ({len(opt)} tokens) does not fit in max_len={self.max_len} "
                           f"after a {len(self.prompt_ids)}-token prompt")
        c = c[over:]
        self.truncated += 1
        # One message per scorer (the default filter shows it once); `truncated` has the count.
        warnings.warn(f"prompt + context + option exceeds max_len={self.max_len} tokens: the context loses tokens "
                      "from the left (Scorer.truncated counts the rows)", stacklevel=3)
      ids = tuple(head + c + opt)
      rows.append(Row(item, k, ids, len(head) + len(c) - 1, len(opt)))
    return rows

  def batch_arrays(self, rows: Sequence[Row]) -> tuple[np.ndarray, ...]:
    """(tokens, valid, start, targets, target mask) of one batch: rows padded to a power of two with empty rows."""
    pad = self.tokenizer.pad_id
    B = min(self.batch_size, next_pow2(len(rows)))
    L = max(_MIN_ROW, next_pow2(max(len(r.ids) for r in rows)))
    T = min(L, max(_MIN_OPTION, next_pow2(max(r.n_option for r in rows))))
    offset = 0 if self.use_cache else self._P
    tokens = np.full((B, offset + L), pad, np.int32)
    valid = np.zeros((B, offset + L), bool)
    if not self.use_cache and self._cached_ids:
      tokens[:, :len(self._cached_ids)] = self._cached_ids
      valid[:, :len(self._cached_ids)] = True
    start = np.zeros((B,), np.int32)
    targets = np.zeros((B, T), np.int32)
    tmask = np.zeros((B, T), bool)
    for b, r in enumerate(rows):
      tokens[b, offset:offset + len(r.ids)] = r.ids
      valid[b, offset:offset + len(r.ids)] = True
      start[b] = offset + r.start
      targets[b, :r.n_option] = r.ids[len(r.ids) - r.n_option:]
      tmask[b, :r.n_option] = True
    return tokens, valid, start, targets, tmask

  def _run(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
    lp, greedy = _score_rows(self.params, self.prompt_cache, *self.batch_arrays(rows), graphdef=self._graphdef)
    return np.asarray(lp, np.float64)[:len(rows)], np.asarray(greedy)[:len(rows)]

  def rows(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[Row]:
    """Every (item, option) row, in item order."""
    return [r for i, (context, options) in enumerate(items) for r in self._rows(i, context, options)]

  def batches(self, rows: Sequence[Row]) -> list[list[int]]:
    """Row indices per batch: by length within windows of 8 batches (less padding), in window order."""
    out = []
    window = 8 * self.batch_size
    for w in range(0, len(rows), window):
      order = sorted(range(w, min(w + window, len(rows))), key=lambda i: len(rows[i].ids))
      out.extend(order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size))
    return out

  def score_many(self, items: Sequence[tuple[str, Sequence[str]]],
                 progress: Callable[[int], None] | None = None) -> list[Scores]:
    """Scores of each (context, options) item; `progress(n)` is called as each chunk of n items finishes.

    Items are taken in chunks of about 8 batches of rows, batched as `batches` does; a row's result does
    not depend on its batch mates.
    """
    out: list[Scores | None] = [None] * len(items)
    chunk: list[Row] = []
    chunk_items: list[int] = []

    def flush():
      if not chunk:
        return
      lp = np.zeros(len(chunk))
      greedy = np.zeros(len(chunk), bool)
      for idx in self.batches(chunk):
        lp[idx], greedy[idx] = self._run([chunk[i] for i in idx])
      by_item: dict[int, list[int]] = {}
      for i, r in enumerate(chunk):
        by_item.setdefault(r.item, []).append(i)
      for it, idx in by_item.items():
        options = items[it][1]
        out[it] = Scores(loglik=lp[idx], n_tokens=np.asarray([chunk[i].n_option for i in idx]),
                         greedy=greedy[idx], **option_lengths(options))
      if progress is not None:
        progress(len(chunk_items))
      chunk.clear()
      chunk_items.clear()

    for i, (context, options) in enumerate(items):
      chunk.extend(self._rows(i, context, options))
      chunk_items.append(i)
      if len(chunk) >= 8 * self.batch_size:
        flush()
    flush()
    return out  # type: ignore[return-value]

  def score(self, context: str, options: Sequence[str]) -> Scores:
    return self.score_many([(context, options)])[0]

  def loglik(self, context: str, options: Sequence[str]) -> np.ndarray:
    """Summed log-probability [K] of each option's tokens after prompt + context."""
    return self.score(context, options).loglik
