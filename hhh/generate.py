"""Sampling from a trained LM (or a PM run's LM head, or a pretrained LM) through the Transformer's KV cache.

    gen = Generator.from_checkpoint("runs/tiny_lm")
    gen.generate(["Human: hi\n\nAssistant:"], SamplingConfig(temperature=0.7, top_p=0.9), n=4)
    gen = Generator.from_lm(load_lm("smollm2-135m-instruct"))
    gen.generate(["What is the capital of France?"], SamplingConfig(temperature=0), chat=True)

With `chat=True` each prompt becomes one user message rendered through the
model's own chat template (Jinja), ending with the assistant's turn opening.
The template's text may spell special tokens ("<|im_start|>"), which become
their ids; the user's text is encoded as plain text, so it cannot forge them.

How a batch is generated: the prompts are left-padded to a common width (pads
are invalid slots, so they change nothing), prefilled into the cache in one
call, then one token per step is sampled and fed back inside a single jitted
program (a `lax.while_loop` over the decode step, which exits early once every
row has stopped). Shapes are static: a finished row keeps emitting <pad> and is
cut on the host.

Length policy (positions are counted per row, over valid tokens only, so the
limit applies to each row's prompt + completion, not to cache slots):
  * a prompt longer than `max_len - 1` tokens is truncated from the left, with
    a warning (the most recent context matters most, and this is also what the
    reward model does to long contexts);
  * a row generates at most `min(max_new_tokens, max_len - prompt_tokens)`
    tokens, so its positions never leave the trained range.
Neither depends on the other prompts of the batch.

Randomness: row r of a call (prompt i, sample j, r = i * n + j) draws step t
with `fold_in(fold_in(PRNGKey(seed), r), t)`, so a sample depends only on the
seed, its prompt and its index, not on batch size, batch mates or row order.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0   # 0 = greedy
  top_p: float = 1.0         # nucleus sampling: keep the smallest top set with probability >= top_p
  seed: int = 0
  stop_at_eos: bool = True   # stop a row at <eos> (or <eoc>, which ends a response in PM sequences)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


_MIN_WIDTH = 16  # prompt columns; narrower prompts are left-padded to it (padding is free of effect)


def _next_pow2(x: int) -> int:
  return 1 << max(x - 1, 0).bit_length()


def sample_logits(logits_BxV, key_B, temperature, top_p, *, greedy: bool, use_top_p: bool):
  """One token per row: argmax, or a categorical draw from the temperature-scaled, top-p-filtered logits.

  `key_B` holds one key per row so that a row's draw does not depend on the others.
  """
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if use_top_p:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # A token is kept while the mass strictly before it is < top_p, so the top token always is.
    keep_BxV = (jnp.cumsum(probs_BxV, axis=-1) - probs_BxV) < top_p
    n_keep_B = keep_BxV.sum(-1)
    threshold_B = jnp.take_along_axis(sorted_BxV, (n_keep_B - 1)[:, None], axis=-1)
    logits_BxV = jnp.where(logits_BxV >= threshold_B, logits_BxV, -jnp.inf)
  return jax.vmap(jax.random.categorical)(key_B, logits_BxV).astype(jnp.int32)


# Module-level, with the graph definition static, so that Generators of one architecture share compiled programs.
@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "greedy", "use_top_p", "stop_ids", "pad_id",
                                             "cache_dtype"))
def _generate(params, tokens_BxW, valid_BxW, budget_B, row_keys_B, temperature, top_p, *, graphdef,
              steps: int, greedy: bool, use_top_p: bool, stop_ids: tuple[int, ...], pad_id: int, cache_dtype):
  """Generated ids [B, steps] (<pad> after a row stops) and each row's count of tokens before its stop."""
  model = nnx.merge(graphdef, params)
  B, W = tokens_BxW.shape
  cache = model.init_cache(B, W + steps, dtype=cache_dtype)
  h_BxWxD, cache = model(tokens_BxW, valid_BxW, cache=cache)
  # Left padding puts every row's last prompt token in the last column.
  logits_BxV = model.lm_logits(h_BxWxD[:, -1:])[:, 0]
  stop_ids_S = jnp.asarray(stop_ids, jnp.int32)

  def cond(carry):
    t, _, _, _, done_B, _ = carry
    return (t < steps) & ~jnp.all(done_B)

  def body(carry):
    t, cache, logits_BxV, out_BxT, done_B, length_B = carry
    # <pad> is never a target in training, so its logit means nothing; masking it also keeps
    # "<pad> after the stop" unambiguous in the raw ids.
    logits_BxV = logits_BxV.at[:, pad_id].set(-jnp.inf)
    key_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_B, t)
    next_B = sample_logits(logits_BxV, key_B, temperature, top_p, greedy=greedy, use_top_p=use_top_p)
    next_B = jnp.where(done_B, pad_id, next_B)
    out_BxT = jax.lax.dynamic_update_slice(out_BxT, next_B[:, None], (0, t))
    stopped_B = jnp.isin(next_B, stop_ids_S) & ~done_B
    length_B = length_B + (~done_B & ~stopped_B)
    new_done_B = done_B | stopped_B | (t + 1 >= budget_B)
    h_Bx1xD, cache = model(next_B[:, None], ~done_B[:, None], cache=cache)
    return t + 1, cache, model.lm_logits(h_Bx1xD)[:, 0], out_BxT, new_done_B, length_B

  carry = (jnp.int32(0), cache, logits_BxV, jnp.full((B, steps), pad_id, jnp.int32), budget_B <= 0,
           jnp.zeros((B,), jnp.int32))
  _, _, _, out_BxT, _, length_B = jax.lax.while_loop(cond, body, carry)
  return out_BxT, length_B


class Generator:
  """Batched sampling from a Transformer's LM head; see the module docstring for the policies."""

  def __init__(self, cfg: ModelConfig, params, tokenizer, *, batch_size: int = 64, chat_template: str | None = None):
    self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
    self.batch_size = batch_size
    self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
    from hhh.model.params import model_structure
    self._graphdef = model_structure(cfg)[0]

  @classmethod
  def from_lm(cls, lm, **kwargs) -> "Generator":
    """Any `hhh.pretrained.LM` (`load_lm`: names, hhh checkpoints and bundles, HF directories, .gguf files)."""
    return cls(lm.cfg, lm.params, lm.tokenizer, chat_template=lm.chat_template, **kwargs)

  @classmethod
  def from_checkpoint(cls, path, **kwargs) -> "Generator":
    """A training workdir (its latest checkpoint), a checkpoint step dir, or a reward bundle.

    LM and PM runs alike: every Transformer has an LM head (a PM's is only trained with lm_coef > 0).
    """
    from hhh.pretrained import load_hhh
    return cls.from_lm(load_hhh(path), **kwargs)

  def encode_prompt(self, prompt: str, chat: bool = False) -> list[int]:
    if chat:
      prefix, ids = [], self.encode_chat(prompt)
    else:
      # The ids a pretrained model expects before any text (e.g. Llama's <s>); none for hhh tokenizers.
      prefix, ids = list(getattr(self.tokenizer, "bos_prefix", ())), self.tokenizer.encode(prompt)
    if not prefix and not ids:
      # The first token needs something to be predicted from; in LM data a document follows <eos>.
      ids = [self.tokenizer.eos_id]
    limit = self.cfg.max_len - 1 - len(prefix)
    if len(ids) > limit:
      warnings.warn(f"a prompt of {len(ids) + len(prefix)} tokens exceeds max_len - 1 = {self.cfg.max_len - 1}; "
                    f"keeping its last {limit} tokens", stacklevel=2)
      ids = ids[-limit:]
    return prefix + ids

  def encode_chat(self, prompt: str) -> list[int]:
    """`prompt` as one user message in the model's chat template, up to the opening of the assistant's turn."""
    encode_special = getattr(self.tokenizer, "encode_special", None)
    if not self.chat_template or encode_special is None:
      raise ValueError(f"chat=True needs a model with a chat template; {self.tokenizer!r} has none")
    # Render around a marker, then encode the template's text (special tokens allowed) apart from the user's.
    marker = "\x00hhh-user-message\x00"
    tok = self.tokenizer
    bos = tok.token(tok.bos_prefix[0]) if getattr(tok, "bos_prefix", ()) else ""
    text = render_chat(self.chat_template, [{"role": "user", "content": marker}], bos_token=bos,
                       eos_token=tok.token(tok.eoc_id))
    if text.count(marker) != 1:
      raise ValueError("the chat template does not place the user message exactly once")
    before, after = text.split(marker)
    return encode_special(before) + tok.encode(prompt) + encode_special(after)

  def generate_ids(self, prompts: Sequence[str], sc: SamplingConfig, n: int = 1,
                   chat: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids [len(prompts) * n, max_new_tokens], lengths [len(prompts) * n]), rows ordered prompt-major.

    Row i * n + j is sample j of prompt i; `ids[r, :lengths[r]]` is its completion, then comes the stop
    token (if it stopped) and <pad> to the end.
    """
    if n < 1:
      raise ValueError(f"n={n} must be >= 1")
    encoded = [self.encode_prompt(p, chat=chat) for p in prompts]
    rows = [encoded[r // n] for r in range(len(encoded) * n)]
    T = sc.max_new_tokens
    out_NxT = np.full((len(rows), T), self.tokenizer.pad_id, np.int32)
    lengths_N = np.zeros((len(rows),), np.int32)
    if not rows:
      return out_NxT, lengths_N
    stop_ids = (self.tokenizer.eos_id, self.tokenizer.eoc_id) if sc.stop_at_eos else ()
    base_key = jax.random.PRNGKey(sc.seed)
    # Batch sizes, widths and step counts are rounded up to powers of two so that few programs are compiled.
    B = min(self.batch_size, _next_pow2(len(rows)))
    # Similar lengths share a batch, so little of it is padding; results do not depend on the order.
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    for start in range(0, len(order), B):
      idx = order[start:start + B]
      W = min(max(_next_pow2(max(len(rows[r]) for r in idx)), _MIN_WIDTH), self.cfg.max_len)
      budget_B = np.zeros((B,), np.int32)  # rows past the end of `idx` fill the batch and stop at once
      tokens_BxW = np.full((B, W), self.tokenizer.pad_id, np.int32)
      valid_BxW = np.zeros((B, W), bool)
      row_ids_B = np.zeros((B,), np.uint32)
      for b, r in enumerate(idx):
        ids = rows[r]
        tokens_BxW[b, W - len(ids):], valid_BxW[b, W - len(ids):] = ids, True
        budget_B[b] = min(T, self.cfg.max_len - len(ids))
        row_ids_B[b] = r
      steps = int(budget_B.max())
      row_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, jnp.asarray(row_ids_B))
      ids_BxS, len_B = _generate(
          self.params, tokens_BxW, valid_BxW, budget_B, row_keys_B, jnp.float32(sc.temperature or 1.0),
          jnp.float32(sc.top_p), graphdef=self._graphdef, steps=min(_next_pow2(steps), T),
          greedy=sc.temperature == 0, use_top_p=sc.top_p < 1.0, stop_ids=stop_ids, pad_id=self.tokenizer.pad_id,
          cache_dtype=jnp.dtype(self.cfg.dtype))
      ids_BxS, len_B = np.asarray(ids_BxS), np.asarray(len_B)
      out_NxT[idx, :ids_BxS.shape[1]] = ids_BxS[:len(idx)]
      lengths_N[idx] = len_B[:len(idx)]
    return out_NxT, lengths_N

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.tokenizer.pad_id, self.tokenizer.eoc_id, self.tokenizer.eos_id}
    return self.tokenizer.decode([int(i) for i in ids if int(i) not in special])

  def generate(self, prompts: Sequence[str], sc: SamplingConfig, n: int = 1, chat: bool = False) -> list[list[str]]:
    """n completions per prompt (without the prompt and without the stop token)."""
    ids_NxT, lengths_N = self.generate_ids(prompts, sc, n, chat=chat)
    texts = [self.decode(ids_NxT[r, :lengths_N[r]]) for r in range(len(lengths_N))]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def render_chat(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = True, **variables) -> str:
  """A Jinja chat template rendered the way checkpoints expect (sandboxed, trim_blocks, lstrip_blocks)."""
  import json
  try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError as e:
    raise ImportError("chat templates need the jinja2 package (pip install jinja2)") from e

  def raise_exception(message):
    raise ValueError(f"chat template: {message}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                          **variables)


def add_sampling_flags(p) -> None:
  d = SamplingConfig()
  p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
  p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
  p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass (1 = off)")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens tokens")
  p.add_argument("--batch-size", type=int, default=64, help="rows (prompts x samples) per generation batch")


def sampling_config(args) -> SamplingConfig:
  return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, stop_at_eos=not args.ignore_eos)


def cli_generate(args) -> None:
  from hhh.pretrained import load_lm
  gen = Generator.from_lm(load_lm(args.model), batch_size=args.batch_size)
  outs = gen.generate(args.prompt, sampling_config(args), n=args.n, chat=args.chat)
  single = len(args.prompt) == 1 and args.n == 1
  for i, samples in enumerate(outs):
    for j, text in enumerate(samples):
      if not single:
        print(f"--- prompt {i} sample {j} ---")
      print(text)
  sys.stdout.flush()


def add_cli(sub) -> None:
  p = sub.add_parser("generate", help="sample completions of prompts from an LM (or a PM run's LM head)")
  p.add_argument("--model", required=True,
                 help="a model name (e.g. smollm2-135m-instruct), training workdir, checkpoint step dir, reward "
                      "bundle, HF directory or .gguf file")
  p.add_argument("--n", type=int, default=1, help="samples per prompt")
  p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the model's chat template")
  add_sampling_flags(p)
  p.add_argument("prompt", nargs="+", help="prompt text (one completion block is printed per sample)")
  p.set_defaults(func=cli_generate)
