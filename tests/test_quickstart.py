"""`hhh quickstart`: the generated world (real formats, the hidden quality signal, determinism) and the reduced
end-to-end tour (report, plots, finite numbers, resume)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import re

import pytest

from conftest import run_hhh
from hhh.data.mine import reddit, stackexchange, wikipedia
from hhh.data.mine.common import MineStats
from hhh.data.schema import read_jsonl
from hhh.evals import tasks
from hhh.studies.quickstart import pipeline, synth

SMALL = synth.WorldSize(se_questions=40, reddit_threads=40, wiki_revisions=8, target_train=32, target_heldout=16,
                        eval_per_category=3, corpus_docs=50)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world")
  return out, synth.generate(out, SMALL, seed=0)


def _mine(mod, path, options):
  stats = MineStats(mod.SOURCE)
  return [c for _, c in mod.mine(path, options, stats)], stats


def test_quality_is_the_documented_sum():
  assert synth.quality(True, "polite", True) == 4.7
  assert synth.quality(True, "rude", False) == 2.0
  assert synth.quality(False, "polite", True) == 1.7
  assert synth.quality(False, "rude", False) == -1.0
  # Every distinct ingredient triple has its own quality, so generated pairs never tie.
  triples = [(c, t, r) for c in (True, False) for t in synth.TONES for r in (False, True)]
  assert len({synth.quality(*x) for x in triples}) == len(triples) == 12


def test_stackexchange_dump_is_read_by_the_miner(world):
  _, paths = world
  site = pathlib.Path(paths["stackexchange"])
  posts = (site / "Posts.xml").read_text()
  rows = re.findall(r'<row Id="\d+" PostTypeId="(\d)"', posts)
  assert rows[0] == "4" and rows.count("1") == 40  # one tag wiki, then the questions
  comps, stats = _mine(stackexchange, site, stackexchange.Options())
  assert stats.records_read == len(rows)
  assert stats.skipped["other_post_type"] == 1
  assert comps and all(c.id.startswith("stackexchange/synth.stackexchange.com/") for c in comps)
  # Votes follow quality: a top answer states the true fact far more often than a bottom one.
  true_top = sum(_is_true(c.context, c.responses[0]) for c in comps)
  true_bottom = sum(_is_true(c.context, c.responses[-1]) for c in comps)
  assert true_top > true_bottom + len(comps) // 4, (true_top, true_bottom, len(comps))


def _is_true(context: str, response: str) -> bool:
  for s in synth.SUBJECTS:
    if s.kind == "capital" and f"capital of {s.name}?" in context:
      return f"is {synth.toy.CAPITALS[s.index][1]}." in response
    if s.kind == "topic" and f" {s.name}" in context.split("\n")[0]:
      return synth.toy.TOPICS[s.index][2] in response
  raise AssertionError(f"no subject in {context!r}")


def test_reddit_dump_is_pushshift_zst_with_titles(world):
  _, paths = world
  import zstandard
  with open(paths["reddit"], "rb") as f:
    first = json.loads(zstandard.ZstdDecompressor().stream_reader(f).read(1 << 16).split(b"\n")[0])
  assert set(first) >= {"id", "parent_id", "link_id", "body", "score", "author", "subreddit"}
  assert first["parent_id"] == first["link_id"] == "t3_100"  # 36**2 in base 36
  comps, stats = _mine(reddit, paths["reddit"], reddit.Options(submissions=paths["reddit_submissions"]))
  assert stats.skipped["bot"] == 1 and stats.skipped["removed"] == 1
  assert comps and all(c.context.startswith("Subreddit: r/AskSynth\n\nTitle: ") for c in comps)
  assert all(c.scores[0] - c.scores[-1] >= 2 for c in comps)


def test_wikipedia_history_reverts_become_pairs(world):
  _, paths = world
  xml = pathlib.Path(paths["wikipedia"]).read_text()
  assert xml.count("<page>") == len(synth.SUBJECTS) == 52
  assert xml.count("<revision>") == 52 * 8
  comps, stats = _mine(wikipedia, paths["wikipedia"], wikipedia.Options(window_chars=160))
  assert stats.records_read == 52 * 8 and comps
  # The restored text never holds the vandal's insult; the reverted one holds an insult or a false fact.
  for c in comps:
    good, bad = c.responses
    assert not any(i in good for i in synth.INSULTS)
  assert any(any(i in c.responses[1] for i in synth.INSULTS) for c in comps)


def test_targets_are_labelled_by_exact_quality(world):
  out, _ = world
  for name in synth.TARGETS:
    train = read_jsonl(out / "targets" / name / "train.jsonl")
    held = read_jsonl(out / "targets" / name / "heldout.jsonl")
    assert (len(train), len(held)) == (32, 16)
    for c in train + held:
      assert c.k == 2 and c.scores[0] > c.scores[1]
      assert set(c.scores) <= {synth.quality(a, t, r) for a in (True, False) for t in synth.TONES
                               for r in (False, True)}
  assert read_jsonl(out / "targets" / "assistant" / "train.jsonl")[0].context.startswith("Human: ")
  assert read_jsonl(out / "targets" / "tldr" / "train.jsonl")[0].context.endswith("\n\nTL;DR:")


def test_hhh_eval_is_a_big_bench_directory(world):
  _, paths = world
  items, in_prefix, out_prefix = tasks.read_hhh_alignment(paths["hhh_eval"])
  assert (in_prefix, out_prefix) == ("\nHuman: ", "\nAssistant:")
  assert [it.category for it in items] == ["harmless"] * 3 + ["helpful"] * 3 + ["honest"] * 3 + ["other"] * 3
  assert all(it.labels == (1, 0) for it in items)


def test_generation_is_deterministic(tmp_path, world):
  out, _ = world
  synth.generate(tmp_path / "again", SMALL, seed=0)
  synth.generate(tmp_path / "other", SMALL, seed=1)
  digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
  rel = ["raw/stackexchange/synth.stackexchange.com/Posts.xml", "raw/reddit/RC_2030-01.zst",
         "raw/wikipedia/synthwiki-pages-meta-history.xml", "targets/tldr/heldout.jsonl", "corpus/train.jsonl"]
  for r in rel:
    assert digest(out / r) == digest(tmp_path / "again" / r), r
  assert digest(out / rel[0]) != digest(tmp_path / "other" / rel[0])


def test_bad_settings_are_one_line_errors(tmp_path, monkeypatch):
  from hhh import cli
  monkeypatch.setenv("XLA_FLAGS", "")  # the CLI appends its compile flags; keep them out of this process
  with pytest.raises(ValueError, match="unknown size 'huge'"):
    pipeline.run(pipeline.QuickstartConfig(out=str(tmp_path), sizes=("huge",)))
  assert cli.main(["quickstart", "--out", str(tmp_path), "--set", "targets=nope"]) == 1
  # A directory keeps one set of settings: its finished runs are found by name.
  (tmp_path / "quickstart_config.json").write_text(json.dumps(
      json.loads(json.dumps(dataclasses.asdict(pipeline.fast_config(str(tmp_path), seed=1))))))
  with pytest.raises(ValueError, match="other settings"):
    pipeline.run(pipeline.fast_config(str(tmp_path), seed=0))
  assert cli.main(["quickstart", "--out", str(tmp_path), "--set", "no_such_key=1"]) == 2


def test_reduced_quickstart_end_to_end_and_resume(tmp_path):
  """The CI-sized tour: --fast with the ranked objective only and no HHH eval (three compiled programs)."""
  out = tmp_path / "qs"
  args = ("quickstart", "--fast", "--out", out, "--set", "objectives=ranked", "--set", "eval_hhh=false")
  proc = run_hhh(*args, timeout=900)
  assert "[7/7] report" in proc.stdout
  report = (out / "report.md").read_text()
  assert "## PMP sample efficiency" in report and "## HHH eval" not in report
  for png in ("objectives.png", "sample_efficiency.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  summary = json.loads((out / "summary.json").read_text())
  # 1 size x 1 target x 3 starts (none, ranked PMP, binarized PMP) x 2 set sizes, all ranked.
  assert sorted((r["pmp"], r["n"]) for r in summary["finetunes"]) == [
      ("binarized", 8), ("binarized", 64), ("none", 8), ("none", 64), ("ranked", 8), ("ranked", 64)]
  assert all(math.isfinite(r["metrics"]["accuracy"]) and 0 <= r["metrics"]["accuracy"] <= 1
             for r in summary["finetunes"] + summary["pmp"])
  assert summary["finetunes"][0]["metrics"]["pairs"] == 100  # the fast world's held-out set
  lines = (out / "results.jsonl").read_text().splitlines()
  assert len(lines) == 1 + 2 + 6
  # Re-running keeps every finished run: nothing trains again and the numbers are the same.
  again = run_hhh(*args, timeout=300)
  assert "6/6" in again.stdout and "0/6" not in again.stdout  # the fine-tune bar starts full
  assert (out / "results.jsonl").read_text().splitlines() == lines
  assert json.loads((out / "summary.json").read_text())["finetunes"] == summary["finetunes"]


@pytest.mark.slow
def test_fast_quickstart_end_to_end_and_resume(tmp_path):
  out = tmp_path / "qs"
  proc = run_hhh("quickstart", "--fast", "--out", out, timeout=900)
  for stage in ("[1/7] generate", "[2/7] mine", "[3/7] pretrain", "[4/7] pmp", "[5/7] finetune",
                "[6/7] evaluate", "[7/7] report"):
    assert stage in proc.stdout
  report = (out / "report.md").read_text()
  for heading in ("## The objective comparison", "## PMP sample efficiency", "## HHH eval",
                  "## What this shows and what it does not"):
    assert heading in report
  for png in ("objectives.png", "sample_efficiency.png"):
    data = (out / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert f"]({png})" in report
  summary = json.loads((out / "summary.json").read_text())
  # Fast mode: 1 size x 1 target x (3 starts x 2 set sizes + imitation and binary at the larger one).
  assert len(summary["finetunes"]) == 8 and len(summary["pmp"]) == 2 and len(summary["lms"]) == 1
  accs = [r["metrics"]["accuracy"] for r in summary["finetunes"] + summary["pmp"]]
  assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in accs)
  assert all(math.isfinite(r["metrics"]["loss"]) for r in summary["lms"])
  assert {r["pmp"] for r in summary["hhh_eval"]} == {"none", "ranked", "binarized"}
  assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == 32 for r in summary["hhh_eval"])
  assert {k: v["total_kept"] > 0 for k, v in summary["mined"].items()} == {
      "stackexchange": True, "reddit": True, "wikipedia": True}
  lines = (out / "results.jsonl").read_text().splitlines()
  assert len(lines) == 11

  # Re-running keeps every finished run: nothing trains again and the numbers are the same.
  again = run_hhh("quickstart", "--fast", "--out", out, timeout=300)
  assert (out / "results.jsonl").read_text().splitlines() == lines
  assert "8/8" in again.stdout and "0/8" not in again.stdout  # the fine-tune bar starts full
  assert json.loads((out / "summary.json").read_text())["finetunes"] == summary["finetunes"]


def test_parallel_workers_give_the_sequential_results(tmp_path, world):
  """The tour's runs go to worker processes on a CPU machine; a run's numbers must not depend on where it ran."""
  _, paths = world
  cfg = dataclasses.replace(pipeline.fast_config(str(tmp_path)), lm_steps=3, vocab=300)
  jobs = [pipeline.Job(f"lm-{s}", "lm", pipeline.lm_config(cfg, s, paths["corpus"]), {"size": s})
          for s in ("20k", "50k")]
  one = pipeline.Runner(tmp_path / "one", workers=1).run(jobs, "lm")
  two = pipeline.Runner(tmp_path / "two", workers=2).run(jobs, "lm")
  assert [r["name"] for r in two] == ["lm-20k", "lm-50k"]
  assert [r["metrics"] for r in two] == [r["metrics"] for r in one]
  assert all(math.isfinite(r["metrics"]["loss"]) for r in two)
  lines = (tmp_path / "two" / "results.jsonl").read_text().splitlines()
  assert sorted(json.loads(l)["name"] for l in lines) == ["lm-20k", "lm-50k"]
