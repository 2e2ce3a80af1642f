"""Stack Exchange data dumps (Posts.xml + Votes.xml, folder or .7z) -> one ranked comparison per question.

This is the preference-model pre-training data of Askell et al. 2021: the answers to one question form
ONE comparison of K answers, scored

    score = -1                                           if the answer's net votes are negative
          = round_half_up(log2(1 + upvotes)) + accepted  otherwise (accepted: 1 for the accepted answer)

Votes. With Votes.xml (and `Options.use_votes`), upvotes = the number of VoteTypeId=2 rows for the answer and
net = upvotes - (VoteTypeId=3 rows); the Score attribute is then ignored. Without Votes.xml the Score
attribute (already net) is used as both upvotes and net. "Accepted" is the question's AcceptedAnswerId; a
negative answer scores -1 even when accepted. Rounding is half-up (floor(x + 0.5)) rather than Python's
banker's round(); for integer upvotes log2(1 + n) is never exactly k + 1/2, so the two never differ, but
half-up is the documented, reproducible choice.

Order. Responses are sorted by score descending, ties by answer id ascending (the older answer first).
With more than `max_answers` answers the first `max_answers` of that order are kept (the rest are counted
as "over_max_answers"); `min_score_gap` is then checked on the kept answers' best - worst score.

What is dropped, one skip reason per Posts.xml row (so records_read == posts in comparisons + post skips):
  malformed_row      a child of <posts> that is not <row>
  missing_attribute  no Id / PostTypeId, a question without Title, an answer without ParentId or Score
  invalid_number     one of those (or AcceptedAnswerId) is not a plain integer
  other_post_type    PostTypeId not 1 (question) or 2 (answer): tag wikis, excerpts, nominations ...
  deleted            a DeletionDate attribute, or no / blank Body. Official dumps leave deleted posts out,
                     so this only fires on other exports (e.g. SEDE's PostsWithDeleted) or redacted rows
  empty_body         a Body with no text once tags are removed (and no image)
  community_wiki     a CommunityOwnedDate attribute (the question or the answer)
  duplicate_id       a second usable row with an Id already seen (the first one wins)
  no_question        an answer whose ParentId is not in the dump
  question_dropped   an answer whose question was dropped (for any reason here), counted on the question Id
  too_few_answers    a question with fewer than `min_answers` usable answers
  over_max_answers   answers past `max_answers` (counted on the question Id, n = how many)
  all_tied           a question whose kept answers all have the same score (a ranking must hold two distinct
                     scores; checked before `min_score_gap`)
  score_gap          a question whose kept answers' score gap is below `min_score_gap`
Also one per row, for a tag the scanner could not read (see Reading): "bad_encoding" (not UTF-8),
"malformed_row" (not a well-formed tag: a flipped byte, a stray quote, a bad entity) and "oversize_row" (a
row over 4 MB: skipped, see Memory); `where` = "Posts.xml byte OFFSET".
Not per row: "truncated_xml" (the file ends before its root element does: a cut-off file or an empty one;
everything before the cut is used; `where` = "Posts.xml byte OFFSET" of the cut row), "malformed_vote" (a
Votes.xml row without an integer PostId / VoteTypeId, or one the scanner could not read; Votes.xml rows are not
counted in records_read), "archive_error" (a .7z member failed to extract; whatever was extracted is still read).

A damaged Votes.xml (cut off, or with unreadable rows) has lost votes, and not only of the posts after the
damage, since old posts keep getting votes. In a complete dump every answer's up - down equals its Score, so
a question is then scored from Votes.xml only when that holds for each of its answers, and from Score (as
without Votes.xml) otherwise: no ranking mixes complete and partial counts. summary.json "notes"."votes" says
what the scores came from, what damage was seen and how many questions fell back to Score.

Reading. The files are not handed to an XML parser whole, since one bad byte would end the parse there. A
scanner cuts the input into tags at each "<" (well-formed XML never leaves one raw in an attribute value) and
parses each tag's attributes itself, as an XML parser would (the five entities, character references,
attribute-value normalisation; the result equals ElementTree's on the real dumps). A broken tag costs only
itself, and the next "<" is the next row. Two shortcuts give the same result faster where the input is in the
dumps' usual form, and leave everything else to that reader: a Posts.xml row in that form is classified from a
regex check and a split at its quotes (its Body is decoded in pass 3 only), and a Votes.xml made of such rows
alone is tallied by regex passes over 64 KB blocks (any other Votes.xml is read again row by row).

Memory. Posts.xml is parsed once, a 64 KB read at a time, holding one row at most, so the parse itself is
constant memory for any file size; a row over 4 MB is dropped while scanning on to the next "<", so it never
costs more than that. On top of the parse:
  1. ids only: {question id: (accepted id, offset, length)} and {answer id: [question id, Score, up, down,
     offset, length]}, i.e. a few small ints per question and answer (about 200 bytes each in CPython), no text;
  2. Votes.xml: tally up/down votes into (1) for answers only;
  3. text: only the rows of comparisons that will be yielded are read again, by (offset, length) in file
     order (a seek each; a zstd Posts.xml is read on instead), converted from HTML and held until their
     question and all their kept answers have been read; then the comparison is yielded and freed.
In the official dumps rows are sorted by Id (answers after their question), so (3) holds the text of the
questions still open at that point of the file; the worst case (every question after its answers) is the
text of the kept answers, O(answers kept) and never O(file). A .7z archive is extracted (only Posts.xml
and Votes.xml) to a temporary folder that is removed when the generator finishes or is closed.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import html.parser
import math
import os
import pathlib
import re
import tempfile
import xml.parsers.expat as expat
from typing import IO, Callable, Iterator

from hhh.data.mine.common import MineStats, not_utf8, open_binary
from hhh.data.schema import Comparison

SOURCE = "stackexchange"
_QUESTION, _ANSWER = 1, 2
_UPVOTE, _DOWNVOTE = 2, 3
# Ids and scores fit in 18 digits; longer strings are garbage (and int() refuses > 4300 digits anyway).
_INT_RE = re.compile(r"-?[0-9]{1,18}")
_READ_SIZE = 1 << 16
# A row longer than this is skipped ("oversize_row"). Stack Exchange caps a post body at 30,000 characters
# (about 200 KB as escaped XML at worst), so no real row comes near it; the scanner holds at most this much.
_MAX_ROW_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Options:
  """How answers become comparisons (each field is a --flag of `hhh data mine stackexchange`)."""
  max_answers: int = 8  # keep at most this many answers per question: the first by (score desc, id asc); 0 = all
  min_score_gap: float = 0.0  # drop a question whose kept answers' best - worst score is below this
  min_answers: int = 2  # drop a question with fewer usable answers than this
  use_votes: bool = True  # count VoteTypeId 2/3 rows of Votes.xml when present; --no-use-votes uses Score

  def __post_init__(self):
    if self.min_answers < 1:
      raise ValueError(f"min_answers must be >= 1, got {self.min_answers}")
    if self.max_answers < 0 or (self.max_answers and self.max_answers < self.min_answers):
      raise ValueError(f"max_answers must be 0 (all) or >= min_answers, got {self.max_answers}")


def answer_score(upvotes: int, net: int, accepted: bool) -> int:
  """The paper's answer score: -1 when net votes are negative, else round_half_up(log2(1 + upvotes)) + accepted."""
  if net < 0:
    return -1
  return math.floor(math.log2(1 + max(upvotes, 0)) + 0.5) + int(accepted)


# ---------------------------------------------------------------------------------------------------------
# HTML -> text

_BLOCK_TAGS = frozenset({"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "dl", "dd",
                         "dt", "details", "summary", "figure", "section", "article"})
_LIST_TAGS = frozenset({"ul", "ol"})
# Marks list indentation inside prose so the per-line whitespace cleanup does not eat it.
_INDENT = "\x01"
_WS_RE = re.compile(r"\s+")
_SPACES_RE = re.compile(r" {2,}")


class _HtmlToText(html.parser.HTMLParser):
  """Stack Exchange post HTML -> readable text: paragraphs, "- " / "1. " bullets, ``` fenced code blocks."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self._blocks: list[str] = []
    self._prose: list[str] = []
    self._code: list[str] | None = None  # not None while inside <pre>
    self._lists: list[list] = []  # [ordered, next number] per open list
    self._quotes: list[int | None] = []  # len(self._blocks) at each open <blockquote>; None inside a list
    self._at_bullet = False  # nothing written since the last bullet
    self._cell = 0

  def handle_starttag(self, tag, attrs):
    if self._code is not None:
      return  # markup inside <pre> (e.g. <code>) is not content
    if tag == "pre":
      self._flush()
      self._code = []
    elif tag in _LIST_TAGS:
      if not self._lists:
        self._flush()
      self._lists.append([tag == "ol", 1])
    elif tag == "li":
      depth = max(len(self._lists), 1)
      if self._lists and self._lists[-1][0]:
        bullet = f"{self._lists[-1][1]}. "
        self._lists[-1][1] += 1
      else:
        bullet = "- "
      self._prose.append("\n" + _INDENT * (depth - 1) + bullet)
      self._at_bullet = True
    elif tag in _BLOCK_TAGS:
      self._block_break()
      if tag == "blockquote":
        # Inside a list item the quote is just a continuation line: prefixing would quote the list too.
        self._quotes.append(None if self._lists else len(self._blocks))
    elif tag == "br":
      self._prose.append("\n" + (_INDENT * len(self._lists) if self._lists else ""))
    elif tag == "hr":
      self._flush()
      self._blocks.append("---")
    elif tag == "tr":
      self._prose.append("\n")
      self._cell = 0
    elif tag in ("td", "th"):
      if self._cell:
        self._prose.append(" | ")
      self._cell += 1
    elif tag == "code":
      self._prose.append("`")
    elif tag == "img":
      self._write("[image]")

  def handle_endtag(self, tag):
    if self._code is not None:
      if tag == "pre":
        self._end_code()
      return
    if tag in _LIST_TAGS:
      if self._lists:
        self._lists.pop()
      if not self._lists:
        self._flush()
    elif tag in _BLOCK_TAGS:
      self._block_break()
      if tag == "blockquote" and self._quotes:
        start = self._quotes.pop()
        if start is not None:
          self._end_quote(start)
    elif tag == "code":
      self._prose.append("`")

  def handle_data(self, data):
    data = data.replace(_INDENT, "")
    if self._code is not None:
      self._code.append(data)
    elif data.strip():
      self._write(_WS_RE.sub(" ", data))
    elif data:
      self._prose.append(" ")

  def _write(self, text: str):
    self._prose.append(text)
    self._at_bullet = False

  def _block_break(self):
    # Inside a list a paragraph is a continuation line of the item, not a new block.
    if self._lists:
      if not self._at_bullet:
        self._prose.append("\n" + _INDENT * len(self._lists))
    else:
      self._flush()

  def _flush(self):
    block = _prose_block("".join(self._prose))
    self._prose = []
    if block:
      self._blocks.append(block)

  def _end_code(self):
    block = _code_block(self._code or [])
    self._code = None
    if block:
      self._blocks.append(block)

  def _end_quote(self, start: int):
    self._flush()
    _quote_blocks(self._blocks, start)

  def text(self) -> str:
    self.close()
    if self._code is not None:
      self._end_code()  # an unclosed <pre> still keeps its code
    while self._quotes:
      start = self._quotes.pop()
      if start is not None:
        self._end_quote(start)
    self._flush()
    return "\n\n".join(self._blocks)


def _prose_block(text: str) -> str:
  """Collected prose as one block: runs of spaces collapsed, lines trimmed, blank runs one blank line; "" if empty."""
  if "\n" not in text:  # most paragraphs: one line, no loop
    if "  " in text:
      text = _SPACES_RE.sub(" ", text)
    text = text.strip(" ").replace(_INDENT, "  ")
    return text if text.strip() else ""
  lines, blank = [], False
  for line in text.split("\n"):
    if "  " in line:
      line = _SPACES_RE.sub(" ", line)
    line = line.strip(" ").replace(_INDENT, "  ")
    if not line.strip():
      blank = bool(lines)
      continue
    if blank:
      lines.append("")
      blank = False
    lines.append(line)
  return "\n".join(lines)


def _code_block(pieces: list[str]) -> str:
  """A <pre>'s text as a fenced block ("" if it holds nothing)."""
  # Browsers drop the newline right after <pre>; trailing blank lines carry nothing either.
  code = "".join(pieces).lstrip("\n").rstrip()
  if not code:
    return ""
  fence = "```"
  while fence in code:
    fence += "`"
  return f"{fence}\n{code}\n{fence}"


def _quote_blocks(blocks: list[str], start: int) -> None:
  """Replaces blocks[start:] (a closed <blockquote>'s blocks) with one "> "-prefixed block."""
  quoted = "\n\n".join(blocks[start:])
  del blocks[start:]
  if quoted:
    blocks.append("\n".join(("> " + line).rstrip() for line in quoted.split("\n")))


def _plain(body: str) -> str:
  """Crude tag stripping: the cheap emptiness test in pass 1 and the fallback if the converter gives nothing."""
  text = html.unescape(re.sub(r"<[^>]*>", " ", body)).replace(_INDENT, "")
  return re.sub(r"\s+", " ", text).strip()


_TAG_RE = re.compile(r"<[^>]*>")
# html.unescape's own reference pattern: a character outside its matches comes out of unescape unchanged.
_CHARREF_RE = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_SOLID_RE = re.compile(r"[^\s\x01]")


# A visible character at the start or right after a ">" (past blanks) is text: that ">" either ends a tag or is
# text itself, and no reference can reach over the blanks to swallow the character. Almost every body has one
# within a few characters, so _has_text is settled without rewriting the body.
_SURE_TEXT_RE = re.compile(r"(?:\A|>)[\s\x01]*[^\s\x01<&]")


def _has_text(body: str) -> bool:
  """bool(_plain(body)), without unescaping: a visible character outside tags and references is enough."""
  if _SURE_TEXT_RE.search(body) or _SOLID_RE.search(_CHARREF_RE.sub(" ", _TAG_RE.sub(" ", body))):
    return True
  return bool(_plain(body))


# A tag html.parser reads the same way whatever its version: a plain name, double-quoted values without < or >,
# ASCII whitespace (html.parser ends a name at ASCII whitespace only).
_SIMPLE_TAG_RE = re.compile(r'<(/?)([A-Za-z][A-Za-z0-9]*)((?:[ \t\n\r\f]+[A-Za-z_:][-A-Za-z0-9_:.]*'
                            r'(?:[ \t\n\r\f]*=[ \t\n\r\f]*"[^"<>]*")?)*)[ \t\n\r\f]*(/?)>')
_RAW_TEXT_TAGS = frozenset(html.parser.HTMLParser.CDATA_CONTENT_ELEMENTS) | {"textarea", "title", "xmp", "iframe",
                                                                             "noembed", "noframes", "plaintext"}


# Tags whose start or end tag _HtmlToText acts on; any other (a, strong, em, span ...) leaves no trace.
_START_TAGS = _BLOCK_TAGS | _LIST_TAGS | {"pre", "li", "br", "hr", "tr", "td", "th", "code", "img"}
_END_TAGS = _BLOCK_TAGS | _LIST_TAGS | {"pre", "code"}


def _simple_text(body: str) -> str | None:
  """_HtmlToText's text for `body` when every "<" in it opens a simple tag; else None (html.parser takes it).

  html.parser's calls on its handlers for such a body (with convert_charrefs, one handle_data per run of text,
  unescaped; a self-closing tag is a start and an end) are read with one regex split instead of its
  per-character state machine. Anything else (comments, a stray "<", raw-text elements such as <script>, a
  reference at the very end, which html.parser holds back) gives None. The same handlers are inlined into one loop over the regex split with the state in locals: this runs on every
  kept post, and the event list, a method call per event and the attribute look-ups cost more than the rest.
  Each branch below is the handler (or helper) of the same name in _HtmlToText; both build blocks with the
  same helpers.
  """
  parts = _SIMPLE_TAG_RE.split(body)
  n = len(parts)
  blocks: list[str] = []
  prose: list[str] = []
  code: list[str] | None = None
  lists: list[list] = []
  quotes: list[int | None] = []
  at_bullet = False
  cell = 0

  def flush():
    if prose:
      block = _prose_block("".join(prose))
      prose.clear()
      if block:
        blocks.append(block)

  def block_break(at_bullet: bool):  # _HtmlToText._block_break
    if lists:
      if not at_bullet:
        prose.append("\n" + _INDENT * len(lists))
    else:
      flush()

  for i in range(0, n, 5):
    data = parts[i]
    if data:  # handle_data
      if "<" in data or (i + 5 >= n and "&" in data):
        return None
      if "&" in data:
        data = html.unescape(data)
      if _INDENT in data:
        data = data.replace(_INDENT, "")
      if code is not None:
        code.append(data)
      elif data.strip():
        # Every whitespace character but " " is unprintable, so a printable run without "  " is already clean.
        prose.append(data if data.isprintable() and "  " not in data else _WS_RE.sub(" ", data))
        at_bullet = False
      elif data:
        prose.append(" ")
    if i + 1 >= n:
      break
    closing, tag, attrs, slash = parts[i + 1:i + 5]
    tag = tag.lower()
    if tag in _RAW_TEXT_TAGS or (closing and (attrs or slash)):
      return None
    if not closing and code is None and tag in _START_TAGS:  # handle_starttag
      if tag in _BLOCK_TAGS:
        block_break(at_bullet)
        if tag == "blockquote":
          quotes.append(None if lists else len(blocks))
      elif tag == "code":
        prose.append("`")
      elif tag == "li":
        if lists and lists[-1][0]:
          bullet = f"{lists[-1][1]}. "
          lists[-1][1] += 1
        else:
          bullet = "- "
        prose.append("\n" + _INDENT * (max(len(lists), 1) - 1) + bullet)
        at_bullet = True
      elif tag == "pre":
        flush()
        code = []
      elif tag in _LIST_TAGS:
        if not lists:
          flush()
        lists.append([tag == "ol", 1])
      elif tag == "img":
        prose.append("[image]")
        at_bullet = False
      elif tag == "br":
        prose.append("\n" + (_INDENT * len(lists) if lists else ""))
      elif tag == "hr":
        flush()
        blocks.append("---")
      elif tag == "tr":
        prose.append("\n")
        cell = 0
      else:  # td, th
        if cell:
          prose.append(" | ")
        cell += 1
    if (closing or slash) and tag in _END_TAGS:  # handle_endtag
      if code is not None:
        if tag == "pre":  # _end_code
          block = _code_block(code)
          code = None
          if block:
            blocks.append(block)
      elif tag in _BLOCK_TAGS:
        block_break(at_bullet)
        if tag == "blockquote" and quotes:
          start = quotes.pop()
          if start is not None:  # _end_quote
            flush()
            _quote_blocks(blocks, start)
      elif tag == "code":
        prose.append("`")
      elif tag in _LIST_TAGS:
        if lists:
          lists.pop()
        if not lists:
          flush()
  # text()
  if code is not None:
    block = _code_block(code)
    if block:
      blocks.append(block)
  while quotes:
    start = quotes.pop()
    if start is not None:
      flush()
      _quote_blocks(blocks, start)
  flush()
  return "\n\n".join(blocks)


def html_to_text(body: str) -> str:
  """Post HTML as readable text: code blocks kept as ``` fences, paragraphs and bullets as lines, entities unescaped."""
  try:
    text = _simple_text(body)
    if text is None:
      parser = _HtmlToText()
      parser.feed(body)
      text = parser.text()
  except Exception:  # html.parser has raised on odd markup in some Python versions; never fail on data
    text = ""
  if text.strip():
    return text
  return _plain(body) or ("[image]" if "<img" in body.lower() else "")


# ---------------------------------------------------------------------------------------------------------
# Streaming the XML


def _rows(stream: IO[bytes], label: str, problem: Callable[[str, str], None] | None,
          parse: Callable[[bytes, re.Match], tuple[str, dict[str, str] | str]] | None = None,
          ) -> Iterator[tuple[str, dict[str, str] | str, int, int]]:
  """Yields (tag, attributes, byte offset, length) of each child of the root element, in constant memory.

  A resynchronising scanner rather than one XML parse of the file: the input is cut into tags at each "<"
  (which well-formed XML never leaves raw inside an attribute value), and each tag is parsed on its own, so
  a broken tag costs only itself. A child that is not a usable tag comes out as ("", reason, offset, length):
  "bad_encoding" (not UTF-8), "malformed_row" (not a well-formed tag) or "oversize_row" (longer than
  _MAX_ROW_BYTES: dropped while scanning on to the next "<", so at most that much is held). `length` is the
  tag's byte count through its ">", so `_tag_at` can parse it again from (offset, length) alone.
  `problem(reason, where)` hears "truncated_xml" once when the input ends before the root element does (a
  cut-off file, an empty one). `parse` reads each tag (default `_parse_row`).
  """
  parse = parse or _parse_row
  buf = bytearray()
  pos = 0  # buf[:pos] is consumed; it is dropped at the next read rather than per tag (a memmove each)
  base = 0  # file offset of buf[0]
  eof = False
  root: bytes | None = None
  root_closed = cut = False

  def fill() -> int:
    """Reads on; returns how far the consumed bytes dropped shifted the indices into buf."""
    nonlocal pos, base, eof
    shift = pos
    if pos:
      del buf[:pos]
      base += pos
      pos = 0
    chunk = stream.read(_READ_SIZE)
    if chunk:
      buf.extend(chunk)
    else:
      eof = True
    return shift

  def report(reason: str, offset: int) -> None:
    if problem is not None:
      problem(reason, f"{label} byte {offset}")

  while True:
    lt = buf.find(b"<", pos)
    if lt < 0:  # text between tags (whitespace in a dump) carries nothing
      pos = len(buf)
      if eof:
        break
      fill()
      continue
    pos = lt
    # The tag runs to the next "<"; read on until one shows up, the file ends, or the tag is too long.
    scanned, end = pos + 1, -1
    while True:
      end = buf.find(b"<", scanned)
      if end >= 0 or eof or len(buf) - pos > _MAX_ROW_BYTES:
        break
      scanned = len(buf)
      scanned -= fill()
    if end < 0 and not eof:
      if root is not None:
        yield "", "oversize_row", base + pos, 0
      while True:  # drop bytes up to the next "<" without holding them
        pos = len(buf)
        fill()
        if buf.find(b"<") >= 0 or eof:
          break
      continue
    offset = base + pos
    seg_end = end if end >= 0 else len(buf)
    seg = bytes(buf[pos:seg_end])
    pos = seg_end
    gt = seg.rfind(b">")
    name = _NAME_RE.match(seg, 1)
    if seg.startswith((b"<?", b"<!")) or (name is None and not seg.startswith(b"</")):
      continue  # the XML declaration, comments, a stray "<" in text
    if gt < 0:
      if end < 0:  # the file stops inside the tag
        cut = True
        report("truncated_xml", offset)
      elif root is not None:
        yield "", "malformed_row", offset, 0
      continue
    if seg.startswith(b"</"):
      if root is not None and seg[2:gt].strip() == root:
        root_closed = True
      continue
    if root is None:
      root = name.group()
      root_closed = seg[:gt].endswith(b"/")
      continue
    tag, parsed = parse(seg[:gt + 1], name)
    yield tag, parsed, offset, gt + 1
  if not root_closed and not cut:
    report("truncated_xml", base + pos)


def _parse_row(tag: bytes, name: re.Match) -> tuple[str, dict[str, str] | str]:
  """(element name, attributes) of one start tag, or ("", skip reason); `name` is the scanner's match of its name.

  expat (C) parses the tag when it can; whatever expat refuses goes to `_parse_tag`, which names the reason.
  expat is at least as strict as `_parse_tag` on every point but one, non-ASCII names, which are sent there too.
  """
  element = name.group().decode("ascii")
  got: list = []
  parser = expat.ParserCreate()
  parser.StartElementHandler = lambda n, a: got.append((n, a))
  try:
    # A lone start tag is not a document; closing it makes one without changing its attributes.
    parser.Parse(tag if tag.endswith(b"/>") else tag[:-1] + b"/>", True)
  except expat.ExpatError:
    got = []
  if len(got) == 1 and got[0][0] == element and "".join(got[0][1]).isascii():
    return element, got[0][1]
  parsed = _parse_tag(tag, name.end())
  return ("" if isinstance(parsed, str) else element), parsed


# Votes.xml as the dumps write it. A row of exactly this shape (fixed attribute order, so no attribute twice;
# values of printable ASCII without " & < >) is one the scanner cuts and expat parses without complaint, to
# the same PostId and VoteTypeId. So when a block is nothing but such rows and whitespace, one regex pass
# checks it and two more count its up and down votes: the per-row reader's tallies, without its Python step
# per row.
_VOTE_VALUE = rb'"[ !#-%\'-;=?-~]*"'
_VOTE_ROW_RE = re.compile(rb'<row Id=' + _VOTE_VALUE + rb' PostId="(-?[0-9]{1,18})" VoteTypeId="(-?[0-9]{1,18})"'
                          rb'(?: UserId=' + _VOTE_VALUE + rb')?(?: CreationDate=' + _VOTE_VALUE + rb')?'
                          rb'(?: BountyAmount=' + _VOTE_VALUE + rb')? ?/>')
# In a block of checked rows "PostId=" starts only the PostId attribute (no value holds a quote), so these
# find the up and down votes (VoteTypeId 2 and 3, as the int they are read as) of those rows alone.
_UPVOTES_RE = re.compile(rb'PostId="(-?[0-9]{1,18})" VoteTypeId="0*2"')
_DOWNVOTES_RE = re.compile(rb'PostId="(-?[0-9]{1,18})" VoteTypeId="0*3"')
_VOTES_HEAD_RE = re.compile(rb'(?:\xef\xbb\xbf)?(?:<\?xml [ -;=?-~]*\?>)?[ \t\r\n]*<votes>')
_VOTES_TAIL_RE = re.compile(rb'</votes>[ \t\r\n]*')


def _tally_clean_votes(path: pathlib.Path, answers: dict[int, list[int]]) -> bool:
  """Adds each answer's up and down votes from Votes.xml when the whole file is in the dumps' exact format.

  False as soon as anything else shows up (a damaged row, another layout, a read error): the caller then
  zeroes the counts and reads the file again row by row, which names every problem. So this never decides
  what is wrong, only that nothing is.
  """
  try:
    with open_binary(path) as f:
      buf = f.read(_READ_SIZE)
      head = _VOTES_HEAD_RE.match(buf)
      if head is None:
        return False
      buf = buf[head.end():]
      while True:
        block = f.read(_READ_SIZE)
        buf += block
        # Rows up to the last "<", so none is split; from there on waits for the next block, or ends the file.
        cut = buf.rfind(b"<")
        if block and cut <= 0:
          if len(buf) > 2 * _READ_SIZE:  # no row is this long: the scanner may call it oversize
            return False
          continue
        if not block and (cut < 0 or not _VOTES_TAIL_RE.fullmatch(buf, cut)):
          return False  # cut off, or something after </votes>
        piece = buf[:cut]
        if _VOTE_ROW_RE.sub(b"", piece).strip():
          return False
        for slot, votes_re in ((2, _UPVOTES_RE), (3, _DOWNVOTES_RE)):
          for post, n in collections.Counter(votes_re.findall(piece)).items():
            entry = answers.get(int(post))
            if entry is not None:
              entry[slot] += n
        if not block:
          return True
        buf = buf[cut:]
  except Exception:  # a read error: the row-by-row reader meets it again and handles it as it always has
    return False


# Pass 1 reads a row only to classify it, and almost every real row is "plain": "<row", one space before each
# attribute, double-quoted values with no raw "<" or control character and no references but these seven, then
# "/>". expat accepts such a row (given valid UTF-8 without U+FFFE/U+FFFF and no attribute twice) and decodes
# each value by exactly these replacements, so one regex and a split at the quotes give its attributes.
_PLAIN_VALUE = rb'[^"<&\x00-\x1f]*(?:&(?:lt|gt|amp|quot|apos|#xA|#xD);[^"<&\x00-\x1f]*)*'
_PLAIN_ROW_RE = re.compile(rb'<row(?: [A-Za-z][A-Za-z0-9]*="' + _PLAIN_VALUE + rb'")* ?/>')
# _SURE_TEXT_RE on a plain Body before decoding: "&gt;" is the ">", the blanks may be "&#xA;" / "&#xD;", and a
# character other than "&" stands for itself (a plain value has no raw "<").
_PLAIN_BODY_TEXT_RE = re.compile(r"(?:\A|&gt;)(?:[\s\x01]|&#xA;|&#xD;)*[^\s\x01&]")
# What pass 1 keeps as the Body of a row whose raw Body already shows text: _classify only asks of a Body
# whether it is blank and whether it has text, and the post's text is read again in pass 3 anyway.
_BODY_WITH_TEXT = "text"


def _unescape_plain(value: str) -> str:
  """A plain attribute value decoded; "&amp;" last, so that "&amp;lt;" stays "&lt;"."""
  return (value.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
          .replace("&#xA;", "\n").replace("&#xD;", "\r").replace("&amp;", "&"))


def _parse_row_to_classify(tag: bytes, name: re.Match) -> tuple[str, dict[str, str] | str]:
  """`_parse_row(tag, name)` as `_classify` sees it, faster for a plain row: its Body may be _BODY_WITH_TEXT.

  Decoding a Body costs as much as the rest of the row, and pass 1 needs only to know that it has text.
  """
  if _PLAIN_ROW_RE.fullmatch(tag):
    try:
      text = tag.decode("utf-8")
    except UnicodeDecodeError:
      return _parse_row(tag, name)  # it names the reason
    if "\ufffe" not in text and "\uffff" not in text:
      parts = text.split('"')
      # '<row Id= PostTypeId= ... Body=' -> ['Id', 'PostTypeId', ..., 'Body']
      names = "".join(parts[0:-1:2])[5:-1].split("= ")
      attrs = dict(zip(names, parts[1::2]))
      if len(attrs) == len(names):  # else an attribute came twice (or none at all): left to _parse_row
        for key, value in attrs.items():
          if "&" in value:
            attrs[key] = (_BODY_WITH_TEXT if key == "Body" and _PLAIN_BODY_TEXT_RE.search(value)
                          else _unescape_plain(value))
        return "row", attrs
  return _parse_row(tag, name)


def _tags_at(stream: IO[bytes], spans: list[tuple[int, int]]) -> Iterator[tuple[str, dict[str, str] | str]]:
  """Parses again the tags `_rows` found at each (offset, length), in rising offset order: a forward seek
  each, or reading on where seeking is not cheap (a zstd stream)."""
  seekable = stream.seekable()
  here = 0
  for offset, length in spans:
    if seekable:
      stream.seek(offset)
    else:
      while here < offset:
        chunk = stream.read(min(offset - here, 1 << 20))
        if not chunk:
          break
        here += len(chunk)
    tag = stream.read(length)
    here = offset + len(tag)
    name = _NAME_RE.match(tag, 1)
    if name is None or len(tag) != length or not tag.endswith(b">"):
      yield "", "malformed_row"  # the file changed since it was scanned
      continue
    yield _parse_row(tag, name)


# One attribute: name = "value" or 'value' (no raw "<": that is where the scanner cut).
_NAME_RE = re.compile(rb"[A-Za-z_:][-A-Za-z0-9_.:]*")
_ATTR_RE = re.compile(rb"""\s+([A-Za-z_:][-A-Za-z0-9_.:]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_TAG_END_RE = re.compile(rb"\s*/?>")
_REF_RE = re.compile(r"&(#[0-9]+|#x[0-9a-fA-F]+|[A-Za-z]+);|&")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
# Characters XML forbids even when escaped (Char production of XML 1.0), and raw ones that must be escaped.
_BAD_CHAR_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class _BadTag(Exception):
  pass


def _ref(m: re.Match) -> str:
  ref = m.group(1)
  if ref is None:
    raise _BadTag("bare &")
  if ref[0] != "#":
    if ref not in _ENTITIES:
      raise _BadTag(f"unknown entity {ref}")
    return _ENTITIES[ref]
  code = int(ref[2:], 16) if ref[1] == "x" else int(ref[1:])
  if not (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
          or 0x10000 <= code <= 0x10FFFF):
    raise _BadTag(f"reference to invalid character {code}")
  return chr(code)


def _parse_tag(tag: bytes, pos: int) -> dict[str, str] | str:
  """The attributes of one start tag, decoded as an XML parser would; or the skip reason when it is not valid.

  Attribute values are unescaped (the five XML entities, character references) and normalised as XML says
  (a literal tab, newline or carriage return becomes a space); a dump writes its newlines as "&#xA;".
  """
  attrs: dict[str, str] = {}
  try:
    while True:
      m = _ATTR_RE.match(tag, pos)
      if m is None:
        break
      key = m.group(1).decode("ascii")
      raw = m.group(2) if m.group(2) is not None else m.group(3)
      value = raw.decode("utf-8")
      if _BAD_CHAR_RE.search(value) or key in attrs:
        return "malformed_row"
      if "\r" in value or "\n" in value or "\t" in value:
        value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace("\t", " ")
      if "&" in value:
        value = _REF_RE.sub(_ref, value)
      attrs[key] = value
      pos = m.end()
  except UnicodeDecodeError:
    return "bad_encoding"
  except (_BadTag, ValueError):  # ValueError: a character reference of thousands of digits
    return "malformed_row"
  if not _TAG_END_RE.fullmatch(tag, pos):
    return "bad_encoding" if not_utf8(tag) else "malformed_row"
  return attrs


def _to_int(value: str | None) -> int | None:
  if value is None:
    return None
  if value.isdigit() and value.isascii() and len(value) <= 18:  # plain digits: no strip, no regex
    return int(value)
  return int(value) if _INT_RE.fullmatch(value.strip()) else None


def _classify(tag: str, attrs: dict[str, str] | str, ordinal: int,
              label: str = "", offset: int = 0) -> tuple[str, int | str, int, int]:
  """("q", id, accepted_id or 0, 0), ("a", id, parent_id, Score) or (skip reason, where, 0, 0)."""
  if isinstance(attrs, str):  # the scanner's reason for a tag it could not read
    return attrs, f"{label} byte {offset}", 0, 0
  if tag != "row":
    return "malformed_row", f"row {ordinal}", 0, 0
  if "Id" not in attrs:
    return "missing_attribute", f"row {ordinal}", 0, 0
  post_id = _to_int(attrs["Id"])
  if post_id is None:
    return "invalid_number", f"row {ordinal}", 0, 0
  if "PostTypeId" not in attrs:
    return "missing_attribute", post_id, 0, 0
  post_type = _to_int(attrs["PostTypeId"])
  if post_type is None:
    return "invalid_number", post_id, 0, 0
  if post_type not in (_QUESTION, _ANSWER):
    return "other_post_type", post_id, 0, 0
  body = attrs.get("Body")
  if "DeletionDate" in attrs or body is None or not body.strip():
    return "deleted", post_id, 0, 0
  if "CommunityOwnedDate" in attrs:
    return "community_wiki", post_id, 0, 0
  if post_type == _QUESTION:
    if not (attrs.get("Title") or "").strip():
      return "missing_attribute", post_id, 0, 0
    accepted = attrs.get("AcceptedAnswerId")
    accepted_id = 0 if accepted is None else _to_int(accepted)
    if accepted_id is None:
      return "invalid_number", post_id, 0, 0
  else:
    if "ParentId" not in attrs or "Score" not in attrs:
      return "missing_attribute", post_id, 0, 0
    parent, score = _to_int(attrs["ParentId"]), _to_int(attrs["Score"])
    if parent is None or score is None:
      return "invalid_number", post_id, 0, 0
  if not _has_text(body) and "<img" not in body.lower():
    return "empty_body", post_id, 0, 0
  if post_type == _QUESTION:
    return "q", post_id, accepted_id, 0
  return "a", post_id, parent, score


# ---------------------------------------------------------------------------------------------------------
# Locating the dump


@dataclasses.dataclass(frozen=True)
class _Dump:
  site: str
  posts: pathlib.Path  # Posts.xml, or the .7z holding it
  posts_member: str | None  # the member name when `posts` is an archive
  votes: pathlib.Path | None
  votes_member: str | None


def find_file(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  exact = folder / name
  if exact.is_file():
    return exact
  for p in sorted(folder.iterdir()):
    if p.name.lower() == name.lower() and p.is_file():
      return p
  return None


def _archive_member(archive: pathlib.Path, name: str) -> str | None:
  """The archive member whose file name is `name` (case-insensitive; the shallowest if several)."""
  import py7zr
  try:
    with py7zr.SevenZipFile(archive, "r") as z:
      names = z.getnames()
  except Exception as e:  # py7zr raises many types for a damaged header
    raise ValueError(f"{archive}: not a readable 7z archive ({type(e).__name__}: {e})") from None
  hits = [n for n in names if n.replace("\\", "/").rsplit("/", 1)[-1].lower() == name.lower()]
  return min(hits, key=lambda n: (n.count("/"), n)) if hits else None


def _locate(path: pathlib.Path) -> _Dump:
  if not path.exists():
    raise FileNotFoundError(f"stackexchange dump not found: {path}")
  if path.is_dir():
    posts = find_file(path, "Posts.xml")
    if posts is None:
      raise ValueError(f"{path}: no Posts.xml in this folder (expected one site's unpacked Stack Exchange dump)")
    return _Dump(path.resolve().name, posts, None, find_file(path, "Votes.xml"), None)
  if path.suffix.lower() == ".7z":
    stem = path.name[:-3]
    # Stack Overflow ships one archive per table: stackoverflow.com-Posts.7z next to stackoverflow.com-Votes.7z.
    split_tables = stem.lower().endswith("-posts")
    site = stem[:-len("-posts")] if split_tables else stem
    member = _archive_member(path, "Posts.xml")
    if member is None:
      raise ValueError(f"{path}: no Posts.xml in this archive")
    votes, votes_member = path, _archive_member(path, "Votes.xml")
    if votes_member is None and split_tables:
      sibling = path.with_name(f"{site}-Votes.7z")
      if sibling.is_file():
        votes, votes_member = sibling, _archive_member(sibling, "Votes.xml")
    return _Dump(site, path, member, votes if votes_member else None, votes_member)
  # A Posts.xml given directly: the site is its folder's name.
  votes = find_file(path.parent, "Votes.xml")
  return _Dump(path.resolve().parent.name, path, None, votes, None)


def _extract(archive: pathlib.Path, member: str, target: pathlib.Path, stats: MineStats) -> pathlib.Path | None:
  """Extracts one member into the folder `target`; its path there, or None when nothing came out."""
  import py7zr
  target.mkdir()
  try:
    with py7zr.SevenZipFile(archive, "r") as z:
      z.extract(path=target, targets=[member])
  except Exception as e:  # a damaged stream: count it and read whatever was written
    stats.skip("archive_error", f"{archive.name}:{member} ({type(e).__name__})")
  out = target / member
  return out if out.is_file() else None


# ---------------------------------------------------------------------------------------------------------
# Mining


def mine(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  """Yields (question id, comparison) for each question of one site's dump; see the module doc for the rules.

  `path` is the unpacked site folder (Posts.xml, optional Votes.xml), the site's .7z archive, or a Posts.xml.
  Raises FileNotFoundError for a missing path and ValueError for a folder/archive without Posts.xml (both
  at call time); bad data never raises but is counted in `stats`.
  """
  dump = _locate(pathlib.Path(os.fspath(path)))
  return _mine(dump, options, stats)


def _mine(dump: _Dump, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  if dump.posts_member is None:
    yield from _mine_files(dump.site, dump.posts, dump.votes, options, stats)
    return
  with tempfile.TemporaryDirectory(prefix="hhh-stackexchange-") as tmp:
    # Pass 3 seeks into Posts.xml, so it is extracted once rather than decompressed as a stream.
    posts = _extract(dump.posts, dump.posts_member, pathlib.Path(tmp) / "posts", stats)
    votes = None
    if dump.votes is not None and dump.votes_member is not None and options.use_votes:
      votes = _extract(dump.votes, dump.votes_member, pathlib.Path(tmp) / "votes", stats)
    if posts is not None:
      # The archive, not the temporary folder it was extracted to, so that summary.json is the same every run.
      votes_name = f"{dump.votes}:{dump.votes_member}" if votes is not None else None
      yield from _mine_files(dump.site, posts, votes, options, stats, votes_name)


def _mine_files(site: str, posts_path: pathlib.Path, votes_path: pathlib.Path | None, options: Options,
                stats: MineStats, votes_name: str | None = None) -> Iterator[tuple[str, Comparison]]:
  label = posts_path.name
  report = lambda reason, where: stats.skip(reason, where)
  # Pass 1: ids, parents, accepted ids and Score; every Posts.xml row is counted and classified here.
  # Where each usable row lies in Posts.xml, so that pass 3 parses the kept rows only, not the file again.
  questions: dict[int, tuple[int, int, int]] = {}  # id -> (accepted id, offset, length)
  answers: dict[int, list[int]] = {}  # id -> [question id, Score, upvotes, downvotes, offset, length]
  dropped_questions: set[int] = set()
  with open_binary(posts_path) as f:
    for ordinal, (tag, attrs, offset, length) in enumerate(_rows(f, label, report, _parse_row_to_classify), 1):
      stats.records_read += 1
      kind, where, a, b = _classify(tag, attrs, ordinal, label, offset)
      if kind in ("q", "a") and (where in questions or where in answers):
        kind = "duplicate_id"
      if kind == "q":
        questions[where] = (a, offset, length)
      elif kind == "a":
        answers[where] = [a, b, 0, 0, offset, length]
      else:
        stats.skip(kind, where)
        if tag == "row" and isinstance(where, int) and attrs.get("PostTypeId", "").strip() == "1":
          dropped_questions.add(where)
  dropped_questions.difference_update(questions)

  by_question: dict[int, list[int]] = {}
  for answer_id in list(answers):
    parent = answers[answer_id][0]
    if parent in questions:
      by_question.setdefault(parent, []).append(answer_id)
    else:
      stats.skip("question_dropped" if parent in dropped_questions else "no_question", answer_id)
      del answers[answer_id]
  del dropped_questions

  # Pass 2: votes, for the answers still in play only.
  use_votes = options.use_votes and votes_path is not None
  votes_damaged = collections.Counter()  # what went wrong in Votes.xml, by reason

  def vote_problem(reason: str, where: str) -> None:
    votes_damaged[reason] += 1
    stats.skip(reason, where)

  if use_votes and not _tally_clean_votes(votes_path, answers):
    for entry in answers.values():  # what the fast path counted before it met a row it does not read
      entry[2] = entry[3] = 0
    with open_binary(votes_path) as f:
      for ordinal, (tag, attrs, offset, _) in enumerate(_rows(f, votes_path.name, vote_problem), 1):
        if isinstance(attrs, str):
          votes_damaged[attrs] += 1
          stats.skip("malformed_vote", f"{votes_path.name} byte {offset} ({attrs})")
          continue
        post, vote_type = _to_int(attrs.get("PostId")), _to_int(attrs.get("VoteTypeId"))
        if tag != "row" or post is None or vote_type is None:
          votes_damaged["malformed_vote"] += 1
          stats.skip("malformed_vote", f"{votes_path.name} row {ordinal}")
          continue
        entry = answers.get(post)
        if entry is not None and vote_type == _UPVOTE:
          entry[2] += 1
        elif entry is not None and vote_type == _DOWNVOTE:
          entry[3] += 1
  from_score = 0  # questions scored from Score because Votes.xml was damaged
  if not use_votes:
    stats.notes["votes"] = {"scores_from": "Score", "votes_file": str(votes_path) if votes_path else None}
  # Which answers each question keeps, in final order.
  plan: dict[int, list[tuple[int, int]]] = {}  # question id -> [(answer id, score)] best first
  owner: dict[int, int] = {}  # kept answer id -> question id
  for question_id, (accepted_id, _, _) in questions.items():
    ranked = []
    entries = [(answer_id, answers[answer_id]) for answer_id in by_question.get(question_id, ())]
    # A damaged Votes.xml lost some votes, and not only of posts past the damage (old posts get new votes).
    # An answer whose counted up - down differs from its Score lost some; its question is then scored from
    # Score throughout, so no ranking mixes complete and partial counts.
    by_votes = use_votes and not (votes_damaged and any(e[2] - e[3] != e[1] for _, e in entries))
    if use_votes and not by_votes and len(entries) >= options.min_answers:
      from_score += 1
    for answer_id, (_, net_score, up, down, _, _) in entries:
      upvotes, net = (up, up - down) if by_votes else (net_score, net_score)
      ranked.append((answer_score(upvotes, net, answer_id == accepted_id), answer_id))
    ranked.sort(key=lambda t: (-t[0], t[1]))
    if len(ranked) < options.min_answers:
      stats.skip("too_few_answers", question_id)
      if ranked:
        stats.skip("question_dropped", question_id, n=len(ranked))
      continue
    if options.max_answers and len(ranked) > options.max_answers:
      stats.skip("over_max_answers", question_id, n=len(ranked) - options.max_answers)
      ranked = ranked[:options.max_answers]
    if ranked[0][0] == ranked[-1][0]:
      # Every answer scored the same: no pair says which is better, so the ranking teaches nothing.
      stats.skip("all_tied", question_id)
      stats.skip("question_dropped", question_id, n=len(ranked))
      continue
    if ranked[0][0] - ranked[-1][0] < options.min_score_gap:
      stats.skip("score_gap", question_id)
      stats.skip("question_dropped", question_id, n=len(ranked))
      continue
    plan[question_id] = [(answer_id, score) for score, answer_id in ranked]
    owner.update((answer_id, question_id) for _, answer_id in ranked)
  # The kept rows in file order: a comparison leaves as soon as its question and answers are all read, as when
  # the whole file was read again.
  spans = sorted([questions[q][1:] + (q,) for q in plan] + [tuple(answers[a][4:]) + (a,) for a in owner])
  del questions, answers, by_question
  if use_votes:
    stats.notes["votes"] = {
        "scores_from": "Votes.xml" if not votes_damaged else "Votes.xml, Score where its counts disagree",
        "votes_file": votes_name or str(votes_path), "complete": not votes_damaged, "damage": dict(sorted(votes_damaged.items())),
        "questions_scored_from_score": from_score}

  # Pass 3: text for the kept posts only, each parsed again from its (offset, length).
  contexts: dict[int, str] = {}
  texts: dict[int, dict[int, str]] = {}
  with open_binary(posts_path) as f:
    rows = _tags_at(f, [(offset, length) for offset, length, _ in spans])
    for (_, _, wanted), (tag, attrs) in zip(spans, rows):
      kind, post_id, a, _ = _classify(tag, attrs, 0)
      if post_id != wanted:
        continue  # the file changed since pass 1 ("incomplete" below)
      if kind == "q" and post_id in plan and post_id not in contexts:
        question_id = post_id
        body = html_to_text(attrs["Body"])
        contexts[question_id] = attrs["Title"].strip() + ("\n\n" + body if body else "")
      elif kind == "a" and owner.get(post_id) == a:
        question_id = owner.pop(post_id)
        texts.setdefault(question_id, {})[post_id] = html_to_text(attrs["Body"])
      else:
        continue
      kept = plan[question_id]
      got = texts.get(question_id, {})
      if question_id in contexts and len(got) == len(kept):
        del plan[question_id]
        comparison = Comparison(
            context=contexts.pop(question_id), responses=tuple(got[answer_id] for answer_id, _ in kept),
            scores=tuple(float(score) for _, score in kept), source=SOURCE,
            id=f"{SOURCE}/{site}/{question_id}")
        texts.pop(question_id, None)
        stats.comparisons += 1
        yield str(question_id), comparison
  # Only reachable if the file changed between passes.
  for question_id in plan:
    stats.skip("incomplete", question_id)
