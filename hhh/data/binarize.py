"""Binarization (Askell et al. 2021, section 4.1): a ranked pair A > B becomes two binary comparisons.

    GOOD: A  preferred to  BAD: A        and        BAD: B  preferred to  GOOD: B

The prefixes are real text in the sequence, so the model learns to judge a
response on its own ("is this good?") rather than against a sibling.

For a K-way ranking, the top-scored responses play A and the bottom-scored play
B; middle responses are left out, since a response both better and worse than
some sibling would get both labels. For K = 2 this is exactly the paper's recipe.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from hhh.data.schema import Comparison

GOOD, BAD = "GOOD: ", "BAD: "


def binarize(c: Comparison) -> list[Comparison]:
  """Example: context "Q", responses ("yes", "no"), scores (2, 1) ->
  [("GOOD: yes", "BAD: yes") scores (1, 0), ("BAD: no", "GOOD: no") scores (1, 0)]."""
  top, low = max(c.scores), min(c.scores)
  if top == low:
    return []
  out = []
  for i, (resp, s) in enumerate(zip(c.responses, c.scores)):
    if s == top:
      out.append(Comparison(c.context, (GOOD + resp, BAD + resp), (1.0, 0.0), c.source, f"{c.id}/good{i}",
                            c.meta))
    elif s == low:
      out.append(Comparison(c.context, (BAD + resp, GOOD + resp), (1.0, 0.0), c.source, f"{c.id}/bad{i}",
                            c.meta))
  return out


def binarize_all(comparisons: Iterable[Comparison]) -> Iterator[Comparison]:
  for c in comparisons:
    yield from binarize(c)
