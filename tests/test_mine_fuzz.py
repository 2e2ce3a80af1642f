"""Miners on mangled copies of the real dumps: truncations, byte flips, bad encodings and an oversize field.

Each run is a child process with a timeout (the bound on its time) that reports its own peak RSS (VmHWM).
The damaged copies are written to tmp_path with fixed seeds, so every case is the same on every run.
"""

from __future__ import annotations

import json
import lzma
import pathlib
import random
import re
import subprocess
import sys

import pytest

from hhh.data.mine import wikipedia
from hhh.data.mine.common import MineStats
from tests.conftest import REPO, SHARED_DATA, hhh_env

CARDANO = SHARED_DATA / "stackexchange" / "cardano.stackexchange.com"
EXCERPT = SHARED_DATA / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"
TIMEOUT_S = 180  # per child run; a clean one takes a few seconds
MAX_RSS_MB = 200  # per child run; the clean runs peak well under 100 MB

_CHILD = r"""
import importlib, json, sys
from hhh.data.mine.common import MineStats
name, path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mod = importlib.import_module(f"hhh.data.mine.{name}")
stats = MineStats(source=name)
out = {c.id: c.to_json() for _, c in mod.mine(path, mod.Options(**options), stats)}
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
json.dump({"out": out, "stats": stats.to_json(), "hwm_mb": hwm / 1024}, sys.stdout)
"""


def mine_in_child(name: str, path, **options) -> dict:
  proc = subprocess.run([sys.executable, "-c", _CHILD, name, str(path), json.dumps(options)], env=hhh_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert result["hwm_mb"] < MAX_RSS_MB, result["hwm_mb"]
  return result


def need(path):
  if not path.exists():
    pytest.skip(f"{path} not found: the real dumps are only in the development checkout")
  if not pathlib.Path("/proc/self/status").exists():
    pytest.skip("needs /proc/self/status for the child's peak RSS")
  return path


def flip(data: bytes, n: int, seed: int) -> tuple[bytes, list[int]]:
  """`n` bytes at seeded random positions, each replaced by a different random value."""
  rng = random.Random(seed)
  at = sorted(rng.sample(range(len(data)), n))
  out = bytearray(data)
  for i in at:
    out[i] = (out[i] + rng.randrange(1, 256)) % 256
  return bytes(out), at


def hit(ranges: list[tuple[int, int]], positions: list[int]) -> bool:
  return any(a <= p < b for a, b in ranges for p in positions)


# --- Stack Exchange ---------------------------------------------------------------------------------------------

def row_spans(data: bytes) -> dict[int, tuple[int, int, int | None]]:
  """Post id -> (start, end, parent id) of each <row> of a clean Posts.xml, read independently of the miner."""
  starts = [m.start() for m in re.finditer(rb"<row ", data)]
  spans = {}
  for a, b in zip(starts, starts[1:] + [data.rindex(b"</posts>")]):
    head = data[a:b]
    post_id = int(re.search(rb' Id="(\d+)"', head).group(1))
    parent = re.search(rb' ParentId="(\d+)"', head)
    spans[post_id] = (a, b, int(parent.group(1)) if parent else None)
  return spans


def question_rows(spans, question_id: str) -> list[tuple[int, int]]:
  qid = int(question_id.rsplit("/", 1)[-1])
  return [(a, b) for post_id, (a, b, parent) in spans.items() if post_id == qid or parent == qid]


@pytest.fixture(scope="module")
def se_clean(tmp_path_factory):
  need(CARDANO / "Posts.xml")
  return mine_in_child("stackexchange", CARDANO), (CARDANO / "Posts.xml").read_bytes()


def site(tmp_path, posts: bytes, votes: bytes | None = None):
  folder = tmp_path / "cardano.stackexchange.com"
  folder.mkdir()
  (folder / "Posts.xml").write_bytes(posts)
  if votes is None:
    (folder / "Votes.xml").symlink_to(CARDANO / "Votes.xml")
  else:
    (folder / "Votes.xml").write_bytes(votes)
  return folder


def test_se_one_non_utf8_byte_costs_one_post(se_clean, tmp_path):
  clean, data = se_clean
  # A 0xFF in the body of answer 197, one of Q4's four answers (ASCII there, so one byte is one character).
  row = data.index(b'<row Id="197" ')
  at = data.index(b"Body=", row) + 20
  assert data[at] < 0x80
  got = mine_in_child("stackexchange", site(tmp_path, data[:at] + b"\xff" + data[at + 1:]))
  stats = got["stats"]
  assert stats["skipped"]["bad_encoding"] == 1 and "truncated_xml" not in stats["skipped"]
  assert stats["first_skipped_at"]["bad_encoding"] == [f"Posts.xml byte {row}"]
  assert stats["records_read"] == 2630
  q4 = "stackexchange/cardano.stackexchange.com/4"
  assert got["out"][q4]["scores"] == [5.0, 2.0, -1.0]  # 25, 289 and 260 of the hand-worked (5, 2, 1, -1)
  assert {k: v for k, v in got["out"].items() if k != q4} == {k: v for k, v in clean["out"].items() if k != q4}


@pytest.mark.parametrize("seed", [1, 2])
def test_se_random_truncation_keeps_every_question_before_the_cut(se_clean, tmp_path, seed):
  clean, data = se_clean
  cut = random.Random(seed).randrange(len(data) // 10, len(data))
  got = mine_in_child("stackexchange", site(tmp_path, data[:cut]))
  assert got["stats"]["skipped"]["truncated_xml"] == 1
  spans = row_spans(data)
  whole = [k for k in clean["out"] if all(b <= cut for _, b in question_rows(spans, k))]
  assert whole and all(got["out"][k] == clean["out"][k] for k in whole)
  assert set(got["out"]) <= set(clean["out"])


def test_se_300_byte_flips_keep_the_intact_questions(se_clean, tmp_path):
  clean, data = se_clean
  flipped, at = flip(data, 300, seed=0)
  got = mine_in_child("stackexchange", site(tmp_path, flipped))
  spans = row_spans(data)
  intact = [k for k in clean["out"] if not hit(question_rows(spans, k), at)]
  same = [k for k in intact if got["out"].get(k) == clean["out"][k]]
  assert len(intact) > 100  # 300 flips in 3.1 MB leave most questions untouched
  assert len(same) >= 0.95 * len(intact), (len(same), len(intact))
  skipped = got["stats"]["skipped"]
  assert skipped.get("bad_encoding", 0) + skipped.get("malformed_row", 0) > 50


def test_se_votes_cut_at_a_third_never_mix_vote_counts(se_clean, tmp_path):
  clean, data = se_clean
  by_score = mine_in_child("stackexchange", CARDANO, use_votes=False)["out"]
  votes = (CARDANO / "Votes.xml").read_bytes()
  got = mine_in_child("stackexchange", site(tmp_path, data, votes[:len(votes) // 3]))
  note = got["stats"]["notes"]["votes"]
  assert note["complete"] is False and note["damage"] == {"truncated_xml": 1}
  assert got["stats"]["skipped"]["truncated_xml"] == 1
  # Each ranking is wholly by votes (as in the clean run) or wholly by Score (as without Votes.xml).
  from_votes = [k for k, c in got["out"].items() if c == clean["out"].get(k)]
  from_score = [k for k, c in got["out"].items() if c == by_score.get(k) and c != clean["out"].get(k)]
  assert len(from_votes) + len(from_score) == len(got["out"])
  assert from_score and from_votes and note["questions_scored_from_score"] >= len(from_score)
  # The cut falls in April-May 2021 votes; Q4's answers got votes later, so it is scored from Score.
  assert got["out"]["stackexchange/cardano.stackexchange.com/4"]["scores"] == [5.0, 2.0, 1.0, -1.0]


def _oversize_posts(data: bytes, body_mb: int) -> bytes:
  """The real Posts.xml with one extra answer to Q4, its body `body_mb` MB, put in the middle of the file."""
  at = data.index(b"<row ", len(data) // 2)
  row = (b'<row Id="999999" PostTypeId="2" ParentId="4" Score="50" Body="&lt;p&gt;' + b"x" * (body_mb << 20)
         + b'&lt;/p&gt;" />\r\n  ')
  return data[:at] + row + data[at:]


def test_se_a_30_mb_body_is_skipped_in_constant_memory(se_clean, tmp_path):
  clean, data = se_clean
  got = mine_in_child("stackexchange", site(tmp_path, _oversize_posts(data, 30)))
  assert got["stats"]["skipped"]["oversize_row"] == 1 and got["stats"]["records_read"] == 2631
  assert got["out"] == clean["out"]
  assert got["hwm_mb"] < clean["hwm_mb"] + 20  # the 30 MB row is never held


@pytest.mark.slow
def test_se_a_100_mb_body_is_skipped_in_constant_memory(se_clean, tmp_path):
  clean, data = se_clean
  got = mine_in_child("stackexchange", site(tmp_path, _oversize_posts(data, 100)))
  assert got["stats"]["skipped"]["oversize_row"] == 1 and got["out"] == clean["out"]
  assert got["hwm_mb"] < clean["hwm_mb"] + 20


# --- Wikipedia -------------------------------------------------------------------------------------------------

def revision_spans(data: bytes) -> dict[str, tuple[int, int]]:
  """Revision id -> (start, end) of each <revision> of a clean export, read independently of the miner."""
  starts = [m.start() for m in re.finditer(rb"<revision>", data)]
  ends = starts[1:] + [data.rindex(b"</page>")]
  return {re.search(rb"<id>(\d+)</id>", data[a:b]).group(1).decode(): (a, b) for a, b in zip(starts, ends)}


@pytest.fixture(scope="module")
def wiki_clean(tmp_path_factory):
  need(EXCERPT)
  plain = tmp_path_factory.mktemp("wiki") / "excerpt.xml"
  plain.write_bytes(lzma.open(EXCERPT).read())
  return mine_in_child("wikipedia", plain), plain.read_bytes()


@pytest.mark.parametrize("flips", [30, 300])
def test_wikipedia_byte_flips_keep_the_intact_reverts(wiki_clean, tmp_path, flips):
  clean, data = wiki_clean
  assert len(clean["out"]) == 60
  flipped, at = flip(data, flips, seed=flips)
  (tmp_path / "flipped.xml").write_bytes(flipped)
  got = mine_in_child("wikipedia", tmp_path / "flipped.xml")
  spans = revision_spans(data)
  # A comparison needs its revert R, the restored revision B and the reverted edit to be untouched.
  intact = [k for k, c in clean["out"].items()
            if not hit([spans[c["meta"]["revert"]], spans[c["meta"]["restored"]], spans[k.rsplit("/", 1)[-1]]], at)]
  same = [k for k in intact if got["out"].get(k) == clean["out"][k]]
  assert len(same) >= 0.9 * len(intact), (len(same), len(intact))
  assert len(intact) >= (40 if flips == 30 else 1)
  stats = got["stats"]
  assert stats["records_read"] >= 295 and "truncated_xml" not in stats["skipped"]
  assert stats["skipped"].get("bad_encoding", 0) + stats["skipped"].get("malformed_xml", 0) >= flips // 10


def test_wikipedia_oversize_revision_is_skipped_in_bounded_memory(tmp_path, monkeypatch):
  import tracemalloc
  monkeypatch.setattr(wikipedia, "MAX_REVISION_BYTES", 1 << 20)
  revs = [(1, "Cheese is good.", ""), (2, "Cheese is GROSS.", ""), (3, "Cheese is good.", "rv"),
          (4, "x" * (3 << 20), "huge"), (5, "Cheese is good.", "rv"), (6, "Cheese is bad.", ""),
          (7, "Cheese is good.", "rv")]
  body = "".join(f"<revision><id>{i}</id><comment>{c}</comment><text>{t}</text></revision>\n" for i, t, c in revs)
  path = tmp_path / "huge.xml"
  path.write_text(f"<mediawiki><page><title>Cheese</title><ns>0</ns><id>9</id>\n{body}</page></mediawiki>\n")
  stats = MineStats("wikipedia")
  tracemalloc.start()
  try:
    out = [c for _, c in wikipedia.mine(path, wikipedia.Options(), stats)]
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  # 2 and 6 are reverted; the 3 MB revision 4 is dropped unread, so 5 restores nothing (4 can never match).
  assert [c.id for c in out] == ["wikipedia/9/2", "wikipedia/9/6"]
  assert stats.skipped["oversize_revision"] == 1 and stats.records_read == 7
  assert stats.first_offsets["oversize_revision"] == [f"huge.xml byte {path.read_bytes().index(b'<revision><id>4')}"]
  assert peak < 3 << 20
