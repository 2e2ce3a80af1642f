"""The Wikipedia reverted-edit miner, on real enwiki history (read in place) and on small hand-written exports."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pathlib
import random
import tempfile
import tracemalloc
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hhh.data.mine import wikipedia
from hhh.data.mine.common import MineStats
from hhh.data.mine.wikipedia import Options, mediawiki_sha1, mine, windows

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
EXCERPT = SHARED_DATA / "wikipedia" / "enwiki_Anarchism_rev3427-3726.xml.xz"
FULL = SHARED_DATA / "wikipedia" / "enwiki_Anarchism_full_history_2001-2010.xml.lzma"
NO_DATA = "../shared/data not found: the real Wikipedia history is only in the development checkout"


def _need(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(NO_DATA)
  return path


def _run(path, options: Options = Options()) -> tuple[list[tuple[str, object]], MineStats]:
  stats = MineStats("wikipedia")
  return list(mine(path, options, stats)), stats


def _revision_texts(path, rev_ids: set[str]) -> dict[str, str]:
  """Raw texts of a few revisions, read independently of the miner."""
  out = {}
  for _, elem in ET.iterparse(lzma.open(path), events=("end",)):
    if elem.tag.endswith("}revision"):
      rid = elem.find("{*}id").text
      if rid in rev_ids:
        out[rid] = elem.find("{*}text").text or ""
      elem.clear()
  return out


# --- hand-written exports --------------------------------------------------------------------------------------

def _export(pages, version: str = "0.10", sha1_override: dict | None = None) -> str:
  """A MediaWiki export in schema `version`. export-0.4 has no <ns> and no <sha1>; later ones have both.

  pages: (page_id, title, ns, [(rev_id, text or None for deleted, comment)]).
  """
  v = tuple(int(x) for x in version.split("."))
  sha1_override = sha1_override or {}
  out = [f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-{version}/" version="{version}" xml:lang="en">',
         "<siteinfo><sitename>Wikipedia</sitename><namespaces>",
         '<namespace key="0" /><namespace key="1">Talk</namespace><namespace key="2">User</namespace>',
         "</namespaces></siteinfo>"]
  for page_id, title, ns, revisions in pages:
    out.append(f"<page><title>{escape(title)}</title>")
    if v >= (0, 5):
      out.append(f"<ns>{ns}</ns>")
    out.append(f"<id>{page_id}</id>")
    parent = None
    for rev_id, text, comment in revisions:
      out.append(f"<revision><id>{rev_id}</id>")
      if v >= (0, 10) and parent:
        out.append(f"<parentid>{parent}</parentid>")
      out.append("<timestamp>2005-08-01T00:00:00Z</timestamp><contributor><ip>10.0.0.1</ip></contributor>")
      if comment:
        out.append(f"<comment>{escape(comment)}</comment>")
      if v >= (0, 10):
        out.append("<model>wikitext</model><format>text/x-wiki</format>")
      if text is None:
        out.append('<text deleted="deleted" />')
      elif v >= (0, 11):
        out.append(f'<text bytes="{len(text.encode())}" sha1="{mediawiki_sha1(text)}" xml:space="preserve">'
                   f"{escape(text)}</text>")
      else:
        out.append(f'<text xml:space="preserve">{escape(text)}</text>')
      if v >= (0, 6):
        out.append(f"<sha1>{sha1_override.get(rev_id, '' if text is None else mediawiki_sha1(text))}</sha1>")
      out.append("</revision>")
      parent = rev_id
    out.append("</page>")
  out.append("</mediawiki>")
  return "\n".join(out)


CHEESE = "Cheese is a dairy product made from milk.\n\nIt comes in many flavours."
VANDAL = "Cheese is a dairy product made from milk. CHEESE IS GROSS LOL\n\nIt comes in many flavours."
PAGES = [
    (10, "Cheese", 0, [(101, CHEESE, "start"), (102, VANDAL, ""), (103, CHEESE, "rv vandalism"),
                       (104, CHEESE + "\n\n== History ==\nAncient.", "history")]),
    # An identity revert on a talk page: namespace 1 is not mined by default.
    (11, "Talk:Cheese", 1, [(111, "Hello", "new"), (112, "Spam spam", ""), (113, "Hello", "rv")]),
    # A null edit (same text as its parent) is not a revert; a deleted revision has no text.
    (12, "Bread", 0, [(121, "Bread is baked.", ""), (122, "Bread is baked.", "null edit"), (123, None, ""),
                      (124, "Bread is baked from dough.", "")]),
]


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text, encoding="utf-8")
  return path


def _as_json(items):
  return [(key, c.to_json()) for key, c in items]


def test_mediawiki_sha1_matches_mediawiki():
  # The sha1 MediaWiki stores for every empty revision.
  assert mediawiki_sha1("") == "phoiac9h4m842xq45sp7s6u21eteeq1"
  assert len(mediawiki_sha1("x" * 10000)) == 31


@pytest.mark.parametrize("version", ["0.4", "0.10", "0.11"])
def test_hand_written_export_every_schema(tmp_path, version):
  out, stats = _run(_write(tmp_path / "dump.xml", _export(PAGES, version)))
  assert [(k, c.id) for k, c in out] == [("10", "wikipedia/10/102")]
  c = out[0][1]
  assert c.source == "wikipedia" and c.scores == (1.0, 0.0)
  assert c.context == "Cheese\n\nCheese is a dairy product made from milk."
  assert c.responses == ("\n\nIt comes in many flavours.", " CHEESE IS GROSS LOL\n\nIt comes in many flavours.")
  assert stats.records_read == 11 and stats.comparisons == 1
  assert dict(stats.skipped) == {"namespace": 3, "no_text": 1}
  assert stats.first_offsets["no_text"] == ["123"]


def test_schema_versions_agree_and_talk_namespace_from_title(tmp_path):
  # export-0.4 has no <ns>: the talk page's namespace comes from its title and the siteinfo names.
  results = {v: _as_json(_run(_write(tmp_path / f"{v}.xml", _export(PAGES, v)), Options(namespaces=()))[0])
             for v in ("0.4", "0.5", "0.8", "0.10", "0.11")}
  assert [c["id"] for _, c in results["0.4"]] == ["wikipedia/10/102", "wikipedia/11/112"]
  assert all(r == results["0.4"] for r in results.values())
  talk, _ = _run(_write(tmp_path / "t.xml", _export(PAGES, "0.4")), Options(namespaces=(1,)))
  assert [c.id for _, c in talk] == ["wikipedia/11/112"]


def test_dump_sha1_is_used_when_present(tmp_path):
  # Texts differ, but the dump says rev 133 has rev 131's sha1, so it counts as an identity revert.
  pages = [(13, "Milk", 0, [(131, "Milk is white.", ""), (132, "Milk is green.", ""), (133, "Milk is white!", "")])]
  fake = {133: mediawiki_sha1("Milk is white.")}
  out, _ = _run(_write(tmp_path / "a.xml", _export(pages, "0.10", sha1_override=fake)))
  assert [c.id for _, c in out] == ["wikipedia/13/132"]
  assert (out[0][1].context, out[0][1].responses) == ("Milk\n\nMilk is ", ("white!", "green."))
  computed, _ = _run(_write(tmp_path / "b.xml", _export(pages, "0.4")))
  assert computed == []


def test_compressed_formats_and_folders_give_the_same_output(tmp_path):
  import py7zr

  data = _export(PAGES, "0.10").encode("utf-8")
  files = {"plain.xml": data, "d.xml.bz2": bz2.compress(data), "d.xml.xz": lzma.compress(data),
           "d.xml.lzma": lzma.compress(data, format=lzma.FORMAT_ALONE), "d.xml.gz": gzip.compress(data)}
  for name, blob in files.items():
    (tmp_path / name).write_bytes(blob)
  with py7zr.SevenZipFile(tmp_path / "d.xml.7z", "w") as archive:
    archive.writestr(data, "enwiki-pages-meta-history.xml")
  want = _as_json(_run(tmp_path / "plain.xml")[0])
  assert len(want) == 1
  for name in [*files, "d.xml.7z"]:
    assert _as_json(_run(tmp_path / name)[0]) == want, name
  folder = tmp_path / "dumps"
  folder.mkdir()
  (folder / "part1.xml.bz2").write_bytes(files["d.xml.bz2"])
  (folder / "README.txt").write_text("not a dump")
  assert _as_json(_run(folder)[0]) == want


def test_seven_zip_reader_stops_when_abandoned(tmp_path):
  import threading

  import py7zr

  page = (1, "Long", 0, [(i, f"text {i // 2 if i % 2 else i}", "") for i in range(2, 3000)])
  with py7zr.SevenZipFile(tmp_path / "d.7z", "w") as archive:
    archive.writestr(_export([page], "0.10").encode(), "d.xml")
  before = threading.active_count()
  stats = MineStats("wikipedia")
  items = mine(tmp_path / "d.7z", Options(), stats)
  next(items)
  items.close()
  assert threading.active_count() == before


def test_revert_distance_radius_and_each_reverted(tmp_path):
  salt = [(14, "Salt", 0, [(141, "Salt is salty.", ""), (142, "Salt is sweet.", ""),
                           (143, "Salt is sweet and blue.", ""), (144, "Salt is salty.", "Undid revision 143")])]
  path = _write(tmp_path / "salt.xml", _export(salt, "0.10"))
  out, _ = _run(path)
  assert [c.id for _, c in out] == ["wikipedia/14/142", "wikipedia/14/143"]
  assert [c.responses for _, c in out] == [("salty.", "sweet."), ("salty.", "sweet and blue.")]
  assert [c.context for _, c in out] == ["Salt\n\nSalt is "] * 2
  assert [c.id for _, c in _run(path, Options(each_reverted=False))[0]] == ["wikipedia/14/143"]
  assert _run(path, Options(revert_radius=2))[0] == []
  assert len(_run(path, Options(revert_radius=3))[0]) == 2


def test_comment_signal(tmp_path):
  pages = [(15, "Pepper", 0, [(151, "Pepper is hot.", ""), (152, "Pepper is cold.", ""),
                              (153, "Pepper is hot.", "fix"), (154, "Pepper is hot. Poo.", ""),
                              (155, "Pepper is hot.", "RVV")])]
  path = _write(tmp_path / "p.xml", _export(pages))
  assert [c.id for _, c in _run(path)[0]] == ["wikipedia/15/152", "wikipedia/15/154"]
  out, stats = _run(path, Options(comment_signal=True))
  assert [c.id for _, c in out] == ["wikipedia/15/154"]
  assert dict(stats.skipped) == {"no_revert_comment": 1} and stats.first_offsets["no_revert_comment"] == ["153"]
  for comment in ("rv", "rv vandalism", "Reverted edits by X", "Undid revision 1 by Y", "vandalism"):
    assert wikipedia.REVERT_COMMENT.search(comment), comment
  for comment in ("/* History */ fix typo", "river", "cervical"):
    assert not wikipedia.REVERT_COMMENT.search(comment), comment


def test_edit_war_first_revert_wins(tmp_path):
  good, bad = "Water is wet.", "Water is dry."
  pages = [(16, "Water", 0, [(161, good, ""), (162, bad, ""), (163, good, "rv"), (164, bad, "rv"),
                             (165, good, "rv")])]
  path = _write(tmp_path / "w.xml", _export(pages))
  out, stats = _run(path)
  assert [(c.id, c.responses) for _, c in out] == [("wikipedia/16/162", ("wet.", "dry."))]
  assert dict(stats.skipped) == {"edit_war": 1, "duplicate_pair": 1}
  assert stats.first_offsets == {"edit_war": ["164"], "duplicate_pair": ["164"]}
  loose, _ = _run(path, Options(drop_edit_wars=False, dedupe=False))
  assert [(c.id, c.responses) for _, c in loose] == [
      ("wikipedia/16/162", ("wet.", "dry.")), ("wikipedia/16/163", ("dry.", "wet.")),
      ("wikipedia/16/164", ("wet.", "dry."))]


def test_malformed_revisions_are_counted(tmp_path):
  text = _export([(17, "Ink", 0, [(171, "Ink is black.", ""), (172, "Ink is blue.", ""), (173, "Ink is black.", "")])])
  text = text.replace("<id>172</id>", "<id>abc</id>", 1)  # the reverted edit has no usable id
  text = text.replace("<id>17</id>", "<id>17</id><revision><timestamp>x</timestamp></revision>", 1)
  out, stats = _run(_write(tmp_path / "m.xml", text))
  assert out == []
  assert stats.records_read == 4 and dict(stats.skipped) == {"malformed_revision": 2}
  no_page_id = _export([(18, "Ink", 0, [(181, "a", "")])]).replace("<id>18</id>", "")
  _, stats = _run(_write(tmp_path / "n.xml", no_page_id))
  assert dict(stats.skipped) == {"no_page_id": 1}


def test_windows_cut_on_words_and_stay_in_budget():
  assert windows("T", "the cat sat on the mat", "the cow sat on the mat", 100) == (
      "T\n\nthe ", "cat sat on the mat", "cow sat on the mat")
  # A pure append would leave the good response blank: both start at the line before the change.
  assert windows("T", "One.\nCheese is good.", "One.\nCheese is good. LOL", 100) == (
      "T\n\nOne.\n", "Cheese is good.", "Cheese is good. LOL")
  rng = random.Random(1)
  words = [rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(3000)]
  good = " ".join(words)
  bad = " ".join(words[:1000] + ["VANDAL"] * 400 + words[1000:])
  context, g, b = windows("T", good, bad, 300)
  assert len(context) <= 3 + 300 and len(g) <= 300 and len(b) <= 300
  assert b.startswith("VANDAL") and not b.endswith("VANDALbeta") and "VANDAL" not in g
  # Each response continues its own text right after the context: a cut middle never runs on into the tail.
  assert context[3:] + g in good and context[3:] + b in bad and len(g) > 250


# --- real data: 300 revisions of "Anarchism", Jul-Aug 2005 ------------------------------------------------------

@pytest.fixture(scope="module")
def excerpt_run():
  out, stats = _run(_need(EXCERPT))
  return out, stats


def test_excerpt_specific_revert(excerpt_run):
  """Rev 20112843 (an IP) turned "Anarchists tend to deny" into "Socialist anarchists tend to deny".

  Rev 20113339 ("correction socialist anarchists > anarchists") restored rev 20097672's text exactly.
  """
  out, _ = excerpt_run
  by_id = {c.id: (key, c) for key, c in out}
  key, c = by_id["wikipedia/12/20112843"]
  assert key == "12" and c.source == "wikipedia" and c.scores == (1.0, 0.0)
  assert c.context.startswith("Anarchism\n\n")
  assert c.context.endswith("===Anarcho-capitalism===\n''Main article'': [[Anarcho-capitalism]]\n\n")
  good, bad = c.responses
  assert good.startswith("Anarchists tend to deny that anarcho-capitalism is a form of anarchism")
  assert bad.startswith("Socialist anarchists tend to deny that anarcho-capitalism is a form of anarchism")
  assert good[len("Anarchists"):] == bad[len("Socialist anarchists"):]  # only the change differs
  texts = _revision_texts(EXCERPT, {"20097672", "20112843", "20113339"})
  assert texts["20113339"] == texts["20097672"]  # an identity revert, two revisions back
  assert good in texts["20113339"] and bad in texts["20112843"] and bad not in texts["20113339"]
  assert c.context[len("Anarchism\n\n"):] + good in texts["20113339"]
  assert c.context[len("Anarchism\n\n"):] + bad in texts["20112843"]


def test_excerpt_rv_v_revert(excerpt_run):
  """Rev 20590781 ("rv v") undid rev 20590658, which put a "Schools of Anarchism" box with [[Agorism]] at the top."""
  out, _ = excerpt_run
  c = {c.id: c for _, c in out}["wikipedia/12/20590658"]
  assert c.context == "Anarchism\n\n"
  assert c.responses[0].startswith("{{Anarchism}}\n\n'''Anarchism''' is derived from the [[Greek language|Greek]]")
  assert c.responses[1].startswith('{| align=right style="margin-left: 15px;')
  assert "*[[Agorism]]" in c.responses[1] and "[[Agorism]]" not in c.responses[0]
  signal, _ = _run(EXCERPT, Options(comment_signal=True))
  assert {x.id: x for _, x in signal}["wikipedia/12/20590658"] == c


def test_excerpt_totals(excerpt_run):
  out, stats = excerpt_run
  assert stats.records_read == 300
  assert stats.comparisons == len(out) == 60
  # Mostly the 2005 anarcho-capitalism edit war: many reverts of reverts, and multi-edit reverts whose
  # reverted edits differ only outside the window.
  assert dict(stats.skipped) == {"duplicate_window": 73, "edit_war": 31, "duplicate_pair": 19, "reverted_twice": 8}
  assert len({c.id for _, c in out}) == 60 and {k for k, _ in out} == {"12"}
  for _, c in out:
    assert c.id.startswith("wikipedia/12/") and c.scores == (1.0, 0.0)
    assert c.responses[0].split() != c.responses[1].split()
    assert len(c.context) <= len("Anarchism\n\n") + 1500 and max(map(len, c.responses)) <= 1500
  variants = {Options(comment_signal=True): (54, {"duplicate_window": 74, "no_revert_comment": 15, "edit_war": 20,
                                                   "duplicate_pair": 17, "reverted_twice": 8}),
              Options(each_reverted=False): (35, {"edit_war": 29, "duplicate_window": 26, "duplicate_pair": 4}),
              Options(drop_edit_wars=False, dedupe=False): (188, {"duplicate_pair": 12, "reverted_twice": 21})}
  for options, (n, skipped) in variants.items():
    got, s = _run(EXCERPT, options)
    assert (len(got), dict(s.skipped)) == (n, skipped), options


@pytest.mark.parametrize("fraction", [0.0005, 0.37, 0.5, 0.81])
def test_truncated_xml_yields_what_was_complete(excerpt_run, tmp_path, fraction):
  full_ids = [c.id for _, c in excerpt_run[0]]
  text = lzma.open(EXCERPT).read().decode("utf-8")
  cut = _write(tmp_path / "cut.xml", text[:int(len(text) * fraction)])
  out, stats = _run(cut)
  assert stats.skipped["truncated_xml"] == 1
  assert [c.id for _, c in out] == full_ids[:len(out)]
  assert stats.records_read < 300
  if fraction > 0.3:
    assert len(out) > 5


def test_truncated_compressed_stream(excerpt_run, tmp_path):
  full_ids = [c.id for _, c in excerpt_run[0]]
  blob = EXCERPT.read_bytes()
  (tmp_path / "cut.xml.xz").write_bytes(blob[:len(blob) // 2])
  out, stats = _run(tmp_path / "cut.xml.xz")
  assert stats.skipped["truncated_xml"] == 1 and 0 < len(out) < len(full_ids)
  assert [c.id for _, c in out] == full_ids[:len(out)]


# --- memory, robustness ------------------------------------------------------------------------------------------

def test_memory_is_bounded_by_the_revision_window(tmp_path):
  """2000 revisions of ~5 KB (10 MB of text): the peak must stay far below the page history."""
  rng = random.Random(0)
  vocab = ["anarchy", "state", "liberty", "mutual", "aid", "commune", "the", "of", "and", "syndicate"]
  words = [rng.choice(vocab) for _ in range(750)]
  texts: list[str] = []
  total = 0
  path = tmp_path / "big.xml"
  with open(path, "w", encoding="utf-8") as f:
    f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Big</title><ns>0</ns>'
            "<id>5</id>\n")
    for i in range(2000):
      if i % 10 == 9:
        text = texts[-2]  # revert the previous edit
        words = text.split(" ")
      else:
        words[rng.randrange(len(words))] = f"edit{i}"
        text = " ".join(words)
      texts = texts[-2:] + [text]
      total += len(text)
      f.write(f"<revision><id>{1000 + i}</id><comment>c</comment><text>{escape(text)}</text></revision>\n")
    f.write("</page></mediawiki>\n")
  assert total > 9_000_000
  stats = MineStats("wikipedia")
  tracemalloc.start()
  try:
    n = sum(1 for _ in mine(path, Options(), stats))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert n == 200 and stats.records_read == 2000
  assert peak < total / 10, (peak, total)


def test_missing_path_raises_at_call(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    mine(tmp_path / "nope.xml.bz2", Options(), MineStats("wikipedia"))


def test_bad_options_raise():
  with pytest.raises(ValueError):
    Options(revert_radius=1)
  with pytest.raises(ValueError):
    Options(window_chars=0)


# --- read boundaries: the scanner reads _READ_SIZE bytes at a time; a unit tag may fall anywhere across a cut ---

# Two reverts (pages 1 and 3), a page with no revisions, tags with whitespace and attributes. {pad} shifts every
# tag after it, so sweeping it over one read size puts each tag at every offset relative to the read boundary.
_BOUNDARY_DOC = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">{pad}'
    '<siteinfo><namespaces><namespace key="1">Talk</namespace></namespaces></siteinfo>'
    "<page><title>A</title><ns>0</ns><id>1</id><revision><id>11</id><text>Cheese is good.</text></revision>"
    "<revision><id>12</id><text>Cheese is GROSS.</text></revision>"
    "<revision><id>13</id><text>Cheese is good.</text></revision></page>"
    "<page><title>B</title><ns>0</ns><id>2</id></page>"
    "<page>\n<title>C</title><ns>0</ns><id>3</id><revision>\n<id>31</id><text>x y</text></revision>"
    '<revision ><id>32</id><text>x z</text></revision><revision><id>33</id><text>x y</text></revision>\n</page>\n'
    "</mediawiki>")
# Damage near the tags: a lost </revision>, a bad entity, a stray </revision>, a revision outside any page, a
# lost </revision> before </page>, and a cut-off </mediawiki.
_DAMAGED_DOC = (
    "<mediawiki>{pad}<siteinfo></siteinfo><page><title>A</title><ns>0</ns><id>1</id>"
    "<revision><id>11</id><text>a</text><revision><id>12</id><text>b &bogus;</text></revision></revision>"
    "<revision><id>13</id><text>a</text></revision></page><revision><id>99</id></revision>"
    "<page><title>Z</title><id>5</id><revision><id>51</id><text>q</text></page></mediawiki")


class _ShortReads(io.RawIOBase):
  """A stream that hands back fewer bytes than asked, in a seeded random pattern (as a pipe or decompressor may)."""

  def __init__(self, data: bytes, seed: int):
    self.data, self.at, self.rng = data, 0, random.Random(seed)

  def readable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    n = min(len(b), self.rng.randint(1, 9), len(self.data) - self.at)
    b[:n] = self.data[self.at:self.at + n]
    self.at += n
    return n


def _read_all(make_stream) -> tuple[list, list, int, dict]:
  """(units, mined (key, comparison json), records_read, skips) of passes over fresh streams."""
  stats = MineStats("wikipedia")
  mined = [(k, c.to_json()) for k, c in wikipedia._DumpReader(Options(), stats, "d").read(make_stream())]
  return list(wikipedia._units(make_stream())), mined, stats.records_read, dict(stats.skipped)


@pytest.mark.parametrize("doc, records, skipped, ids", [
    (_BOUNDARY_DOC, 6, {}, ["wikipedia/1/12", "wikipedia/3/32"]),
    (_DAMAGED_DOC, 5, {"malformed_xml": 4, "truncated_xml": 1}, []),
], ids=["clean", "damaged"])
def test_every_tag_offset_across_a_read_boundary(monkeypatch, doc, records, skipped, ids):
  """Each read size, each shift below it: the same units (offsets too), stats and pairs as one unchunked read."""
  raw = doc.format(pad="").encode()
  monkeypatch.setattr(wikipedia, "_READ_SIZE", 1 << 20)
  want = _read_all(lambda: io.BytesIO(raw))
  assert want[2:] == (records, skipped) and [c["id"] for _, c in want[1]] == ids
  for read_size in (1, 2, 3, 5, 7, 11, 16, 17, 64):
    for shift in range(read_size):
      raw = doc.format(pad=" " * shift).encode()
      monkeypatch.setattr(wikipedia, "_READ_SIZE", 1 << 20)
      whole = _read_all(lambda: io.BytesIO(raw))
      monkeypatch.setattr(wikipedia, "_READ_SIZE", read_size)
      assert _read_all(lambda: io.BytesIO(raw)) == whole, (read_size, shift)
      assert whole[1:] == want[1:]  # whitespace between elements changes nothing but the offsets
  monkeypatch.setattr(wikipedia, "_READ_SIZE", 64)
  for seed in range(20):
    assert _read_all(lambda: _ShortReads(raw, seed))[1:] == want[1:], seed


@pytest.mark.parametrize("tag, nth", [("<siteinfo>", 0), ("<revision>", 0), ("<revision>", 1), ("</revision>", 0),
                                      ("<page>", 1), ("</page>", 0)])
def test_tags_ending_at_the_real_read_boundary(tmp_path, tag, nth):
  """The unpatched read size, through mine(): the tag ending at each offset from 6 before the first read's end to
  4 after it (65530..65540 for 64 KiB reads)."""
  raw = _BOUNDARY_DOC.format(pad="").encode()
  want, stats = _run(_write(tmp_path / "ref.xml", raw.decode()))
  assert stats.records_read == 6 and not stats.skipped and len(want) == 2

  def kinds(path):
    with path.open("rb") as f:
      return [event for event, _, _ in wikipedia._units(f)]

  # Page B has no revisions: its head is never parsed, only its end is seen.
  assert kinds(tmp_path / "ref.xml") == ["siteinfo", "page", *["revision"] * 3, "page_end", "page_end",
                                         "page", *["revision"] * 3, "page_end", "end"]
  at = -1
  for _ in range(nth + 1):
    at = raw.index(tag.encode(), at + 1)
  for end in range(wikipedia._READ_SIZE - 6, wikipedia._READ_SIZE + 5):  # tag ends before byte `end`
    padded = raw[:at] + b" " * (end - at - len(tag)) + raw[at:]
    assert padded.index(tag.encode(), end - len(tag)) + len(tag) == end
    out, stats = _run(_write(tmp_path / f"{end}.xml", padded.decode()))
    assert (stats.records_read, dict(stats.skipped)) == (6, {}), end
    assert kinds(tmp_path / f"{end}.xml") == kinds(tmp_path / "ref.xml"), end  # e.g. no page read twice
    assert _as_json(out) == _as_json(want), end


_GARBAGE = ["<revision>", "</revision>", "<page>", "</page>", "<text>", "</text>", "<id>7</id>", "<id>x</id>",
            "<ns>1</ns>", "<ns>-x</ns>", "<sha1>zz</sha1>", "<sha1/>", "&bogus;", "<![CDATA[<x>]]>", "<?pi x?>",
            "<!-- c -->", "\x00", "<text deleted='deleted'/>", "<text bytes='9'/>", "<comment>rv</comment>",
            '<namespace key="q">Talk</namespace>', "<mediawiki>", "</mediawiki>", "<", "&amp;", "]]>"]
# XML-legal characters; illegal ones come in through _GARBAGE ("\x00").
_CHARS = st.one_of(st.characters(blacklist_categories=("Cs", "Cc", "Cn")), st.sampled_from("\n\t <>&"))
# A small pool of texts, so that identity reverts are common.
_POOL = st.sampled_from(["", "a", "a b", "Cheese is good.", "Cheese is GOOD LOL.", " \n "])
_TEXTS = st.one_of(_POOL, _POOL, st.text(_CHARS, max_size=30))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_revisions_and_garbage_never_raise(data):
  """Random histories with stray tags, bad entities, NULs and random truncation: counted, never raised."""
  revision = st.tuples(st.integers(1, 50), st.one_of(st.none(), _TEXTS, _TEXTS, _TEXTS),
                       st.one_of(st.just("rv"), st.text(_CHARS, max_size=10)))
  revisions = data.draw(st.lists(revision, min_size=3, max_size=25))
  pieces = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">',
            f"<page><title>{escape(data.draw(st.text(_CHARS, max_size=8)))}</title><ns>0</ns><id>3</id>"]
  for rev_id, text, comment in revisions:
    body = "<text deleted='deleted'/>" if text is None else f"<text>{escape(text)}</text>"
    pieces.append(f"<revision><id>{rev_id}</id><comment>{escape(comment)}</comment>{body}</revision>")
  pieces.append("</page></mediawiki>")
  for _ in range(data.draw(st.sampled_from([0, 0, 0, 1, 2, 4]))):
    pieces.insert(data.draw(st.integers(0, len(pieces))), data.draw(st.sampled_from(_GARBAGE)))
  raw = "".join(pieces).encode("utf-8")
  if data.draw(st.sampled_from([False, False, False, True])):
    raw = raw[:data.draw(st.integers(0, len(raw)))]
  options = Options(window_chars=data.draw(st.integers(1, 40)), revert_radius=data.draw(st.integers(2, 6)),
                    comment_signal=data.draw(st.booleans()), namespaces=data.draw(st.sampled_from([(0,), ()])))
  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / "fuzz.xml"
    path.write_bytes(raw)
    stats = MineStats("wikipedia")
    out = list(mine(path, options, stats))
  assert stats.comparisons == len(out) and len({c.id for _, c in out}) == len(out)
  for key, c in out:  # a stray <id> in the page may change its id, but key and id always agree
    assert c.id.startswith(f"wikipedia/{key}/") and c.scores == (1.0, 0.0) and c.source == "wikipedia"
    assert c.responses[0].split() != c.responses[1].split()


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "a b", "a  b"])),
                      min_size=2, max_size=40),
       radius=st.integers(2, 6))
def test_revert_rule_matches_a_full_history_oracle(tmp_path_factory, texts, radius):
  """The streaming deque finds the same reverts as a search over the whole history (edit-war and dedupe rules off)."""
  history = [(100 + i, t) for i, t in enumerate(texts)]
  want, used = [], set()
  for i, (_, text) in enumerate(history):
    if text is None:
      continue
    base = next((k for k in range(i - 1, max(-1, i - radius - 1), -1) if history[k][1] == text), None)
    if base is None or base == i - 1:
      continue
    between = history[base + 1:i]
    latest = {t: r for r, t in between if t is not None}
    for rid, t in between:
      if t is None or latest[t] != rid or rid in used:
        continue
      _, g, b = windows("P", text, t, 50)
      if g.split() != b.split():
        want.append((f"wikipedia/9/{rid}", (g, b)))
        used.add(rid)
  path = tmp_path_factory.mktemp("oracle") / "h.xml"
  _write(path, _export([(9, "P", 0, [(rid, t, "") for rid, t in history])], "0.4"))
  got, _ = _run(path, Options(window_chars=50, revert_radius=radius, drop_edit_wars=False, dedupe=False))
  assert [(c.id, c.responses) for _, c in got] == want


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=300), suffix=st.sampled_from([".xml", ".xz", ".lzma", ".bz2", ".gz", ".7z"]),
       header=st.booleans())
def test_fuzz_garbage_bytes_never_raise(blob, suffix, header):
  if header:
    blob = b'<mediawiki><page><title>x</title><id>1</id><revision><id>2</id><text>' + blob
  with tempfile.TemporaryDirectory() as d:
    path = pathlib.Path(d) / f"fuzz{suffix}"
    path.write_bytes(blob)
    stats = MineStats("wikipedia")
    assert list(mine(path, Options(), stats)) == []
  assert sum(stats.skipped.values()) >= 1 or stats.records_read == 0


# --- the fast text path (_split_text): the same output and stats as a full parse of every revision ------------

def _paths(monkeypatch, path, options: Options = Options(), slice_sizes=(1 << 20,)):
  """(output json, stats json) of each fast run (one per unescape slice size) and, last, of the full parse."""
  got = []
  for fast, size in [(True, s) for s in slice_sizes] + [(False, 1 << 20)]:
    monkeypatch.setattr(wikipedia, "_FAST_TEXT", fast)
    monkeypatch.setattr(wikipedia, "_UNESCAPE_SLICE", size)
    out, stats = _run(path, options)
    got.append((_as_json(out), stats.to_json()))
  monkeypatch.undo()
  return got


def _spy_fast(monkeypatch) -> dict:
  """rev id -> whether the fast path read it, filled in as revisions are mined."""
  taken = {}
  mined = wikipedia._DumpReader._revision

  def spy(self, page, fields, fast=None):
    taken[(fields.get("id").text or "") if fields.get("id") is not None else None] = fast is not None
    return mined(self, page, fields, fast)

  monkeypatch.setattr(wikipedia._DumpReader, "_revision", spy)
  return taken


@pytest.mark.parametrize("options", [Options(), Options(each_reverted=False, comment_signal=True, window_chars=300),
                                     Options(drop_edit_wars=False, dedupe=False)], ids=["default", "signal", "all"])
def test_fast_text_path_matches_the_full_parse_on_the_excerpt(monkeypatch, options):
  path = _need(EXCERPT)
  with monkeypatch.context() as m:
    taken = _spy_fast(m)
    _run(path, options)
  assert len(taken) == 300 and all(taken.values())  # every real revision takes the fast path
  fast, full = _paths(monkeypatch, path, options)
  assert fast == full and len(fast[0]) > 20


@pytest.mark.parametrize("version", ["0.4", "0.10", "0.11"])
def test_fast_text_path_matches_the_full_parse_on_every_schema(tmp_path, monkeypatch, version):
  """<sha1> elements, deleted texts, and export-0.11's <text bytes= sha1=> attributes."""
  path = _write(tmp_path / "e.xml", _export(PAGES, version))
  fast, full = _paths(monkeypatch, path, Options(namespaces=()))
  assert fast == full and fast[0]


# Revision bodies, "{i}" standing for the case's number: (body, the fast path reads it). Each is mined after a
# plain revision with the text a full parse gives it and an edit of that text, so a readable one is a revert
# that only matches when both paths hash the text alike.
_TEXT_CASES = [
    (b'<text xml:space="preserve">Cheese {i} &amp; &lt;b&gt; &quot;yum&quot; &apos;s &amp;#38;</text>', True),
    (b"<text xml:space = 'preserve' bytes=\"9\" >K\xc3\xa4se {i} \xf0\x9f\xa7\x80 > \t ]] bread</text>", True),
    (b"<text>" + b"&amp;&lt;x&quot;" * 40 + b" {i}</text>", True),
    (b"<contributor><ip>x</ip></contributor><text>Cheese {i}</text><sha1>s{i}</sha1>", True),
    # A numeric reference, a raw "<" (an element, CDATA, a comment), line ends that expat normalizes.
    (b"<text>Cheese {i} &#38; &#x3C;b</text>", False),
    (b"<text>Cheese {i} <b>bold</b> tail</text>", False),
    (b"<text>Cheese {i} <![CDATA[<3 & more]]></text>", False),
    (b"<text>Cheese {i}<!-- c --> more</text>", False),
    (b"<text>Cheese {i}\r\nis good.\rYes</text>", False),
    # Empty, deleted and stub texts: the attributes decide.
    (b"<text></text>", False),
    (b"<text/>", False),
    (b'<text xml:space="preserve" />', False),
    (b'<text deleted="deleted" />', False),
    (b'<text bytes="9" id="3" />', False),
    # Tags that are not plain: an entity in an attribute, a text nested elsewhere, two texts, prefixed names.
    (b'<text a="&amp;">Cheese {i}</text>', False),
    (b"<text>Cheese {i}</text >", False),
    (b"<contributor><text>Cheese {i}</text></contributor>", False),
    (b"<text>Cheese {i} one</text><text>two</text>", False),
    (b'<x:text xmlns:x="urn:x">Cheese {i}</x:text>', False),
    (b'<text>Cheese {i}</text><x:text xmlns:x="urn:x">two</x:text>', False),
    (b"<!-- <text>no</text> --><text>Cheese {i}</text>", False),
    (b"<textual>z</textual><text>Cheese {i}</text>", False),
    # Damage, counted as before: bad_encoding, then malformed_xml.
    (b"<text>Cheese {i} \xff</text>", False),
    (b"<text>Cheese {i} \x01</text>", False),
    (b"<text>Cheese {i} &bogus;</text>", False),
    (b"<text>Cheese {i} \xef\xbf\xbf</text>", False),
    (b"<text>Cheese {i} ]]> x</text>", False),
    (b"<text>Cheese {i} &lt</text>", False),
    (b"<text>Cheese {i} &amp</text>", False),
    (b"<text>Cheese {i} & x;</text>", False),
    (b"<text\x0c>Cheese {i}</text>", False),
    (b"<text>Cheese {i}</text><sha1>\xff</sha1>", False),
]


def _full_text(revision: bytes) -> str | bool | None:
  """The revision's text as a full parse reads it; False when it does not parse."""
  try:
    elem = ET.fromstring(revision)
  except ET.ParseError:
    return False
  text = wikipedia._fields(elem).get("text")
  return None if text is None else text.text


def test_fast_text_path_falls_back_wherever_expat_could_read_otherwise(tmp_path, monkeypatch):
  revisions, want_fast, broken, reverts = [], {}, [], set()
  for i, (body, fast) in enumerate(_TEXT_CASES):
    case = b"<revision><id>%d</id><comment>rv</comment>%s</revision>" % (1000 + i, body.replace(b"{i}", b"%d" % i))
    text = _full_text(case)
    if text is False:
      broken.append(str(1000 + i))
    elif text:
      if b"<sha1>" not in body:  # a dump's own sha1 is taken as is, and this one matches nothing
        reverts.add(f"wikipedia/7/{101 + 2 * i}")
      for n, t in ((100 + 2 * i, text), (101 + 2 * i, text + f" LOL {i}")):
        revisions.append(f"<revision><id>{n}</id><text>{escape(t)}</text></revision>".encode())
        want_fast[str(n)] = True
    revisions.append(case)
    want_fast[str(1000 + i)] = fast
  doc = (b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Cheese</title><ns>0</ns>'
         b"<id>7</id>\n" + b"\n".join(revisions) + b"\n</page></mediawiki>\n")
  path = tmp_path / "cases.xml"
  path.write_bytes(doc)
  for size in (1 << 20, 1, 7):  # unescaped in slices of any size, an entity never straddles two
    with monkeypatch.context() as m:
      m.setattr(wikipedia, "_UNESCAPE_SLICE", size)
      taken = _spy_fast(m)
      _run(path)
    assert taken == {k: v for k, v in want_fast.items() if k not in broken}, size
  assert len(broken) == 10
  runs = _paths(monkeypatch, path, slice_sizes=(1 << 20, 1, 7))
  assert all(run == runs[-1] for run in runs)
  out, stats = runs[-1]
  assert {c["id"] for _, c in out} == reverts and len(reverts) == 15
  assert {k: v for k, v in stats["skipped"].items() if k in ("bad_encoding", "malformed_xml", "no_text")} == {
      "bad_encoding": 2, "malformed_xml": 8, "no_text": 3}


# Pieces of wikitext as it may sit in <text>: escaped, or not as MediaWiki escapes it, or damaged.
_RAW_PIECES = [b"a", b"b", b" ", b"\n", b"\t", b"\r", b"\r\n", b"&amp;", b"&lt;", b"&gt;", b"&quot;", b"&apos;",
               b"&#65;", b"&#x41;", b"&", b"&lt", b";", b"&amp", b"<", b">", b"]]>", b"]]", b"\x01", b"\xff",
               b"\xc3\xa4", b"\xc3", b"\xef\xbf\xbf", b"\xef\xbf\xbd", b"<b>x</b>", b"<![CDATA[<x]]>", b"<!--c-->",
               b"</text>", b"<text>"]
_TEXT_TAGS = [b"<text>%s</text>", b'<text xml:space="preserve">%s</text>', b"<text bytes='1'>%s</text>",
              b"<text/>", b'<text deleted="deleted"/>']


@settings(max_examples=100, deadline=None)
@given(pool=st.lists(st.lists(st.sampled_from(_RAW_PIECES), max_size=10).map(b"".join), min_size=1, max_size=4),
       picks=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(_TEXT_TAGS)), min_size=2, max_size=16),
       size=st.sampled_from([1, 2, 5, 1 << 20]))
def test_fuzz_fast_text_path_matches_the_full_parse(pool, picks, size):
  revisions = []
  for n, (k, tag) in enumerate(picks):
    text = tag % pool[k % len(pool)] if b"%s" in tag else tag
    revisions.append(b"<revision><id>%d</id><comment>rv</comment>%s</revision>" % (10 + n, text))
  doc = b"<mediawiki><page><title>P</title><ns>0</ns><id>3</id>" + b"".join(revisions) + b"</page></mediawiki>"
  with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as m:
    path = pathlib.Path(d) / "f.xml"
    path.write_bytes(doc)
    runs = _paths(m, path, Options(window_chars=20, drop_edit_wars=False, dedupe=False), slice_sizes=(size,))
  assert runs[0] == runs[1]


# --- slow: the full 2001-2010 history of "Anarchism" (15180 revisions, ~1 GB of XML) ------------------------------

@pytest.mark.slow
def test_full_history_totals_and_memory():
  path = _need(FULL)
  stats = MineStats("wikipedia")
  ids = set()
  tracemalloc.start()
  try:
    for key, c in mine(path, Options(), stats):
      assert key == "12" and c.id not in ids
      ids.add(c.id)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert stats.records_read == 15180
  assert stats.comparisons == len(ids) == 2154
  assert dict(stats.skipped) == {"duplicate_pair": 293, "duplicate_window": 682, "edit_war": 449,
                                 "identical_texts": 33, "reverted_twice": 101}
  assert peak < 64 * 2**20  # the XML is ~1 GB
