"""Reward bundles <-> HF transformers sequence-classification directories, the layout most RL stacks load.

    hhh export RUN --format hf --out DIR       # RUN: a training workdir, a checkpoint step dir or a bundle
    hhh convert DIR --out BUNDLE --as-bundle   # any llama / gpt_neox / gpt2 reward model directory -> a bundle

DIR holds what `AutoModelForSequenceClassification` and `AutoTokenizer` read:

    config.json              `LlamaForSequenceClassification` (or GPT-NeoX, GPT-2), num_labels 1, pad_token_id,
                             and an `hhh_reward` block: the head's bias, normalization, max_len, the <eoc> rule
    model.safetensors        exactly the tensors of that class: the body and `score.weight` [1, D]
    hhh_lm_head.safetensors  an untied LM head (transformers ignores the file; `hhh convert` reads it back)
    tokenizer.json           our tokenizer; its normalizer appends <eoc> to every text that does not already end in
                             one (or in the generation prompt "Assistant:"), so every common way in ends with one
    tokenizer_config.json    pad token, right padding, left truncation, model_max_length = max_len,
                             eos_token = <eoc>, a chat template that renders Human/Assistant turns
    README.md                the <eoc> convention and the bias, for whoever finds the directory

The bias: HF's `score` is a Linear without bias and our head has one. The bias is not dropped silently but cannot
live in the weights either (a bias-free linear over an RMS-normed state has no constant direction), so it goes in
config.json as `hhh_reward.reward_bias`: transformers' logit is the raw hhh reward minus that constant. Differences
between rewards (what comparisons, Bradley-Terry losses and rankings use) are exactly unaffected; add the constant
back, or use `hhh_reward.normalization`, for absolute values.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import tokenizers

from hhh import outdir, safeio
from hhh.data import tokenizer as tokenizer_lib
from hhh.model.params import flatten_params
from hhh.pretrained import hf
from hhh.model import bundle as bundle_lib
from hhh.reward import export as export_lib

SEQ_CLS = {"llama": "LlamaForSequenceClassification", "gpt_neox": "GPTNeoXForSequenceClassification",
           "gpt2": "GPT2ForSequenceClassification"}
LM_HEADS = {"llama": "lm_head.weight", "gpt_neox": "embed_out.weight", "gpt2": "lm_head.weight"}
META = "hhh_reward"
LM_HEAD_FILE = "hhh_lm_head.safetensors"
META_VERSION = 1
EXPORT_HF, CONVERT_BUNDLE = "hhh export --format hf", "hhh convert --as-bundle"  # output markers (hhh/outdir.py)


def model_type_for(cfg) -> str:
  """The HF architecture our config is (llama, gpt_neox or gpt2); ValueError naming why none fits."""
  why = []
  for mt in SEQ_CLS:
    try:
      hf.config_to_hf(cfg, mt)
      return mt
    except ValueError as e:
      why.append(str(e).split(" (")[0])
  raise ValueError(f"no HF sequence-classification architecture fits this model: {'; '.join(why)}")


def chat_template(eoc: str) -> str:
  """Messages rendered as hhh PM inputs: "Human: ...\\n\\nAssistant: ..." with <eoc> after a final assistant turn
  (the normalizer would append it anyway: it is there so that the rendered text shows where the reward is read)."""
  return ("{%- for m in messages -%}{%- if not loop.first %}{{ '\\n\\n' }}{% endif -%}"
          "{%- if m['role'] == 'user' %}{{ 'Human: ' + m['content'] }}"
          "{%- elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] }}"
          "{%- else %}{{ m['content'] }}{% endif -%}{%- endfor -%}"
          "{%- if add_generation_prompt %}{{ '\\n\\nAssistant:' }}"
          "{%- elif messages and messages[-1]['role'] == 'assistant' %}{{ " + json.dumps(eoc) + " }}{% endif -%}")


# A text ending in the generation prompt is a prompt (the context of `tok(context, response)`, or
# `add_generation_prompt=True`), not a scored sequence: it gets no <eoc>.
PROMPT_END = "Assistant:"


def _appending_eoc(text: str, eoc: str, eoc_id: int) -> tuple[str, object, dict]:
  """tokenizer.json text that appends <eoc> exactly once whatever the caller does; also the post-processor, and
  the normalizer and <eoc>'s `normalized` flag, it replaces (for `hhh convert --as-bundle`).

  transformers' `apply_chat_template(tokenize=True)` encodes with `add_special_tokens=False` and RewardBench
  encodes the same rendered text with `add_special_tokens=True`: a post-processor appends on one path and not the
  other, so no post-processor can give one <eoc> on both. The normalizer runs on both: it appends the text
  `<eoc>` unless the text already ends in it, and <eoc> is marked `normalized` so that it is matched as the
  token after normalization. In `tok(context, response)` the normalizer runs on each part; the context ends in
  "Assistant:" and gets none.
  """
  d = json.loads(text)
  before_post, own = d.get("post_processor"), d.get("normalizer")
  before = {"normalizer": own, "eoc_normalized": False}
  for t in d.get("added_tokens", []):
    if t["id"] == eoc_id:
      before["eoc_normalized"] = t.get("normalized", False)
      t["normalized"] = True
  append = {"type": "Replace", "pattern": {"Regex": f"(?<!{re.escape(eoc)})(?<!{re.escape(PROMPT_END)})\\z"},
            "content": eoc}
  d["normalizer"] = append if own is None else {"type": "Sequence", "normalizers": [own, append]}
  # Sequences only: no special tokens, so `add_special_tokens` changes nothing.
  d["post_processor"] = {
      "type": "TemplateProcessing",
      "single": [{"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
      "special_tokens": {}}
  return json.dumps(d, ensure_ascii=False), before_post, before


def _readme(arch: str, eoc: str, pad: str, bias: float, norm: dict, max_len: int) -> str:
  prompt_end = PROMPT_END
  return f"""# hhh preference model ({arch})

Written by `hhh export --format hf`. A scalar reward model: `AutoModelForSequenceClassification`, `num_labels=1`.

## The end-of-context token

hhh reads the reward at `{eoc}`, a token appended after the response: the sequence is
`context + response + {eoc}`. Score any other way and the number means nothing. This directory appends it for you,
exactly once, on every common path (the tokenizer's normalizer appends `{eoc}` to any text that does not already
end in it, whatever `add_special_tokens` says):

- `tok(text)`, with or without `add_special_tokens`;
- `tok.apply_chat_template(messages, tokenize=False)` (which renders `Human: ...\n\nAssistant: ...{eoc}`) and then
  `tok(rendered)`, as RewardBench does; and `tok.apply_chat_template(messages, tokenize=True)`;
- `tok(text + tok.eos_token, add_special_tokens=False)` (`tok.eos_token` is `{eoc}`), as stacks that append
  the eos token themselves do;
- `tok(context, response)`: context and response encoded separately, exactly as hhh does. A text that ends in
  `{prompt_end}` is a prompt, not a scored sequence, and gets no `{eoc}`: so the context of this pair form,
  and `apply_chat_template(..., add_generation_prompt=True)`, get none. A response that itself ends in
  `{prompt_end}` gets none either (append `{eoc}` yourself there).

Exactly one `{eoc}`, last, before any padding. Pad with `{pad}` on the right (`padding_side="right"`, set here):
transformers reads the logit at the last non-pad token, which is then `{eoc}`. A literal `{eoc}` inside user text is
parsed as the token by transformers (hhh itself would encode it as plain text).

## Length: max_len = {max_len} tokens

The PM was trained on sequences of at most {max_len} tokens, and hhh scores a longer input by cutting its context
from the left until `context + response + {eoc}` fits (the response and `{eoc}` are kept). This directory does the
same when you leave `max_length` alone: `model_max_length` is {max_len} and `truncation_side` is `left`, so
`tok(..., truncation=True)` keeps the last {max_len} tokens, `{eoc}` included.

A caller that passes its own `max_length` above {max_len} (RewardBench passes 2048) gets the whole longer
sequence scored, positions the PM never saw in training: that is a different number from hhh's reward for the
same pair, not a more accurate one, and no warning says so. Pass `max_length={max_len}` (or none) with
`truncation=True` to get hhh's reward. `config.hhh_reward["max_len"]` holds the same limit.

## Reward values

`logits[:, 0]` is the raw hhh reward minus a constant: hhh's reward head has a bias, `score` here has none. The bias
is `config.hhh_reward["reward_bias"]` = {bias:.6g}. Differences between rewards are unaffected.

    raw        = logits[:, 0] + config.hhh_reward["reward_bias"]
    normalized = (raw - {norm['mean']:.6g}) / {norm['std']:.6g}     # statistics over {norm['n']} reference responses

## Example

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained(DIR)
rm = AutoModelForSequenceClassification.from_pretrained(DIR)
batch = tok(["Human: hi\\n\\nAssistant:"] * 2, [" Hello!", " Go away."], padding=True, return_tensors="pt")
with torch.no_grad():
  raw = rm(**batch).logits[:, 0] + rm.config.hhh_reward["reward_bias"]
```

`hhh convert DIR --out BUNDLE --as-bundle` turns this directory back into an hhh reward bundle, bias included.
"""


def export_hf(bundle_path, out_dir, *, source: dict | None = None, force: bool = False) -> dict:
  """Writes the HF directory of a reward bundle; returns its `hhh_reward` block (`source`: where it came from).
  `out_dir` is refused, or with `force` replaced, as hhh/outdir.py says."""
  with outdir.staged(out_dir, EXPORT_HF, sources=[bundle_path], force=force) as tmp:
    return _write_hf(bundle_path, tmp, source)


def _write_hf(bundle_path, tmp: pathlib.Path, source: dict | None) -> dict:
  """export_hf's work, into `tmp` (not yet there)."""
  cfg, params, tok, info = bundle_lib.read(bundle_path)
  mt = model_type_for(cfg)
  hf_config = hf.config_to_hf(cfg, mt)
  tensors = hf.to_hf(cfg, mt, flatten_params(params))
  bias = float(tensors.pop("score.bias")[0])
  extra = {LM_HEADS[mt]: tensors.pop(LM_HEADS[mt])} if LM_HEADS[mt] in tensors else {}
  text, tc = hf.tokenizer_files(tok)
  lib = tokenizers.Tokenizer.from_str(text)
  name = lambda i: lib.id_to_token(int(i))
  eoc, pad = name(tok.eoc_id), name(tok.pad_id)
  text, post_processor, normalizer = _appending_eoc(text, eoc, tok.eoc_id)
  max_len = int(info["max_len"])
  meta = {
      "format_version": META_VERSION,
      "reward_bias": bias,
      "reward": "transformers logits[:, 0] + reward_bias = the raw hhh reward; differences need no correction",
      "normalization": info["normalization"],
      "objective": info["objective"],
      "max_len": max_len,
      "max_len_policy": (f"hhh scores an input longer than {max_len} tokens by cutting its context from the left "
                         "(response and <eoc> kept); model_max_length and truncation_side=left do the same in "
                         f"transformers. A caller's max_length above {max_len} scores positions the PM never saw in "
                         "training: a different number from hhh's reward, not a more accurate one."),
      "end_of_context": {"token": eoc, "token_id": tok.eoc_id, "appended": True,
                         "sequence": "context tokens + response tokens + <eoc>; the reward is read at <eoc>"},
      # What `hhh convert --as-bundle` needs to rebuild the bundle's tokenizer exactly.
      "tokenizer": {"kind": tok.to_json()["kind"], "pad_id": tok.pad_id, "eoc_id": tok.eoc_id, "eos_id": tok.eos_id,
                    "bos_prefix": list(getattr(tok, "bos_prefix", ())), "post_processor": post_processor,
                    "normalizer": normalizer,
                    "lm_chat_template": tc.get("chat_template")},
      **(source or {"source_bundle": str(pathlib.Path(bundle_path).absolute())}),
  }
  hf_config.update(architectures=[SEQ_CLS[mt]], num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                   pad_token_id=tok.pad_id, eos_token_id=tok.eoc_id, bos_token_id=None, **{META: meta})
  # PM sequences carry no BOS (the data pipeline never adds one), so the HF tokenizer must not add one either.
  for k in ("bos_token", "add_bos_token"):
    tc.pop(k, None)
  tc.update(eos_token=eoc, pad_token=pad, eoc_token=eoc, padding_side="right", truncation_side="left",
            model_max_length=max_len, chat_template=chat_template(eoc),
            # GPT-2 adds an embedding of token_type_ids to its input: the tokenizer must not return them.
            model_input_names=["input_ids", "attention_mask"])
  from safetensors import numpy as st_np
  tmp.mkdir(parents=True)
  # "format": "pt" is what HF loaders expect in the header; the data is plain little-endian float32.
  st_np.save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
  if extra:
    st_np.save_file(extra, str(tmp / LM_HEAD_FILE), metadata={"format": "pt"})
  (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  (tmp / "tokenizer.json").write_text(text)
  (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
  (tmp / "special_tokens_map.json").write_text(json.dumps({"eos_token": eoc, "pad_token": pad}, indent=2) + "\n")
  (tmp / "README.md").write_text(_readme(SEQ_CLS[mt], eoc, pad, bias, info["normalization"], max_len))
  return meta


def export_run(ckpt, out_dir, *, reference: str | None = None, max_reference: int = 2000,
               force: bool = False) -> dict:
  """`hhh export CKPT --format hf`: a bundle (normalization statistics included) first, then its HF directory."""
  ckpt = pathlib.Path(ckpt)
  if (ckpt / "bundle.json").exists():
    return export_hf(ckpt, out_dir, force=force)
  with outdir.staged(out_dir, EXPORT_HF, sources=export_lib.run_of(ckpt), force=force) as tmp:
    # The interim bundle lives in the same private staging directory, and goes with it.
    bundle = tmp.parent / "bundle"
    export_lib.export(ckpt, bundle, reference=reference, max_reference=max_reference)
    return _write_hf(bundle, tmp, source={"source_checkpoint": str(ckpt.absolute())})


# ---------------------------------------------------------------- HF directory -> bundle


def _tokenizer(path: pathlib.Path, meta: dict | None, lm_tokenizer):
  """The bundle tokenizer: rebuilt exactly from `hhh_reward.tokenizer` when present, else what `load_hf` chose."""
  t = (meta or {}).get("tokenizer")
  if not t:
    return lm_tokenizer
  if t["kind"] == "byte":
    return tokenizer_lib.ByteTokenizer()
  d = safeio.read_json(path / "tokenizer.json", safeio.MAX_TOKENIZER_BYTES)
  d["post_processor"] = t.get("post_processor")
  if "normalizer" in t:  # older exports kept the bundle's own normalizer and needed no restoring
    d["normalizer"] = t["normalizer"]["normalizer"]
    for a in d.get("added_tokens", []):
      if a["id"] == t["eoc_id"]:
        a["normalized"] = t["normalizer"]["eoc_normalized"]
  lib = tokenizers.Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
  if t["kind"] == "bpe":
    return tokenizer_lib.BPETokenizer(lib)
  return tokenizer_lib.PretrainedTokenizer(lib, pad_id=t["pad_id"], eoc_id=t["eoc_id"], eos_id=t["eos_id"],
                                           bos_prefix=t.get("bos_prefix") or (),
                                           chat_template=t.get("lm_chat_template"))


def write_bundle(out_dir, cfg, params, tok, *, objective: str, max_len: int, normalization: dict,
                 source: str | None = None, force: bool = False) -> pathlib.Path:
  """A reward bundle from parts via `bundle.write`, as `hhh convert --as-bundle` writes one: `out_dir` is
  refused, or with `force` replaced, as hhh/outdir.py says, and only once the new bundle is complete."""
  with outdir.staged(out_dir, CONVERT_BUNDLE, sources=[source] if source else [], force=force) as tmp:
    bundle_lib.write(tmp, cfg, params, tok.to_json(), objective=objective, max_len=int(max_len),
                     normalization=normalization, source_checkpoint=source)
  return pathlib.Path(out_dir).absolute()


def convert_to_bundle(hf_dir, out_dir, *, force: bool = False) -> dict:
  """An HF sequence-classification reward model directory as an hhh reward bundle; returns its bundle.json."""
  import jax.numpy as jnp
  path = pathlib.Path(hf_dir)
  outdir.check(out_dir, CONVERT_BUNDLE, sources=[path], force=force)  # before the load, not after
  cj = path / "config.json"
  c = hf.read_config(path)  # an untrusted file: regular, bounded, fields typed (hhh_reward included)
  if c.get("num_labels", len(c.get("id2label") or {0: 0})) != 1:
    raise ValueError(f"{cj}: num_labels={c.get('num_labels', len(c['id2label']))}; a reward model has one label")
  lm = hf.load_hf(path)
  if not np.any(np.asarray(lm.params["reward_head"]["kernel"])):
    raise ValueError(f"{path}: no score.weight (or an all-zero one): not a sequence-classification reward model")
  meta = c.get(META)
  if meta and meta.get("format_version") != META_VERSION:
    raise ValueError(f"{cj}: {META} format {meta.get('format_version')} is not {META_VERSION}")
  meta = meta or {}
  # transformers' logit has no bias; ours adds it back, so raw rewards match the exporting bundle exactly.
  lm.params["reward_head"]["bias"] = jnp.asarray([meta.get("reward_bias", 0.0)], jnp.float32)
  tok = _tokenizer(path, meta, lm.tokenizer)
  tc_path = path / "tokenizer_config.json"
  tc = safeio.read_json(tc_path, safeio.MAX_CONFIG_BYTES) if os.path.lexists(tc_path) else {}
  model_max = tc.get("model_max_length")
  max_len = meta.get("max_len") or min(lm.cfg.max_len, model_max if isinstance(model_max, int) else lm.cfg.max_len)
  norm = meta.get("normalization") or {"mean": 0.0, "std": 1.0, "n": 0, "reference": None}
  # A reward model from elsewhere does not say how it was trained; Bradley-Terry RMs are pairwise rankings.
  write_bundle(out_dir, lm.cfg, lm.params, tok, objective=meta.get("objective", "ranked"), max_len=max_len,
               normalization=norm, source=str(path.absolute()), force=force)
  return json.loads((pathlib.Path(out_dir) / "bundle.json").read_text())


def convert_command(args) -> None:
  """`hhh convert HF_DIR --out BUNDLE --as-bundle`: an HF sequence-classification reward model as a bundle."""
  # config.json is untrusted: checked here (a regular file under its limit, the fields hhh reads well typed)
  # before the conversion reads it.
  c = hf.read_config(args.model)
  info = convert_to_bundle(args.model, args.out, force=args.force)
  bias = (c.get(hf.REWARD_META) or {}).get("reward_bias")
  print(f"hhh: wrote reward bundle {args.out} from {args.model} (reward head bias "
        f"{'restored from config.json' if bias is not None else 'zero: none recorded'}; normalization over "
        f"{info['normalization']['n']} responses)")
