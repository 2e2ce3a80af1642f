"""`hhh eval` end to end (a subprocess per run) on a tiny random bundle, which serves as the LM and as the PM."""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import pytest

from conftest import SHARED_DATA, run_hhh
from hhh import cli
from hhh.evals import commands, tasks
from hhh.evals.score import Scorer
from hhh.model.config import ModelConfig
from hhh.pretrained import load_lm
from test_eval_tasks import write_random_bundle

HHH = SHARED_DATA / "hhh_alignment"
TQA = SHARED_DATA / "truthfulqa" / "mc_task.json"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> pathlib.Path:
  if not HHH.exists() or not TQA.exists():
    pytest.skip(f"{HHH} or {TQA} not present (shared data)")
  cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=512)
  return write_random_bundle(tmp_path_factory.mktemp("eval_cli") / "bundle", cfg, seed=1)


def test_eval_lm_writes_results_matching_the_library(bundle, tmp_path):
  out = tmp_path / "results" / "hhh.json"
  proc = run_hhh("eval", "hhh_alignment", "--model", bundle, "--data", HHH, "--limit", 6, "--batch-size", 4,
                 "--out", out)
  record = json.loads(out.read_text())
  assert {k: record[k] for k in ("task", "model", "judge", "prompt", "prompt_tokens", "n", "limit")} == {
      "task": "hhh_alignment", "model": str(bundle), "judge": "lm", "prompt": "none", "prompt_tokens": 0, "n": 6,
      "limit": 6}
  assert record["per_category"]["harmless"]["n"] == 6 and record["seconds"] > 0
  assert f"wrote {out}" in proc.stdout and "harmless" in proc.stdout
  # The same numbers as the library computes in this process.
  judge = tasks.LMJudge(Scorer(load_lm(str(bundle)), batch_size=4))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a few items exceed the tiny model's max_len
    expected = tasks.hhh_alignment(judge, str(HHH), limit=6)
  assert record["accuracy"] == pytest.approx(expected["accuracy"])
  assert record["truncated_rows"] == judge.scorer.truncated


def test_eval_with_a_prompt_file_prints_json(bundle, tmp_path):
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("A conversation.\n-----\nHuman: Hi\nAssistant: Hello.\n-----\n")
  proc = run_hhh("eval", "truthfulqa_mc", "--model", bundle, "--data", TQA, "--prompt", prompt, "--limit", 2)
  record = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert record["prompt"] == str(prompt) and record["prompt_tokens"] == len(prompt.read_bytes())
  assert record["n"] == 2 and record["n_mc2"] == 2 and 0.0 < record["mc2"] < 1.0
  assert record["query_format"] == "'\\nHuman: {question}\\nAssistant:' + ' {answer}'"


def test_eval_pm_judge(bundle, tmp_path):
  out = tmp_path / "pm.json"
  run_hhh("eval", "hhh_alignment", "--model", bundle, "--judge", "pm", "--data", HHH, "--limit", 3, "--out", out)
  record = json.loads(out.read_text())
  assert record["judge"] == "pm" and record["n"] == 3 and record["prompt_tokens"] == 0
  assert record["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)


@pytest.mark.parametrize("args, message", [
    (["hellaswag", "--judge", "pm", "--data", "x.txt"], "hellaswag measures language modelling"),
    (["hhh_alignment", "--judge", "pm", "--prompt", "hhh"], "--judge pm scores the bare Human/Assistant query"),
    (["lambada_wiki"], "lambada_wiki has no hub dataset: pass --data PATH"),
    (["hhh_alignment", "--prompt", "no_such_prompt.txt"], "prompt file not found: no_such_prompt.txt"),
    (["hhh_alignment", "--data", "no_such_dir"], "not a BIG-bench task directory"),
    (["hhh_alignment", "--prompt", "hhh", "--data", str(HHH)], "leaves no room for an option"),
])
def test_eval_errors_are_one_line(bundle, capsys, args, message):
  if "hhh" in args and not commands.hhh_prompt_path().exists():
    pytest.skip(f"{commands.hhh_prompt_path()} not written yet")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    code = cli.main(["eval", *args[:1], "--model", str(bundle), *args[1:]])
  err = capsys.readouterr().err
  assert code == 1
  assert message in err and err.startswith("hhh: error:")


def test_command_line_names_a_script_below_the_working_directory_relatively(monkeypatch, tmp_path):
  from hhh.evals import commands
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", [str(tmp_path / "experiments" / "tax.py"), "--n", "1000"])
  assert commands.command_line(None) == "python experiments/tax.py --n 1000"
  assert commands.command_line(["--prompt", "my prompt.txt"]) == "python experiments/tax.py --prompt 'my prompt.txt'"
  monkeypatch.setattr(sys, "argv", ["/elsewhere/tax.py"])
  assert commands.command_line([]) == "python /elsewhere/tax.py"
