"""The HHH prompt (data/prompts/hhh.txt): its dialogue structure, size and format.

The prompt is prepended to BIG-bench hhh_alignment inputs, which are joined as
"\\nHuman: " + input + "\\nAssistant:" with "\\n-----\\n" between few-shot examples, so the
file must follow the same separators for an appended example to read as one more dialogue.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from tests.conftest import SHARED_DATA

PROMPT = pathlib.Path(__file__).parents[1] / "data" / "prompts" / "hhh.txt"
SEPARATOR = "\n-----\n"
TURN = re.compile(r"^(Human|Assistant): \S")


@pytest.fixture(scope="module")
def text() -> str:
  return PROMPT.read_text(encoding="ascii")


def split_prompt(text: str) -> tuple[str, list[str]]:
  """(preamble, dialogues); the chunk after the final separator must be empty."""
  preamble, *dialogues, tail = text.split(SEPARATOR)
  assert tail == "", f"text after the last separator: {tail[:60]!r}"
  return preamble, dialogues


def speakers(dialogue: str) -> list[str]:
  """Speaker of each turn; paragraphs that open with no speaker continue the previous turn."""
  out = []
  for paragraph in dialogue.strip("\n").split("\n\n"):
    m = TURN.match(paragraph)
    if m:
      out.append(m.group(1))
    else:
      assert out, f"dialogue opens without a speaker: {paragraph[:60]!r}"
  return out


def test_split_and_speakers_on_a_hand_made_prompt():
  # Guards the helpers themselves: a code block paragraph belongs to the turn above it.
  sample = "Intro.\n-----\n\nHuman: Hi.\n\nAssistant: Code:\n\nx = 1\n\nHuman: Thanks.\n\nAssistant: Sure.\n-----\n"
  preamble, dialogues = split_prompt(sample)
  assert preamble == "Intro."
  assert len(dialogues) == 1
  assert speakers(dialogues[0]) == ["Human", "Assistant", "Human", "Assistant"]


def test_file_is_ascii_and_ends_with_separator(text):
  raw = PROMPT.read_bytes()
  assert raw.isascii()
  assert raw.endswith(b"\n-----\n")
  assert not raw.endswith(b"\n\n-----\n")  # BIG-bench puts no blank line before a separator
  assert b"\r" not in raw and b"\t" not in raw


def test_preamble_is_one_paragraph_without_turns(text):
  preamble, _ = split_prompt(text)
  assert preamble.startswith("The conversations below are between various people and an AI assistant.")
  assert "\n" not in preamble
  assert "Human:" not in preamble and "Assistant:" not in preamble


def test_dialogue_count_and_turns(text):
  _, dialogues = split_prompt(text)
  assert 13 <= len(dialogues) <= 16
  assert len(dialogues) == 15
  for i, dialogue in enumerate(dialogues):
    # Each dialogue opens like an appended eval example: a blank line, then "Human: ".
    assert dialogue.startswith("\nHuman: "), f"dialogue {i} starts {dialogue[:30]!r}"
    assert not dialogue.endswith("\n"), f"dialogue {i} has a blank line before its separator"
    who = speakers(dialogue)
    assert who.count("Human") >= 2 and who.count("Assistant") >= 2, f"dialogue {i}: {who}"
    assert who == ["Human", "Assistant"] * (len(who) // 2), f"dialogue {i} does not alternate: {who}"


def test_every_turn_is_its_own_paragraph(text):
  # A speaker tag mid-paragraph would hide a turn from the alternation check.
  _, dialogues = split_prompt(text)
  for dialogue in dialogues:
    for paragraph in dialogue.strip("\n").split("\n\n"):
      assert "\nHuman:" not in paragraph and "\nAssistant:" not in paragraph, paragraph[:60]


def test_word_count(text):
  words = len(text.split())  # the same count as `wc -w`
  assert 4000 <= words <= 7000, words


def test_no_dialogue_or_opening_duplicated(text):
  _, dialogues = split_prompt(text)
  assert len({d.strip() for d in dialogues}) == len(dialogues)
  openings = [d.strip().split("\n", 1)[0] for d in dialogues]
  assert len(set(openings)) == len(openings)


def test_an_appended_eval_example_reads_as_one_more_dialogue(text):
  task_dir = SHARED_DATA / "hhh_alignment"
  if not (task_dir / "helpful" / "task.json").exists():
    pytest.skip(f"BIG-bench hhh_alignment not found under {task_dir}")
  meta = json.loads((task_dir / "task.json").read_text())
  assert meta["few_shot_example_separator"] == SEPARATOR
  first = json.loads((task_dir / "helpful" / "task.json").read_text())["examples"][0]["input"]
  joined = text + meta["example_input_prefix"] + first + meta["example_output_prefix"]
  _, dialogues = split_prompt(joined + SEPARATOR)
  assert len(dialogues) == 16
  assert dialogues[-1].startswith("\nHuman: can you fix this up better?")
  assert dialogues[-1].endswith("\nAssistant:")
