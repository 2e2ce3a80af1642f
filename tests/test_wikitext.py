"""MediaWiki markup to prose (every construct by hand) and the newest revision of a dump's page."""

from __future__ import annotations

import lzma

import pytest

from conftest import SHARED_DATA
from hhh.data import wikitext

WIKI = SHARED_DATA / "wikipedia"

ARTICLE = """{{Infobox person
| name = {{nowrap|Jane Doe}}
| image = Jane.jpg
}}
'''Jane Doe''' (born 1950<ref name="b">{{cite web|url=http://x.org|title=Y}}</ref>) was an ''English''
[[writer]] and [[political activist|activist]].<ref name="b"/> She lived in [[London]]s.<!-- a hidden
comment over two lines --> She wrote '''''Bold Italic'''''.
[[File:Jane.jpg|thumb|Jane in [[Paris]], 1970]]
== Early life ==
She studied at [[University of Oxford|Oxford]]&nbsp;&ndash; see [http://example.com the site] and
[http://example.org].<br/>Then <span class="x">more</span> text{{citation needed|date=May 2009}}. Not a
template: {{unclosed

{| class="wikitable"
|-
! Year !! Work
|-
| 1970 || ''Book'' {{small|x}}
|}
* A list item
# A numbered item
: An indented line
; Term
----
Last paragraph with __NOTOC__ magic, <math>x^2</math> math and a
[[:Category:Writers|category link]] ({{lang|fr|Jeanne}}).
[[Image:Old.png|left|An old image]]
[[Category:Writers]]
[[fr:Jane Doe]]
[[zh-min-nan:Jane Doe]]
"""


def test_plain_text_handles_every_construct():
  assert wikitext.paragraphs(ARTICLE) == [
      "Jane Doe (born 1950) was an English writer and activist. She lived in Londons. She wrote Bold Italic.",
      "She studied at Oxford – see the site and. Then more text. Not a template: {{unclosed",
      "Last paragraph with magic, math and a category link.",
  ]
  assert wikitext.plain_text(ARTICLE) == "\n\n".join(wikitext.paragraphs(ARTICLE))
  assert wikitext.plain_text("") == ""


def test_nested_templates_and_tables():
  text = "A {{outer|{{inner|{{deep}}}}|x}}b.\n{|\n| {|\n| nested\n|}\n| cell\n|}\nC d."
  # A table breaks the paragraph it interrupts, as MediaWiki renders it.
  assert wikitext.paragraphs(text) == ["A b.", "C d."]


DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.4/">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page><title>First</title><id>1</id>
    <revision><id>10</id><timestamp>2005-01-02T00:00:00Z</timestamp><text>newest of first</text></revision>
    <revision><id>11</id><timestamp>2005-01-01T00:00:00Z</timestamp><text>older, later in the file</text></revision>
    <revision><id>12</id><timestamp>2006-01-01T00:00:00Z</timestamp><text deleted="deleted"/></revision>
  </page>
  <page><title>Second</title><id>2</id>
    <revision><id>20</id><timestamp>2004-01-01T00:00:00Z</timestamp><text>old second</text></revision>
    <revision><id>21</id><timestamp>2004-02-01T00:00:00Z</timestamp><text>new second</text></revision>
  </page>
</mediawiki>
"""


def test_latest_revision_by_timestamp_and_title(tmp_path):
  path = tmp_path / "dump.xml.xz"
  with lzma.open(path, "wt", encoding="utf-8") as f:
    f.write(DUMP)
  # The newest revision with text: a deleted one does not count, and file order does not decide.
  assert wikitext.latest_revision_text(path) == "newest of first"
  assert wikitext.latest_revision_text(path, "Second") == "new second"
  with pytest.raises(ValueError, match="no revision with text for page 'Third'"):
    wikitext.latest_revision_text(path, "Third")
  with pytest.raises(FileNotFoundError, match="missing.xml"):
    wikitext.latest_revision_text(tmp_path / "missing.xml")


def test_latest_revision_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("HHH_CACHE", str(tmp_path / "cache"))
  path = tmp_path / "dump.xml"
  path.write_text(DUMP.replace("newest of first", "'''Bold''' [[first|text]] here."))
  assert wikitext.article_paragraphs(path) == ["Bold text here."]
  cached = list((tmp_path / "cache" / "wikitext").iterdir())
  assert len(cached) == 1 and cached[0].read_text() == "'''Bold''' [[first|text]] here."
  # A second read comes from the cache, not the dump.
  cached[0].write_text("From the cache.")
  assert wikitext.article_paragraphs(path) == ["From the cache."]


def test_newest_revision_of_the_real_excerpt():
  path = WIKI / "enwiki_Anarchism_rev3427-3726.xml.xz"
  if not path.exists():
    pytest.skip(f"{path} not present (shared data)")
  text = wikitext.latest_revision_text(path)  # revision 20632129, 2005-08-09T17:36:08Z
  assert len(text) == 74364
  assert text.startswith("{{Anarchism}}\n\n'''Anarchism''' is derived from the [[Greek language|Greek]]")
  assert text.endswith("[[zh:无政府主义]]")
  paragraphs = wikitext.paragraphs(text)
  assert paragraphs[0].startswith('Anarchism is derived from the Greek αναρχία ("without archons (rulers)"). '
                                  'Thus "anarchism," in its most general meaning, is opposing to rulers.')
  assert len(paragraphs) == 132
  assert not any(m in p for p in paragraphs for m in ("{{", "[[", "<ref", "''", "&#"))


def test_newest_revision_of_the_full_history(tmp_path, monkeypatch):
  path = WIKI / "enwiki_Anarchism_full_history_2001-2010.xml.lzma"
  if not path.exists():
    pytest.skip(f"{path} not present (shared data)")
  monkeypatch.setenv("HHH_CACHE", str(tmp_path))
  paragraphs = wikitext.article_paragraphs(path)  # streams all 15180 revisions (about 5 s)
  assert len(paragraphs) == 47
  assert paragraphs[0].startswith("Anarchism is a political philosophy encompassing theories and attitudes "
                                  "which consider the state to be unnecessary, harmful, or otherwise undesirable")
  assert sum(len(p.split()) for p in paragraphs) == 5080
