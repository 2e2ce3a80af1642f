"""Learn to Summarize (Stiennon et al. 2020) human comparisons: two summaries of a post, the worker's choice scored 1.

Input: the published comparisons files (batch3.json ... one JSON object per line, despite the name; plain or
compressed), a folder of them, or `hf:` for the hub copy (openai/summarize_from_feedback, config "comparisons"):

    {"info": {"id", "post", "title", "subreddit"}, "split": "train" | "valid1" | "valid2",
     "summaries": [{"text", "policy", "note"}, {...}], "choice": 0 | 1, "worker", "batch", "extra": {"confidence"}}

CNN/DM rows carry `info.article` and `info.site` instead of `post` and `subreddit`.

Context, in the paper's own query formats (its TL;DR and CNN/DM tasks):
    TL;DR:   "SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"
    CNN/DM:  "Article:\\n{article}\\n\\nTL;DR:\\n"
Responses: the summaries' texts verbatim, in the published order (TL;DR summaries start with a space, so context +
response reads as the model saw it); summaries[choice] scores 1, the other 0.

Split: the row's own ("train" -> train, "valid1"/"valid2" -> validation, "test" -> test); a row without one goes by
a hash of the post id, so all comparisons of a post share a split. meta keeps the published split, the worker's
confidence (None when the row has none), worker, batch, the summaries' policies, and subreddit or site.
Skipped, counted by reason: "missing_field", "bad_choice", "identical" summaries, "empty_response",
"unknown_split", "low_confidence" (below --min-confidence), and bad lines. Ids hash the record's content
("summarize/<post id>/<12 hex>"), so a comparison repeated verbatim is dropped by the store as "duplicate_id".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

from hhh.data import load as load_lib
from hhh.data.load import Skip
from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison

SOURCE = "summarize"
HUB = "openai/summarize_from_feedback"
HUB_CONFIG = "comparisons"
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".json.bz2", ".jsonl.bz2", ".json.xz", ".jsonl.xz")
TLDR_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM_FORMAT = "Article:\n{article}\n\nTL;DR:\n"


@dataclasses.dataclass(frozen=True)
class Options:
  limit: int = 0  # read at most this many comparison records (0: all)
  min_confidence: int = 0  # drop comparisons whose worker confidence (1-9) is below this; 0 keeps all, even unrated


def context_of(info: dict[str, Any]) -> str:
  """The query text for a post (TL;DR) or an article (CNN/DM); Skip("missing_field") for neither."""
  if not isinstance(info, dict):
    raise Skip("missing_field")
  field = lambda name: info.get(name) if isinstance(info.get(name), str) else ""
  if field("post"):
    return load_lib.check_text(TLDR_FORMAT.format(subreddit=field("subreddit"), title=field("title"),
                                                  post=field("post")))
  if field("article"):
    return load_lib.check_text(CNNDM_FORMAT.format(article=field("article")))
  raise Skip("missing_field")


def row_to_comparison(row: dict[str, Any], options: Options = Options()) -> tuple[str, Comparison, str | None]:
  """(group key = post id, comparison, split or None) for one published record; raises Skip(reason)."""
  info = row.get("info")
  context = context_of(info)
  post_id = info.get("id")
  summaries = row.get("summaries")
  if isinstance(summaries, dict) and all(isinstance(v, list) for v in summaries.values()):
    # A columnar copy ({"text": [...], "policy": [...]}) back into the published list of summaries.
    summaries = [dict(zip(summaries, values)) for values in zip(*summaries.values())]
  if not isinstance(post_id, str) or not post_id or not isinstance(summaries, list) or len(summaries) < 2:
    raise Skip("missing_field")
  if not all(isinstance(s, dict) for s in summaries):
    raise Skip("missing_field")
  texts = tuple(load_lib.text_field(s, "text") for s in summaries)
  choice = row.get("choice")
  if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(texts):
    raise Skip("bad_choice")
  if len(set(texts)) < len(texts):
    raise Skip("identical")
  if not all(t.strip() for t in texts):
    raise Skip("empty_response")
  published_split = row.get("split")
  split = load_lib.split_word(published_split)
  if published_split is not None and split is None:
    raise Skip("unknown_split")
  extra = row.get("extra")
  confidence = extra.get("confidence") if isinstance(extra, dict) else None
  if isinstance(confidence, bool) or not isinstance(confidence, int):
    confidence = None
  if options.min_confidence and (confidence is None or confidence < options.min_confidence):
    raise Skip("low_confidence")
  policies = [s.get("policy") for s in summaries]
  meta = {"split": published_split, "confidence": confidence, "worker": row.get("worker"),
          "batch": row.get("batch"), "policies": policies}
  for name in ("subreddit", "site"):
    if isinstance(info.get(name), str):
      meta[name] = info[name]
  digest = hashlib.sha256(json.dumps([post_id, texts, policies, choice, meta["worker"], meta["batch"]],
                                     ensure_ascii=False).encode("utf-8")).hexdigest()[:12]
  scores = tuple(1.0 if i == choice else 0.0 for i in range(len(texts)))
  return post_id, Comparison(context=context, responses=texts, scores=scores, source=SOURCE,
                             id=f"{SOURCE}/{post_id}/{digest}", meta=meta), split


def load(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  """Yields (post id, comparison, split); the path is checked (or the hub read) before this returns."""
  stats.source = SOURCE
  hf = load_lib.hf_spec(path, HUB, HUB_CONFIG)
  if hf is not None:
    ds = load_lib.hf_dataset(*hf)
    # Hub rows keep the published `split` field (train/valid1/valid2), which wins over the hub's split names.
    sources = [load_lib.hf_rows(ds[split], f"{hf[0]}/{split}", stats, options.limit) for split in ds]
  else:
    sources = [load_lib.json_lines(file, stats, options.limit)
               for file in load_lib.data_files(path, SUFFIXES, "summarize comparisons")]
  return _load(sources, options, stats)


def _load(sources, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str | None]]:
  for rows in sources:
    for row, where, _ in rows:
      try:
        item = row_to_comparison(row, options)
      except Skip as e:
        stats.skip(str(e), where)
      else:
        stats.comparisons += 1
        yield item
      if options.limit and stats.records_read >= options.limit:
        return
