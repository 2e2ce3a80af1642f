"""Tests for hhh.data.mine.stackexchange: the real cardano dump, a hand-written dump, .7z archives, bad data."""

from __future__ import annotations

import math
import pathlib
import re
import tempfile
import xml.sax.saxutils

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hhh.data.mine import stackexchange as se
from hhh.data.mine.common import MineStats

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
CARDANO = SHARED_DATA / "stackexchange" / "cardano.stackexchange.com"
# Reasons that do not stand for one Posts.xml row each (see the module doc).
NOT_PER_ROW = {"truncated_xml", "malformed_vote", "archive_error"}


def run(path, options: se.Options | None = None) -> tuple[dict[str, se.Comparison], MineStats]:
  stats = MineStats(source="stackexchange")
  out = {}
  for key, c in se.mine(path, options or se.Options(), stats):
    assert key not in out
    out[key] = c
  return out, stats


def check_accounting(out: dict, stats: MineStats) -> None:
  """Every Posts.xml row is either in a comparison (question + its answers) or counted under one skip reason."""
  in_comparisons = sum(1 + c.k for c in out.values())
  per_row = sum(n for reason, n in stats.skipped.items() if reason not in NOT_PER_ROW)
  assert stats.records_read == in_comparisons + per_row
  assert stats.comparisons == len(out)
  assert "incomplete" not in stats.skipped


@pytest.fixture(scope="module")
def cardano():
  if not CARDANO.is_dir():
    pytest.skip("../shared/data not found: the real Stack Exchange dump is only in the development checkout")
  return CARDANO


@pytest.fixture(scope="module")
def cardano_mined(cardano):
  return run(cardano)


def answer_texts(posts_xml: pathlib.Path, ids: list[int]) -> list[str]:
  """The converted bodies of the given answers, read independently of the miner, in the given order."""
  import xml.etree.ElementTree as ET
  bodies = {}
  for _, elem in ET.iterparse(posts_xml):
    if elem.tag == "row" and int(elem.get("Id")) in ids:
      bodies[int(elem.get("Id"))] = elem.get("Body")
    elem.clear()
  return [se.html_to_text(bodies[i]) for i in ids]


# --- the real cardano.stackexchange.com dump, read in place ---------------------------------------------

# Worked by hand from Posts.xml and Votes.xml (up = VoteTypeId 2 rows, down = VoteTypeId 3 rows):
#   Q4 (accepted 25): 25 up 18 down 1 -> round(log2 19 = 4.25) + 1 = 5; 289 up 3 -> log2 4 = 2;
#      197 up 1 -> log2 2 = 1; 260 up 1 down 3 -> net -2 -> -1.
#   Q184 (accepted 196): 196 up 13 -> round(log2 14 = 3.81) + 1 = 5; 206 up 3 -> 2; 187 no votes -> 0;
#      186 down 4 -> -1.
#   Q735 (accepted 742): 742 up 12 -> round(log2 13 = 3.70) + 1 = 5; 741 up 11 -> round(log2 12 = 3.58) = 4
#      (the same 4 without the accepted bonus); 762 up 6 -> round(log2 7 = 2.81) = 3; 4005 -> 0.
#   Q50 (no accepted): 52 up 7 -> log2 8 = 3; 55 up 2 down 1 -> round(log2 3 = 1.58) = 2; 73 up 2 down 1 -> 2
#      (tie with 55: the lower id first); 69 up 1 down 1 -> net 0, not negative -> log2 2 = 1; 4386 -> 0.
#   Q94 (no accepted, 7 answers): 102 up 8 down 1 -> round(log2 9 = 3.17) = 3; 129 up 9 -> round(3.32) = 3;
#      315 up 2 -> 2; 152, 204, 328 up 1 -> 1; 327 -> 0.
HAND = {
    "4": ([25, 289, 197, 260], (5, 2, 1, -1), "What are the practical motivations for owning ADA crypto currency?"),
    "184": ([196, 206, 187, 186], (5, 2, 0, -1), "Probability of Minting a Block"),
    "735": ([742, 741, 762, 4005], (5, 4, 3, 0), "Why is there a 45 Billion coin cap for ADA?"),
    "50": ([52, 55, 73, 69, 4386], (3, 2, 2, 1, 0), "Where can I get the BIP39 file?"),
    "94": ([102, 129, 315, 152, 204, 328, 327], (3, 3, 2, 1, 1, 1, 0),
           "Where to find current transactions per second statistic?"),
}


@pytest.mark.parametrize("qid", sorted(HAND))
def test_cardano_hand_computed_questions(cardano, cardano_mined, qid):
  out, _ = cardano_mined
  ids, scores, title = HAND[qid]
  c = out[qid]
  assert c.id == f"stackexchange/cardano.stackexchange.com/{qid}"
  assert c.source == "stackexchange"
  assert c.scores == tuple(float(s) for s in scores)
  assert c.context.startswith(title + "\n\n")
  assert list(c.responses) == answer_texts(cardano / "Posts.xml", ids)


def test_cardano_texts_are_readable(cardano_mined):
  out, _ = cardano_mined
  assert out["4"].responses[0].startswith("This is very subjective and can only be answered")
  assert out["184"].responses[3].startswith("It depends on a few parameters: 1. Transaction fees")
  # 551's question keeps its Haskell code as fenced blocks and its bullet list.
  ctx = out["551"].context
  assert "```\n:: (e -> Contract w s e' a)-> Contract w s e a -> Contract w s e' a\n```" in ctx
  assert "\n- a function which takes error" in ctx
  for c in out.values():
    assert "&lt;" not in c.context and "<p>" not in c.context
    assert all(r.strip() and "<p>" not in r for r in c.responses)
    # Blank lines collapse in prose; code blocks keep theirs.
    assert "\n\n\n" not in re.sub(r"(`{3,})\n.*?\n\1", "CODE", c.context, flags=re.S)


def test_cardano_totals(cardano_mined):
  out, stats = cardano_mined
  # SOURCES.md 5a: 2630 rows = 1042 questions + 1496 answers + 92 other; 379 questions have >= 2 answers.
  assert stats.records_read == 2630
  assert stats.skipped["other_post_type"] == 92
  # One of those 379 (4321) loses its community-wiki answer 4327 and is left with one.
  assert stats.skipped["community_wiki"] == 1 and stats.first_offsets["community_wiki"] == [4327]
  assert "4321" not in out
  # 378 questions keep >= 2 answers; in 55 of them every answer has the same score, which ranks nothing.
  assert stats.skipped["too_few_answers"] == 1042 - 378
  assert stats.skipped["all_tied"] == 55 and len(out) == stats.comparisons == 378 - 55
  # The lone answers of too_few_answers questions (+ 4321's other) are 564; the tied questions' answers 115.
  assert stats.skipped["question_dropped"] == 564 + 115
  assert dict(stats.skipped) == {"other_post_type": 92, "community_wiki": 1, "too_few_answers": 664,
                                 "all_tied": 55, "question_dropped": 679}
  ks = [c.k for c in out.values()]
  assert sum(ks) == 1496 - 1 - 564 - 115 and max(ks) == 7 and min(ks) == 2
  check_accounting(out, stats)
  for c in out.values():
    assert len(set(c.scores)) >= 2  # no tie-only ranking
    assert list(c.scores) == sorted(c.scores, reverse=True)
    assert all(s == -1 or s >= 0 for s in c.scores)


def test_cardano_max_answers_keeps_the_top(cardano, cardano_mined):
  out, stats = run(cardano, se.Options(max_answers=4, min_score_gap=2))
  assert out["94"].scores == (3, 3, 2, 1)
  assert out["94"].responses == cardano_mined[0]["94"].responses[:4]
  assert out["50"].scores == (3, 2, 2, 1)  # 4386 (0) is the one left out
  assert stats.first_offsets["over_max_answers"][0] == 50  # the first question with more than 4 answers
  assert "735" in out and "4" in out
  assert all(c.scores[0] - c.scores[-1] >= 2 and c.k <= 4 for c in out.values())
  check_accounting(out, stats)


def test_cardano_without_votes_uses_score_attribute(cardano, tmp_path):
  (tmp_path / "cardano.stackexchange.com").mkdir()
  (tmp_path / "cardano.stackexchange.com" / "Posts.xml").symlink_to(cardano / "Posts.xml")
  out, stats = run(tmp_path / "cardano.stackexchange.com")
  # Q50 by Score (net votes as "upvotes"): 52 Score 7 -> 3; 55 Score 1 -> 1; 73 Score 1 -> 1; 69 Score 0 -> 0;
  # 4386 Score 0 -> 0. Votes.xml gave 55 and 73 two upvotes (2) and 69 one (1); the order happens to stay.
  assert out["50"].scores == (3, 1, 1, 0, 0)
  assert list(out["50"].responses) == answer_texts(cardano / "Posts.xml", [52, 55, 73, 69, 4386])
  # Q4: 25 Score 17 -> round(log2 18 = 4.17) + 1 = 5; 289 Score 3 -> 2; 197 Score 1 -> 1; 260 Score -2 -> -1.
  assert out["4"].scores == (5, 2, 1, -1)
  assert out["4"].id == "stackexchange/cardano.stackexchange.com/4"
  # By Score one more question ties throughout than by votes (56, not 55).
  assert len(out) == 322 and dict(stats.skipped) == {"other_post_type": 92, "community_wiki": 1,
                                                      "too_few_answers": 664, "all_tied": 56,
                                                      "question_dropped": 682}
  assert all(len(set(c.scores)) >= 2 for c in out.values())
  # The same via the option, with Votes.xml present.
  out2, _ = run(cardano, se.Options(use_votes=False))
  assert out2 == out


def test_cardano_truncated_posts(cardano, tmp_path):
  data = (cardano / "Posts.xml").read_bytes()
  site = tmp_path / "cardano.stackexchange.com"
  site.mkdir()
  (site / "Posts.xml").write_bytes(data[:len(data) // 2])
  (site / "Votes.xml").symlink_to(cardano / "Votes.xml")
  out, stats = run(site)
  full, _ = run(cardano)
  assert stats.skipped["truncated_xml"] == 1
  # Reported at the byte where the cut row starts.
  assert stats.first_offsets["truncated_xml"] == [f"Posts.xml byte {data.rfind(b'<row', 0, len(data) // 2)}"]
  assert 0 < stats.records_read < 2630 and 100 < len(out) < 323
  assert set(out) <= set(full)
  # The cut falls in row 2518; Q4, Q184 and Q94 have all their answers before it, Q50 and Q735 lose one each.
  for qid in ("4", "184", "94"):
    assert out[qid] == full[qid]
  assert out["50"].responses == full["50"].responses[:4]  # 4386 is gone
  assert out["735"].scores == (5, 4, 3)  # 4005 is gone
  check_accounting(out, stats)


# --- a small hand-written dump ---------------------------------------------------------------------------

def attrs(**kw) -> str:
  return " ".join(f"{k}={xml.sax.saxutils.quoteattr(str(v), {chr(10): '&#xA;'})}" for k, v in kw.items())


def row(**kw) -> str:
  return f"  <row {attrs(**kw)} />"


SMALL_POSTS = "\n".join([
    '<?xml version="1.0" encoding="utf-8"?>',
    "<posts>",
    # Q1: a title with &; a body with inline code and entities escaped twice (XML, then HTML).
    row(Id=1, PostTypeId=1, AcceptedAnswerId=3, Score=5, Title="Sort a list & keep it?",
        Body="<p>I have <code>xs</code> &amp; want it&nbsp;sorted.</p>"),
    row(Id=2, PostTypeId=2, ParentId=1, Score=3,
        Body="<p>Use sorted:</p>\n<pre><code>ys = sorted(xs)\nif a &lt; b:\n\n\n    pass\n</code></pre>\n<p>Done.</p>"),
    row(Id=3, PostTypeId=2, ParentId=1, Score=0,
        Body="<p>Accepted:</p><ul><li>first</li><li>second &gt; third<br>more</li></ul>"),
    row(Id=4, PostTypeId=2, ParentId=1, Score=-1, Body="<p>Bad.</p>"),
    row(Id=5, PostTypeId=2, ParentId=1, Score=9, CommunityOwnedDate="2021-01-01T00:00:00.000", Body="<p>wiki</p>"),
    row(Id=6, PostTypeId=4, Score=0, Body="a tag excerpt"),
    row(Id=7, PostTypeId=1, Score=0, Title="Lonely", Body="<p>q</p>"),
    row(Id=8, PostTypeId=2, ParentId=7, Score=2, Body="<p>only answer</p>"),
    row(Id=9, PostTypeId=1, Score=1, Title="Wiki question", CommunityOwnedDate="2021-01-01", Body="<p>cw</p>"),
    row(Id=10, PostTypeId=2, ParentId=9, Score=1, Body="<p>a</p>"),
    row(Id=11, PostTypeId=2, ParentId=9, Score=1, Body="<p>b</p>"),
    # Q20's answers come before it.
    row(Id=13, PostTypeId=2, ParentId=20, Score=0, Body="<p>late &quot;zero&quot;</p>"),
    row(Id=14, PostTypeId=2, ParentId=20, Score=2, Body="<p>two</p>"),
    row(Id=20, PostTypeId=1, Score=1, Title="Answers first", Body="<h2>Why</h2><blockquote><p>quoted</p></blockquote>"),
    row(Id=21, PostTypeId=2, ParentId=999, Score=1, Body="<p>orphan</p>"),
    row(Id=22, PostTypeId=2, Score=1, Body="<p>no parent</p>"),
    row(Id="x", PostTypeId=2, ParentId=1, Score=1, Body="<p>bad id</p>"),
    row(Id=23, PostTypeId=2, ParentId=1, Score="1e3", Body="<p>bad score</p>"),
    row(Id=24, PostTypeId=2, ParentId=1, Score=1, Body=""),
    "  <oops Id=\"25\" />",
    "</posts>",
    ""])

SMALL_VOTES = "\n".join(
    ['<?xml version="1.0" encoding="utf-8"?>', "<votes>"]
    # 2: three up -> 2. 3: none, accepted -> 1. 4: one up, two down -> -1. 14: two up -> round(1.58) = 2.
    # 8: one up. 1: a question vote (ignored). 13: a "favourite" (type 5, ignored).
    + [row(Id=i, PostId=p, VoteTypeId=t) for i, (p, t) in enumerate(
        [(2, 2), (2, 2), (2, 2), (4, 2), (4, 3), (4, 3), (14, 2), (14, 2), (8, 2), (1, 2), (13, 5)], 1)]
    + ['  <row Id="99" PostId="two" VoteTypeId="2" />', "</votes>", ""])

SMALL_EXPECTED = {
    "1": se.Comparison(
        context="Sort a list & keep it?\n\nI have `xs` & want it sorted.",  # &nbsp; is a plain space
        responses=("Use sorted:\n\n```\nys = sorted(xs)\nif a < b:\n\n\n    pass\n```\n\nDone.",
                   "Accepted:\n\n- first\n- second > third\n  more",
                   "Bad."),
        scores=(2.0, 1.0, -1.0), source="stackexchange", id="stackexchange/small.stackexchange.com/1"),
    "20": se.Comparison(
        context="Answers first\n\nWhy\n\n> quoted", responses=("two", 'late "zero"'), scores=(2.0, 0.0),
        source="stackexchange", id="stackexchange/small.stackexchange.com/20"),
}
SMALL_SKIPS = {"community_wiki": 2, "other_post_type": 1, "too_few_answers": 1, "question_dropped": 3,
               "no_question": 1, "missing_attribute": 1, "invalid_number": 2, "deleted": 1, "malformed_row": 1,
               "malformed_vote": 1}


def write_small(folder: pathlib.Path, votes: bool = True) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "Posts.xml").write_text(SMALL_POSTS, encoding="utf-8")
  if votes:
    (folder / "Votes.xml").write_text(SMALL_VOTES, encoding="utf-8")
  return folder


def test_small_dump(tmp_path):
  out, stats = run(write_small(tmp_path / "small.stackexchange.com"))
  assert out == SMALL_EXPECTED
  assert dict(stats.skipped) == SMALL_SKIPS
  assert stats.records_read == SMALL_POSTS.count("<row ") + 1
  assert stats.first_offsets["invalid_number"] == ["row 17", 23]
  assert stats.first_offsets["community_wiki"] == [5, 9]
  check_accounting(out, stats)


def test_small_dump_without_votes(tmp_path):
  out, stats = run(write_small(tmp_path / "small.stackexchange.com", votes=False))
  # Score attributes: 2 -> log2 4 = 2; 3 -> 0 + accepted = 1; 4 -> -1; 14 -> round(log2 3) = 2; 13 -> 0.
  assert out == SMALL_EXPECTED
  assert "malformed_vote" not in stats.skipped


def test_small_dump_posts_xml_path(tmp_path):
  folder = write_small(tmp_path / "small.stackexchange.com")
  out, _ = run(folder / "Posts.xml")
  assert out == SMALL_EXPECTED


def test_small_dump_7z(tmp_path, monkeypatch):
  import py7zr
  folder = write_small(tmp_path / "src")
  archive = tmp_path / "small.stackexchange.com.7z"
  with py7zr.SevenZipFile(archive, "w") as z:
    z.write(folder / "Posts.xml", "Posts.xml")
    z.write(folder / "Votes.xml", "Votes.xml")
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  out, stats = run(archive)
  assert out == SMALL_EXPECTED
  assert dict(stats.skipped) == SMALL_SKIPS
  assert list(scratch.iterdir()) == []  # the extraction folder is gone
  # A generator closed early cleans up too.
  it = se.mine(archive, se.Options(), MineStats(source="stackexchange"))
  next(it)
  it.close()
  assert list(scratch.iterdir()) == []


def test_split_table_7z(tmp_path):
  """stackoverflow.com-Posts.7z + stackoverflow.com-Votes.7z: the site is the prefix, votes come from the sibling."""
  import py7zr
  folder = write_small(tmp_path / "src")
  for table in ("Posts", "Votes"):
    with py7zr.SevenZipFile(tmp_path / f"small.stackexchange.com-{table}.7z", "w") as z:
      z.write(folder / f"{table}.xml", f"{table}.xml")
  out, _ = run(tmp_path / "small.stackexchange.com-Posts.7z")
  assert out == SMALL_EXPECTED


def test_truncated_small_dump(tmp_path):
  folder = write_small(tmp_path / "small.stackexchange.com")
  text = SMALL_POSTS
  cut = text.index('<row Id="6"') + 10  # mid-row, after all of Q1's rows
  (folder / "Posts.xml").write_text(text[:cut], encoding="utf-8")
  out, stats = run(folder)
  assert out == {"1": SMALL_EXPECTED["1"]}
  assert stats.skipped["truncated_xml"] == 1
  row6 = text.index('<row Id="6"')  # ASCII so far: characters are bytes
  assert stats.first_offsets["truncated_xml"] == [f"Posts.xml byte {row6}"]
  check_accounting(out, stats)
  # Votes.xml cut off too: the votes before the cut still count.
  (folder / "Votes.xml").write_text(SMALL_VOTES[:SMALL_VOTES.index('PostId="4"')], encoding="utf-8")
  out, stats = run(folder)
  # Answer 4 lost its votes (counted 0 up, 0 down against Score -1), so Q1 is scored from Score throughout:
  # the same ranking as SMALL_EXPECTED, not answer 4 at 0 as if nobody had voted.
  assert out["1"].scores == (2.0, 1.0, -1.0)
  assert stats.skipped["truncated_xml"] == 2
  assert stats.notes["votes"]["complete"] is False and stats.notes["votes"]["damage"] == {"truncated_xml": 1}
  assert stats.notes["votes"]["questions_scored_from_score"] == 1


def test_garbage_appended_and_empty_files(tmp_path):
  folder = write_small(tmp_path / "small.stackexchange.com")
  with open(folder / "Posts.xml", "ab") as f:
    f.write(b"\x00\xff garbage <row")
  out, stats = run(folder)
  assert out == SMALL_EXPECTED and stats.skipped["truncated_xml"] == 1
  (folder / "Posts.xml").write_bytes(b"")
  out, stats = run(folder)
  assert out == {} and stats.records_read == 0 and stats.skipped["truncated_xml"] == 1


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    se.mine(tmp_path / "nope", se.Options(), MineStats(source="stackexchange"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no Posts.xml"):
    se.mine(tmp_path / "empty", se.Options(), MineStats(source="stackexchange"))
  (tmp_path / "bad.7z").write_bytes(b"not an archive")
  with pytest.raises(ValueError, match="not a readable 7z archive"):
    se.mine(tmp_path / "bad.7z", se.Options(), MineStats(source="stackexchange"))
  with pytest.raises(ValueError):
    se.Options(min_answers=3, max_answers=2)


def test_memory_is_flat(tmp_path):
  """Rows are freed as they stream past: peak memory stays far below the file (11 MB here)."""
  import tracemalloc
  folder = tmp_path / "big.stackexchange.com"
  folder.mkdir()
  with open(folder / "Posts.xml", "w", encoding="utf-8") as f:
    f.write("<posts>\n" + row(Id=1, PostTypeId=1, Title="t", Body="<p>q</p>") + "\n")
    for i in range(1000):  # big rows: caught if a row's attributes were kept
      f.write(row(Id=10 + i, PostTypeId=4, Score=0, Body="x" * 10000) + "\n")
    for i in range(30000):  # many rows: caught if emptied rows piled up under the root (3.3 MB)
      f.write(f'<row Id="{i + 5000}" PostTypeId="5" Body="x" />\n')
    f.write(row(Id=2, PostTypeId=2, ParentId=1, Score=1, Body="<p>a</p>") + "\n")
    f.write(row(Id=3, PostTypeId=2, ParentId=1, Score=0, Body="<p>b</p>") + "\n</posts>\n")
  tracemalloc.start()
  try:
    out, stats = run(folder)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert (folder / "Posts.xml").stat().st_size > 11_000_000
  assert peak < 2_000_000
  assert out["1"].responses == ("a", "b") and stats.skipped["other_post_type"] == 31000


def test_answer_score():
  assert [se.answer_score(n, n, False) for n in (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 22, 23)] == [
      0, 1, 2, 2, 2, 3, 3, 3, 3, 4, 5, 5]
  assert se.answer_score(3, 3, True) == 3
  assert se.answer_score(5, -1, True) == -1  # negative net overrides accepted
  assert se.answer_score(1, 0, False) == 1  # net 0 is not negative
  # Half-up never differs from an exact rounding of log2: 1 + n is never 2**(k + 1/2).
  for n in range(2000):
    assert se.answer_score(n, n, False) == ((n + 1) ** 2).bit_length() // 2


def test_html_to_text():
  assert se.html_to_text("<p>a &amp;amp; b</p><p>c</p>\n\n\n<p></p><p>d</p>") == "a &amp; b\n\nc\n\nd"
  assert se.html_to_text("<ol><li>one<ul><li>inner</li></ul></li><li>two</li></ol>") == "1. one\n  - inner\n2. two"
  assert se.html_to_text("<pre>x = '```'\n</pre>") == "````\nx = '```'\n````"
  assert se.html_to_text("<p><img src='a.png' alt='enter image description here'></p>") == "[image]"
  assert se.html_to_text("<pre><code>unclosed\n  indent") == "```\nunclosed\n  indent\n```"
  assert se.html_to_text("<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>") == (
      "a | b\n1 | 2")
  assert se.html_to_text("<p>x</p><blockquote><p>a</p><pre>b</pre></blockquote><p>y</p>") == (
      "x\n\n> a\n>\n> ```\n> b\n> ```\n\ny")
  # Paragraphs inside an item make a loose list: indented continuation after a blank line.
  assert se.html_to_text("<ul><li><p>one</p><blockquote>q</blockquote></li><li>two</li></ul>") == (
      "- one\n\n  q\n\n- two")


# --- fuzz -------------------------------------------------------------------------------------------------

_NAMES = ["Id", "PostTypeId", "ParentId", "Score", "Body", "Title", "AcceptedAnswerId", "CommunityOwnedDate",
          "DeletionDate"]
_xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)  # always well-formed
_value = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", " ", "1e3", "0x1", "1_0", "9" * 40]),
                   _xml_text)
_body = st.one_of(_xml_text, st.sampled_from(["<p>a &amp; b</p>", "<pre><code>x\n</code>", "<img src=x>", "<p></p>",
                                             "&lt;", "<ul><li><p>", "</pre></blockquote>"]))
_answer = st.builds(lambda a, q, s, body: row(Id=a, PostTypeId=2, ParentId=q, Score=s, Body=body),
                    st.integers(5, 40), st.integers(1, 4), st.integers(-5, 50), _body)
_question = st.builds(
    lambda q, acc, title, body: row(Id=q, PostTypeId=1, AcceptedAnswerId=acc, Title=title, Body=body),
    st.integers(1, 4), st.integers(0, 40), st.sampled_from(["t", " ", "t & <u>"]), _body)


def _thread_rows(q, answers, accepted, first):
  rows = [row(Id=q, PostTypeId=1, AcceptedAnswerId=accepted, Title="t", Body="<p>q</p>")]
  rows += [row(Id=a, PostTypeId=2, ParentId=q, Score=s, Body=body) for a, s, body in answers]
  return rows[1:] + rows[:1] if first else rows


# A question with 2-4 answers, its rows before or after theirs: these usually make comparisons.
_thread = st.builds(_thread_rows, st.integers(1, 4),
                    st.lists(st.tuples(st.integers(5, 40), st.integers(-5, 50),
                                       st.one_of(st.sampled_from(["<p>x</p>", "y &amp; z"]), _body)),
                             min_size=2, max_size=4, unique_by=lambda t: t[0]),
                    st.integers(0, 40), st.booleans())
_random_row = st.dictionaries(st.sampled_from(_NAMES), _value, max_size=8).map(lambda d: row(**d))
_garbage = st.sampled_from(["<row>", "<x/>", "<row Id='1'><row/></row>", "garbage & <", "<!-- c -->",
                            '<row Id="5" Body="\x01" />', "</posts>", "<posts>"])
_vote = st.builds(lambda p, t: row(PostId=p, VoteTypeId=t),
                  st.one_of(st.integers(1, 40).map(str), _value), st.sampled_from(["2", "2", "3", "5", "x"]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.one_of(_thread, _answer.map(lambda r: [r]), _question.map(lambda r: [r]),
                                 _random_row.map(lambda r: [r])), max_size=12),
       garbage=st.lists(st.tuples(st.integers(0, 30), _garbage), max_size=1),
       votes=st.lists(_vote, max_size=30), tail=st.one_of(st.just(b""), st.binary(min_size=1, max_size=20)),
       max_answers=st.sampled_from([0, 2, 3]), gap=st.sampled_from([0.0, 1.0]), use_votes=st.booleans())
def test_fuzz_never_raises(items, garbage, votes, tail, max_answers, gap, use_votes):
  rows = [r for item in items for r in item]
  for at, junk in garbage:
    rows.insert(at, junk)
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp) / "fuzz.stackexchange.com"
    folder.mkdir()
    (folder / "Posts.xml").write_bytes(("<posts>\n" + "\n".join(rows) + "\n</posts>\n").encode() + tail)
    (folder / "Votes.xml").write_bytes(("<votes>" + "".join(votes) + "</votes>").encode() + tail[:3])
    options = se.Options(max_answers=max_answers, min_score_gap=gap, use_votes=use_votes)
    out, stats = run(folder, options)
    check_accounting(out, stats)
    for key, c in out.items():
      assert c.id == f"stackexchange/fuzz.stackexchange.com/{key}"
      assert 2 <= c.k and (max_answers == 0 or c.k <= max_answers)
      assert list(c.scores) == sorted(c.scores, reverse=True)
      assert c.scores[0] - c.scores[-1] >= gap
      assert all(r.strip() for r in c.responses) and c.context.strip()
      assert all(s == -1 or (s >= 0 and s == math.floor(s)) for s in c.scores)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/&;#pre code li ul ol br blockquote \n\"'=x\x01")), max_size=80))
def test_fuzz_html_to_text(body):
  text = se.html_to_text(body)
  assert isinstance(text, str) and "\x01" not in text
