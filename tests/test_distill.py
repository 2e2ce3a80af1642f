"""Context distillation: the KL loss by hand, the cached teacher equals a full forward, and a short run learns."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hhh.studies import distill
from hhh.data.tokenizer import ByteTokenizer
from hhh.model.config import ModelConfig
from hhh.pretrained import LM, load_lm
from hhh.model.params import graphdef_and_params

CFG = ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=256)


def _lm(seed=0, scale=1.0):
  _, params = graphdef_and_params(CFG, jax.random.PRNGKey(seed))
  # A larger init makes attention and next-token distributions sharp, so a prompt changes them a lot.
  params = jax.tree.map(lambda a: a * scale, params)
  return LM(CFG, params, ByteTokenizer(), name="random")


def test_distill_loss_matches_hand_computed_kl():
  t = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
  s = jnp.log(jnp.array([[[0.25, 0.5, 0.25], [0.1, 0.8, 0.1]]]))
  loss, m = distill.distill_loss(s, t, jnp.array([[True, True]]))
  kl0 = 0.5 * np.log(0.5 / 0.25) + 0.25 * np.log(0.25 / 0.5)  # second position: identical -> 0
  assert float(loss) == pytest.approx(kl0 / 2, abs=1e-6)
  assert float(m["top1_agreement"]) == pytest.approx(0.5)
  loss_masked, _ = distill.distill_loss(s, t, jnp.array([[True, False]]))
  assert float(loss_masked) == pytest.approx(kl0, abs=1e-6)


def test_teacher_with_shared_prompt_prefix_equals_full_forward():
  lm = _lm()
  prompt = lm.tokenizer.encode("Human: hi\n\nAssistant: hello there\n-----\n")
  rows = [lm.tokenizer.encode("\n\nHuman: what is 2+2?"), lm.tokenizer.encode("\n\nHuman: name a colour")]
  x = np.array([r[:min(map(len, rows))] for r in rows])
  cache = distill.prefill(lm.graphdef, lm.params, prompt)
  assert cache["valid"].shape == (1, 64) and int(cache["valid"].sum()) == len(prompt)  # padded slots are inert
  got = distill.teacher_logits(lm.graphdef, lm.params, cache, jnp.asarray(x))
  model = nnx.merge(lm.graphdef, lm.params)
  for b in range(2):
    full = jnp.asarray([prompt + x[b].tolist()])
    want = model.lm_logits(model(full))[0, len(prompt):]
    np.testing.assert_allclose(np.asarray(got[b]), np.asarray(want), atol=1e-4)


def test_short_distillation_lowers_kl_and_saves_a_loadable_student(tmp_path):
  prompt = tmp_path / "p.txt"
  prompt.write_text("Human: Be nice.\n\nAssistant: Always, happily.\n-----\n" * 3)
  cfg = distill.DistillConfig(model="unused", prompt=str(prompt), samples=8, sample_tokens=24, steps=12,
                              batch_size=4, lr=3e-3, warmup_steps=1, log_every=1)
  lm = _lm(1, scale=8.0)
  summary = distill.distill(cfg, tmp_path / "out", lm=lm)
  assert summary["texts"] == 8 and summary["text_tokens"] == len("\n\nHuman:") + 24
  assert summary["last"]["kl"] < 0.7 * summary["first"]["kl"]
  texts = [json.loads(l)["text"] for l in (tmp_path / "out" / "texts.jsonl").read_text().splitlines()]
  assert len(texts) == 8 and all(t.startswith("\n\nHuman:") for t in texts)
  student = load_lm(str(tmp_path / "out" / "student"))
  assert student.cfg == CFG
  # The teacher was not touched (the student is a copy), and the student moved away from it.
  fresh = _lm(1, scale=8.0)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), lm.params, fresh.params)
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), student.params, fresh.params)
  assert not all(jax.tree.leaves(moved))
