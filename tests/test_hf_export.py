"""PMs as HF transformers sequence-classification directories, both ways.

transformers itself loads what `hhh export --format hf` writes (Llama, GPT-NeoX, GPT-2 shapes) and must give
the bundle's rewards minus the recorded head bias, batched with right padding; `hhh convert --as-bundle` must
bring a directory back to the same rewards, and read one that transformers wrote.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hhh.data import tokenizer as tk
from hhh.model.config import ModelConfig
from hhh.model.params import assemble_params, flat_param_shapes, flatten_params
from hhh.pretrained import hf
from hhh.reward import hf_export
import hhh.reward

from hhh import cli

torch = pytest.importorskip("torch", reason="torch is in the test extra; the HF export is checked against it")
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")

BIAS = 0.375
NORM = {"mean": 0.25, "std": 2.0, "n": 3, "reference": "hand-written"}
CONTEXTS = ["Human: hi\n\nAssistant:", "Human: what is 2 plus 2?\n\nAssistant:", "Human: x\n\nAssistant:",
            "Human: héllo wörld 🙂\n\nAssistant:"]
RESPONSES = [" Hello!", " 4. Have a nice day!", " Ugh.", " the quick fox, hello"]
COMMON = dict(d_model=32, n_heads=4, n_layers=2, max_len=64)
SHAPES = {
    "llama": ModelConfig(n_kv_heads=2, d_ff=48, rope_theta=500.0, tie_embeddings=False, **COMMON),
    "gpt_neox": ModelConfig(d_ff=64, norm="layer", mlp="gelu", rotary_pct=0.25, attn_bias=True, mlp_bias=True,
                            tie_embeddings=False, parallel_residual=True, **COMMON),
    "gpt2": ModelConfig(d_ff=64, norm="layer", pos="learned", mlp="gelu_tanh", attn_bias=True, mlp_bias=True,
                        **COMMON),
}


def random_params(cfg: ModelConfig, seed: int = 0):
  """Weights large enough (std 0.2, norms near 1, nonzero biases) that a layout slip moves the reward."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in flat_param_shapes(cfg).items():
    scale = 0.1 if len(shape) == 1 else 0.2
    flat[name] = (1.0 if name.endswith(".scale") else 0.0) + scale * rng.standard_normal(shape)
  flat["reward_head.bias"] = np.array([BIAS])
  return assemble_params(cfg, {k: v.astype(np.float32) for k, v in flat.items()}, "random")


@pytest.fixture(scope="module")
def bpe():
  return tk.train_bpe(["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 20, 300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, bpe):
  """model_type -> (bundle dir, HF dir, RewardModel); Llama on a trained BPE, the others on bytes."""
  out = {}
  for mt, cfg in SHAPES.items():
    tok = bpe if mt == "llama" else tk.ByteTokenizer()
    cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
    root = tmp_path_factory.mktemp(mt)
    b = hf_export.write_bundle(root / "bundle", cfg, random_params(cfg), tok, objective="ranked", max_len=64,
                               normalization=NORM)
    hf_export.export_hf(b, root / "hf")
    out[mt] = (b, root / "hf", hhh.reward.load(b, buckets=(64,)))
  return out


def hf_rewards(d, contexts, responses=None):
  tok = transformers.AutoTokenizer.from_pretrained(d)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(d)
  batch = tok(contexts, responses, padding=True, return_tensors="pt")
  with torch.no_grad():
    return model(**batch).logits[:, 0].numpy(), batch


@pytest.mark.parametrize("mt", list(SHAPES))
def test_transformers_reads_the_same_rewards(mt, exported):
  b, d, rm = exported[mt]
  model, info = transformers.AutoModelForSequenceClassification.from_pretrained(d, output_loading_info=True)
  assert type(model).__name__ == hf_export.SEQ_CLS[mt]
  assert {k: sorted(v) for k, v in info.items()} == {"missing_keys": [], "unexpected_keys": [],
                                                     "mismatched_keys": [], "error_msgs": []}
  c = json.loads((d / "config.json").read_text())
  assert c["num_labels"] == 1 and c["pad_token_id"] == rm.tokenizer.pad_id
  assert c["hhh_reward"]["reward_bias"] == BIAS and c["hhh_reward"]["normalization"] == NORM
  raw = rm.score(CONTEXTS, RESPONSES)
  assert np.ptp(raw) > 0.05  # rewards differ between texts, so agreement below means something
  logits, batch = hf_rewards(d, CONTEXTS, RESPONSES)
  # Batched, right-padded: every row is context + response + <eoc>, then <pad> to the longest.
  lengths = batch["attention_mask"].sum(1).tolist()
  assert len(set(lengths)) > 1
  for i, (ctx, resp) in enumerate(zip(CONTEXTS, RESPONSES)):
    ids = batch["input_ids"][i].tolist()
    assert ids[:lengths[i]] == rm.encode([ctx], [resp])[0][0].tolist()
    assert set(ids[lengths[i]:]) <= {rm.tokenizer.pad_id}
  np.testing.assert_allclose(logits + BIAS, raw, atol=1e-4)
  # The documented constant: comparisons need no correction.
  np.testing.assert_allclose(logits[:, None] - logits[None], raw[:, None] - raw[None], atol=1e-4)


def test_safetensors_hold_exactly_the_classifier_tensors(exported):
  from safetensors import numpy as st_np
  _, d, _ = exported["llama"]
  t = st_np.load_file(d / "model.safetensors")
  assert t["score.weight"].shape == (1, 32) and "score.bias" not in t and "lm_head.weight" not in t
  assert st_np.load_file(d / hf_export.LM_HEAD_FILE)["lm_head.weight"].shape == (300, 32)
  _, d2, _ = exported["gpt2"]  # tied: no separate LM head anywhere
  assert not (d2 / hf_export.LM_HEAD_FILE).exists()
  assert json.loads((d2 / "config.json").read_text())["architectures"] == ["GPT2ForSequenceClassification"]


MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize("mt", ["llama", "gpt2"])
def test_every_common_way_in_gives_exactly_one_eoc(mt, exported):
  """RewardBench renders with tokenize=False and encodes with the default add_special_tokens=True;
  apply_chat_template(tokenize=True) encodes with add_special_tokens=False: both, and the plain and pair forms,
  must give hhh's own sequence, <eoc> once and last."""
  b, d, rm = exported[mt]
  tok = transformers.AutoTokenizer.from_pretrained(d)
  assert (tok.eos_token, tok.pad_token, tok.padding_side, tok.truncation_side) == ("<eoc>", "<pad>", "right", "left")
  eoc = rm.tokenizer.eoc_id
  want = rm.encode(CONTEXTS[:1], RESPONSES[:1])[0][0].tolist()
  assert want[-1] == eoc and want.count(eoc) == 1
  text = CONTEXTS[0] + RESPONSES[0]
  chat = tok.apply_chat_template(MESSAGES, tokenize=False)
  assert chat == "Human: hi\n\nAssistant: Hello!<eoc>"
  tokenized = tok.apply_chat_template(MESSAGES, tokenize=True)
  tokenized = tokenized["input_ids"] if not isinstance(tokenized, list) else tokenized
  paths = {"render then tok(text)": tok(chat)["input_ids"],
           "render then tok(text, add_special_tokens=False)": tok(chat, add_special_tokens=False)["input_ids"],
           "apply_chat_template(tokenize=True)": list(tokenized),
           "tok(text)": tok(text)["input_ids"],
           "tok(text + eos, add_special_tokens=False)": tok(text + tok.eos_token, add_special_tokens=False)["input_ids"],
           "tok(context, response)": tok(CONTEXTS[0], RESPONSES[0])["input_ids"]}
  for name, ids in paths.items():
    assert ids == want, name
  # The generation prompt alone is a prompt, not a scored sequence.
  prompt = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
  assert prompt == CONTEXTS[0] and eoc not in tok(prompt)["input_ids"]
  assert "token_type_ids" not in tok(text)  # GPT-2 would add an embedding of them
  card = (d / "README.md").read_text()
  assert "<eoc>" in card and str(BIAS) in card and "max_length" in card


def test_batched_chat_template_path_gives_hhh_rewards(exported):
  """RewardBench's way in, batched and right-padded: the rewards of hhh's own encoding."""
  _, d, rm = exported["llama"]
  tok = transformers.AutoTokenizer.from_pretrained(d)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(d)
  texts = [tok.apply_chat_template([{"role": "user", "content": c[len("Human: "):-len("\n\nAssistant:")]},
                                    {"role": "assistant", "content": r[1:]}], tokenize=False)
           for c, r in zip(CONTEXTS, RESPONSES)]
  batch = tok(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    logits = model(**batch).logits[:, 0].numpy()
  np.testing.assert_allclose(logits + BIAS, rm.score(CONTEXTS, RESPONSES), atol=1e-4)


def test_longer_than_max_len_is_cut_as_hhh_cuts(exported):
  """Left truncation at model_max_length keeps response + <eoc>: hhh's reward; a caller's larger max_length
  scores the whole text, which the card says is a different number."""
  _, d, rm = exported["gpt2"]
  tok = transformers.AutoTokenizer.from_pretrained(d)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(d)
  ctx, resp = "Human: " + "the quick brown fox " * 5 + "\n\nAssistant:", " Hello!"
  assert len((ctx + resp).encode()) + 1 > 64  # longer than max_len (bytes = tokens here)
  want = rm.encode([ctx], [resp])[0][0].tolist()
  ids = tok(ctx + resp, truncation=True)["input_ids"]
  assert len(ids) == 64 and ids == want
  with torch.no_grad():
    logit = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
  assert logit + BIAS == pytest.approx(float(rm.score([ctx], [resp])[0]), abs=1e-4)
  c = json.loads((d / "config.json").read_text())["hhh_reward"]
  assert c["max_len"] == 64 and "max_length above 64" in c["max_len_policy"]
  assert tok.model_max_length == 64


@pytest.mark.parametrize("mt", ["llama", "gpt2"])
def test_hhh_to_hf_to_hhh_is_lossless(mt, exported, tmp_path):
  b, d, rm = exported[mt]
  back = hf_export.convert_to_bundle(d, tmp_path / "back")
  assert back["normalization"] == NORM and back["max_len"] == 64
  rm2 = hhh.reward.load(tmp_path / "back", buckets=(64,))
  assert rm2.cfg == rm.cfg and rm2.tokenizer.to_json() == rm.tokenizer.to_json()
  a, z = flatten_params(rm.params), flatten_params(rm2.params)
  assert a.keys() == z.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], z[k], err_msg=k)
  np.testing.assert_array_equal(rm2.score(CONTEXTS, RESPONSES), rm.score(CONTEXTS, RESPONSES))
  np.testing.assert_array_equal(rm2.score(CONTEXTS, RESPONSES, normalize=True),
                                rm.score(CONTEXTS, RESPONSES, normalize=True))


def test_a_directory_transformers_wrote_converts(tmp_path):
  """No hhh metadata: body and head from save_pretrained, bias zero, reward read where hhh appends <eoc>."""
  torch.manual_seed(0)
  c = transformers.LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               num_labels=1, pad_token_id=256, eos_token_id=258, bos_token_id=None,
                               tie_word_embeddings=False)
  model = transformers.LlamaForSequenceClassification(c).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  d = tmp_path / "hf"
  model.save_pretrained(d)
  (d / "tokenizer.json").write_text(hf.byte_level_tokenizer_json())
  (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "<eos>",
                                                       "eoc_token": "<eoc>"}))
  info = hf_export.convert_to_bundle(d, tmp_path / "bundle")
  assert info["normalization"]["n"] == 0 and info["objective"] == "ranked"
  rm = hhh.reward.load(tmp_path / "bundle", buckets=(64,))
  assert (rm.tokenizer.pad_id, rm.tokenizer.eoc_id, rm.tokenizer.eos_id) == (256, 257, 258)
  assert float(rm.params["reward_head"]["bias"][0]) == 0.0
  ids = [s.tolist() for s in rm.encode(CONTEXTS, RESPONSES)[0]]
  L = max(map(len, ids))
  batch = torch.tensor([s + [256] * (L - len(s)) for s in ids])
  with torch.no_grad():
    want = model(input_ids=batch, attention_mask=(batch != 256).long()).logits[:, 0].numpy()
  np.testing.assert_allclose(rm.score(CONTEXTS, RESPONSES), want, atol=1e-4)


def test_bad_input_is_refused_in_one_line(exported, tmp_path, capsys):
  with pytest.raises(ValueError, match="no HF sequence-classification architecture fits"):
    hf_export.model_type_for(ModelConfig(norm="rms", mlp="gelu"))
  _, d, _ = exported["gpt2"]
  two = tmp_path / "two"
  two.mkdir()
  for f in d.iterdir():
    (two / f.name).write_bytes(f.read_bytes())
  c = json.loads((two / "config.json").read_text())
  (two / "config.json").write_text(json.dumps({**c, "num_labels": 2, "id2label": {"0": "a", "1": "b"}}))
  with pytest.raises(ValueError, match="num_labels=2"):
    hf_export.convert_to_bundle(two, tmp_path / "x")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_export.convert_to_bundle(tmp_path / "nothing", tmp_path / "x")
  assert cli.main(["convert", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"), "--as-bundle"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("hhh: error:") and "config.json" in err and len(err.strip().splitlines()) == 1


def test_cli_trains_exports_and_converts_back(tiny_experiment, tmp_path, capsys):
  """A tiny PM trained for 2 steps, through `hhh export --format hf` and `hhh convert --as-bundle`."""
  assert cli.main(["train", str(tiny_experiment), "--workdir", str(tmp_path / "run")]) == 0
  assert cli.main(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf"),
                   "--max-reference", "8"]) == 0
  assert "HF sequence-classification directory" in capsys.readouterr().out
  c = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert c["architectures"] == ["LlamaForSequenceClassification"]
  meta = c["hhh_reward"]
  assert meta["objective"] == "ranked" and meta["normalization"]["n"] == 8 * 2  # 8 toy comparisons, K=2
  assert cli.main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "bundle"), "--as-bundle"]) == 0
  rm = hhh.reward.load(tmp_path / "bundle")
  raw = rm.score(CONTEXTS, RESPONSES)
  logits, _ = hf_rewards(tmp_path / "hf", CONTEXTS, RESPONSES)
  np.testing.assert_allclose(logits + meta["reward_bias"], raw, atol=1e-4)
  assert rm.mean == meta["normalization"]["mean"] and rm.std == meta["normalization"]["std"]
