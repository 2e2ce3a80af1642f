"""HF sequence-classification reward models (Llama, GPT-NeoX, GPT-2) scored in JAX, the way RewardBench reads them.

    rm = HFRewardModel("path/to/hf_rm_dir")
    rm.score_texts(["<|user|>hi<|assistant|>Hello!"])          # -> array([0.73])

Weights come through `hhh.pretrained.hf.load_hf` (its safetensors reading and name mapping; `score.weight` becomes
our reward head, with no bias, as transformers has none). No torch at run time.

Inputs are built as RewardBench's scripts/run_rm.py builds them (`prepare_dialogue_from_tokenizer` and its
pipeline's tokenizer call):
  text    the chat template rendered with tokenize=False over the prompt turns + the response as an assistant turn;
          a model without a chat template gets "Human: {turn}\\n\\nAssistant: {response}" (hhh's default;
          RewardBench would use a fastchat template there)
  tokens  tokenizer.json's encoding with its special tokens (add_special_tokens=True); a leading BOS doubled by
          template + tokenizer is dropped once, as RewardBench's pipeline does; cut from the LEFT to
          `max_length` (RewardBench: truncation_side="left", max_length=2048), capped at the model's positions
  pad     the tokenizer's pad token, else its eos (RewardBench's fallback)
  reward  the logit at the last position whose id is not the pad id (transformers' rule; with pad = eos, a
          trailing eos is skipped exactly as transformers skips it), attention over every real token.
Each row is right-padded to a fixed bucket length, so a reward does not depend on its batch mates or padding.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.pretrained import hf

_BUCKET_MIN = 32


def _content(v):
  return v.get("content") if isinstance(v, dict) else v


def default_text(messages, response: str) -> str:
  turns = [("Human: " if m["role"] == "user" else "Assistant: " if m["role"] == "assistant" else "") + m["content"]
           for m in messages]
  return "\n\n".join(turns + ["Assistant: " + response])


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rewards(params, tokens_BxL, valid_BxL, read_B, *, graphdef):
  model = nnx.merge(graphdef, params)
  h_BxLxD = model(tokens_BxL, valid_BxL)
  h_BxD = jnp.take_along_axis(h_BxLxD, read_B[:, None, None], axis=1)[:, 0]
  return model.reward_all(h_BxD[:, None])[:, 0]


class HFRewardModel:
  """An HF sequence-classification directory as a JAX reward model (see the module docstring)."""

  def __init__(self, path, *, batch_size: int = 16, max_length: int = 2048):
    import tokenizers
    self.path = pathlib.Path(path)
    lm = hf.load_hf(self.path)
    kernel = np.asarray(lm.params["reward_head"]["kernel"])
    if not np.any(kernel):
      raise ValueError(f"{self.path}: no score.weight (or an all-zero one): not a sequence-classification model")
    self.cfg, self.params, self.graphdef = lm.cfg, lm.params, lm.graphdef
    tj = self.path / "tokenizer.json"
    if not tj.is_file():
      raise FileNotFoundError(f"{tj}: an HF reward model directory needs its tokenizer.json")
    self.tok = tokenizers.Tokenizer.from_file(str(tj))
    tcp = self.path / "tokenizer_config.json"
    self.tc = json.loads(tcp.read_text()) if tcp.is_file() else {}
    self.chat_template = self.tc.get("chat_template")
    if isinstance(self.chat_template, list):  # named templates: RewardBench's tokenizer uses "default"
      self.chat_template = {t["name"]: t["template"] for t in self.chat_template}.get("default")
    cfgj = json.loads((self.path / "config.json").read_text())
    ids = lambda name: None if _content(self.tc.get(name)) is None else self.tok.token_to_id(_content(self.tc[name]))
    self.eos_id = ids("eos_token") if ids("eos_token") is not None else cfgj.get("eos_token_id")
    self.bos_id = ids("bos_token")
    pad = ids("pad_token")
    self.pad_id = pad if pad is not None else cfgj.get("pad_token_id")
    self.pad_id = self.pad_id if self.pad_id is not None else self.eos_id
    if self.pad_id is None:
      raise ValueError(f"{self.path}: no pad and no eos token: the logit position is undefined")
    self.max_length = min(int(max_length), int(self.cfg.max_len))
    self.batch_size = batch_size
    self.formatting = ("HF RM, as RewardBench's run_rm.py: " +
                       ("the tokenizer's chat template" if self.chat_template else
                        "no chat template, so 'Human: {turn}\\n\\nAssistant: {response}'") +
                       f"; special tokens added, left truncation to {self.max_length} tokens, pad id {self.pad_id}"
                       f"{' (= eos)' if pad is None else ''}, logit at the last non-pad token")

  def render(self, messages, response: str) -> str:
    if not self.chat_template:
      return default_text(messages, response)
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
      raise ValueError(f"{self.path}: chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    special = {k: _content(self.tc.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
               if _content(self.tc.get(k)) is not None}
    return env.from_string(self.chat_template).render(
        messages=list(messages) + [{"role": "assistant", "content": response}], add_generation_prompt=False,
        **special)

  def encode(self, text: str) -> list[int]:
    ids = self.tok.encode(text, add_special_tokens=True).ids
    if self.bos_id is not None and len(ids) > 1 and ids[0] == ids[1] == self.bos_id:
      ids = ids[1:]
    return ids[-self.max_length:]

  def score_ids(self, seqs) -> np.ndarray:
    out = np.zeros(len(seqs), np.float32)
    buckets: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
      L = max(_BUCKET_MIN, 1 << max(len(s) - 1, 0).bit_length())
      buckets.setdefault(min(L, max(self.max_length, len(s))), []).append(i)
    for L, idx in buckets.items():
      for start in range(0, len(idx), self.batch_size):
        rows = idx[start:start + self.batch_size]
        tokens = np.full((self.batch_size, L), self.pad_id, np.int32)
        valid = np.zeros((self.batch_size, L), bool)
        read = np.zeros((self.batch_size,), np.int32)
        for j, i in enumerate(rows):
          s = np.asarray(seqs[i], np.int32)
          tokens[j, :len(s)], valid[j, :len(s)] = s, True
          nonpad = np.nonzero(s != self.pad_id)[0]
          read[j] = nonpad[-1] if len(nonpad) else 0  # transformers' argmax over an all-pad row gives 0
        valid[len(rows):, 0] = True  # padding rows: one token, ignored
        r = np.asarray(_rewards(self.params, tokens, valid, read, graphdef=self.graphdef))
        out[rows] = r[:len(rows)]
    return out

  def score_texts(self, texts) -> np.ndarray:
    return self.score_ids([self.encode(t) for t in texts])

  def rewards(self, rows) -> np.ndarray:
    """`hhh.evals.rm` rows (hhh context, prompt messages, hhh response, response text): the RewardBench input."""
    return self.score_texts([self.render(m, t) for _, m, _, t in rows])
