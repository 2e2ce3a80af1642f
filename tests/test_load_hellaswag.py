"""HellaSwag: the real derived validation file read in place, and rows in the original jsonl format written here."""

from __future__ import annotations

import bz2
import json

import pytest

from hhh.data import load as load_lib
from hhh.data.load import Skip, hellaswag
from hhh.data.load.hellaswag import HellaswagTask
from hhh.data.mine.common import MineStats
from tests.conftest import SHARED_DATA

VAL = SHARED_DATA / "hellaswag" / "hellaswag_val_full.txt.bz2"

FIRST = HellaswagTask(
    ctx="A man is sitting on a roof. he",
    endings=("is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
             "starts pulling up roofing on a roof."),
    label=3, activity_label="Roof shingle removal", ind=0)
LAST = HellaswagTask(
    ctx="How to tell if your teen is being abused. Pay attention to your teen dressing inappropriately. If you suspect "
        "that your teen is being beaten by someone in their life, you will want to pay close attention to their dress "
        "code. While all teens have different styles and preferences, be on the lookout for any clothing that is out "
        "of the norm for your child.",
    endings=("Try to figure out why they are dressing something that is frowned upon.. Understand why your child is "
             "acting different.",
             "Read the following as a rule for determining your teen's behaviour. You may notice your teen dressing in "
             "odd outfits that could indicate that they are on a date.",
             "For instance, your teen may try to hide the signs of abuse (e.g. scratches, burns, bruises, bite marks, "
             "broken bones, etc.",
             "Ask your teen if they have black tights (with stripper straps) or baggy jeans (without strippers "
             "straps). The more comfortably you can be around your teenager, the better."),
    label=2, activity_label="Family Life", ind=10041)

# Original-format rows (rowanz/hellaswag jsonl): the validation file's first task, and a WikiHow training task
# with its [header]/[title]/[step]/[substeps] markup, as published.
VAL_ROW = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
           "endings": list(FIRST.endings), "source_id": "activitynet~v_-JhWjGDPHMY"}
WIKIHOW_CTX = ("[header] How to cope with suicidal thoughts [title] Put off any plans. [step] Promise yourself that "
               "you'll wait 48 hours before doing anything. Remember, thoughts don't have the power to force you to "
               "act.")
TRAIN_ROW = {"ind": 12, "activity_label": "Health", "ctx_a": WIKIHOW_CTX, "ctx_b": "", "ctx": WIKIHOW_CTX,
             "split": "train", "split_type": "indomain", "label": 3, "source_id": "wikihow~19", "endings": [
                 "Even when you do, there may be a small image of the future still lurking around your brain. "
                 "[substeps] For instance, don't tell yourself that you can't make it.",
                 "You're doing something, and no one can force you to act. It's completely natural to feel negative "
                 "thoughts before you act.",
                 "Do not panic if people talk to you (even if it's about quitting smoking). Have a plan for how you're "
                 "going to react to a group of people who bring on suicidal thoughts.",
                 "Sometimes extreme pain can distort our perception. Waiting before taking action will give your mind "
                 "time to clear."]}
# The test split is unlabelled.
TEST_ROW = dict(VAL_ROW, ind=99, split="test", label="", source_id="activitynet~v_test")


def need():
  if not VAL.exists():
    pytest.skip("../shared/data/hellaswag not found: the real HellaSwag file is only in the development checkout")


def run(path, options: hellaswag.Options = hellaswag.Options()) -> tuple[list, MineStats]:
  stats = MineStats("")
  return list(hellaswag.load(path, options, stats)), stats


def test_read_tasks_real_derived_file():
  need()
  tasks = list(hellaswag.read_tasks(VAL))
  assert len(tasks) == 10042
  assert tasks[0] == FIRST and tasks[-1] == LAST
  assert tasks[0].context == "Roof shingle removal: A man is sitting on a roof. he"
  assert [t.ind for t in tasks[:3]] == [0, 1, 2]
  assert sum(t.label == 2 for t in tasks) == 2584


def test_loader_on_real_file_ranking_and_pairs():
  need()
  out, stats = run(VAL)
  assert stats.source == "hellaswag" and stats.records_read == 10042 and len(out) == 10042 and not stats.skipped
  key, c, split = out[0]
  assert (key, split, c.id) == ("hellaswag/0", "validation", "hellaswag/validation/0")
  assert c.context == "Roof shingle removal: A man is sitting on a roof. he"
  assert c.responses == tuple(" " + e for e in FIRST.endings) and c.scores == (0.0, 0.0, 0.0, 1.0)
  assert c.meta == {"ind": 0, "label": 3, "activity_label": "Roof shingle removal"}
  pairs, stats = run(VAL, hellaswag.Options(ranking=False, limit=2))
  assert stats.records_read == 2 and len(pairs) == 6
  assert [c.id for _, c, _ in pairs[:3]] == ["hellaswag/validation/0/0", "hellaswag/validation/0/1",
                                              "hellaswag/validation/0/2"]
  assert pairs[1][1].responses == (" starts pulling up roofing on a roof.", " is ripping level tiles off.")
  assert all(c.scores == (1.0, 0.0) for _, c, _ in pairs)
  # Task 1 ("Clean and jerk") has label 3 as well: its pairs set ending 3 against endings 0, 1, 2.
  assert pairs[3][1].responses[0] == " stands and lifts the weight over her head."


def test_original_jsonl_matches_the_derived_format(tmp_path):
  path = tmp_path / "hellaswag_rows.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in (VAL_ROW, TRAIN_ROW, TEST_ROW)) + "\n\nnot json\n")
  with pytest.raises(ValueError, match=r"hellaswag_rows.jsonl:3: no label"):
    list(hellaswag.read_tasks(path))
  out, stats = run(path)
  assert stats.records_read == 4 and dict(stats.skipped) == {"no_label": 1, "invalid_json": 1}
  (k0, c0, s0), (k1, c1, s1) = out
  # Same strings as the derived file's first task; the row keeps its own ind and split.
  assert (c0.context, c0.responses, c0.scores) == (FIRST.context, tuple(" " + e for e in FIRST.endings),
                                                   (0.0, 0.0, 0.0, 1.0))
  assert (k0, s0, c0.id, c0.meta["ind"]) == ("activitynet~v_-JhWjGDPHMY", "validation", "hellaswag/validation/24", 24)
  assert c1.context == ("Health: How to cope with suicidal thoughts. Put off any plans. Promise yourself that you'll "
                        "wait 48 hours before doing anything. Remember, thoughts don't have the power to force you to "
                        "act.")
  assert c1.responses[0] == (" Even when you do, there may be a small image of the future still lurking around your "
                             "brain. For instance, don't tell yourself that you can't make it.")
  assert (k1, s1, c1.id) == ("wikihow~19", "train", "hellaswag/train/12")


def test_clean_and_hub_rows(tmp_path):
  assert hellaswag.clean("[header] How to x [title] Buy y. [step] Go.") == "How to x. Buy y. Go."
  assert hellaswag.clean("[title] Set a timer. [step] The liquid sets.") == "Set a timer. The liquid sets."
  assert hellaswag.clean("[title]. Done") == "Done"
  assert hellaswag.clean("Visit [www.kiddio.org] today") == "Visit [www.kiddio.org] today"  # other brackets stay
  assert hellaswag.clean("a   b") == "a  b"  # double spaces collapse once, as in the derived file
  # Hub rows (Rowan/hellaswag) carry the label as a string; "" on the test split.
  row = {"ind": 39, "activity_label": "Education and Communications", "ctx_a": "[header] How to make ice [title] "
         "Fill a tray.", "ctx_b": "", "ctx": "[header] How to make ice [title] Fill a tray.",
         "endings": ["[step] Freeze it.", "Boil it.", "Drink it.", "Paint it."], "source_id": "wikihow~66",
         "split": "train", "split_type": "indomain", "label": "0"}
  task, split, key = hellaswag.task_from_row(row)
  assert task == HellaswagTask(ctx="How to make ice. Fill a tray.", endings=("Freeze it.", "Boil it.", "Drink it.",
                                                                            "Paint it."),
                               label=0, activity_label="Education and Communications", ind=39)
  assert (split, key) == ("train", "wikihow~66")
  for broken, reason in ((dict(row, label=""), "no_label"), (dict(row, label="7"), "bad_label"),
                         (dict(row, endings="x"), "missing_field")):
    with pytest.raises(Skip, match=reason):
      hellaswag.task_from_row(broken)
  # A labelled ending that also appears as a wrong one makes no comparison.
  path = tmp_path / "dup.jsonl"
  path.write_text(json.dumps(dict(row, endings=["Freeze it.", "Freeze it.", "Drink it.", "Paint it."])) + "\n")
  out, stats = run(path)
  assert out == [] and dict(stats.skipped) == {"gold_duplicated": 1}


def test_text_format_errors(tmp_path):
  short = tmp_path / "hellaswag_val_cut.txt.bz2"
  short.write_bytes(bz2.compress(b"Roof: A man. he\n3\na\nb\nc\nd\nRoof: A man. he\n1\na\n"))
  with pytest.raises(ValueError, match=r"hellaswag_val_cut.txt.bz2:7: task 1 has 3 of 6 lines"):
    list(hellaswag.read_tasks(short))
  shifted = tmp_path / "shifted.txt"
  shifted.write_text("Roof: A man. he\na\n3\nb\nc\nd\n")
  with pytest.raises(ValueError, match=r"shifted.txt:2: label 'a' is not 0-3"):
    list(hellaswag.read_tasks(shifted))
  with pytest.raises(FileNotFoundError, match="hellaswag not found"):
    hellaswag.load(tmp_path / "nope.txt", hellaswag.Options(), MineStats(""))


def test_hub_branch_with_a_stand_in_for_the_download(monkeypatch):
  hub_val = dict(VAL_ROW, label="3")
  hub_test = dict(TEST_ROW)
  monkeypatch.setattr(load_lib, "hf_dataset", lambda name, config=None: {"validation": [hub_val], "test": [hub_test]}
                      if (name, config) == ("Rowan/hellaswag", None) else None)
  out, stats = run("hf:")
  assert stats.records_read == 2 and dict(stats.skipped) == {"no_label": 1}
  assert stats.first_offsets["no_label"] == ["Rowan/hellaswag/test:1"]
  (key, c, split), = out
  assert (key, split, c.id, c.scores) == ("activitynet~v_-JhWjGDPHMY", "validation", "hellaswag/validation/24",
                                          (0.0, 0.0, 0.0, 1.0))
