"""The Learn to Summarize loader on a small comparisons file written here in the published format.

No real comparisons file is available offline; the first record below is the formatted example the dataset's own
README shows (post t3_2vwp1w, batch9), the others follow the same layout, including a CNN/DM article record.
"""

from __future__ import annotations

import json

import pytest

from hhh.data import load as load_lib
from hhh.data.load import Skip, summarize
from hhh.data.mine.common import MineStats

POST = ("I had a car accident on friday, other party involved was speeding and hit me. but because he denies it it "
        "seems like I was wrong because he was supposed to go first under normal circumstances. ( give way road "
        "markings ) \n\nhelp would be appeciated on this :)")
README_ROW = {
    "info": {"id": "t3_2vwp1w", "post": POST,
             "title": "Anybody with knowledge of the Dutch law around ? car accident questions.",
             "subreddit": "legaladvice"},
    "summaries": [
        {"text": " car accident caused me 2-3m damage to my car both doors totally jammed and driving way faster than "
                 "usual. need info on what to do with this.. thanks :)",
         "policy": "sup4_ppo_rm3_kl10", "note": "Was the accident caused by driving fast."},
        {"text": " we suspect other party involved of speeding when he hit me but I can't prove it without an "
                 "investigation into the damage, how can i get such an investigation ? if at all possible.",
         "policy": "ref", "note": "Unclear what happened."}],
    "choice": 1, "worker": "ikNmucwunMnYJCQpnq6ZYb57OW7NiD", "batch": "batch9", "split": "train",
    "extra": {"confidence": 8}}
# The same post judged again on another pair, by a worker who gave no confidence (extra is empty).
NO_CONFIDENCE = {
    "info": README_ROW["info"],
    "summaries": [{"text": " other driver was speeding, how do I prove it?", "policy": "sup2", "note": None},
                  {"text": " car crash, doors jammed, help", "policy": "pretrain_6b", "note": None}],
    "choice": 0, "worker": "w2", "batch": "batch10", "split": "valid1", "extra": {}}
CNNDM = {
    "info": {"id": "167f80cc6634b166a699d182e25c81a2349d82d2", "site": "dailymail",
             "title": "Sissoko faces disciplinary action", "article": "Newcastle stand-in skipper Moussa Sissoko is "
             "facing disciplinary action after he was sent off.\n\nHe apologised afterwards."},
    "summaries": [{"text": "Moussa Sissoko was sent off against Liverpool.", "policy": "ref", "note": None},
                  {"text": "Newcastle lost at Anfield.", "policy": "sup4_6b", "note": None}],
    "choice": 0, "worker": "w3", "batch": "cnndm3", "split": "valid2", "extra": {"confidence": 6}}


def bad(**changes) -> dict:
  row = json.loads(json.dumps(README_ROW))
  row.update(changes)
  return row


def write_batch(path, rows) -> None:
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def run(path, options: summarize.Options = summarize.Options()) -> tuple[list, MineStats]:
  stats = MineStats("")
  return list(summarize.load(path, options, stats)), stats


@pytest.fixture
def batch(tmp_path):
  path = tmp_path / "batch9.json"
  write_batch(path, [README_ROW, NO_CONFIDENCE, CNNDM,
                     bad(choice=2), bad(summaries=[README_ROW["summaries"][0]] * 2), bad(split="holdout"),
                     bad(info={"id": "t3_x", "title": "no post or article"}), "{truncated"])
  return path


def test_published_records(batch):
  out, stats = run(batch)
  assert stats.source == "summarize" and stats.records_read == 8 and stats.comparisons == 3
  assert dict(stats.skipped) == {"bad_choice": 1, "identical": 1, "unknown_split": 1, "missing_field": 1,
                                 "invalid_json": 1}
  assert stats.first_offsets["bad_choice"] == [f"{batch}:4"]
  (k0, c0, s0), (k1, c1, s1), (k2, c2, s2) = out
  assert c0.context == ("SUBREDDIT: r/legaladvice\n\nTITLE: Anybody with knowledge of the Dutch law around ? car "
                        "accident questions.\n\nPOST: " + POST + "\n\nTL;DR:")
  assert c0.responses == tuple(s["text"] for s in README_ROW["summaries"])
  assert c0.scores == (0.0, 1.0) and c0.source == "summarize"
  assert c0.meta == {"split": "train", "confidence": 8, "worker": "ikNmucwunMnYJCQpnq6ZYb57OW7NiD",
                     "batch": "batch9", "policies": ["sup4_ppo_rm3_kl10", "ref"], "subreddit": "legaladvice"}
  assert (k0, s0) == ("t3_2vwp1w", "train")
  # Both comparisons of the post share its group key; valid1 maps to validation; no confidence is None.
  assert (k1, s1, c1.scores, c1.meta["confidence"], c1.meta["split"]) == ("t3_2vwp1w", "validation", (1.0, 0.0),
                                                                         None, "valid1")
  assert c2.context == ("Article:\nNewcastle stand-in skipper Moussa Sissoko is facing disciplinary action after he "
                        "was sent off.\n\nHe apologised afterwards.\n\nTL;DR:\n")
  assert (k2, s2, c2.scores) == ("167f80cc6634b166a699d182e25c81a2349d82d2", "validation", (1.0, 0.0))
  assert c2.meta["site"] == "dailymail" and "subreddit" not in c2.meta and c2.meta["policies"] == ["ref", "sup4_6b"]
  # Ids hash the record's content, so they stay the same from run to run.
  assert (c0.id, c1.id, c2.id) == ("summarize/t3_2vwp1w/f914baadaf14", "summarize/t3_2vwp1w/2b50fb5c978b",
                                   "summarize/167f80cc6634b166a699d182e25c81a2349d82d2/6a3049de5d9b")


def test_ids_are_stable_and_repeats_collapse(tmp_path, batch):
  first, _ = run(batch)
  again = tmp_path / "batch9_copy.json"
  write_batch(again, [README_ROW])
  # Same record in another file, same id: the store keeps one of them ("duplicate_id").
  assert run(again)[0][0][1].id == first[0][1].id
  both, stats = run(tmp_path)  # the folder: batch9.json then batch9_copy.json
  assert stats.records_read == 9 and [c.id for _, c, _ in both] == [c.id for _, c, _ in first] + [first[0][1].id]


def test_min_confidence_and_limit(batch):
  out, stats = run(batch, summarize.Options(min_confidence=7))
  assert [c.meta["confidence"] for _, c, _ in out] == [8]
  assert stats.skipped["low_confidence"] == 2  # the unrated record and the CNN/DM one rated 6
  out, stats = run(batch, summarize.Options(limit=2))
  assert stats.records_read == 2 and len(out) == 2


def test_row_mapping_for_hub_rows():
  # The hub copy fills absent info fields with None and may hold summaries column-wise.
  row = {"info": {"id": "t3_abc", "post": "My cat ignores me.", "title": "Cat", "subreddit": "cats", "site": None,
                  "article": None},
         "summaries": {"text": [" cat ignores me", " my cat is aloof"], "policy": ["ref", "sup1"],
                       "note": [None, None]},
         "choice": 1, "worker": "w", "batch": "batch5", "split": "valid2", "extra": {"confidence": None}}
  key, c, split = summarize.row_to_comparison(row)
  assert (key, split) == ("t3_abc", "validation")
  assert c.context == "SUBREDDIT: r/cats\n\nTITLE: Cat\n\nPOST: My cat ignores me.\n\nTL;DR:"
  assert c.responses == (" cat ignores me", " my cat is aloof") and c.scores == (0.0, 1.0)
  assert c.meta["policies"] == ["ref", "sup1"] and c.meta["confidence"] is None and "site" not in c.meta
  no_split = dict(row, split=None)
  assert summarize.row_to_comparison(no_split)[2] is None  # hashed by post id in the store
  for broken, reason in ((dict(row, choice=True), "bad_choice"), (dict(row, summaries=[]), "missing_field"),
                         (dict(row, info=None), "missing_field")):
    with pytest.raises(Skip, match=reason):
      summarize.row_to_comparison(broken)
  assert load_lib.hf_spec("hf:", summarize.HUB, summarize.HUB_CONFIG) == ("openai/summarize_from_feedback",
                                                                           "comparisons")


def test_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="summarize comparisons not found"):
    summarize.load(tmp_path / "batch3.json", summarize.Options(), MineStats(""))


def test_hub_branch_with_a_stand_in_for_the_download(monkeypatch):
  calls = []

  def fake_hf_dataset(name, config=None, **kwargs):
    calls.append((name, config))
    return {"train": [README_ROW], "validation": [NO_CONFIDENCE, CNNDM]}

  monkeypatch.setattr(load_lib, "hf_dataset", fake_hf_dataset)
  out, stats = run("hf:")
  assert calls == [("openai/summarize_from_feedback", "comparisons")] and stats.records_read == 3
  # The published split field decides, not the hub's split names.
  assert [s for _, _, s in out] == ["train", "validation", "validation"]
  assert [c.meta["split"] for _, c, _ in out] == ["train", "valid1", "valid2"]
