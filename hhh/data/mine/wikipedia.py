"""Wikipedia reverted edits: comparisons from MediaWiki full-history exports (restored text good, reverted edit bad).

Askell et al. 2021 pre-train preference models on Wikipedia edits that were later
reverted. This miner streams a `pages-meta-history` export (plain, .bz2, .xz, .lzma,
.gz or .7z; export schema 0.4 to 0.11) and finds identity reverts. From a .7z only the first
file is read, streamed through py7zr; a cut-off .7z is "corrupt_input", since its index is at the end.

Revert rule. Every revision gets a text hash: its `<sha1>` when the dump has one, else
MediaWiki's own (base36 SHA-1 of the UTF-8 text, 31 digits), so dumps with and without
`<sha1>` agree. Revision R is an identity revert when its hash equals that of an
earlier revision B of the same page at distance 2..revert_radius (distance 1 is a null
edit). The search takes the most recent such B. The revisions strictly between B and R
are the reverted edits; with each_reverted (the default, as in the paper) every one of
them gives a comparison, otherwise only the one right before R. Each comparison is R's
text (good, score 1) against the reverted edit's text (bad, score 0); meta names R ("revert") and B
("restored") by revision id, the id names the reverted edit. These are dropped,
and counted under the reason in brackets:
  - R's comment has no revert word, when comment_signal is set ("no_revert_comment", per revert);
  - R restores a text that an earlier kept comparison judged bad. This is an edit war, and the
    first revert wins ("edit_war", per revert; drop_edit_wars);
  - a reverted edit with the same hash as a later one in the same revert ("duplicate_pair");
  - a (good hash, bad hash) pair that this page already produced ("duplicate_pair"; dedupe);
  - windows (context, good, bad) that this page already produced, from texts that differ only
    outside the window ("duplicate_window"; dedupe);
  - a reverted edit that an earlier revert already used. Ids stay unique ("reverted_twice"; a
    revision id that the page repeats, which only happens in broken dumps, is "duplicate_rev_id");
  - windows that differ only in whitespace ("identical_texts").

Window rule. Let P be the common prefix and S the common suffix of the good and bad texts
(they do not overlap). A cut that is not already between words (whitespace, or a text's
end, on one side in both texts) moves out to whitespace: the end of P back, the start of S
forward, at most 80 characters each. That way no word is split between context and
response. The differing middles are M_good and M_bad, and S is the shared text after them.
  context  = title + "\\n\\n" + the last window_chars of P (starting after a newline or space)
  response = M[:window_chars] + S[:window_chars - max(len M_good, len M_bad)]
Both responses end in the same shared text after the change, so they differ only in the
change itself. A middle longer than window_chars is cut and gets no S, so no text runs on
across the cut. The other response then takes S up to its own budget, window_chars - len M.
If a response would still be blank (a pure append at the end of the text, or an insertion
longer than the window), P moves back to the start of the line before the change (of the
word, for a line longer than window_chars/2), and the windows are cut again. Each response
is at most window_chars long, and so is the context after the title. Cuts fall on
whitespace when there is whitespace in the second half of the window.
A blanked page stays a comparison, with an empty bad response.

Reading. The dump is not handed to an XML parser whole, since one bad byte would end the parse there. A
scanner cuts it at the <siteinfo>, <page> and <revision> tags (wikitext is escaped inside <text>, so these
never appear raw in it) and each unit is parsed on its own: a damaged revision costs only itself, keeps its
place in the revert window (it can never match), and the next <revision> is read as usual. A revision whose
end tag is damaged ends where the next <revision>, <page> or </page> starts. The usual revision's text (plain
characters and the five named entities) is unescaped without expat, which then reads only the rest; any
other text takes the full parse, so both give the same revisions and the same damage counts.

Memory is bounded by one page's window. Only the revision being read and the last revert_radius revisions
(hash and text) are held; a page's full history never is. A revision over MAX_REVISION_BYTES (32 MB; MediaWiki
caps a page at 2 MB of wikitext) is dropped while scanning on to its end, so it never costs more than that.

Bad data never raises. These are counted in `stats` with the revision id as `where`:
"no_text" (deleted or stub text), "malformed_revision" (id missing or not a number),
"no_page_id" (also for a page whose head is unreadable), "namespace" (page outside `namespaces`). A revision
that could not be read counts as "bad_encoding" (not UTF-8), "malformed_xml" (not well-formed) or
"oversize_revision", with `where` = "FILE byte OFFSET" of its start. If the input stops short (no closing
</mediawiki>), "truncated_xml" is counted and everything complete so far has been yielded already; an
unreadable compressed stream is "corrupt_input". For these two, `where` is the last revision id read. Only a
missing path raises (FileNotFoundError).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import lzma
import pathlib
import re
import xml.etree.ElementTree as ET
import zlib
from typing import IO, Iterator

from hhh.data.mine.common import MineStats, not_utf8, open_binary
from hhh.data.schema import Comparison

SOURCE = "wikipedia"

# Revert-like edit summaries: "rv", "rvv", "rvt", "Reverted edits by ...", "Undid revision ...", "vandalism".
REVERT_COMMENT = re.compile(r"\b(?:rvv?|rvt|revert\w*|undid|undo(?:ne)?|vandal\w*)\b", re.IGNORECASE)

DUMP_SUFFIXES = (".xml", ".bz2", ".7z", ".xz", ".lzma", ".gz")
# How far a cut may move to reach whitespace. Past this the text has no word boundaries worth keeping.
_SNAP = 80
# Keys remembered per page (emitted ids; for dedupe also hash pairs and window digests).
# Bounded so a huge page cannot grow it.
_MAX_PAIRS = 4096
# A revision longer than this is skipped ("oversize_revision"). MediaWiki caps a page at 2 MB of wikitext
# ($wgMaxArticleSize), a few MB once XML-escaped, so no real revision comes near it.
MAX_REVISION_BYTES = 32 << 20
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class Options:
  window_chars: int = 1500       # context/response window around the changed region
  revert_radius: int = 15        # an identity revert may restore a revision at most this many revisions back
  comment_signal: bool = False   # also require a revert-like comment ("rv", "revert", "undid", "vandal") on R
  namespaces: tuple[int, ...] = (0,)  # page namespaces to mine; () keeps all
  each_reverted: bool = True     # one comparison per reverted edit between B and R; False: only the edit right before R
  drop_edit_wars: bool = True    # skip a revert restoring a text that an earlier kept comparison judged bad
  dedupe: bool = True            # skip a (good text, bad text) pair the page already produced

  def __post_init__(self):
    if self.window_chars < 1:
      raise ValueError(f"window_chars must be >= 1, got {self.window_chars}")
    if self.revert_radius < 2:
      raise ValueError(f"revert_radius must be >= 2 (distance 1 is a null edit), got {self.revert_radius}")


def mediawiki_sha1(text: str) -> str:
  """MediaWiki's revision sha1: SHA-1 of the UTF-8 text in base 36, zero-padded to 31 digits."""
  return _sha1_base36(text.encode("utf-8", "surrogatepass"))


def _sha1_base36(data: bytes) -> str:
  """mediawiki_sha1 of a text given as its UTF-8 bytes."""
  n = int.from_bytes(hashlib.sha1(data).digest(), "big")
  digits = []
  while n:
    n, r = divmod(n, 36)
    digits.append(_B36[r])
  return "".join(reversed(digits)).rjust(31, "0")


def mine(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  """Yields (split_key, comparison); split_key = the page id, so one page never straddles splits.

  `path` is a dump file or a folder of them. A folder is read in sorted name order, and only its
  .xml/.bz2/.7z/.xz/.lzma/.gz files are used. A missing path raises FileNotFoundError right away,
  not at the first next().
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"wikipedia dump not found: {path}")
  files = ([p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in DUMP_SUFFIXES]
           if path.is_dir() else [path])
  return _mine_files(files, options, stats)


def _mine_files(files, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  for f in files:
    yield from _mine_file(f, options, stats)


def _mine_file(path: pathlib.Path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  reader = _DumpReader(options, stats, path.name)
  try:
    stream = open_binary(path)
  except (OSError, EOFError, lzma.LZMAError) as e:
    stats.skip("corrupt_input", f"{path.name}: {e}")
    return
  try:
    yield from reader.read(stream)
  except EOFError:  # a compressed stream that stops short is a truncated dump too
    stats.skip("truncated_xml", reader.last_rev_id)
  except (OSError, lzma.LZMAError, zlib.error):
    stats.skip("corrupt_input", reader.last_rev_id)
  finally:
    stream.close()


def _local(tag) -> str:
  # Namespaces differ per export version (export-0.4 ... export-0.11). Match local names only.
  return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _fields(elem) -> dict:
  """A revision's children by local name; the first of a repeated name wins."""
  fields = {}
  for child in elem:
    fields.setdefault(_local(child.tag), child)
  return fields


def _int_text(elem) -> str | None:
  """The element's text when it is a plain decimal id, else None."""
  s = (elem.text or "").strip() if elem is not None else ""
  return s if s.isdigit() and s.isascii() else None


def _signed_int(s: str | None) -> int | None:
  s = (s or "").strip()
  return int(s) if re.fullmatch(r"-?[0-9]+", s) else None


@dataclasses.dataclass
class _Rev:
  rev_id: str | None
  sha1: str | None          # None when there is no text to compare
  text: str | None
  judged_bad: bool = False  # a kept comparison used this text as the bad side
  used: bool = False        # this revision is already the bad side of a kept comparison


@dataclasses.dataclass
class _Page:
  window: collections.deque  # the last revert_radius revisions
  title: str = ""
  ns: int | None = None
  page_id: str | None = None
  seen: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)  # recent emitted keys


class _DumpReader:
  """Walks the dump's units (see _units): siteinfo, each page's head, then its revisions mined one by one."""

  def __init__(self, options: Options, stats: MineStats, label: str = ""):
    self.options, self.stats, self.label = options, stats, label
    self.namespace_names: dict[str, int] = {}  # siteinfo; export-0.4 pages have no <ns>, only a title prefix
    self.last_rev_id: str | None = None

  def read(self, stream: IO[bytes]) -> Iterator[tuple[str, Comparison]]:
    page: _Page | None = None
    for event, data, offset in _units(stream):
      if event == "siteinfo":
        self._siteinfo(data)
      elif event == "page":
        page = self._page(data)
      elif event == "page_end":
        page = None
      elif event == "revision" and page is not None:
        fast = _split_text(data) if _FAST_TEXT else None
        if fast is not None:
          try:
            fields = _fields(ET.fromstring(fast[0]))
          except ET.ParseError:
            fields = None
          if fields is not None and "text" in fields:
            yield from self._revision(page, fields, fast[1:])
            continue
        try:
          elem = ET.fromstring(data)
        except ET.ParseError:
          self._broken(page, "bad_encoding" if not_utf8(data) else "malformed_xml", offset)
          continue
        yield from self._revision(page, _fields(elem))
      elif event == "broken" and page is not None:
        self._broken(page, data, offset)
      elif event == "end" and data:
        self.stats.skip("truncated_xml", self.last_rev_id)

  def _broken(self, page: _Page, reason: str, offset: int) -> None:
    """A revision that could not be read: counted, and its place in the window kept (it can never match)."""
    self.stats.records_read += 1
    self.stats.skip(reason, f"{self.label} byte {offset}")
    page.window.append(_Rev(None, None, None))

  def _siteinfo(self, data: bytes) -> None:
    try:
      elem = ET.fromstring(data)
    except ET.ParseError:
      return  # no namespace names: export-0.4 talk pages then read as namespace 0 by their title
    for child in elem.iter():
      if _local(child.tag) == "namespace":
        key = (child.get("key") or "").strip()
        if _signed_int(key) is not None and child.text:
          self.namespace_names[child.text.strip().casefold()] = int(key)

  def _page(self, head: bytes) -> _Page:
    page = _Page(collections.deque(maxlen=self.options.revert_radius))
    try:
      elem = ET.fromstring(head + b"</page>")
    except ET.ParseError:
      return page  # no page id: its revisions count as "no_page_id"
    for child in elem:
      tag = _local(child.tag)
      if tag == "title":
        page.title = (child.text or "").strip()
      elif tag == "ns":
        page.ns = _signed_int(child.text)
      elif tag == "id":
        page.page_id = _int_text(child)
    return page

  def _namespace(self, page: _Page) -> int:
    if page.ns is not None:
      return page.ns
    prefix, colon, _ = page.title.partition(":")
    return self.namespace_names.get(prefix.strip().casefold(), 0) if colon else 0

  def _revision(self, page: _Page, fields: dict, fast: tuple[str, bytes] | None = None
                ) -> Iterator[tuple[str, Comparison]]:
    """Mines one revision. `fast`: its text and the text's UTF-8, already read by _split_text."""
    opts, stats = self.options, self.stats
    stats.records_read += 1
    rev_id = _int_text(fields.get("id"))
    if rev_id is not None:
      self.last_rev_id = rev_id
    where = rev_id if rev_id is not None else f"page:{page.page_id}"
    if opts.namespaces and self._namespace(page) not in opts.namespaces:
      stats.skip("namespace", where)
      return
    if page.page_id is None:
      stats.skip("no_page_id", where)
      return
    if rev_id is None:
      stats.skip("malformed_revision", where)
      # Keep its place in the window so revert distances stay right. It can never match.
      page.window.append(_Rev(None, None, None))
      return
    text_elem = fields.get("text")
    text = fast[0] if fast is not None else None if text_elem is None else text_elem.text
    if text_elem is not None and text is None:
      # <text/> is an empty page (blanking). <text deleted=.../> and stub <text bytes="N" id=.../> have no text.
      if text_elem.get("deleted") is None and (text_elem.get("bytes") or "0").strip() == "0":
        text = ""
    if text is None:
      stats.skip("no_text", rev_id)
      page.window.append(_Rev(rev_id, None, None))
      return
    sha1_elem = fields.get("sha1")
    sha1 = (sha1_elem.text or "").strip() if sha1_elem is not None else ""
    sha1 = sha1 or (_sha1_base36(fast[1]) if fast is not None else mediawiki_sha1(text))
    comment_elem = fields.get("comment")
    comment = (comment_elem.text or "") if comment_elem is not None else ""
    new = _Rev(rev_id, sha1, text)

    distance, base = 0, None
    for d, r in enumerate(reversed(page.window), 1):
      if r.sha1 == sha1:
        distance, base = d, r
        break
    if base is not None:
      new.judged_bad = base.judged_bad  # same text, same verdict
    if distance >= 2:
      reverted = list(page.window)[len(page.window) - (distance - 1):]
      if opts.comment_signal and not REVERT_COMMENT.search(comment):
        stats.skip("no_revert_comment", rev_id)
      elif opts.drop_edit_wars and base.judged_bad:
        stats.skip("edit_war", rev_id)
      else:
        yield from self._comparisons(page, new, base, reverted if opts.each_reverted else reverted[-1:])
    page.window.append(new)

  def _comparisons(self, page: _Page, good: _Rev, base: _Rev,
                   reverted: list[_Rev]) -> Iterator[tuple[str, Comparison]]:
    opts, stats = self.options, self.stats
    later = set()
    keep = []
    for r in reversed(reverted):  # for repeated texts, the latest revision carries the comparison
      if r.sha1 is None:
        continue  # counted as no_text / malformed_revision when it was read
      if r.sha1 in later:
        stats.skip("duplicate_pair", r.rev_id)
        continue
      later.add(r.sha1)
      keep.append(r)
    for bad in reversed(keep):
      if bad.used:
        stats.skip("reverted_twice", bad.rev_id)
        continue
      if ("id", bad.rev_id) in page.seen:  # only broken dumps repeat a revision id
        stats.skip("duplicate_rev_id", bad.rev_id)
        continue
      pair = (good.sha1, bad.sha1)
      if opts.dedupe and pair in page.seen:
        stats.skip("duplicate_pair", bad.rev_id)
        continue
      context, good_window, bad_window = windows(page.title, good.text, bad.text, opts.window_chars)
      if good_window.split() == bad_window.split():
        stats.skip("identical_texts", bad.rev_id)
        continue
      # Two reverted edits can differ only beyond the window and then look the same.
      seen = hashlib.sha1("\0".join((context, good_window, bad_window)).encode("utf-8", "surrogatepass")).digest()
      if opts.dedupe and seen in page.seen:
        stats.skip("duplicate_window", bad.rev_id)
        continue
      page.seen["id", bad.rev_id] = None
      if opts.dedupe:
        page.seen[pair] = page.seen[seen] = None
      while len(page.seen) > _MAX_PAIRS:
        page.seen.popitem(last=False)
      bad.used = bad.judged_bad = True
      stats.comparisons += 1
      yield page.page_id, Comparison(
          context=context, responses=(good_window, bad_window), scores=(1.0, 0.0), source=SOURCE,
          id=f"wikipedia/{page.page_id}/{bad.rev_id}", meta={"revert": good.rev_id, "restored": base.rev_id})


def _common_prefix_len(a: str, b: str) -> int:
  # Binary search over slice comparisons. C-speed memcmp instead of a per-character Python loop.
  n = min(len(a), len(b))
  if a[:n] == b[:n]:
    return n
  lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if a[lo:mid] == b[lo:mid]:
      lo = mid
    else:
      hi = mid
  return lo


def _common_suffix_len(a: str, b: str, limit: int) -> int:
  la, lb = len(a), len(b)
  if limit <= 0:
    return 0
  if a[la - limit:] == b[lb - limit:]:
    return limit
  lo, hi = 0, limit
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if a[la - mid:la - lo] == b[lb - mid:lb - lo]:
      lo = mid
    else:
      hi = mid
  return lo


def _head(text: str, n: int) -> str:
  """The first <= n characters, cut at the last whitespace when that falls in the second half."""
  if n <= 0:
    return ""
  if len(text) <= n:
    return text
  cut = text[:n]
  i = max(cut.rfind(" "), cut.rfind("\n"))
  return cut[:i] if i >= n // 2 else cut


def _tail(text: str, n: int) -> str:
  """The last <= n characters, starting after a newline (or else a space) in the first half."""
  if n <= 0:
    return ""
  if len(text) <= n:
    return text
  cut = text[-n:]
  for sep in ("\n", " "):
    i = cut.find(sep)
    if 0 <= i < n // 2:
      return cut[i + 1:]
  return cut


def windows(title: str, good: str, bad: str, window_chars: int) -> tuple[str, str, str]:
  """(context, good response, bad response) around the region where the texts differ (see the module doc)."""
  p = _common_prefix_len(good, bad)
  s = _common_suffix_len(good, bad, min(len(good), len(bad)) - p)
  # Move both cuts out to whitespace, so a word is not split between context and response.
  # A cut already sits between words when whitespace (or a text's end) is on one side in both texts.
  if not (p == 0 or good[p - 1].isspace() or all(p == len(x) or x[p].isspace() for x in (good, bad))):
    q = p
    while q > 0 and not good[q - 1].isspace() and p - q < _SNAP:
      q -= 1
    if q == 0 or good[q - 1].isspace():
      p = q
  if not (s == 0 or good[len(good) - s].isspace()
          or all(len(x) == s or x[len(x) - s - 1].isspace() for x in (good, bad))):
    t = s
    while t > 0 and not good[len(good) - t].isspace() and s - t < _SNAP:
      t -= 1
    if t == 0 or good[len(good) - t].isspace():
      s = t
  context, good_window, bad_window = _cut(title, good, bad, p, s, window_chars)
  j = len(good[:p].rstrip())
  if j and not (good_window.strip() and bad_window.strip()):
    # A pure append (or an insertion longer than the window) would leave one response blank.
    # Start both at the line (or, for a long line, the word) before the change instead.
    line = good.rfind("\n", 0, j) + 1
    p = line if j - line <= window_chars // 2 else good.rfind(" ", 0, j) + 1
    context, good_window, bad_window = _cut(title, good, bad, p, s, window_chars)
  return context, good_window, bad_window


def _cut(title: str, good: str, bad: str, p: int, s: int, window_chars: int) -> tuple[str, str, str]:
  good_mid, bad_mid = good[p:len(good) - s], bad[p:len(bad) - s]
  after = good[len(good) - s:]
  if len(good_mid) <= window_chars and len(bad_mid) <= window_chars:
    # The same shared tail on both, so the responses differ only in the change.
    budget = window_chars - max(len(good_mid), len(bad_mid))
    budgets = (budget, budget)
  else:
    # A middle cut short must not run on into the text after the change. The other one gets the tail.
    budgets = tuple(window_chars - len(m) if len(m) <= window_chars else 0 for m in (good_mid, bad_mid))
  return (f"{title}\n\n{_tail(good[:p], window_chars)}",
          _head(good_mid, window_chars) + _head(after, budgets[0]),
          _head(bad_mid, window_chars) + _head(after, budgets[1]))


# Read each revision's text without handing it to expat (see _split_text). Off, every revision takes the
# full parse; the tests compare the two.
_FAST_TEXT = True
# A plain <text ...> start tag. Anything else (self-closing, odd attributes) takes the full parse.
_TEXT_START = re.compile(rb"""<text(?:\s+[A-Za-z_][\w.:-]*\s*=\s*(?:"[^"<&]*"|'[^'<&]*'))*\s*>""")
_ENTITIES = {b"lt": b"<", b"gt": b">", b"amp": b"&", b"quot": b'"', b"apos": b"'"}
_UNESCAPE_SLICE = 1 << 20
# Bytes that expat refuses in character data, and \r, which it reads as \n.
_NOT_XML = bytes(c for c in range(0x20) if c not in b"\t\n")


def _split_text(data: bytes) -> tuple[bytes, str, bytes] | None:
  """(the revision with its text's content cut out, the text, the text's UTF-8) when expat would read the
  content as exactly that text, else None: then only the full parse can tell (and count damage).

  Expat costs more than the rest of the miner together, and almost all of it goes to the text. A
  MediaWiki text holds only the five named entities, so it unescapes with plain byte operations.
  """
  i = data.find(b"<text")
  m = _TEXT_START.match(data, i) if i >= 0 else None
  if m is None:
    return None
  k = m.end()
  j = data.find(b"<", k)
  if j <= k or not data.startswith(b"</text>", j):
    return None  # empty (its attributes decide), or not plain character data
  raw = data[k:j]
  # Expat refuses "]]>" and most control bytes in character data.
  if (b">" in raw and b"]]>" in raw) or len(raw.translate(None, _NOT_XML)) != len(raw):
    return None
  if b"&" in raw:
    raw = _unescape(raw)
    if raw is None:
      return None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    return None
  if "\ufffe" in text or "\uffff" in text:
    return None
  rest = data[:k] + data[j:]
  # Outside comments, CDATA and processing instructions every "<" starts a tag, so this <text> is the
  # revision's only element named text (a prefixed one would show as ":text"). The caller still checks
  # that it is a child of the revision.
  if b"<!" in rest or b"<?" in rest or rest.count(b"<text") != 1 or b":text" in rest:
    return None
  return rest, text, raw


def _unescape(raw: bytes) -> bytes | None:
  """raw with its named entities replaced, or None when it holds any other "&" (only expat can read those)."""
  done = []
  at = 0
  while at < len(raw):
    # A slice at a time (cut before an "&"), so a text of nothing but entities never holds more than one
    # slice's pieces: each costs a bytes object, some ten times the 4 to 6 bytes of its entity.
    cut = raw.find(b"&", at + _UNESCAPE_SLICE) if len(raw) - at > _UNESCAPE_SLICE else -1
    cut = len(raw) if cut < 0 else cut
    pieces = (raw if at == 0 and cut == len(raw) else raw[at:cut]).split(b"&")
    out = [pieces[0]]
    for piece in pieces[1:]:
      name, semi, after = piece.partition(b";")
      char = _ENTITIES.get(name)
      if char is None or not semi:
        return None  # a character reference, or an entity only a DTD could define
      out.append(char)
      out.append(after)
    done.append(b"".join(out))
    at = cut
  return b"".join(done)


# The tags the scanner cuts a dump at. Wikitext is escaped in <text>, so these never appear raw inside it.
_UNIT_TAG = re.compile(rb"<(/?)(mediawiki|siteinfo|page|revision)(?=[\s>/])")
_TAIL = 16  # longer than any of those tags' names, so one split across two reads is still found
_READ_SIZE = 1 << 16


def _units(stream: IO[bytes], max_bytes: int | None = None) -> Iterator[tuple[str, object, int]]:
  """Cuts a dump into (event, data, byte offset): ("siteinfo", bytes), ("page", its head up to the first
  <revision>), ("revision", the <revision>...</revision> bytes), ("broken", reason), ("page_end", None), and
  last ("end", True when the input stopped before </mediawiki>).

  Each unit is parsed on its own, so a damaged one (a flipped byte, a bad encoding, a broken tag) costs only
  itself: a revision whose end tag is lost ends where the next <revision>, <page> or </page> starts. A unit
  over `max_bytes` is dropped while scanning on ("oversize_revision"), so at most that much is ever held.
  """
  max_bytes = max_bytes or MAX_REVISION_BYTES
  buf = bytearray()
  base = 0  # file offset of buf[0]
  pos = 0  # where the next tag search starts, in buf
  start: int | None = None  # where the unit being held starts, in buf (None: nothing held)
  kind: str | None = None  # the unit being read: "siteinfo", "page" (the head), "revision" or "orphan"
  unit_offset = 0
  oversize = in_page = closed = False
  eof = False

  def drop(n: int) -> None:
    nonlocal base, pos, start
    del buf[:n]
    base += n
    pos -= n
    if start is not None:
      start -= n

  while True:
    m = _UNIT_TAG.search(buf, pos)
    end = buf.find(b">", m.end()) if m else -1
    if m is None or end < 0:
      if eof:
        break
      if m is not None:
        pos = m.start()  # the tag's ">" is still to come
      else:
        # Rescan only the last few bytes, for a tag cut off by the read. Never before `pos`: the tags there are
        # handled already, and the unit held since `start` may begin with one (a "<revision>" ending right at
        # the read boundary was read a second time, as a revision with a lost end tag).
        pos = max(pos, len(buf) - _TAIL)
      if start is not None and len(buf) - start > max_bytes:
        oversize, start = True, None  # let the unit go; its end tag still ends it
      drop(min(pos, len(buf)) if start is None else start)
      chunk = stream.read(_READ_SIZE)
      if chunk:
        buf.extend(chunk)
      else:
        eof = True
      continue
    closing, name, tag_start, pos = m.group(1) == b"/", m.group(2), m.start(), end + 1
    offset = base + tag_start
    if kind == "revision" and (name in (b"page", b"mediawiki") or (name == b"revision" and not closing)):
      # The revision's end tag is lost: it ends where the next unit starts.
      yield "broken", "oversize_revision" if oversize else "malformed_xml", unit_offset
      kind, start, oversize = None, None, False
    if name == b"revision":
      if not closing:
        if kind == "page":
          yield "page", bytes(buf[start:tag_start]) if not oversize else b"", unit_offset
        kind = "revision" if in_page else "orphan"  # a revision outside any page has no page to join
        start, unit_offset, oversize = tag_start, offset, False
      elif kind == "revision":
        if oversize:
          yield "broken", "oversize_revision", unit_offset
        else:
          yield "revision", bytes(buf[start:pos]), unit_offset
        kind, start, oversize = None, None, False
      elif kind == "orphan":
        kind, start = None, None
      elif in_page:  # an end tag without its start: the start tag was damaged
        yield "broken", "malformed_xml", offset
    elif name == b"page":
      if kind == "page" and not closing:
        yield "page", bytes(buf[start:tag_start]), unit_offset  # a page with no revisions
      if in_page:
        yield "page_end", None, offset
      in_page = not closing
      kind, start, oversize = ("page", tag_start, False) if not closing else (None, None, False)
      unit_offset = offset
    elif name == b"siteinfo" and kind is None:
      if not closing:
        kind, start, unit_offset = "siteinfo", tag_start, offset
    elif name == b"siteinfo" and kind == "siteinfo" and closing:
      if not oversize:
        yield "siteinfo", bytes(buf[start:pos]), unit_offset
      kind, start, oversize = None, None, False
    elif name == b"mediawiki" and closing:
      if in_page:
        yield "page_end", None, offset
      in_page, kind, start, closed = False, None, None, True
    if start is None:
      drop(pos)
  if kind == "page" and start is not None:
    yield "page", bytes(buf[start:]), unit_offset  # a dump cut inside a page head
  yield "end", not closed, base + len(buf)
