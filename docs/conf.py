"""Sphinx configuration for the hhh docs (MyST Markdown pages and an API reference from the docstrings).

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

project = "hhh"
author = "the hhh authors"
copyright = "the hhh authors"
release = version = "0.1.0"

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_static_path = []

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"       # signatures keep their annotations; the docstrings carry the prose
autodoc_mock_imports = ["ray"]   # the optional Ray backend; its module imports ray inside functions only

# The API reference lists every module under hhh/, found on disk when the docs build, so modules that are added,
# moved or renamed need no edit here. A page marks where the list goes with a line holding only
# `% hhh-api PACKAGE` (a MyST comment); the line is replaced by one automodule section per module under PACKAGE.
API_MARK = "% hhh-api"


def _modules(package):
  """Dotted names of the modules at and under `package` ("hhh" or "hhh.data", for example), sorted."""
  root = REPO.joinpath(*package.split("."))
  names = []
  if root.with_suffix(".py").is_file():
    return [package]
  for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(REPO).with_suffix("").parts
    if "__pycache__" in parts or parts[-1] == "__main__":
      continue
    if parts[-1] == "__init__":
      parts = parts[:-1]
    names.append(".".join(parts))
  return sorted(set(names))


def _api_block(package, exclude=()):
  out = []
  for name in _modules(package):
    if any(name == e or name.startswith(e + ".") for e in exclude):
      continue
    out += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", "```", ""]
  return "\n".join(out)


def _expand_api(app, docname, source):
  lines = source[0].splitlines()
  for i, line in enumerate(lines):
    if line.startswith(API_MARK + " "):
      args = line[len(API_MARK):].split()
      lines[i] = _api_block(args[0], exclude=args[1:])
  source[0] = "\n".join(lines) + "\n"


# hhh's docstrings are plain text, not reStructuredText: `code` in single backticks, aligned tables and
# indented formulas. So that any docstring builds without warnings, each is rendered as it reads: a block of
# lines at the left margin is a paragraph (backticked spans become code, every other markup character is
# escaped); any other block (indented, a list, a table, a formula) is shown verbatim.
_CODE = re.compile(r"`([^`\n]+)`")
_MARKUP = re.compile(r"([\\*`|_:\[\]])")
_VERBATIM_START = re.compile(r"^(\s|[-+*#>|=.~^]|\d+[.)]\s|\w[.)]\s|\()")
_RULE = re.compile(r"^([-=~^*#+.`'\"])\1{2,}\s*$")


def _escape(text):
  out, last = [], 0
  for m in _CODE.finditer(text):
    before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
    out.append(_MARKUP.sub(r"\\\1", text[last:m.start()]))
    code = m.group(1).strip()
    if not code:
      out.append("\\`\\`")
    else:
      out.append(("" if not before or before.isspace() or before in "-:/'\"<([{" else "\\ ") + f"``{code}``"
                 + ("" if not after or after.isspace() or after in "-.,:;!?\\/'\")]}>" else "\\ "))
    last = m.end()
  out.append(_MARKUP.sub(r"\\\1", text[last:]))
  return "".join(out).rstrip()


def _plain_docstring(app, what, name, obj, options, lines):
  blocks, block = [], []
  for line in lines + [""]:
    if line.strip():
      block.append(line)
    elif block:
      blocks.append(block)
      block = []
  out = []
  for block in blocks:
    verbatim = any(_VERBATIM_START.match(l) or _RULE.match(l) for l in block) or block[-1].rstrip().endswith("::")
    if verbatim:
      out += ["::", ""] + ["   " + l for l in block] + [""]
    else:
      out += ["\\ " + _escape(l) for l in block] + [""]
  lines[:] = out


def setup(app):
  app.connect("source-read", _expand_api)
  app.connect("autodoc-process-docstring", _plain_docstring)
