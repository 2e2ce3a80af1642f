"""The docs: the Sphinx build passes with warnings as errors, every results and benchmark page is there with
its numbers and commands, every relative link in README.md and docs/ resolves, and the README keeps CI's test
command."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# The pages that carry measured numbers; each must exist, be built, and name the command that measured them.
RESULT_PAGES = [
  "results/index.md", "results/toy_pm.md", "results/objectives_cpu.md", "results/frozen_objectives.md",
  "results/frozen_pmp.md", "results/hhh_baselines.md", "results/real_pm.md",
  "benchmarks/index.md", "benchmarks/trl.md", "benchmarks/train_step.md", "benchmarks/miners.md",
  "benchmarks/reward.md",
  "guide/quickstart.md", "guide/testing.md", "guide/data.md", "guide/pretrained.md", "guide/prompted_evals.md",
  "guide/reward.md",
]

_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _markdown_files():
  return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _links(text):
  """Link targets of a Markdown text, leaving out code blocks and inline code."""
  text = _CODE.sub("", _FENCE.sub("", text))
  return _LINK.findall(text)


def test_sphinx_build_has_no_warnings(tmp_path):
  # sphinx and myst-parser are in the test extra: without them this fails (`No module named sphinx`), never skips.
  before = sorted(p.relative_to(DOCS) for p in DOCS.rglob("*"))
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", JAX_PLATFORMS="cpu")
  out = tmp_path / "html"
  proc = subprocess.run(
    [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
     str(DOCS), str(out)],
    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"sphinx-build failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
  assert sorted(p.relative_to(DOCS) for p in DOCS.rglob("*")) == before, "the docs build wrote into docs/"
  for page in RESULT_PAGES:
    assert (out / page).with_suffix(".html").is_file(), f"{page} was not built"
  api = (out / "api" / "index.html").read_text()
  for module in ("hhh.objectives", "hhh.reward", "hhh.train.loop", "hhh.data.schema"):
    assert f'id="module-{module}"' in api, f"the API reference has no section for {module}"


@pytest.mark.parametrize("page", RESULT_PAGES)
def test_results_pages_keep_numbers_and_commands(page):
  text = (DOCS / page).read_text()
  assert re.search(r"\d\.\d", text), f"{page} holds no number"
  assert re.search(r"(python|hhh|pytest|bash) [^`\n]*", text), f"{page} names no command"


def test_relative_links_resolve():
  bad = []
  for md in _markdown_files():
    for target in _links(md.read_text()):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        continue   # a URL or an anchor on the same page
      path = target.split("#", 1)[0]
      if not (md.parent / path).exists():
        bad.append(f"{md.relative_to(REPO)}: {target}")
  assert not bad, "relative links to missing files:\n" + "\n".join(bad)


def test_readme_is_short_and_keeps_the_ci_test_command():
  readme = (REPO / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  ci = (REPO / ".ci" / "run").read_text()
  line = next(l for l in ci.splitlines() if re.match(r"\s*python3? -m pytest\b", l))
  args = shlex.split(line)[1:]                      # the interpreter's name aside: `-m pytest -q -n 2`
  assert "python " + " ".join(args) in readme, f"the README does not hold CI's test command: {line.strip()}"
