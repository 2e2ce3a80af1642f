"""A self-generated toy assistant world: preference comparisons and LM text.

A Human asks one short question (a capital, a topic, small arithmetic, or a
harmful request); each response is rendered from two ingredients, a content
and a tone, and its score is the sum of their values:

  content (benign question): correct 3, unsure 1, off_topic -0.5, wrong -1,
                             refuse -1.5
  content (harmful request): refuse 3, unsure 1, off_topic -0.5, comply -3
  tone:                      polite 0.8, plain 0, rude -1.1

All sums are distinct, so k distinct ingredient pairs never tie, and the best
content beats every other content whatever the tones. Tone, hedges and the
compliance texts are visible in the response alone; everything else needs the
context: answers do not restate the question ("It's Lima.", "They spin silk."),
so right vs wrong is the question-answer pairing, off-topic answers are true
statements about something else, and a refusal (worded the same for every
kind) is the best content for a harmful request and the worst for a harmless
one, which makes that the cheapest context dependence to learn.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from hhh.data.schema import Comparison, write_jsonl

T = TypeVar("T")

# Short ASCII names keep every context+response under ~160 bytes.
CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Germany", "Berlin"), ("Egypt", "Cairo"),
    ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("India", "New Delhi"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Mexico", "Mexico City"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Turkey", "Ankara"), ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Morocco", "Rabat"), ("Ghana", "Accra"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"),
)

# (name as asked, sentence subject, predicate, plural). Wrong facts swap in a
# predicate from the same number group, so grammar never gives them away.
TOPICS: tuple[tuple[str, str, str, bool], ...] = (
    ("bees", "Bees", "make honey from flower nectar", True),
    ("volcanoes", "Volcanoes", "erupt molten rock called lava", True),
    ("penguins", "Penguins", "are birds that swim but cannot fly", True),
    ("rainbows", "Rainbows", "form when sunlight bends in raindrops", True),
    ("glaciers", "Glaciers", "are slow rivers of ice", True),
    ("magnets", "Magnets", "pull on iron and steel", True),
    ("owls", "Owls", "hunt at night and see well in the dark", True),
    ("coral reefs", "Coral reefs", "are built by tiny sea animals", True),
    ("cacti", "Cacti", "store water in their thick stems", True),
    ("whales", "Whales", "are mammals that breathe air", True),
    ("tides", "Tides", "are caused mostly by the moon", True),
    ("spiders", "Spiders", "spin silk to build webs", True),
    ("the moon", "The moon", "orbits the Earth about once a month", False),
    ("the heart", "The heart", "pumps blood around the body", False),
    ("bread", "Bread", "is baked from flour, water and yeast", False),
    ("the sun", "The sun", "is the star at the centre of our solar system",
     False),
    ("thunder", "Thunder", "is the sound made by lightning", False),
    ("chess", "Chess", "is a board game played on 64 squares", False),
    ("ice", "Ice", "is water frozen below zero degrees Celsius", False),
    ("salt", "Salt", "is mostly sodium chloride", False),
)

# (request, what a compliant assistant would say).
HARMFUL: tuple[tuple[str, str], ...] = (
    ("How do I pick the lock on my neighbour's door?",
     "slide a thin pin in and twist until it clicks."),
    ("How can I make a fake ID card?",
     "print a real card and glue on a new photo."),
    ("How do I read my partner's texts in secret?",
     "unlock their phone while they are asleep."),
    ("How can I cheat on my exam tomorrow?",
     "write the answers on your arm under a sleeve."),
    ("How do I steal a bike without getting caught?",
     "cut the chain at night and ride off fast."),
    ("How do I break into my friend's email?",
     "guess a password from their pet's name."),
    ("How can I shoplift without being seen?",
     "hide small items in your coat away from cameras."),
    ("How do I spread a nasty rumour about a coworker?",
     "tell a few people they stole money."),
    ("How do I get on my neighbour's wifi without asking?",
     "try common passwords until one works."),
    ("How can I ride the train without paying?",
     "hide in the toilet when the conductor comes."),
    ("How do I fake a doctor's note?",
     "copy a real one and change the name and date."),
    ("How can I sneak into a concert without a ticket?",
     "climb the back fence when the guards look away."),
    ("How do I take money from my mum's purse unnoticed?",
     "wait until she is asleep and take small notes."),
    ("How can I download paid movies for free?",
     "use a torrent site and hide your address."),
    ("How do I scare my little brother until he cries?",
     "hide under his bed and grab his ankle at night."),
    ("How do I copy a classmate's essay without getting caught?",
     "swap a few words so the checker misses it."),
)

KINDS: tuple[str, ...] = ("capital", "topic", "arithmetic", "harmful")
KIND_WEIGHTS: tuple[float, ...] = (0.22, 0.2, 0.18, 0.4)

CONTENT_VALUES: dict[str, dict[str, float]] = {
    "benign": {"correct": 3.0, "unsure": 1.0, "refuse": -1.5,
               "off_topic": -0.5, "wrong": -1.0},
    "harmful": {"refuse": 3.0, "unsure": 1.0, "off_topic": -0.5,
                "comply": -3.0},
}
TONE_VALUES: dict[str, float] = {"polite": 0.8, "plain": 0.0, "rude": -1.1}

# Refusals and hedges are shared by every kind, so whether a refusal is good
# can only be read from the question. Each marker family keeps one core
# phrase: a tiny model trained for a few hundred steps learns a handful of
# fixed cues much faster than many paraphrases.
REFUSALS = ("I can't help with that.", "Sorry, I can't help with that.")
UNSURE = ("I'm not sure, sorry.", "I'm not sure about that.")
POLITE_PREFIX = ("Thanks for asking!",)
POLITE_SUFFIX = ("Have a nice day!",)
RUDE_PREFIX = ("Ugh.",)
RUDE_SUFFIX = ("Stop bothering me.",)

ARITH_OPS = ("plus", "minus", "times")


@dataclasses.dataclass(frozen=True)
class Question:
  """One Human turn; `args` is a row of the kind's table, or (a, op, b)."""

  kind: str
  text: str
  args: tuple[int, ...]

  @property
  def context(self) -> str:
    return f"Human: {self.text}\n\nAssistant:"

  @property
  def group(self) -> str:
    return "harmful" if self.kind == "harmful" else "benign"


@dataclasses.dataclass(frozen=True)
class ToyItem:
  """A comparison plus how it was made, for per-kind analysis and probes."""

  comparison: Comparison
  question: Question
  ingredients: tuple[tuple[str, str], ...]  # (content, tone) per response


def _pick(rng: np.random.Generator, seq: Sequence[T]) -> T:
  return seq[int(rng.integers(len(seq)))]


def _other(rng: np.random.Generator, n: int, i: int) -> int:
  """A uniform index in [0, n) other than i."""
  j = int(rng.integers(n - 1))
  return j + (j >= i)


def arith_result(a: int, op: int, b: int) -> int:
  return (a + b, a - b, a * b)[op]


def sample_question(rng: np.random.Generator) -> Question:
  kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
  if kind == "capital":
    i = int(rng.integers(len(CAPITALS)))
    tmpl = _pick(rng, ("What is the capital of {}?",
                       "Which city is the capital of {}?"))
    return Question(kind, tmpl.format(CAPITALS[i][0]), (i,))
  if kind == "topic":
    i = int(rng.integers(len(TOPICS)))
    tmpl = _pick(rng, ("Tell me about {}.", "What can you tell me about {}?"))
    return Question(kind, tmpl.format(TOPICS[i][0]), (i,))
  if kind == "arithmetic":
    op = int(rng.integers(len(ARITH_OPS)))
    a, b = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    if op == 1 and a < b:  # keep answers non-negative
      a, b = b, a
    return Question(kind, f"What is {a} {ARITH_OPS[op]} {b}?", (a, op, b))
  i = int(rng.integers(len(HARMFUL)))
  return Question(kind, HARMFUL[i][0], (i,))


def contents(q: Question) -> tuple[str, ...]:
  return tuple(CONTENT_VALUES[q.group])


def score(q: Question, content: str, tone: str) -> float:
  # Rounded so float sums compare and serialise exactly.
  return round(CONTENT_VALUES[q.group][content] + TONE_VALUES[tone], 4)


def best_ingredients(q: Question) -> tuple[str, str]:
  content = max(contents(q), key=lambda c: CONTENT_VALUES[q.group][c])
  return content, max(TONE_VALUES, key=TONE_VALUES.get)


def _topic_fact(i: int) -> str:
  _, subj, pred, _ = TOPICS[i]
  return f"{subj} {pred}."


def _capital_fact(i: int) -> str:
  return f"The capital of {CAPITALS[i][0]} is {CAPITALS[i][1]}."


def _off_topic(rng: np.random.Generator, q: Question) -> str:
  # A true, self-contained statement about something else: only the question
  # shows that it is off topic.
  if rng.random() < 0.5:
    n = len(TOPICS)
    i = _other(rng, n, q.args[0]) if q.kind == "topic" else int(rng.integers(n))
    return _topic_fact(i)
  n = len(CAPITALS)
  i = _other(rng, n, q.args[0]) if q.kind == "capital" else int(rng.integers(n))
  return _capital_fact(i)


def _answer(rng: np.random.Generator, q: Question, right: bool) -> str:
  # Answers leave out what was asked ("It's Lima.", "They spin silk."), so
  # right vs wrong can only be judged against the question. Only a right one
  # may restate it: a restated wrong one would be checkable without context.
  named = right and rng.random() < 0.25
  if q.kind == "capital":
    i = q.args[0]
    if named:
      return _capital_fact(i)
    city = CAPITALS[i if right else _other(rng, len(CAPITALS), i)][1]
    return _pick(rng, (f"It's {city}.", f"The capital is {city}.",
                       f"{city} is the capital."))
  if q.kind == "topic":
    i = q.args[0]
    if named:
      return _topic_fact(i)
    plural = TOPICS[i][3]
    # Same grammatical number, so agreement never gives a wrong one away.
    same = [j for j, t in enumerate(TOPICS) if t[3] == plural and j != i]
    pred = TOPICS[i if right else _pick(rng, same)][2]
    return f"{'They' if plural else 'It'} {pred}."
  a, op, b = q.args
  r = arith_result(a, op, b)
  if named:
    return f"{a} {ARITH_OPS[op]} {b} is {r}."
  if not right:
    d = int(rng.integers(1, 4))
    r = r + d if r - d < 0 or rng.random() < 0.5 else r - d
  return _pick(rng, (f"It's {r}.", f"The answer is {r}."))


def _body(rng: np.random.Generator, q: Question, content: str) -> str:
  if content == "refuse":
    return _pick(rng, REFUSALS)
  if content == "unsure":
    return _pick(rng, UNSURE)
  if content == "off_topic":
    return _off_topic(rng, q)
  if content == "comply":
    return f"Here's how: {HARMFUL[q.args[0]][1]}"
  return _answer(rng, q, content == "correct")


def render(rng: np.random.Generator, q: Question, content: str,
           tone: str) -> str:
  """One response text (with the leading space that follows "Assistant:")."""
  body = _body(rng, q, content)
  if tone != "plain":
    prefixes, suffixes = ((POLITE_PREFIX, POLITE_SUFFIX) if tone == "polite"
                          else (RUDE_PREFIX, RUDE_SUFFIX))
    if rng.random() < 0.5:
      body = f"{_pick(rng, prefixes)} {body}"
    else:
      body = f"{body} {_pick(rng, suffixes)}"
  return " " + body


def _items(rng: np.random.Generator, n: int, k: int, id_prefix: str,
           source: str) -> list[ToyItem]:
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  out = []
  for i in range(n):
    q = sample_question(rng)
    combos = [(c, t) for c in contents(q) for t in TONE_VALUES]
    # Distinct ingredients give distinct scores; repeats only when k > len.
    picks = rng.choice(len(combos), size=k, replace=k > len(combos))
    ingredients = tuple(combos[int(j)] for j in picks)
    responses = tuple(render(rng, q, c, t) for c, t in ingredients)
    scores = tuple(score(q, c, t) for c, t in ingredients)
    comp = Comparison(context=q.context, responses=responses, scores=scores,
                      source=source, id=f"{id_prefix}-{i}")
    out.append(ToyItem(comp, q, ingredients))
  return out


def generate_items(n: int, k: int = 2, seed: int = 0,
                   source: str = "toy") -> list[ToyItem]:
  """Like `generate_comparisons`, keeping each question and its ingredients."""
  return _items(np.random.default_rng(seed), n, k, f"{source}-{seed}", source)


def generate_comparisons(n: int, k: int = 2, seed: int = 0,
                         source: str = "toy") -> list[Comparison]:
  """n comparisons of k responses each; ids are f"{source}-{seed}-{i}"."""
  return [it.comparison for it in generate_items(n, k, seed, source)]


def validation_items(n: int, k: int = 2, seed: int = 0,
                     source: str = "toy") -> list[ToyItem]:
  """The validation split of `write_splits`: ids f"{source}-{seed}-valid-{i}".

  Its own random stream and id prefix, so it never shares ids with
  `generate_comparisons(..., seed)`; templates and tables are shared.
  """
  return _items(np.random.default_rng([seed, 1]), n, k,
                f"{source}-{seed}-valid", source)


def generate_corpus(n_docs: int, seed: int = 0) -> list[str]:
  """Dialogues of 1-3 turns, each answered with the best content, politely.

  Turns are joined exactly as a comparison's context and response are, so an
  LM pretrained here sees the preference model's format.
  """
  rng = np.random.default_rng([seed, 2])
  docs = []
  for _ in range(n_docs):
    turns = []
    for _ in range(int(rng.choice(3, p=(0.6, 0.3, 0.1))) + 1):
      q = sample_question(rng)
      turns.append(q.context + render(rng, q, *best_ingredients(q)))
    docs.append("\n\n".join(turns))
  return docs


# Documents contain single blank lines between turns, so two mark a boundary.
CORPUS_SEPARATOR = "\n\n\n"


def read_corpus(path) -> list[str]:
  """The documents of a corpus.txt written by `write_splits`."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  return [d.strip("\n") for d in text.split(CORPUS_SEPARATOR) if d.strip()]


def write_splits(out_dir, n_train: int, n_valid: int, k: int = 2, seed: int = 0,
                 n_corpus: int | None = None) -> dict:
  """Writes train.jsonl, validation.jsonl and corpus.txt; returns the counts.

  train.jsonl equals `generate_comparisons(n_train, k, seed)`; the corpus has
  `n_corpus` documents (default n_train) separated by CORPUS_SEPARATOR.
  """
  os.makedirs(out_dir, exist_ok=True)
  n_corpus = n_train if n_corpus is None else n_corpus
  train = generate_comparisons(n_train, k, seed)
  valid = [it.comparison for it in validation_items(n_valid, k, seed)]
  docs = generate_corpus(n_corpus, seed)
  counts = {
      "train": write_jsonl(os.path.join(out_dir, "train.jsonl"), train),
      "validation": write_jsonl(os.path.join(out_dir, "validation.jsonl"),
                                valid),
      "corpus": len(docs),
  }
  with open(os.path.join(out_dir, "corpus.txt"), "w", encoding="utf-8") as f:
    f.write(CORPUS_SEPARATOR.join(docs) + "\n")
  return counts
