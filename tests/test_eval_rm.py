"""`hhh eval rm`: suites, RewardBench's arithmetic, and HF reward models scored in JAX exactly as transformers
scores the inputs RewardBench's run_rm.py builds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hhh import cli
from hhh.data import tokenizer as tk
from hhh.evals import rm as rm_eval
from hhh.pretrained import hf, hf_rm
from hhh.reward import hf_export
import hhh.reward

torch = pytest.importorskip("torch", reason="torch is in the test extra; the reference path needs it")
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")

from test_hf_export import SHAPES, NORM, random_params  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{{ eos_token }}")
MESSAGES = [({"role": "user", "content": "hi there"},), ({"role": "user", "content": "what is 2+2?"},),
            ({"role": "user", "content": "tell me a long story " * 6},)]
RESPONSES = ["Hello!", "4, of course. Anything else?", "Once upon a time " * 5]


def tiny_seq_cls(kind: str, d):
  """A random-weight transformers classifier saved with a byte-level tokenizer, a chat template, no pad token."""
  torch.manual_seed(0)
  common = dict(vocab_size=259, num_labels=1, eos_token_id=258, bos_token_id=None, pad_token_id=None)
  if kind == "llama":
    c = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                                 **common)
    model = transformers.LlamaForSequenceClassification(c)
  elif kind == "gpt_neox":
    c = transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=128, rotary_pct=0.25, tie_word_embeddings=False, **common)
    model = transformers.GPTNeoXForSequenceClassification(c)
  else:
    c = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    model = transformers.GPT2ForSequenceClassification(c)
  model = model.eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  model.save_pretrained(d)
  (d / "tokenizer.json").write_text(hf.byte_level_tokenizer_json())
  (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                       "eos_token": "<eos>", "eoc_token": "<eoc>",
                                                       "chat_template": TEMPLATE}))
  return model


def run_rm_reference(d, model, messages, responses, max_length):
  """RewardBench scripts/run_rm.py: left truncation, chat template with tokenize=False, pad = eos when unset,
  the pipeline's tokenizer call (truncation, padding, max_length), logits[:, 0]."""
  tok = transformers.AutoTokenizer.from_pretrained(d)
  tok.truncation_side = "left"
  if tok.pad_token_id is None:
    model.config.pad_token_id = tok.eos_token_id
    tok.pad_token_id = tok.eos_token_id
  texts = [tok.apply_chat_template(list(m) + [{"role": "assistant", "content": r}], tokenize=False)
           for m, r in zip(messages, responses)]
  batch = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
  with torch.no_grad():
    return model(**batch).logits[:, 0].numpy(), texts


@pytest.mark.parametrize("kind", ["llama", "gpt_neox", "gpt2"])
def test_hf_rm_equals_transformers_on_rewardbench_inputs(kind, tmp_path):
  model = tiny_seq_cls(kind, tmp_path)
  want, texts = run_rm_reference(tmp_path, model, MESSAGES, RESPONSES, max_length=96)
  assert np.ptp(want) > 0.02  # 200x the tolerance below
  assert texts[0] == "<|user|>hi there\n<|assistant|>Hello!\n<eos>"
  jm = hf_rm.HFRewardModel(tmp_path, batch_size=2, max_length=96)
  assert jm.pad_id == 258 and "(= eos)" in jm.formatting
  rows = [("", m, " " + r, r) for m, r in zip(MESSAGES, RESPONSES)]
  assert [jm.render(m, t) for _, m, _, t in rows] == texts
  assert len(jm.encode(texts[2])) == 96  # the long one is cut from the left
  np.testing.assert_allclose(jm.rewards(rows), want, atol=1e-4)


def test_hf_rm_scores_do_not_change_with_batch_size_or_padding(tmp_path):
  tiny_seq_cls("llama", tmp_path)
  rows = [("", m, " " + r, r) for m, r in zip(MESSAGES, RESPONSES)]
  one = hf_rm.HFRewardModel(tmp_path, batch_size=1).rewards(rows)
  three = hf_rm.HFRewardModel(tmp_path, batch_size=3).rewards(rows)
  alone = [hf_rm.HFRewardModel(tmp_path, batch_size=4).rewards([r])[0] for r in rows]
  np.testing.assert_allclose(three, one, atol=1e-5)
  np.testing.assert_allclose(alone, one, atol=1e-5)


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
  """A tiny hhh PM (GPT-2 shape, bytes) as a bundle and as the HF directory `hhh export --format hf` writes."""
  cfg = dataclasses.replace(SHAPES["gpt2"], vocab_size=tk.ByteTokenizer().vocab_size)
  root = tmp_path_factory.mktemp("pm")
  b = hf_export.write_bundle(root / "bundle", cfg, random_params(cfg), tk.ByteTokenizer(), objective="ranked",
                             max_len=64, normalization=NORM)
  hf_export.export_hf(b, root / "hf")
  return root


@pytest.fixture(scope="module")
def llmbar(tmp_path_factory):
  root = tmp_path_factory.mktemp("llmbar")
  rows = {"Natural": [("Say hi.", "Hi!", "No.", 1), ("Add 2 and 2.", "five", "4", 2), ("Name a color.", "red", "blue", 1)],
          "Adversarial/GPTOut": [("Count to 3.", "1 2 3", "1 2 3 4 5 6", 1), ("Be brief.", "ok", "okay then", 2)]}
  for sub, rs in rows.items():
    (root / sub).mkdir(parents=True)
    (root / sub / "dataset.json").write_text(json.dumps(
        [{"input": i, "output_1": a, "output_2": b, "label": l} for i, a, b, l in rs]))
  return root


def test_hhh_pm_gives_the_same_rewards_as_a_bundle_and_as_its_hf_export(pm, llmbar, tmp_path):
  items = rm_eval.read_llmbar(llmbar)
  assert [it.subset for it in items] == ["llmbar-natural"] * 3 + ["llmbar-adver-GPTOut"] * 2
  assert items[1].responses == (" 4", " five") and items[0].context == "Human: Say hi.\n\nAssistant:"
  a = rm_eval.score_items(rm_eval.load_judge(str(pm / "bundle"), batch_size=2, max_length=2048, work=tmp_path / "a"),
                          items)
  j = rm_eval.load_judge(str(pm / "hf"), batch_size=5, max_length=2048, work=tmp_path / "b")
  assert isinstance(j, rm_eval.HhhJudge) and "<eoc>" in j.formatting
  b = rm_eval.score_items(j, items, chunk=2)
  want = hhh.reward.load(pm / "bundle").score([it.context for it in items], [it.responses[0] for it in items])
  np.testing.assert_allclose([x[0] for x in a], want, atol=1e-6)
  np.testing.assert_allclose(np.concatenate(b), np.concatenate(a), atol=1e-5)


def test_rewardbench_arithmetic_by_hand():
  mk = lambda sub, texts, labels: rm_eval.Item("x", sub, (), "", tuple(" " + t for t in texts), labels)
  items = [mk("alpacaeval-easy", ["long answer", "no"], (1, 0)),        # RM right, longer right
           mk("alpacaeval-easy", ["ab", "abcd"], (1, 0)),               # RM tie -> wrong; shorter right
           mk("mt-bench-easy", ["same", "size"], (1, 0)),               # RM right; both length rules tie -> wrong
           mk("llmbar-natural", ["x", "yy"], (1, 0))]                   # RM wrong; shorter right
  rewards = [np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([2.0, -1.0]), np.array([0.0, 3.0])]
  a = rm_eval.analyse("rewardbench", items, rewards)
  assert a["ties"] == 1
  assert a["subsets"]["alpacaeval-easy"]["model"]["accuracy"] == 0.5
  assert a["subsets"]["alpacaeval-easy"]["longer"]["accuracy"] == 0.5
  assert a["subsets"]["alpacaeval-easy"]["shorter"]["accuracy"] == 0.5
  assert a["subsets"]["mt-bench-easy"]["longer"]["accuracy"] == 0.0
  chat = a["sections"]["Chat"]
  # Weighted by RewardBench's example counts: (0.5 * 100 + 1.0 * 28) / 128, not the pooled 2/3.
  assert chat["model"]["weighted"] == pytest.approx(78 / 128)
  assert chat["model"]["accuracy"] == pytest.approx(2 / 3)
  assert a["sections"]["Chat Hard"]["model"]["weighted"] == 0.0
  assert a["score"] == pytest.approx((78 / 128 + 0.0) / 2)
  assert chat["model"]["lo"] <= 2 / 3 <= chat["model"]["hi"]
  assert "first" not in a["rules"]
  h = rm_eval.analyse("hhh_alignment", [mk("honest", ["a", "b", "c"], (0, 1, 0))], [np.array([0.0, 1.0, 1.0])])
  assert h["overall"]["model"]["accuracy"] == 0.0 and h["overall"]["first"]["accuracy"] == 0.0


def test_pairs_reader_takes_context_prompt_or_messages(tmp_path):
  f = tmp_path / "p.jsonl"
  f.write_text("\n".join(json.dumps(r) for r in [
      {"context": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: bye\n\nAssistant:", "chosen": "Bye!", "rejected": "no"},
      {"prompt": "plain question", "chosen": "a", "rejected": "b", "subset": "s"},
      {"messages": [{"role": "user", "content": "m"}], "chosen": "c", "rejected": "d"}]) + "\n")
  items = rm_eval.read_pairs(f)
  assert items[0].messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                               {"role": "user", "content": "bye"})
  assert items[0].context == "Human: hi\n\nAssistant: yo\n\nHuman: bye\n\nAssistant:"
  assert [it.subset for it in items] == ["pairs", "s", "pairs"] and items[2].texts == ("c", "d")
  (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "q", "chosen": "a"}]))
  with pytest.raises(ValueError, match="chosen and rejected"):
    rm_eval.read_pairs(tmp_path / "bad.json")


def test_cli_writes_reports_and_one_line_per_section(pm, llmbar, tmp_path, capsys):
  out = tmp_path / "out"
  assert cli.main(["eval", "rm", str(pm / "bundle"), "--suite", "llmbar", "--data", str(llmbar), "--out", str(out),
                   "--limit", "4", "--batch-size", "3"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("llmbar        Chat Hard    n=4 ")
  assert "longer" in lines[0] and "shorter" in lines[0]
  rec = json.loads((out / "results.json").read_text())
  assert rec["analysis"]["n"] == 4 and len(rec["items"]) == 4
  assert (out / "llmbar.png").stat().st_size > 1000 and "longer wins" in (out / "report.md").read_text()
  assert cli.main(["eval", "rm", str(tmp_path / "nothing"), "--suite", "llmbar", "--data", str(llmbar),
                   "--out", str(tmp_path / "o2")]) == 1


def test_lm_judge_is_the_lm_log_likelihood_of_each_response(tmp_path):
  """`lm:LM` scores each response by its mean token log-probability after the transcript, `lm-sum:LM` by the sum:
  each equal to a full forward pass done by hand, through the CLI on an hhh checkpoint of the LM."""
  import jax
  from hhh.data.tokenizer import ByteTokenizer
  from hhh.model.config import ModelConfig
  from hhh.model.params import graphdef_and_params
  from hhh.pretrained import LM
  from hhh.pretrained.convert import save_checkpoint
  from test_evals import reference
  cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=256)
  _, params = graphdef_and_params(cfg, jax.random.PRNGKey(3))
  params["embed"] = params["embed"] * 10.0   # log-probs that differ per token
  lm = LM(cfg, params, ByteTokenizer(), name="random")
  save_checkpoint(lm, tmp_path / "lm")
  f = tmp_path / "pairs.jsonl"
  rows = [{"prompt": "Where is Paris?", "chosen": "In France.", "rejected": "On the moon, beside a cheese."},
          {"prompt": "hi", "chosen": "Hello!", "rejected": "Go away."}]
  f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  items = rm_eval.read_pairs(f)
  for prefix, mean in (("lm:", True), ("lm-sum:", False)):
    out = tmp_path / prefix[:-1]
    assert cli.main(["eval", "rm", prefix + str(tmp_path / "lm"), "--suite", "pairs", "--data", str(f),
                     "--out", str(out), "--batch-size", "3"]) == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["formatting"].startswith("LM log-likelihood (" + ("mean per token" if mean else "sum over tokens"))
    for it, got in zip(items, rec["items"]):
      want = []
      for r in it.responses:
        total, _ = reference(lm, it.context, r)
        want.append(total / len(r.encode()) if mean else total)   # byte tokens: one per UTF-8 byte
      np.testing.assert_allclose(got["rewards"], want, rtol=1e-4, atol=1e-4)
