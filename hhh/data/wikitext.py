"""MediaWiki markup to prose, and the latest revision of an article from a full-history dump.

    plain_text("'''Anarchism''' is a [[political philosophy|philosophy]].<ref>Smith 2001.</ref>")
    -> "Anarchism is a philosophy."

What `plain_text` keeps and drops:
  * dropped whole: HTML comments, <ref>...</ref> and <ref .../>, templates {{...}} (nested, any depth),
    tables {| ... |}, [[File:...]] / [[Image:...]] (with their captions), [[Category:...]], interlanguage
    links ([[fr:Anarchisme]]), <math>, <gallery>, <timeline>, <source>, <syntaxhighlight>, <pre>,
    headings (== ... ==), list, indent and definition lines (*, #, :, ;), table remnants (| and !),
    horizontal rules, magic words (__TOC__);
  * rendered: [[target|text]] -> text, [[target]] -> target, [http://url text] -> text ([http://url] -> ""),
    '''bold''' / ''italic'' -> their text, other HTML tags -> their content, <br> -> a space, entities
    (&nbsp;, &ndash;) -> characters;
  * paragraphs are runs of non-blank lines, joined with single spaces; whitespace before , . ; : ! ? and
    parentheses left empty by a removed template are dropped.

`latest_revision_text(path)` streams a pages-meta-history export (any compression the Wikipedia miner
reads) and returns the text of the newest revision of one page. Reading the newest revision means reading
the whole file (about 5 s for the 1 GB "Anarchism" history), so `article_paragraphs` caches that revision's
wikitext under `$HHH_CACHE` (default `~/.cache/hhh`), keyed by the dump's name, size and mtime. The cache
holds the wikitext rather than the cleaned text: cleaning takes milliseconds, and a change to `plain_text`
then applies without streaming the dump again.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import xml.etree.ElementTree as ET

_REMOVED_ELEMENTS = ("ref", "math", "gallery", "timeline", "source", "syntaxhighlight", "pre", "score")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_SELF_CLOSING = re.compile(r"<(?:%s)\b[^>]*?/\s*>" % "|".join(_REMOVED_ELEMENTS), re.IGNORECASE)
_ELEMENTS = [re.compile(r"<%s\b[^>]*>.*?(?:</%s\s*>|\Z)" % (t, t), re.IGNORECASE | re.DOTALL)
             for t in _REMOVED_ELEMENTS]
_BRACES = re.compile(r"\{\{|\}\}")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROPPED_NAMESPACES = ("file", "image", "category", "media")
_INTERLANGUAGE = re.compile(r"^[a-z][a-z-]*:")
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]")
_BR = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_QUOTES = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^=+.*=+$")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")


def _strip_templates(text: str) -> str:
  """Removes {{...}} at any nesting depth; an unclosed {{ is kept as text (MediaWiki renders it literally)."""
  out, depth, start, last = [], 0, 0, 0
  for m in _BRACES.finditer(text):
    if m.group() == "{{":
      if depth == 0:
        out.append(text[last:m.start()])
        start = m.start()
      depth += 1
    elif depth:
      depth -= 1
      if depth == 0:
        last = m.end()
  if depth:
    # Keep the unmatched {{ as text and go on after it: templates later on are still removed.
    out.append("{{" + _strip_templates(text[start + 2:]))
  else:
    out.append(text[last:])
  return "".join(out)


def _strip_tables(text: str) -> str:
  """Removes {| ... |} tables (nested too); table markup must start a line, as in MediaWiki."""
  out, depth = [], 0
  for line in text.split("\n"):
    s = line.lstrip()
    if s.startswith("{|"):
      depth += 1
    elif depth and s.startswith("|}"):
      depth -= 1
    elif not depth:
      out.append(line)
  return "\n".join(out)


def _render_link(m: re.Match) -> str:
  target, pipe, label = m.group(1).partition("|")
  target = target.strip()
  bare = target.lstrip(":")
  namespace = bare.split(":", 1)[0].strip().casefold() if ":" in bare else ""
  if not target.startswith(":") and namespace in _DROPPED_NAMESPACES:
    return ""
  if not pipe and _INTERLANGUAGE.match(target):
    return ""
  if pipe:
    # [[File:x.jpg|thumb|caption]]-style extra fields are already gone; the text is after the last pipe.
    label = label.rsplit("|", 1)[-1].strip()
  return label or bare


def _render_links(text: str) -> str:
  # Innermost first, so the links inside a file caption are rendered before the file link is dropped.
  while True:
    new = _INNER_LINK.sub(_render_link, text)
    if new == text:
      return new
    text = new


def paragraphs(wikitext: str) -> list[str]:
  """The prose paragraphs of `wikitext` (see the module docstring for what is kept)."""
  text = _COMMENT.sub("", wikitext)
  text = _SELF_CLOSING.sub("", text)
  for pattern in _ELEMENTS:
    text = pattern.sub("", text)
  text = _strip_templates(text)
  text = _strip_tables(text)
  text = _render_links(text)
  text = _EXTERNAL.sub(lambda m: m.group(1), text)
  text = _BR.sub(" ", text)
  text = _TAG.sub("", text)
  text = _QUOTES.sub("", text)
  text = _MAGIC.sub("", text)
  text = html.unescape(text).replace("\xa0", " ")
  out, current = [], []

  def flush():
    if current:
      p = " ".join(" ".join(current).split())
      p = _EMPTY_PARENS.sub("", p)
      p = " ".join(_SPACE_BEFORE_PUNCT.sub(r"\1", p).split())
      if p:
        out.append(p)
      current.clear()

  for line in text.split("\n"):
    s = line.strip()
    if not s or _HEADING.match(s) or s[0] in "*#:;|!" or s.startswith("----"):
      flush()
    else:
      current.append(s)
  flush()
  return out


def plain_text(wikitext: str) -> str:
  """Prose paragraphs separated by blank lines."""
  return "\n\n".join(paragraphs(wikitext))


def _local(tag) -> str:
  return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def latest_revision_text(path, title: str | None = None) -> str:
  """Wikitext of the newest revision (by timestamp, later in the file on ties) of page `title`.

  `title` None means the first page of the dump. Revisions with deleted text are skipped.
  """
  from hhh.data.mine.common import open_binary
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"wikipedia dump not found: {path}")
  best_time, best_text = None, None
  page_title, page_index, page_elem = None, -1, None
  stream = open_binary(path)
  try:
    for event, elem in ET.iterparse(stream, events=("start", "end")):
      tag = _local(elem.tag)
      if event == "start":
        if tag == "page":
          page_index, page_title, page_elem = page_index + 1, None, elem
        continue
      if tag == "title" and page_elem is not None and page_title is None:
        page_title = (elem.text or "").strip()
      elif tag == "revision" and page_elem is not None:
        wanted = page_index == 0 if title is None else page_title == title
        if wanted:
          fields = {_local(c.tag): c for c in elem}
          text = fields["text"].text if "text" in fields else None
          stamp = (fields["timestamp"].text or "").strip() if "timestamp" in fields else ""
          if text is not None and (best_time is None or stamp >= best_time):
            best_time, best_text = stamp, text
        # Revisions are read one at a time: memory stays at one revision, not the page's history.
        page_elem.clear()
      elif tag == "page":
        page_elem = None
        if title is None or page_title == title:
          elem.clear()
          if best_text is not None:
            break
  finally:
    stream.close()
  if best_text is None:
    which = f"page {title!r}" if title is not None else "its first page"
    raise ValueError(f"{path}: no revision with text for {which}")
  return best_text


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("HHH_CACHE") or pathlib.Path.home() / ".cache" / "hhh")


def cached_latest_revision_text(path, title: str | None = None) -> str:
  """`latest_revision_text`, cached under `cache_dir()/wikitext` (keyed by the dump's name, size and mtime)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"wikipedia dump not found: {path}")
  st = path.stat()
  safe_title = re.sub(r"[^A-Za-z0-9_.-]", "_", title) if title else "first-page"
  cached = cache_dir() / "wikitext" / f"{path.name}.{st.st_size}.{st.st_mtime_ns}.{safe_title}.latest.wiki"
  if cached.exists():
    return cached.read_text(encoding="utf-8")
  text = latest_revision_text(path, title)
  cached.parent.mkdir(parents=True, exist_ok=True)
  tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, cached)  # readers never see a half-written file
  return text


def article_paragraphs(path, title: str | None = None) -> list[str]:
  """Prose paragraphs of an article's newest revision in a dump: also a small clean English corpus."""
  return paragraphs(cached_latest_revision_text(path, title))
