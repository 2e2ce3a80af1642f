"""Log-likelihood scoring after a cached prompt, against full forward passes computed by hand.

One small random Transformer (GQA, byte tokenizer) serves every test; items and batch sizes are
shared so that only a few programs are compiled.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from hhh.data.tokenizer import ByteTokenizer, train_bpe
from hhh.evals import score as score_lib
from hhh.evals.score import Scorer, split_encode
from hhh.model.config import ModelConfig
from hhh.pretrained import LM
from hhh.model.params import graphdef_and_params

PROMPT = ("Below are conversations between a human and a helpful assistant.\n-----\n"
          "Human: What is 2 + 2?\nAssistant: 4.\n-----\n")
ITEMS = [
    ("\nHuman: Where is Paris?\nAssistant:", [" In France.", " On the moon, next to a very large cheese."]),
    ("\nHuman: hi\nAssistant:", [" Hello!", " Go away.", " Hi there, how can I help you today?"]),
    ("\nHuman: Name a colour.\nAssistant:", [" Blue.", " Seven."]),
]


@pytest.fixture(scope="module")
def lm() -> LM:
  cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=256)
  graphdef, params = graphdef_and_params(cfg, jax.random.PRNGKey(3))
  # Random init gives near-uniform predictions; a larger embedding makes log-probs differ per token.
  params["embed"] = params["embed"] * 10.0
  return LM(cfg, params, ByteTokenizer(), name="random")


def reference(lm: LM, prefix: str, option: str, prefix_ids=None) -> tuple[float, bool]:
  """Sum of the option's log-probs and greedy match, from one full forward pass over prefix + option.

  No cache and no prompt split: the sequence is contiguous, right-padded to max_len (one compiled program;
  padding is inert, see tests/test_model.py), and the log-softmax is taken in float64 on the host.
  """
  tok = lm.tokenizer
  p = list(tok.encode(prefix)) if prefix_ids is None else list(prefix_ids)
  o = tok.encode(option)
  W = lm.cfg.max_len
  ids = np.full((1, W), tok.pad_id, np.int32)
  ids[0, :len(p) + len(o)] = p + o
  logits = np.asarray(_forward(lm.params, ids, np.arange(W)[None] < len(p) + len(o), graphdef=lm.graphdef))
  logits = logits[0].astype(np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  positions = range(len(p) - 1, len(p) + len(o) - 1)
  total = sum(logp[t, o[i]] for i, t in enumerate(positions))
  greedy = all(logits[t].argmax() == o[i] for i, t in enumerate(positions))
  return float(total), bool(greedy)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(params, tokens, valid, *, graphdef):
  model = nnx.merge(graphdef, params)
  return model.lm_logits(model(tokens, valid))


@pytest.fixture(scope="module")
def cached(lm) -> list[score_lib.Scores]:
  return Scorer(lm, batch_size=4, prompt=PROMPT).score_many(ITEMS)


def test_cached_equals_uncached_and_a_hand_rolled_forward(lm, cached):
  uncached = Scorer(lm, batch_size=4, prompt=PROMPT, use_cache=False).score_many(ITEMS)
  for (context, options), c, u in zip(ITEMS, cached, uncached):
    np.testing.assert_allclose(c.loglik, u.loglik, atol=1e-4)
    np.testing.assert_array_equal(c.greedy, u.greedy)
    for k, option in enumerate(options):
      ref, greedy = reference(lm, PROMPT + context, option)
      assert c.loglik[k] == pytest.approx(ref, abs=1e-4)
      assert c.greedy[k] == greedy
    # Byte tokenizer: one token per byte, and the byte counts are of the options as given.
    np.testing.assert_array_equal(c.n_tokens, [len(o.encode()) for o in options])
    np.testing.assert_array_equal(c.n_bytes, [len(o.encode()) for o in options])
  # The scores discriminate (a constant would pass the equalities above).
  assert len({round(float(x), 3) for s in cached for x in s.loglik}) == 7
  assert all(float(x) < 0 for s in cached for x in s.loglik)


def test_prefill_in_chunks_and_padded_slots_change_nothing(lm, cached):
  # 109 cached prompt tokens: 128 slots in one pass by default; in chunks of 32 (4 chunks) and of 48 (144 slots,
  # 35 of them invalid padding) the rows read the same prefix.
  for chunk, slots in ((32, 128), (48, 144)):
    scorer = Scorer(lm, batch_size=4, prompt=PROMPT, prefill_chunk=chunk)
    assert (scorer._P, scorer._chunk) == (slots, chunk)
    for c, s in zip(cached, scorer.score_many(ITEMS)):
      np.testing.assert_allclose(s.loglik, c.loglik, atol=1e-5)


def test_batching_and_batch_mates_do_not_change_results(lm, cached):
  one_by_one = Scorer(lm, batch_size=1, prompt=PROMPT)
  for (context, options), c in zip(ITEMS, cached):
    np.testing.assert_allclose(one_by_one.loglik(context, options), c.loglik, atol=1e-5)
  # An option never sees another option's tokens: replacing or removing its neighbours changes nothing.
  scorer = Scorer(lm, batch_size=4, prompt=PROMPT)
  context, options = ITEMS[1]
  alone = scorer.loglik(context, options[:1])
  other = scorer.loglik(context, [options[0], " Something entirely different and much longer than before."])
  assert alone[0] == pytest.approx(cached[1].loglik[0], abs=1e-5)
  assert other[0] == pytest.approx(cached[1].loglik[0], abs=1e-5)
  assert other[1] != pytest.approx(cached[1].loglik[1], abs=1e-3)
  # Static shapes: scoring the same buckets again compiles nothing new.
  compiled = score_lib._score_rows._cache_size()
  Scorer(lm, batch_size=4, prompt=PROMPT).score_many(ITEMS[::-1])
  assert score_lib._score_rows._cache_size() == compiled


def test_no_prompt_and_empty_context(lm):
  scorer = Scorer(lm, batch_size=4)
  assert scorer.prompt_tokens == 0
  context, options = ITEMS[2]
  got = scorer.loglik(context, options)
  for k, option in enumerate(options):
    assert got[k] == pytest.approx(reference(lm, context, option)[0], abs=1e-4)
  # Nothing before the option: it is scored after <eos>, the token a document follows.
  got = scorer.loglik("", [" Blue."])
  assert got[0] == pytest.approx(reference(lm, "", " Blue.", prefix_ids=[lm.tokenizer.eos_id])[0], abs=1e-4)


def test_long_context_is_truncated_from_the_left_with_a_warning(lm):
  scorer = Scorer(lm, batch_size=4, prompt=PROMPT)
  room = lm.cfg.max_len - len(PROMPT) - len(" yes")
  context = "x" * 50 + "The answer is:" + "z" * (room - 14)  # 50 bytes too long
  with pytest.warns(UserWarning, match="context loses tokens from the left"):
    got = scorer.loglik(context, [" yes"])
  assert scorer.truncated == 1
  assert got[0] == pytest.approx(reference(lm, PROMPT + context[50:], " yes")[0], abs=1e-4)
  with pytest.raises(ValueError, match="does not fit in max_len=256"):
    scorer.loglik("abc", [" " + "y" * (lm.cfg.max_len - len(PROMPT) + 1)])
  with pytest.raises(ValueError, match="the prompt is 300 tokens"):
    Scorer(lm, prompt="p" * 300)


def test_option_tokens_split_from_the_joint_encoding():
  tok = train_bpe(["Hello world. Hello world. The world is wide. Hello there, world."] * 20, vocab_size=300)
  world = tok.encode(" world")
  assert len(world) == 1  # " world" is one merged token in this vocabulary
  # Clean split: the context's tokens are a prefix of the joint tokens.
  assert split_encode(tok, "Hello", " world") == world
  # "wor" + "ld" merge into "world" jointly, so the context's own tokens are not a prefix: encode apart.
  assert tok.encode("Hello world")[-1] == world[0] and tok.encode("Hello wor")[-1] != world[0]
  assert split_encode(tok, "Hello wor", "ld") == tok.encode("ld")
  assert split_encode(ByteTokenizer(), "ab", "cd") == [99, 100]
