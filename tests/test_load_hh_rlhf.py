"""The HH-RLHF loader: the real helpful-base and harmless-base test files read in place, and hand-made edge cases."""

from __future__ import annotations

import gzip
import json

import pytest

from hhh.data import load as load_lib
from hhh.data.load import Skip, hh_rlhf
from hhh.data.mine.common import MineStats
from tests.conftest import SHARED_DATA

HH = SHARED_DATA / "hh_rlhf"
HELPFUL = HH / "helpful-base" / "test.jsonl.gz"
HARMLESS = HH / "harmless-base" / "test.jsonl.gz"


def need():
  if not (HELPFUL.exists() and HARMLESS.exists()):
    pytest.skip("../shared/data/hh_rlhf not found: the real HH-RLHF files are only in the development checkout")


def run(path, options: hh_rlhf.Options = hh_rlhf.Options()) -> tuple[list, MineStats]:
  stats = MineStats("")
  return list(hh_rlhf.load(path, options, stats)), stats


def write_jsonl(path, rows) -> None:
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def test_real_helpful_base_first_row_and_counts():
  need()
  out, stats = run(HELPFUL)
  assert stats.source == "hh_rlhf" and stats.records_read == 2354
  assert len(out) == stats.comparisons == 2339
  assert dict(stats.skipped) == {"diverged_early": 9, "empty_response": 4, "identical": 2}
  assert stats.first_offsets["identical"] == [f"{HELPFUL}:722", f"{HELPFUL}:2169"]
  assert stats.first_offsets["empty_response"][0] == f"{HELPFUL}:121"
  assert stats.first_offsets["diverged_early"][0] == f"{HELPFUL}:169"
  key, c, split = out[0]
  assert split == "test" and c.id == "hh_rlhf/helpful-base/test/1" and c.source == "hh_rlhf"
  assert c.meta == {"subset": "helpful-base"}
  assert c.context == ("\n\nHuman: Do you know why turkeys became the official food of thanksgiving?"
                       "\n\nAssistant:")
  assert key == "\n\nHuman: Do you know why turkeys became the official food of thanksgiving?"
  assert c.responses[0] == (" To be honest, I don’t know anything about that. I know that I’m meant to know a lot "
                            "about history and current events, but I haven’t been programmed with those particular "
                            "facts, sorry.")
  assert c.responses[1].startswith(" I know that the American Indians were the first to celebrate the first "
                                   "thanksgiving")
  assert c.responses[1].endswith("I can’t tell you the definitive answer, but maybe this will help you figure it "
                                 "out?")
  assert c.scores == (1.0, 0.0)
  # Context + reply is the published dialogue, character for character.
  row = json.loads(gzip.open(HELPFUL, "rt", encoding="utf-8").readline())
  assert c.context + c.responses[0] == row["chosen"] and c.context + c.responses[1] == row["rejected"]


def test_real_harmless_base_multi_turn_first_row():
  need()
  out, stats = run(HARMLESS)
  assert stats.records_read == 2312 and len(out) == 2303
  assert dict(stats.skipped) == {"diverged_early": 5, "empty_response": 4}
  _, c, _ = out[0]
  # Three Human turns: the context keeps the first two exchanges and ends at the last shared Assistant marker.
  assert c.context.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking for "
                              "practical joke ideas?\n\nHuman: yep\n\nAssistant: Ok, I’ll give you a couple examples")
  assert c.context.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
  assert c.context.count("\n\nHuman:") == 3
  assert c.responses == (" No, sorry!  All of these involve a pen, the point is that you can get funny results by "
                         "doing pranks with pens.",
                         " There are lots of funny things you can do with pens, here’s one example: use the pen as "
                         "a zipper.  It’s where you write your finger in ink, and then you stick it on someone’s "
                         "hand and unzip their zipper. It’s really funny.")
  assert c.meta == {"subset": "harmless-base"}


def test_real_folder_reads_every_subset_in_path_order():
  need()
  out, stats = run(HH)
  # harmless-base, helpful-base, helpful-online, helpful-rejection-sampled (their test files).
  assert stats.records_read == 2312 + 2354 + 1137 + 2749 and len(out) == 2303 + 2339 + 1130 + 2714
  assert out[0][1].id == "hh_rlhf/harmless-base/test/1"
  assert out[-1][1].id == "hh_rlhf/helpful-rejection-sampled/test/2749"
  assert [c.meta["subset"] for _, c, _ in out[2303 + 2339 - 1:2303 + 2339 + 1]] == ["helpful-base", "helpful-online"]
  assert {split for _, _, split in out} == {"test"}
  assert len({c.id for _, c, _ in out}) == len(out)
  limited, stats = run(HH, hh_rlhf.Options(limit=10))
  assert stats.records_read == 10 and [c.id for _, c, _ in limited] == [f"hh_rlhf/harmless-base/test/{i}"
                                                                         for i in range(1, 11)]


def test_split_dialogues_rules():
  ctx = "\n\nHuman: hi\n\nAssistant:"
  assert hh_rlhf.split_dialogues(ctx + " Hello!", ctx + " Go away.") == (ctx, " Hello!", " Go away.")
  # A shared start of the final reply stays in the replies: the cut is at the marker, not at the first difference.
  assert hh_rlhf.split_dialogues(ctx + " I like it", ctx + " I hate it") == (ctx, " I like it", " I hate it")
  longer = ctx + " Hello!\n\nHuman: bye\n\nAssistant:"
  assert hh_rlhf.split_dialogues(longer + " Bye.", longer + " Whatever.") == (longer, " Bye.", " Whatever.")
  cases = {
      "identical": (ctx + " Hello!", ctx + " Hello!"),
      # The earlier Assistant turn differs, so the final turns answer different dialogues.
      "diverged_early": (ctx + " A\n\nHuman: ok\n\nAssistant: B", ctx + " C\n\nHuman: ok\n\nAssistant: B"),
      "no_assistant_turn": ("\n\nHuman: a", "\n\nHuman: b"),
      "empty_response": (ctx + " Hello!", ctx + " "),
  }
  for reason, (chosen, rejected) in cases.items():
    with pytest.raises(Skip, match=reason):
      hh_rlhf.split_dialogues(chosen, rejected)
  # One dialogue continuing past the other's end is a divergence too.
  with pytest.raises(Skip, match="diverged_early"):
    hh_rlhf.split_dialogues(ctx + " A", ctx + " A\n\nHuman: more\n\nAssistant: B")


def test_local_files_splits_bad_lines_and_hub_rows(tmp_path):
  ctx = "\n\nHuman: What is 2+2?\n\nAssistant:"
  good = {"chosen": ctx + " 4.", "rejected": ctx + " 5."}
  sub = tmp_path / "helpful-online"
  sub.mkdir()
  write_jsonl(sub / "train.jsonl.gz", [good, "not json", "[1, 2]", "", {"chosen": 3, "rejected": "x"}])
  write_jsonl(tmp_path / "extra.jsonl", [good])
  (tmp_path / "notes.txt").write_text("ignored: not a jsonl file")
  out, stats = run(tmp_path)
  assert stats.records_read == 5  # the blank line is not a record
  assert dict(stats.skipped) == {"invalid_json": 1, "not_object": 1, "missing_field": 1}
  assert stats.first_offsets["invalid_json"] == [f"{sub / 'train.jsonl.gz'}:2"]
  (k1, c1, s1), (k2, c2, s2) = out
  # extra.jsonl names no split: None lets the store hash the key (the opening Human turn).
  assert (c1.id, s1, c1.meta) == (f"hh_rlhf/{tmp_path.name}/extra/1", None, {"subset": tmp_path.name})
  assert (c2.id, s2, c2.meta) == ("hh_rlhf/helpful-online/train/1", "train", {"subset": "helpful-online"})
  assert k1 == k2 == "\n\nHuman: What is 2+2?" and c2.responses == (" 4.", " 5.")
  # The mapping the hub path uses, on a hub-shaped row.
  key, c = hh_rlhf.row_to_comparison(good, subset="harmless-base", part="train", number=7)
  assert c.id == "hh_rlhf/harmless-base/train/7" and c.context == ctx and c.scores == (1.0, 0.0)


def test_missing_path_and_hub_spec(tmp_path):
  with pytest.raises(FileNotFoundError, match="hh-rlhf jsonl not found: .*nope"):
    hh_rlhf.load(tmp_path / "nope", hh_rlhf.Options(), MineStats(""))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="folder holds no hh-rlhf jsonl files"):
    hh_rlhf.load(tmp_path / "empty", hh_rlhf.Options(), MineStats(""))
  assert load_lib.hf_spec("hf:", hh_rlhf.HUB) == ("Anthropic/hh-rlhf", None)
  assert load_lib.hf_spec("hf:Anthropic/hh-rlhf:harmless-base", hh_rlhf.HUB) == ("Anthropic/hh-rlhf", "harmless-base")
  assert load_lib.hf_spec("hf:me/copy", hh_rlhf.HUB, "default") == ("me/copy", "default")
  assert load_lib.hf_spec(str(tmp_path), hh_rlhf.HUB) is None
  assert load_lib.split_from_name("test.jsonl.gz") == "test"
  assert load_lib.split_from_name("hellaswag_val_full.txt.bz2") == "validation"
  assert load_lib.split_from_name("contest.jsonl") is None  # whole words only


def test_hub_branch_with_a_stand_in_for_the_download(monkeypatch):
  ctx = "\n\nHuman: Hi\n\nAssistant:"
  calls = []

  def fake_hf_dataset(name, config=None, **kwargs):
    calls.append((name, config, kwargs))
    return {"train": [{"chosen": ctx + " Hello.", "rejected": ctx + " No."}, {"chosen": "x", "rejected": "x"}],
            "test": [{"chosen": ctx + " Hey.", "rejected": ctx + " Go."}]}

  monkeypatch.setattr(load_lib, "hf_dataset", fake_hf_dataset)
  out, stats = run("hf:Anthropic/hh-rlhf:harmless-base")
  assert calls == [("Anthropic/hh-rlhf", None, {"data_dir": "harmless-base"})]
  assert stats.records_read == 3 and dict(stats.skipped) == {"identical": 1}
  assert stats.first_offsets["identical"] == ["Anthropic/hh-rlhf/harmless-base/train:2"]
  assert [(c.id, s, c.meta["subset"]) for _, c, s in out] == [
      ("hh_rlhf/harmless-base/train/1", "train", "harmless-base"), ("hh_rlhf/harmless-base/test/1", "test",
                                                                    "harmless-base")]
  run("hf:")
  assert calls[-1] == ("Anthropic/hh-rlhf", None, {"data_dir": None})


def test_limit_counts_bad_lines_too(tmp_path):
  ctx = "\n\nHuman: Hi\n\nAssistant:"
  path = tmp_path / "train.jsonl"
  write_jsonl(path, ["not json", {"chosen": ctx + " A", "rejected": ctx + " B"}])
  out, stats = run(path, hh_rlhf.Options(limit=1))
  # The one record allowed was the bad line: the good row after it is not read.
  assert out == [] and stats.records_read == 1 and dict(stats.skipped) == {"invalid_json": 1}
