"""The Reddit miner: real Pushshift data read in place, hand-written edge cases, and a fuzz that must never raise."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hhh.data.mine.common import MineStats
from hhh.data.mine.reddit import Options, mine

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
REDDIT = DATA / "reddit"
RC = REDDIT / "RC_2005-12.zst"
RC_PLAIN = REDDIT / "RC_2005-12.ndjson"
RS = REDDIT / "RS_2019-10_AskWomen.zst"


def need(*paths: pathlib.Path):
  if not all(p.exists() for p in paths):
    pytest.skip("../shared/data not found: the real Reddit dump is only in the development checkout")


def run(path, options: Options = Options()) -> tuple[list, MineStats]:
  stats = MineStats("")
  out = list(mine(path, options, stats))
  return out, stats


def by_id(out) -> dict:
  return {c.id: (key, c) for key, c in out}


def assert_accounted(out, stats: MineStats):
  # Every skip reason counts comments, so each line read is either skipped once or a response.
  extra = stats.skipped["corrupt_file"] + sum(v for k, v in stats.skipped.items() if k.startswith("submission_"))
  assert stats.records_read == sum(stats.skipped.values()) - extra + sum(c.k for _, c in out)
  assert stats.comparisons == len(out)


def comment(id, parent, body, score, author="alice", link="t3_post", **extra) -> dict:
  return {"id": id, "parent_id": parent, "link_id": link, "body": body, "score": score, "author": author,
          "subreddit": "test", **extra}


def write_ndjson(path: pathlib.Path, rows) -> pathlib.Path:
  lines = [r if isinstance(r, (str, bytes)) else json.dumps(r) for r in rows]
  path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
  return path


# ---------------------------------------------------------------------------------------------------------------
# Real data: RC_2005-12 (1075 comments, all of December 2005).


def test_real_parent_with_six_replies():
  need(RC)
  out, _ = run(RC)
  key, c = by_id(out)["reddit/t1_c1895"]
  assert key == "t3_21259"
  assert c.source == "reddit"
  # c1906 and c1945 tie at 2: the older id comes first.
  assert c.scores == (17.0, 11.0, 4.0, 2.0, 2.0, 0.0)
  assert [r[:30] for r in c.responses] == [
      "I worry about something like t", "I discussed Paul Graham's work", "No, you're not the only one, I",
      "I agree with you. BUT things w", "I don't think work has to be b", "Part of the problem here might"]
  # No submissions dump for 2005-12: the context is the subreddit and the parent comment (itself top-level).
  assert c.context.startswith("Subreddit: r/reddit.com\n\nParent comment:\nyou know, I like Paul Grahams stuff.")
  assert c.context.endswith("Am I the only one who feels like this?")
  assert "Title:" not in c.context


def test_real_context_chain_and_unescaping():
  need(RC)
  out, _ = run(RC)
  comps = by_id(out)
  # c2286 replies to c2285: both comments appear, oldest first, only the nearest is the parent. c2351 and c2355
  # tie at 2: the older id comes first.
  _, c = comps["reddit/t1_c2286"]
  assert c.scores == (4.0, 2.0, 2.0)
  assert [r[:20] for r in c.responses] == ["I think rather than ", "So next time I lip o", "Your comparison is i"]
  # The default depth 4 reaches the top-level comment: three ancestors, then the parent.
  assert c.context.startswith("Subreddit: r/reddit.com\n\nComment:\nThe guy who wrote this is stupid.")
  assert c.context.count("\n\nComment:\n") == 3 and c.context.count("\n\nParent comment:\n") == 1
  _, parent = c.context.split("\n\nParent comment:\n")
  assert parent.startswith('You say "This probably sounds nasty') and parent.endswith("choose your battles wisely.")
  # c1844: its "[deleted]" reply is gone, the "&gt;" quote is unescaped and CRLF normalised.
  _, c = comps["reddit/t1_c1844"]
  assert c.scores == (9.0, 3.0, 2.0, -6.0)
  assert c.responses[1].startswith("Not to troll")
  assert c.responses[2].startswith("> not sure why I care if a story about some idiotic Italian magistrates\n\nIt")
  assert all("[deleted]" not in r and "\r" not in r and "&gt;" not in r for _, c in out for r in c.responses)
  # max_context_depth=1 keeps only the parent.
  out1, _ = run(RC, Options(max_context_depth=1))
  short = by_id(out1)["reddit/t1_c2286"][1].context
  assert short.startswith("Subreddit: r/reddit.com\n\nParent comment:\nYou say") and "Comment:" not in short


def test_real_totals():
  need(RC)
  out, stats = run(RC)
  assert stats.source == "reddit"
  assert stats.records_read == 1075
  assert stats.comparisons == len(out) == 17
  assert sum(c.k for _, c in out) == 42
  assert dict(stats.skipped) == {"deleted": 105, "removed": 15, "too_short": 14, "duplicate_body": 2,
                                 "no_siblings": 475, "all_tied": 47, "karma_gap": 88, "no_context": 285,
                                 "parent_deleted": 2}
  assert_accounted(out, stats)
  # SOURCES.md: 172 parents have >= 2 replies, so at most that many comparisons; ids are unique within a file.
  assert len({c.id for _, c in out}) == len(out) <= 172
  for key, c in out:
    assert key.startswith("t3_") and c.id.startswith("reddit/t1_")
    assert list(c.scores) == sorted(c.scores, reverse=True) and c.scores[0] - c.scores[-1] >= 2
    assert len(set(c.scores)) >= 2
    assert 2 <= c.k <= 8 and all(10 <= len(r) <= 4000 for r in c.responses)
  assert stats.first_offsets["deleted"][0] == f"{RC}:4"


def test_real_formats_and_folder_agree(tmp_path):
  need(RC, RC_PLAIN)
  zst, _ = run(RC)
  plain, _ = run(RC_PLAIN)
  assert zst == plain
  folder = tmp_path / "dumps"
  folder.mkdir()
  (folder / RC.name).symlink_to(RC)  # read in place, never copied
  (folder / "README.txt").write_text("not a dump")  # ignored: not a dump suffix
  in_folder, stats = run(folder)
  assert in_folder == zst and stats.records_read == 1075


def test_real_options_change_totals():
  need(RC)
  base, _ = run(RC)
  loose, _ = run(RC, Options(min_karma_gap=1))
  assert len(loose) > len(base)
  pairs, _ = run(RC, Options(max_siblings=2))
  assert len(pairs) == len(base) and all(c.k == 2 for _, c in pairs)
  # Best versus worst: the top and the lowest of each full ranking.
  full = {c.id: c for _, c in base}
  for _, c in pairs:
    assert c.scores == (full[c.id].scores[0], full[c.id].scores[-1])


@pytest.mark.parametrize("options, digest", [
    (Options(), "60a3769cf7be6d6569474fff988d76123720219b2a1ff11c1589af06f6716b44"),
    (Options(min_karma_gap=0, min_length=1, max_length=500, max_siblings=2, max_context_depth=2,
             include_subreddit=False), "da0548bae612a81d62d774ef52d41b2d02a2bb0b04613047cd53e65dd9a51fe4"),
])
def test_real_output_pinned(options, digest):
  # Every comparison in order and every count and first-skip place, as the miner wrote them before its speed-up:
  # a faster miner must not change one byte. The dump's path is left out, so the digest holds in any checkout.
  need(RC_PLAIN)
  stats = MineStats("")
  h = hashlib.sha256()
  for key, c in mine(RC_PLAIN, options, stats):
    h.update((json.dumps([key, c.to_json()], sort_keys=True) + "\n").encode())
  h.update(json.dumps(stats.to_json(), sort_keys=True).replace(json.dumps(str(RC_PLAIN))[1:-1], "RC").encode())
  assert h.hexdigest() == digest


def test_real_submissions_reader(tmp_path):
  need(RS)
  rows = [
      comment("a1", "t3_dbl9c5", "First answer to the question.", 10, link="t3_dbl9c5"),
      comment("a2", "t3_dbl9c5", "Second answer to the question.", 1, link="t3_dbl9c5"),
      comment("b1", "t3_dc5fli", "An answer for the other post.", 5, link="t3_dc5fli"),
      comment("b2", "t3_dc5fli", "A weaker answer for that post.", 0, link="t3_dc5fli"),
      comment("c1", "t3_nothere", "No title is known for this one.", 5, link="t3_nothere"),
      comment("c2", "t3_nothere", "So these are skipped entirely.", 0, link="t3_nothere"),
  ]
  path = write_ndjson(tmp_path / "RC_test.ndjson", rows)
  out, stats = run(path, Options(submissions=str(RS)))
  comps = by_id(out)
  assert set(comps) == {"reddit/t3_dbl9c5", "reddit/t3_dc5fli"}
  assert comps["reddit/t3_dbl9c5"][1].context == (
      "Subreddit: r/test\n\nTitle: What happened when you found someone on Reddit that you know offline?\n"
      "How did you discover it was someone you knew offline? Did you confront them? Did you discover something"
      " about them? Did your offline relationship change?")
  # "[removed]" selftext is left out; "&amp;" in the title is unescaped.
  assert comps["reddit/t3_dc5fli"][1].context == "Subreddit: r/test\n\nTitle: Married Woman & Masturbating"
  assert stats.skipped["no_context"] == 2
  assert_accounted(out, stats)


# ---------------------------------------------------------------------------------------------------------------
# Hand-written cases.


def small_dump(tmp_path) -> pathlib.Path:
  rows = [
      comment("p1", "t3_post", "What is the best way to learn a language?", 50),      # 1: parent, alone
      comment("r1", "t1_p1", "Immersion: live where it is spoken.", 30),               # 2
      comment("r2", "t1_p1", "[deleted]", 99),                                          # 3: deleted
      comment("r3", "t1_p1", "[removed]", 99),                                          # 4: removed
      comment("r4", "t1_p1", "I am a bot, this action was performed.", 99, author="AutoModerator"),  # 5
      comment("r5", "t1_p1", "Beep boop, here is a summary of it.", 99, author="summary_bot"),      # 6
      "{not json",                                                                      # 7: invalid JSON
      comment("r6", "t1_p1", "ok", 40),                                                 # 8: too short
      comment("r7", "t1_p1", "x" * 201, 40),                                            # 9: too long
      comment("r8", "t1_p1", "Apps with spaced repetition every day.", 3),              # 10
      comment("r9", "t1_p1", "Read children's books, then novels.", 12, author="[deleted]"),  # 11: kept
      comment("q1", "t1_p1", "Only a slight difference here.", 7),                     # 12: replies to q1 ...
      comment("s1", "t1_q1", "Agreed, it is only slight.", 5),                         # 13
      comment("s2", "t1_q1", "Slightly better, I'd say so.", 6),                       # 14: ... gap 1 < 2
      comment("t1", "t3_post", "Top-level reply without title.", 9),                   # 15
      comment("t2", "t3_post", "Another top-level one here.", 1),                      # 16: no_context (with p1)
      comment("u1", "t1_gone", "Reply to a comment from last month.", 9),              # 17
      comment("u2", "t1_gone", "Another reply to that comment.", 1),                   # 18: parent_missing
      {"id": "v1", "parent_id": "t1_p1", "link_id": "t3_post", "score": 3},            # 19: no body
      comment("v2", "t1_p1", "A score that is not a number.", "many"),                 # 20: bad score
      comment("r1", "t1_p1", "Same id again, later line.", 1),                         # 21: duplicate
      b'{"id": "w1", "body": "caf\xe9"}',                                               # 22: invalid UTF-8
      "[1, 2, 3]",                                                                      # 23: not an object
  ]
  return write_ndjson(tmp_path / "RC_small.ndjson", rows)


def test_small_dump_filters(tmp_path):
  path = small_dump(tmp_path)
  out, stats = run(path, Options(max_length=200))
  assert len(out) == 1
  key, c = out[0]
  assert key == "t3_post" and c.id == "reddit/t1_p1"
  assert c.responses == ("Immersion: live where it is spoken.", "Read children's books, then novels.",
                         "Only a slight difference here.", "Apps with spaced repetition every day.")
  assert c.scores == (30.0, 12.0, 7.0, 3.0)
  assert c.context == "Subreddit: r/test\n\nParent comment:\nWhat is the best way to learn a language?"
  at = lambda n: f"{path}:{n}"
  assert stats.records_read == 23
  assert dict(stats.skipped) == {
      "deleted": 1, "removed": 1, "bot": 2, "invalid_json": 1, "too_short": 1, "too_long": 1, "karma_gap": 2,
      "no_context": 3, "parent_missing": 2, "missing_field": 1, "bad_score": 1, "duplicate": 1, "bad_encoding": 1,
      "not_object": 1}
  assert stats.first_offsets["invalid_json"] == [at(7)]
  assert stats.first_offsets["deleted"] == [at(3)] and stats.first_offsets["removed"] == [at(4)]
  assert stats.first_offsets["bot"] == [at(5), at(6)]
  assert stats.first_offsets["too_short"] == [at(8)] and stats.first_offsets["too_long"] == [at(9)]
  assert stats.first_offsets["karma_gap"] == [at(13)] and stats.first_offsets["parent_missing"] == [at(17)]
  assert stats.first_offsets["bad_encoding"] == [at(22)] and stats.first_offsets["duplicate"] == [at(21)]
  assert_accounted(out, stats)
  # A smaller gap lets the q1 pair through; a bigger min_length drops a sibling.
  loose, _ = run(path, Options(max_length=200, min_karma_gap=1))
  assert {c.id for _, c in loose} == {"reddit/t1_p1", "reddit/t1_q1"}
  q1 = by_id(loose)["reddit/t1_q1"][1]
  assert q1.context.endswith("Comment:\nWhat is the best way to learn a language?\n\n"
                             "Parent comment:\nOnly a slight difference here.")
  strict, _ = run(path, Options(max_length=200, min_length=31))
  assert by_id(strict)["reddit/t1_p1"][1].scores == (30.0, 12.0, 3.0)


def test_submissions_file_supplies_title(tmp_path):
  path = small_dump(tmp_path)
  subs = write_ndjson(tmp_path / "RS_small.ndjson", [
      "garbage line",
      {"id": "post", "title": "Learning languages &amp; you", "selftext": "Share   your tips."},
      {"id": "other", "title": "Not needed"},
  ])
  out, stats = run(path, Options(max_length=200, submissions=str(subs)))
  comps = by_id(out)
  assert set(comps) == {"reddit/t1_p1", "reddit/t3_post"}
  assert comps["reddit/t3_post"][1].context == (
      "Subreddit: r/test\n\nTitle: Learning languages & you\nShare   your tips.")
  assert comps["reddit/t3_post"][1].responses == ("What is the best way to learn a language?",
                                                  "Top-level reply without title.", "Another top-level one here.")
  assert comps["reddit/t3_post"][1].scores == (50.0, 9.0, 1.0)
  assert comps["reddit/t1_p1"][1].context.startswith("Subreddit: r/test\n\nTitle: Learning languages & you\n")
  assert stats.skipped["submission_invalid_json"] == 1 and "no_context" not in stats.skipped
  assert_accounted(out, stats)
  # A long selftext is left out, the title stays.
  out, _ = run(path, Options(max_length=200, submissions=str(subs), max_selftext_length=5))
  assert by_id(out)["reddit/t3_post"][1].context == "Subreddit: r/test\n\nTitle: Learning languages & you"


def test_max_siblings_keeps_top_and_lowest(tmp_path):
  rows = [comment("p", "t3_x", "The question in the parent.", 1)]
  rows += [comment(f"r{i}", "t1_p", f"Reply number {i} to the parent.", s) for i, s in enumerate([5, 9, 1, 7, 3, 9])]
  path = write_ndjson(tmp_path / "RC_k.ndjson", rows)
  out, stats = run(path, Options(max_siblings=4))
  (_, c), = out
  assert c.scores == (9.0, 9.0, 7.0, 1.0)
  assert c.responses[:2] == ("Reply number 1 to the parent.", "Reply number 5 to the parent.")  # tie: by id
  assert stats.skipped["max_siblings"] == 2
  assert_accounted(out, stats)


def test_long_window_zst_and_folder(tmp_path):
  zstandard = pytest.importorskip("zstandard")
  plain = small_dump(tmp_path)
  # Streamed with no size, the frame keeps its 2^28 window, above zstd's default limit of 2^27, like Pushshift's.
  params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
  folder = tmp_path / "dumps"
  folder.mkdir()
  compressor = zstandard.ZstdCompressor(compression_params=params)
  with open(folder / "RC_small.zst", "wb") as f, compressor.stream_writer(f) as w:
    w.write(plain.read_bytes())
  blob = (folder / "RC_small.zst").read_bytes()
  assert zstandard.get_frame_parameters(blob).window_size == 1 << 28
  with pytest.raises(zstandard.ZstdError):
    zstandard.ZstdDecompressor().decompressobj().decompress(blob)
  options = Options(max_length=200)
  expected, _ = run(plain, options)
  got, stats = run(folder / "RC_small.zst", options)
  assert got == expected and stats.records_read == 23
  # A folder: files in sorted order, submissions dumps (RS_*) inside it are not read as comments.
  (folder / "RS_ignored.ndjson").write_text("{}\n")
  shutil.copy(plain, folder / "RC_zzz.ndjson")
  got, stats = run(folder, options)
  assert [c for _, c in got] == [c for _, c in expected] * 2 and stats.records_read == 46


def test_corrupt_zst_is_counted_not_raised(tmp_path):
  zstandard = pytest.importorskip("zstandard")
  data = small_dump(tmp_path).read_bytes() * 50
  blob = zstandard.ZstdCompressor(level=3).compress(data)
  (tmp_path / "RC_cut.zst").write_bytes(blob[:len(blob) // 2])
  (tmp_path / "RC_junk.zst").write_bytes(b"this is not zstd at all")
  # zstandard ends a truncated stream quietly: whatever it gave is mined, a partial last line is invalid JSON.
  out, stats = run(tmp_path / "RC_cut.zst")
  assert stats.records_read < 23 * 50
  assert_accounted(out, stats)
  out, stats = run(tmp_path / "RC_junk.zst")
  assert stats.skipped["corrupt_file"] == 1 and stats.first_offsets["corrupt_file"] == [f"{tmp_path / 'RC_junk.zst'}:1"]
  assert out == [] and stats.records_read == 0


def test_missing_path_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    mine(tmp_path / "nope.zst", Options(), MineStats(""))
  path = small_dump(tmp_path)
  with pytest.raises(FileNotFoundError, match="submissions"):
    mine(path, Options(submissions=str(tmp_path / "RS_nope.zst")), MineStats(""))


def test_bad_options_rejected():
  with pytest.raises(ValueError):
    Options(max_siblings=1)
  with pytest.raises(ValueError):
    Options(max_context_depth=0)


# ---------------------------------------------------------------------------------------------------------------
# Fuzz: whatever the bytes, the miner counts and skips, it never raises.

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=30), st.sampled_from(["[deleted]", "[removed]", "AutoModerator", "t1_a",
                                                            "t3_a", "a", "b", "t1_b", "t3_"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=6)
_comment = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["a", "b", "c", "t1_a", ""]) | _values,
    "parent_id": st.sampled_from(["t1_a", "t1_b", "t3_a", "t3_", "x"]) | _values,
    "link_id": st.sampled_from(["t3_a", "t3_b"]) | _values,
    "body": st.text(max_size=40) | _values, "score": st.integers(-5, 5) | _values,
    "author": st.sampled_from(["x", "AutoModerator", "mybot"]) | _values, "subreddit": _values})
# Mostly well-formed comments over a few ids, so that threads, siblings and contexts do form.
_good = st.fixed_dictionaries({
    "id": st.sampled_from(["a", "b"]) | st.text("cdefgh", min_size=1, max_size=2),
    "parent_id": st.sampled_from(["t1_a", "t1_b", "t3_a"]),
    "link_id": st.sampled_from(["t3_a", "t3_b"]), "score": st.integers(-5, 5),
    "body": st.text(min_size=1, max_size=20) | st.text(max_size=20) | st.sampled_from(
        ["[deleted]", "[removed]", "a &gt; b\r\nc", "\ud800"]),
    "author": st.sampled_from(["x", "x", "x", "y", "[deleted]", "AutoModerator", "mybot"])})
_good_line = _good.map(lambda d: json.dumps(d).encode())
_line = st.one_of(_good_line, _comment.map(lambda d: json.dumps(d).encode()),
                  _values.map(lambda v: json.dumps(v).encode()),
                  st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
                  st.just(b'{"id": "a", "parent_id": "t1_b", "link_id": "t3_a", "score": 1, "body": "\\ud800 x"}'),
                  st.just(b'{"id": "b", "parent_id": "t1_a", "link_id": "t3_a", "score": 1' + b"0" * 400
                          + b', "body": "x"}'),
                  st.just(b"[" * 5000))

_submission = st.fixed_dictionaries({"id": st.sampled_from(["a", "b", "t3_a"]), "title": _values,
                                     "selftext": _values}).map(lambda d: json.dumps(d).encode())


@settings(max_examples=50, deadline=None)
@given(good=st.lists(_good_line, max_size=20), junk=st.lists(_line, max_size=10),
       subs=st.lists(_line | _submission, max_size=8), order=st.randoms(use_true_random=False))
def test_fuzz_never_raises(tmp_path_factory, good, junk, subs, order):
  tmp = tmp_path_factory.mktemp("fuzz")
  lines = good + junk
  order.shuffle(lines)  # junk between real-looking threads, so that comparisons do form around it
  path = tmp / "RC_fuzz.ndjson"
  path.write_bytes(b"\n".join(lines))
  (tmp / "RS_fuzz.ndjson").write_bytes(b"\n".join(subs))
  for options in (Options(min_length=0, min_karma_gap=0), Options(submissions=str(tmp / "RS_fuzz.ndjson"))):
    out, stats = run(path, options)
    assert_accounted(out, stats)
    for key, c in out:
      assert isinstance(key, str) and c.k >= 2
      json.dumps(c.to_json(), ensure_ascii=False).encode("utf-8")  # what write_jsonl will do
