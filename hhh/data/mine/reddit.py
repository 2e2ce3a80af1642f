"""Preference comparisons mined from Reddit: sibling replies to one parent, ranked by karma (Askell et al. 2021, PMP).

Input is Pushshift monthly comment dumps (RC_*.zst with a 2^31 window, plain ndjson, any format `open_binary`
reads, or a folder of them processed in sorted name order), plus an optional submissions dump (RS_*) for titles.

Rules:
- Siblings: the usable replies that share a `parent_id` form one K-way ranking, ordered by score descending with
  ties broken by comment id (base-36 order, i.e. oldest first). Above `max_siblings` we keep the top
  `max_siblings - 1` by score plus the lowest-scored reply, so the ranking keeps its full karma range (the strongest
  signal); `max_siblings=2` therefore yields plain best-versus-worst pairs.
- Karma gap: `min_karma_gap` applies to the ranking as a whole (best - worst >= gap), not to every adjacent pair;
  pairs inside a ranking may differ by less or tie, and the ranked objective skips tied pairs. A group whose
  replies all have the same score is "all_tied" even with `min_karma_gap` 0: a ranking needs two distinct scores.
- Context (oldest first): "Subreddit: r/x", the submission title (+ selftext up to `max_selftext_length`) when the
  submissions dump has it, then up to `max_context_depth` comments of the parent chain, the last one labelled
  "Parent comment:". Context comments longer than `max_length` are cut to it. Replies to a submission
  ("t3_" parent) need its title: without one they are skipped as "no_context". Replies to a comment need that
  comment in the same file ("parent_missing" otherwise, e.g. a parent from last month) and usable
  ("parent_deleted", "parent_removed", "parent_bot"); the chain above stops at the first missing or unusable
  ancestor. Comparisons come out in the order their parent's first kept reply appears in the file.
- Filters per reply: "[deleted]"/"[removed]" bodies, bots (AutoModerator, a few known names, authors ending in
  "bot"/"Bot"/"BOT"), `min_length`/`max_length` in characters after unescaping and stripping, repeated bodies
  under one parent ("duplicate_body", the higher-scored copy stays). Authors "[deleted]" with an intact body are
  kept: the account went, the text stayed.
- Bad data never raises: invalid JSON, non-objects, invalid UTF-8 and lone surrogates ("bad_encoding": skipped, not
  replaced, so no garbled text reaches training), missing or mistyped fields, non-integer scores ("bad_score"),
  repeated ids ("duplicate") and unreadable compressed files ("corrupt_file", keeping what was read before) are
  counted with "file:line", and so is a line over `common.MAX_LINE_BYTES` (64 MiB; "oversize_line", skipped
  without ever being held whole). zstandard ends a truncated .zst quietly; its partial last line counts as
  invalid_json.
  Blank lines are ignored. Only a missing path raises FileNotFoundError.
- Accounting: every skip count is in comments, so records_read == sum(skipped) + responses yielded, apart from
  "corrupt_file" (one per broken file) and the "submission_*" reasons. Group-level
  reasons (no_siblings, all_tied, karma_gap, no_context, parent_*) count the replies in the group, "max_siblings" the replies
  dropped from over-full groups. Submissions-file problems count as "submission_<reason>" and not as records read.

Memory: one comment file is grouped at a time, holding a compact record per comment (key, parent key, body or
None; a kept reply adds its score, line, link and subreddit) plus its kept replies per parent, i.e. O(comments in
the file). Pushshift files hold one month each, so that is one month of comments; replies that cross into the
next month's file are not joined with their siblings (a parent may then appear in two files' comparisons with the
same id). Titles are read per comment file by scanning the submissions dump, keeping only the submissions that
file needs.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
from typing import Any, Iterator

from hhh.data.mine import common
from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison

SOURCE = "reddit"
DUMP_SUFFIXES = (".zst", ".ndjson", ".jsonl", ".json", ".gz", ".bz2", ".xz", ".lzma")
# Bots whose names do not end in "bot"; the suffix rule catches most of the rest.
KNOWN_BOTS = frozenset({"AutoModerator", "autotldr", "TweetPoster", "MTGCardFetcher", "HelperBot_", "B0tRank",
                        "GoodBot_BadBot"})
BOT_SUFFIXES = ("bot", "Bot", "BOT")
MAX_SCORE = 2**53  # beyond this a score is not real karma, and float() would lose or overflow it
_GONE = {"[deleted]": "deleted", "[removed]": "removed"}


@dataclasses.dataclass(frozen=True)
class Options:
  submissions: str = ""  # optional path to a submissions dump (RS_*.zst/ndjson, or a folder) for titles
  min_karma_gap: int = 2  # best - worst score of a ranking must reach this (the whole ranking, not each pair)
  min_length: int = 10  # characters, after unescaping and stripping
  max_length: int = 4000  # characters; also where context comments are cut
  max_siblings: int = 8  # K at most: the top K-1 by score plus the lowest
  max_context_depth: int = 4  # parent-chain comments kept in the context
  max_selftext_length: int = 1000  # submission selftext longer than this is left out of the context
  include_subreddit: bool = True  # start the context with "Subreddit: r/<name>"

  def __post_init__(self):
    if self.max_siblings < 2:
      raise ValueError(f"max_siblings must be >= 2, got {self.max_siblings}")
    if self.max_context_depth < 1:
      raise ValueError(f"max_context_depth must be >= 1, got {self.max_context_depth}")
    if self.min_length > self.max_length:
      raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")


class _Bad(Exception):
  """A record-level skip: the reason travels as the message."""


def dump_files(path: pathlib.Path, skip_prefixes: tuple[str, ...] = ()) -> list[pathlib.Path]:
  """The path itself, or a folder's dump files in sorted name order."""
  if not path.is_dir():
    return [path]
  return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".",) + skip_prefixes)
                and p.name.lower().endswith(DUMP_SUFFIXES))


def _clean(text: str) -> str:
  # Reddit escapes &, < and > in bodies and titles; Windows line ends are common in old comments.
  return html.unescape(text).replace("\r\n", "\n").replace("\r", "\n").strip()


def _check_text(text: str) -> str:
  try:
    text.encode("utf-8")  # lone surrogates from "\ud800" escapes would break UTF-8 output later
  except UnicodeEncodeError:
    raise _Bad("bad_encoding") from None
  return text


def _records(file: pathlib.Path, stats: MineStats, prefix: str = "",
             count: bool = True) -> Iterator[tuple[dict[str, Any], str]]:
  """Yields (object, "file:line") for each JSON object line; counts and skips the rest, never raises on content."""
  for obj, where, _ in common.json_lines(file, stats, prefix=prefix, count=count):
    yield obj, where


def _str_field(obj: dict[str, Any], name: str, allow_empty: bool = False) -> str:
  value = obj.get(name)
  if not isinstance(value, str) or not (value or allow_empty):
    raise _Bad("missing_field")
  return value


def _score(obj: dict[str, Any]) -> int:
  if "score" not in obj:
    raise _Bad("missing_field")
  s = obj["score"]
  if isinstance(s, bool):
    raise _Bad("bad_score")
  if isinstance(s, float) and s.is_integer():
    s = int(s)
  if not isinstance(s, int) or abs(s) > MAX_SCORE:
    raise _Bad("bad_score")
  return s


def _key(prefix: str, value: str) -> str:
  return value if value.startswith(prefix) else prefix + value


def _read_submissions(path: pathlib.Path, needed: set[str], stats: MineStats,
                      count: bool, options: Options) -> dict[str, tuple[str, str]]:
  """Titles (and short selftexts) of the needed submissions, keyed "t3_<id>"."""
  out: dict[str, tuple[str, str]] = {}
  if not needed:
    return out
  sink = stats if count else MineStats(SOURCE)  # rescans for later comment files do not count twice
  for file in dump_files(path):
    for obj, where in _records(file, sink, prefix="submission_", count=False):
      try:
        name = obj.get("name")
        key = name if isinstance(name, str) and name.startswith("t3_") else _key("t3_", _str_field(obj, "id"))
        if key not in needed or key in out:
          continue
        title = _check_text(_clean(_str_field(obj, "title")))
        self_text = obj.get("selftext")
        self_text = _check_text(_clean(self_text)) if isinstance(self_text, str) else ""
      except _Bad as e:
        sink.skip("submission_" + str(e), where)
        continue
      if self_text in _GONE or len(self_text) > options.max_selftext_length:
        self_text = ""
      if title:
        out[key] = (title, self_text)
  return out


def _context(parent: str, link: str, subreddit: str, parents: dict[str, tuple[str, str | None]],
             titles: dict[str, tuple[str, str]], options: Options) -> tuple[str | None, str]:
  """The context text, or (None, reason) when the replies cannot be understood without what is missing."""
  chain: list[str] = []
  cur = parent
  while cur.startswith("t1_") and len(chain) < options.max_context_depth:
    rec = parents.get(cur)
    if rec is None or rec[1] is None:
      if not chain:
        return None, "parent_missing" if rec is None else f"parent_{rec[0]}"
      break
    body = rec[1]
    chain.append(body if len(body) <= options.max_length else body[:options.max_length] + " ...")
    cur = rec[0]
  title = titles.get(link)
  if not chain and title is None:
    return None, "no_context"
  parts = []
  if options.include_subreddit and subreddit:
    parts.append(f"Subreddit: r/{subreddit}")
  if title is not None:
    parts.append(f"Title: {title[0]}" + (f"\n{title[1]}" if title[1] else ""))
  chain.reverse()
  for i, body in enumerate(chain):
    parts.append(("Parent comment:" if i == len(chain) - 1 else "Comment:") + "\n" + body)
  return "\n\n".join(parts), ""


def _fields(obj: dict[str, Any]) -> tuple[str, str, str, str, int, str, str]:
  """(key, parent, link, body, score, author, subreddit) of a comment, checked in the order skips are named."""
  key = _key("t1_", _str_field(obj, "id"))
  parent = _str_field(obj, "parent_id")
  link = _str_field(obj, "link_id")
  if not parent.startswith(("t1_", "t3_")) or not link.startswith("t3_"):
    raise _Bad("missing_field")
  body = _str_field(obj, "body", allow_empty=True)  # an empty body is too short, not missing
  score = _score(obj)
  author = obj.get("author")
  subreddit = obj.get("subreddit")
  return (key, parent, link, body, score, author if isinstance(author, str) else "",
          subreddit if isinstance(subreddit, str) else "")


def mine_file(file: pathlib.Path, options: Options, stats: MineStats,
               first: bool) -> Iterator[tuple[str, Comparison]]:
  # key -> (parent key, body) for context; body None marks a comment unusable as context, and then the parent slot
  # holds why ("deleted", "removed", "bot"). A kept reply's record goes on: (parent, body, -score, line, link,
  # subreddit, key). One tuple per comment serves both the context and the grouping: on big inputs the time goes on
  # allocating and probing what is kept, not on the checks.
  parents: dict[str, tuple] = {}
  # parent -> its kept replies' records: the bare record while it is alone (most are), a list from the second on.
  groups: dict[str, tuple | list[tuple]] = {}
  name = f"{file}"  # "file:line" strings are made only for skips, as json_lines makes them
  min_length, max_length = options.min_length, options.max_length
  skip = stats.skip
  # Inlined checks for the common well-formed comment; anything else goes through _fields, which names the skip.
  # json.loads yields exact types, so `type(x) is str` matches isinstance here and rules out bool for scores.
  for obj, where, line in common.json_lines(file, stats):
    try:
      cid, parent, link, body, score = obj["id"], obj["parent_id"], obj["link_id"], obj["body"], obj["score"]
      fast = (type(cid) is str and cid and type(parent) is str and parent.startswith(("t1_", "t3_"))
              and type(link) is str and link.startswith("t3_") and type(body) is str and type(score) is int
              and -MAX_SCORE <= score <= MAX_SCORE)
    except KeyError:
      fast = False
    if fast:
      key = cid if cid.startswith("t1_") else "t1_" + cid
      author = obj.get("author")
      if type(author) is not str:
        author = ""
      subreddit = obj.get("subreddit")
      if type(subreddit) is not str:
        subreddit = ""
    else:
      try:
        key, parent, link, body, score, author, subreddit = _fields(obj)
      except _Bad as e:
        skip(str(e), where)
        continue
    # _clean and _check_text, inlined: most bodies have no entity, no CR and no non-ASCII character to check.
    if "&" in body:
      body = html.unescape(body)
    if "\r" in body:
      body = body.replace("\r\n", "\n").replace("\r", "\n")
    body = body.strip()
    if not body.isascii():
      try:
        body.encode("utf-8")  # lone surrogates from "\ud800" escapes would break UTF-8 output later
      except UnicodeEncodeError:
        skip("bad_encoding", where)
        continue
    # Both _GONE bodies are 9 characters: the length test spares hashing every other body.
    reason = (len(body) == 9 and _GONE.get(body)) or (
        "bot" if author in KNOWN_BOTS or author.endswith(BOT_SUFFIXES) else "")
    if reason:
      record = (reason, None)
    elif min_length <= len(body) <= max_length:
      record = (parent, body, -score, line, link, subreddit, key)
    else:
      record = (parent, body)
    if parents.setdefault(key, record) is not record:  # one probe of a large dict, not a test and then a store
      skip("duplicate", where)
      continue
    if reason:
      skip(reason, where)
      continue
    if len(body) < min_length:
      skip("too_short", where)
      continue
    if len(body) > max_length:
      skip("too_long", where)
      continue
    replies = groups.setdefault(parent, record)
    if replies is not record:
      if type(replies) is list:
        replies.append(record)
      else:
        groups[parent] = [replies, record]

  titles: dict[str, tuple[str, str]] = {}
  if options.submissions:
    needed = {replies[0][4] for replies in groups.values() if type(replies) is list}
    titles = _read_submissions(pathlib.Path(options.submissions), needed, stats, first, options)

  for parent, records in groups.items():
    if type(records) is not list:
      skip("no_siblings", f"{name}:{records[3]}")
      continue
    _, _, _, line, link, subreddit, _ = records[0]
    where = f"{name}:{line}"
    # (-score, len(key), key, body, line) tuples sort into ranking order as they are, keys being unique in a file.
    # Base-36 ids without leading zeros sort numerically by (length, text): the older reply wins a tie.
    replies = sorted([(r[2], len(r[6]), r[6], r[1], r[3]) for r in records])
    unique: list[tuple] = []
    seen: set[str] = set()
    for r in replies:
      if r[3] in seen:
        skip("duplicate_body", f"{name}:{r[4]}")
      else:
        seen.add(r[3])
        unique.append(r)
    if len(unique) < 2:
      skip("no_siblings", where, n=len(unique))
      continue
    best, worst = -unique[0][0], -unique[-1][0]
    if best == worst:  # no pair to learn from, whatever min_karma_gap says
      skip("all_tied", where, n=len(unique))
      continue
    if best - worst < options.min_karma_gap:
      skip("karma_gap", where, n=len(unique))
      continue
    context, reason = _context(parent, link, subreddit, parents, titles, options)
    if context is None:
      skip(reason, where, n=len(unique))
      continue
    if len(unique) > options.max_siblings:
      skip("max_siblings", where, n=len(unique) - options.max_siblings)
      unique = unique[:options.max_siblings - 1] + unique[-1:]
    stats.comparisons += 1
    yield link, Comparison(context=context, responses=tuple(r[3] for r in unique),
                           scores=tuple(float(-r[0]) for r in unique), source=SOURCE, id=f"{SOURCE}/{parent}")


def mine(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  """Yields (split_key, comparison); split_key = the submission (link_id) so a thread never straddles splits.

  Paths are checked here, before the first item is asked for; a missing one raises FileNotFoundError.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"reddit comments dump not found: {path}")
  if options.submissions and not pathlib.Path(options.submissions).exists():
    raise FileNotFoundError(f"reddit submissions dump not found: {options.submissions}")
  stats.source = SOURCE
  # A submissions dump inside the comments folder is not comments.
  files = dump_files(path, skip_prefixes=("RS_",))
  return _mine_files(files, options, stats)


def _mine_files(files: list[pathlib.Path], options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison]]:
  for i, file in enumerate(files):
    yield from mine_file(file, options, stats, first=i == 0)
