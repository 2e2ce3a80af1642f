"""Generation through the KV cache (against a full-forward reference), sampling controls, stopping, and best-of-n.

One tiny LM and one tiny PM (with its reward bundle) are trained for 2 steps per
module, side by side. Prompt sets and step counts are shared between tests so
that only a few programs are compiled.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_EXPERIMENT, run_hhh
from hhh import generate as gen_lib
from hhh import reward
from hhh.generate import Generator, SamplingConfig
from hhh.reward import bestofn
from hhh.reward import export as export_lib

# Left padding is exercised: 9, 31 and 2 tokens (byte tokenizer).
PROMPTS = ["Human: hi", "Human: what is up?\n\nAssistant:", "ab"]
T = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("generate")
  exp = root / "tiny_experiment.py"
  exp.write_text(TINY_EXPERIMENT)
  lm, pm = root / "lm", root / "pm"
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    jobs = [pool.submit(run_hhh, "train", exp, "--workdir", lm, "--set", "objective=lm", "--set", "steps=2"),
            pool.submit(run_hhh, "train", exp, "--workdir", pm, "--set", "steps=2")]
    for job in jobs:
      job.result()
  export_lib.export(pm, root / "bundle")  # beside the run: an export never writes inside its source
  return {"lm": lm, "pm": pm, "bundle": root / "bundle", "root": root}


@pytest.fixture(scope="module")
def gen(runs) -> Generator:
  return Generator.from_checkpoint(runs["lm"])


def reference_greedy(g: Generator, prompts, steps: int, stop_ids) -> tuple[np.ndarray, np.ndarray]:
  """Greedy decoding by recomputing the whole forward every step, right-padded rows, no cache."""
  model = nnx.merge(g._graphdef, g.params)
  fwd = jax.jit(lambda tokens, valid: model.lm_logits(model(tokens, valid)))
  seqs = [g.encode_prompt(p) for p in prompts]
  width = max(map(len, seqs)) + steps
  out = np.full((len(seqs), steps), g.tokenizer.pad_id, np.int32)
  lengths = np.zeros((len(seqs),), np.int32)
  done = np.zeros((len(seqs),), bool)
  for t in range(steps):
    tokens = np.full((len(seqs), width), g.tokenizer.pad_id, np.int32)
    valid = np.zeros((len(seqs), width), bool)
    for r, s in enumerate(seqs):
      tokens[r, :len(s)], valid[r, :len(s)] = s, True
    logits = np.asarray(fwd(jnp.asarray(tokens), jnp.asarray(valid)))
    for r, s in enumerate(seqs):
      if done[r]:
        continue
      row = logits[r, len(s) - 1].copy()
      row[g.tokenizer.pad_id] = -np.inf
      nxt = int(np.argmax(row))
      out[r, t] = nxt
      if nxt in stop_ids:
        done[r] = True
      else:
        lengths[r] += 1
        s.append(nxt)
  return out, lengths


def test_greedy_cache_matches_full_forward(gen):
  sc = SamplingConfig(max_new_tokens=T, temperature=0.0)
  ids, lengths = gen.generate_ids(PROMPTS, sc)
  ref_ids, ref_lengths = reference_greedy(gen, PROMPTS, T, {gen.tokenizer.eos_id, gen.tokenizer.eoc_id})
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(lengths, ref_lengths)
  texts = gen.generate(PROMPTS, sc)
  assert texts == [[gen.decode(ref_ids[r, :ref_lengths[r]])] for r in range(len(PROMPTS))]


def test_sampling_seed_and_top_p(gen):
  sc = SamplingConfig(max_new_tokens=T, temperature=1.0, seed=1)
  a, b = gen.generate_ids(PROMPTS, sc)[0], gen.generate_ids(PROMPTS, sc)[0]
  np.testing.assert_array_equal(a, b)
  c = gen.generate_ids(PROMPTS, dataclasses.replace(sc, seed=2))[0]
  assert not np.array_equal(a, c)
  greedy = gen.generate_ids(PROMPTS, SamplingConfig(max_new_tokens=T, temperature=0.0))[0]
  assert not np.array_equal(a, greedy)
  tiny_p = gen.generate_ids(PROMPTS, dataclasses.replace(sc, top_p=1e-6))[0]
  np.testing.assert_array_equal(tiny_p, greedy)
  # A moderate nucleus changes the draws of a near-uniform model but is still seeded.
  nucleus = dataclasses.replace(sc, top_p=0.5)
  np.testing.assert_array_equal(gen.generate_ids(PROMPTS, nucleus)[0], gen.generate_ids(PROMPTS, nucleus)[0])


def test_samples_do_not_depend_on_batching(gen):
  """Per-row keys: sample j of prompt i is the same whatever the batch size and batch mates."""
  sc = SamplingConfig(max_new_tokens=T, temperature=1.0, seed=3)
  whole = gen.generate(PROMPTS, sc, n=2)
  small = Generator(gen.cfg, gen.params, gen.tokenizer, batch_size=4).generate(PROMPTS, sc, n=2)
  assert small == whole
  assert gen.generate(PROMPTS[:2], sc, n=2) == whole[:2]


@dataclasses.dataclass
class _StopAt:
  """The byte tokenizer with a chosen "eos" id, to make a row stop at a known step."""
  base: object
  eos_id: int

  def __getattr__(self, name):
    return getattr(self.base, name)


def test_n_samples_and_stop_per_row(gen):
  n = 4
  sc = SamplingConfig(max_new_tokens=T, temperature=1.0, seed=5, stop_at_eos=False)
  full, full_len = gen.generate_ids(PROMPTS[:2], sc, n=n)
  assert full.shape == (2 * n, T)
  np.testing.assert_array_equal(full_len, T)
  assert len({tuple(r) for r in full}) == 2 * n   # every row draws its own randomness

  stop = int(full[0, 5])
  stop_ids = {stop, gen.tokenizer.eoc_id}
  g = Generator(gen.cfg, gen.params, _StopAt(gen.tokenizer, stop))
  ids, lengths = g.generate_ids(PROMPTS[:2], dataclasses.replace(sc, stop_at_eos=True), n=n)
  for r in range(2 * n):
    hits = [t for t in range(T) if int(full[r, t]) in stop_ids]
    k = hits[0] if hits else T
    assert lengths[r] == k
    # Same keys, same prefix; then the stop token, then only <pad>.
    np.testing.assert_array_equal(ids[r, :k], full[r, :k])
    if k < T:
      assert int(ids[r, k]) in stop_ids
      assert (ids[r, k + 1:] == gen.tokenizer.pad_id).all()
  assert lengths[0] <= 5 and lengths.max() > lengths.min()

  texts = g.generate(PROMPTS[:2], dataclasses.replace(sc, stop_at_eos=True), n=n)
  assert [len(row) for row in texts] == [n, n]
  assert texts[0][0] == gen.decode(full[0, :lengths[0]])


def test_long_prompt_is_truncated_and_budget_capped(gen):
  ids = gen.encode_prompt("x" * (gen.cfg.max_len + 10))
  assert len(ids) == gen.cfg.max_len - 1
  with pytest.warns(UserWarning, match="max_len - 1"):
    out, lengths = gen.generate_ids(["x" * (gen.cfg.max_len + 10), "ab"], SamplingConfig(max_new_tokens=T,
                                                                                          temperature=0.0))
  # The long row has room for one token before max_len; its short batch mate keeps its full budget.
  assert out.shape == (2, T) and lengths[0] <= 1 and (out[0, 1:] == gen.tokenizer.pad_id).all()
  assert lengths[1] == gen.generate_ids(["ab"], SamplingConfig(max_new_tokens=T, temperature=0.0))[1][0]
  with pytest.raises(ValueError):
    SamplingConfig(top_p=0.0)


def _parse(add_cli, argv):
  parser = argparse.ArgumentParser()
  add_cli(parser.add_subparsers(dest="command", required=True))
  return parser.parse_args(argv)


def test_generate_cli_and_pm_checkpoint(runs, gen, capsys):
  args = _parse(gen_lib.add_cli, ["generate", "--model", str(runs["lm"]), "--max-new-tokens", str(T),
                                  "--temperature", "0", *PROMPTS[:2]])
  args.func(args)
  out = capsys.readouterr().out
  expected = gen.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=T, temperature=0.0))
  assert out == "".join(f"--- prompt {i} sample 0 ---\n{row[0]}\n" for i, row in enumerate(expected))
  # A PM run has an LM head too; a checkpoint dir and its bundle give the same model.
  pm = Generator.from_checkpoint(runs["pm"])
  sc = SamplingConfig(max_new_tokens=T, temperature=0.0)
  assert pm.generate(PROMPTS, sc) == Generator.from_checkpoint(runs["bundle"]).generate(PROMPTS, sc)


def test_best_of_n(runs, gen):
  rm = reward.load(runs["bundle"])
  n = 4
  sc = SamplingConfig(max_new_tokens=T, temperature=1.0, seed=7)
  results = bestofn.best_of_n(gen, rm, PROMPTS[:2], n, sc)
  assert [r["prompt"] for r in results] == PROMPTS[:2]
  for r in results:
    assert len(r["samples"]) == len(r["rewards"]) == n
    np.testing.assert_allclose(r["rewards"], rm.score([r["prompt"]] * n, r["samples"]), rtol=0, atol=1e-5)
    assert r["best_index"] == int(np.argmax(r["rewards"]))
    assert r["best"] == r["samples"][r["best_index"]]
  assert results[0]["samples"] == gen.generate(PROMPTS[:1], sc, n=n)[0]

  prompts_file = runs["root"] / "prompts.jsonl"
  prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
  out = runs["root"] / "best.jsonl"
  args = _parse(bestofn.add_cli, ["bestofn", "--policy", str(runs["lm"]), "--reward", str(runs["bundle"]),
                                  "--n", str(n), "--prompts", str(prompts_file), "--out", str(out),
                                  "--max-new-tokens", str(T), "--temperature", "1.0", "--seed", "7"])
  args.func(args)
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(written) == 2
  for w, r in zip(written, results):
    assert set(w) == {"prompt", "samples", "rewards", "best", "best_index"}
    assert (w["prompt"], w["samples"], w["best"], w["best_index"]) == (r["prompt"], r["samples"], r["best"],
                                                                       r["best_index"])
    np.testing.assert_allclose(w["rewards"], r["rewards"], rtol=0, atol=1e-5)

  text_file = runs["root"] / "prompts.txt"
  text_file.write_text("first prompt\n\nsecond prompt\n")
  assert bestofn.read_prompts(text_file) == ["first prompt", "second prompt"]
