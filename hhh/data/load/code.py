"""Code correctness: a problem's reference solution and AST mutants of it, ranked by the fraction of tests passed.

Input: HumanEval.jsonl(.gz) (task_id, prompt, canonical_solution, test, entry_point), MBPP jsonl (task_id, text,
code, test_setup_code, test_list, challenge_test_list; the format is told by the fields, row by row), a folder of
such files, or the hub: `hf:` is HumanEval (`openai_humaneval`), `hf:mbpp` MBPP (config "full"; "sanitized" rows,
with `prompt` and `test_imports`, map too).

Rules:
- Candidates: the reference solution and up to `mutants` single-point mutants of it, made from its AST and written
  back with `ast.unparse` (the reference too, so formatting never tells the reference apart). Mutations: binary and
  augmented-assignment operator swaps (Add->Sub, FloorDiv->Div, ...), comparison swaps (Lt->LtE, Eq->NotEq, In->
  NotIn, ...), and/or swaps, dropped `not`, int constants +-1 and flipped bools, off-by-one range() bounds, slice
  bounds and indices, returns of another return expression of the same function or of the negated condition, and
  dropped if bodies or else branches. Annotations and docstrings are left alone. The choice is deterministic in
  (seed, task id): sites are shuffled per kind and taken kind by kind in turn, so a problem's mutants mix kinds;
  candidates whose source repeats one already taken, or the reference, are dropped.
- Labels: every candidate's tests run in `hhh.data.load.sandbox` (one sandboxed program per candidate, which runs each test
  separately and reports it); the score is the fraction passed. MBPP: each assert of test_list is a test.
  HumanEval: each top-level statement of `check(candidate)` that holds an assert is a test (other statements run
  as setup, `assert True` is not a test); a `check` that cannot be split this way is one all-or-nothing test.
  Each test has timeout_s / (tests + 1) seconds (at least 0.5), so one hanging test costs only itself; a test that
  never reports (a crash, the overall timeout) failed.
- Context: the HumanEval prompt; MBPP text plus its first test as an example. Responses: candidate programs
  (HumanEval: prompt and solution together as one program). Ranking (default): all candidates, best first, ties
  kept in candidate order (the reference first); `--no-ranking`: one pair per two candidates with distinct scores.
- Skipped, counted: a reference that fails any of its own tests ("reference_fails"), does not parse
  ("reference_syntax_error"), has no tests ("no_tests") or no place to mutate ("no_mutants"); rows of neither
  format ("unknown_format"), missing or mistyped fields ("missing_field"), MBPP task ids outside 1-974
  ("bad_task_id"), bad lines, and problems whose candidates all pass the same fraction of tests ("all_tied":
  a comparison needs two distinct scores, so such a problem is neither a ranking nor a pair).
- Split: HumanEval is test; MBPP follows its task_id ranges: 11-510 test, 511-600 validation, 601-974 train, and
  1-10 (the few-shot prompt problems) go to train, with meta["mbpp_split"] = "prompt". Group key: the task id.
  Ids: "code/<task id>[/<i>-<j>]". meta: task_id, dataset, tests (how many), mutations ("reference",
  "binop:Add->Sub@3", ... in response order).

Cost: one sandboxed run per candidate (~30-50 ms, or up to timeout_s for one that hangs), `workers` at a time.
"""

from __future__ import annotations

import ast
import concurrent.futures
import copy
import dataclasses
import json
import random
import secrets
from typing import Any, Iterator

from hhh.data.load import sandbox
from hhh.data import load as load_lib
from hhh.data.load import Skip
from hhh.data.mine.common import MineStats
from hhh.data.schema import Comparison

SOURCE = "code"
HUB = "openai_humaneval"  # `hf:`; MBPP is `hf:mbpp` (config "full" unless named)
HUB_MBPP = "mbpp"
HUB_MBPP_CONFIG = "full"
SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz")
MIN_TEST_S = 0.5
# The official MBPP task_id ranges (inclusive): few-shot prompt problems, then test, validation, train.
MBPP_RANGES = (("prompt", 1, 10), ("test", 11, 510), ("validation", 511, 600), ("train", 601, 974))


@dataclasses.dataclass(frozen=True)
class Options:
  limit: int = 0  # read at most this many problems (0: all)
  mutants: int = 6  # mutants per problem at most (besides the reference)
  seed: int = 0  # picks the mutants (with the task id)
  timeout_s: float = 5.0  # per candidate, all its tests together
  memory_mb: int = 512  # per candidate
  ranking: bool = True  # one ranking per problem; --no-ranking: a pair per two candidates with distinct scores
  workers: int = 2  # candidates run at once (each is a subprocess)

  def __post_init__(self):
    if self.limit < 0:
      raise ValueError(f"limit must be >= 0, got {self.limit}")
    if self.mutants < 1:
      raise ValueError(f"mutants must be >= 1, got {self.mutants}")
    if not self.timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
    if self.memory_mb < 64:
      raise ValueError(f"memory_mb must be >= 64, got {self.memory_mb}")
    if self.workers < 1:
      raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class Problem:
  task_id: str  # "HumanEval/0", "mbpp/11"
  dataset: str  # "humaneval" or "mbpp"
  statement: str  # the comparison's context
  solution: str  # the reference program, as given
  setup: tuple[str, ...]  # sources run before the candidate (MBPP test_setup_code)
  after: tuple[str, ...]  # sources run after it (HumanEval's test module, which defines check)
  bind: tuple[str, str] | None  # (name, entry point): `name = entry point` before the tests (HumanEval's candidate)
  units: tuple[tuple[bool, str], ...]  # (is a test, source) in order; the other units are setup inside check
  split: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  @property
  def n_tests(self) -> int:
    return sum(1 for is_test, _ in self.units if is_test)


@dataclasses.dataclass(frozen=True)
class Outcome:
  passed: int
  total: int
  status: str  # "ok" (every test reported), "setup_error", "timeout", "crashed"

  @property
  def fraction(self) -> float:
    return self.passed / self.total if self.total else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Problems.


def mbpp_split(task_id: int) -> tuple[str, str]:
  """(our split, MBPP's own split) for a task id: 5 -> ("train", "prompt"), 11 -> ("test", "test")."""
  for name, lo, hi in MBPP_RANGES:
    if lo <= task_id <= hi:
      return ("train" if name == "prompt" else name), name
  raise Skip("bad_task_id")


def check_units(test: str, entry_point: str) -> tuple[tuple[str, str] | None, tuple[tuple[bool, str], ...]]:
  """(bind, units) of a HumanEval test module: the statements of `check(candidate)`, each with whether it is a test.

  Falls back to one all-or-nothing unit, `check(<entry point>)`, when check cannot be found or split.
  """
  whole = (None, ((True, f"check({entry_point})"),))
  try:
    tree = ast.parse(test)
  except SyntaxError:
    return whole
  check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
  if check is None or len(check.args.args) != 1 or check.args.vararg or check.args.kwarg:
    return whole
  units = []
  for stmt in check.body:
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
      continue  # a docstring or a bare string
    asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    is_test = any(not isinstance(a.test, ast.Constant) for a in asserts)  # `assert True` tests nothing
    src = ast.unparse(stmt)
    try:
      compile(src, "<check>", "exec")  # e.g. a `return` cannot run outside the function
    except SyntaxError:
      return whole
    units.append((is_test, src))
  if not any(is_test for is_test, _ in units):
    return whole
  return (check.args.args[0].arg, entry_point), tuple(units)


def problem_from_row(row: dict[str, Any]) -> Problem:
  """A HumanEval or MBPP row (file or hub layout) -> Problem; raises Skip(reason) for a row that is neither."""
  if "canonical_solution" in row and "entry_point" in row:
    task_id, prompt = load_lib.text_field(row, "task_id"), load_lib.text_field(row, "prompt")
    solution = prompt + load_lib.text_field(row, "canonical_solution")
    test, entry = load_lib.text_field(row, "test"), load_lib.text_field(row, "entry_point")
    bind, units = check_units(test, entry)
    return Problem(task_id=task_id, dataset="humaneval", statement=prompt, solution=solution, setup=(),
                   after=(test,), bind=bind, units=units, split="test")
  if "test_list" in row and "code" in row:
    task_id = row.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int):
      raise Skip("missing_field")
    text = row.get("text") if isinstance(row.get("text"), str) else row.get("prompt")  # "sanitized": prompt
    tests = row.get("test_list")
    if not isinstance(text, str) or not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
      raise Skip("missing_field")
    if not tests:
      raise Skip("no_tests")
    setup = row.get("test_setup_code") or ""
    imports = row.get("test_imports") or []
    if not isinstance(setup, str) or not isinstance(imports, list) or not all(isinstance(s, str) for s in imports):
      raise Skip("missing_field")
    split, official = mbpp_split(task_id)
    statement = load_lib.check_text(f"{text.strip()}\nYour code should pass this test:\n{tests[0].strip()}")
    return Problem(task_id=f"mbpp/{task_id}", dataset="mbpp", statement=statement,
                   solution=load_lib.text_field(row, "code"), setup=tuple(s for s in ["\n".join(imports), setup] if s),
                   after=(), bind=None, units=tuple((True, t) for t in tests), split=split,
                   meta={"mbpp_split": official})
  raise Skip("unknown_format")


# ---------------------------------------------------------------------------------------------------------------
# Mutants.

_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
               ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr}
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BOOL_SWAP = {ast.And: ast.Or, ast.Or: ast.And}
_NOT_MUTATED = ("annotation", "returns", "type_comment", "decorator_list")
_CONDITIONS = (ast.Compare, ast.BoolOp)


@dataclasses.dataclass(frozen=True)
class _Site:
  index: int  # position in _nodes()
  kind: str
  detail: str
  line: int
  arg: Any = None  # what the edit needs (an op index, a delta, a replacement)

  @property
  def label(self) -> str:
    return f"{self.kind}:{self.detail}@{self.line}"


def _nodes(tree: ast.AST) -> list[tuple[ast.AST, ast.AST | None, str | None, int | None, ast.AST | None]]:
  """(node, parent, field, index in field, enclosing function) for every node, in one fixed order."""
  out = []

  def visit(node, parent, field, index, func):
    out.append((node, parent, field, index, func))
    inner = node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else func
    for name, value in ast.iter_fields(node):
      if name in _NOT_MUTATED:
        continue
      if isinstance(value, list):
        for i, item in enumerate(value):
          if isinstance(item, ast.AST):
            visit(item, node, name, i, inner)
      elif isinstance(value, ast.AST):
        visit(value, node, name, None, inner)

  visit(tree, None, None, None, None)
  return out


def _is_int(node: ast.AST) -> bool:
  return isinstance(node, ast.Constant) and type(node.value) is int


def _sites(tree: ast.AST) -> list[_Site]:
  nodes = _nodes(tree)
  returns: dict[int, list[ast.Return]] = {}  # id(function) -> its returns with values
  for node, _, _, _, func in nodes:
    if isinstance(node, ast.Return) and node.value is not None and func is not None:
      returns.setdefault(id(func), []).append(node)
  sites = []
  for k, (node, parent, field, _, func) in enumerate(nodes):
    line = getattr(node, "lineno", 0)
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP_SWAP:
      new = _BINOP_SWAP[type(node.op)]
      kind = "binop" if isinstance(node, ast.BinOp) else "augop"
      sites.append(_Site(k, kind, f"{type(node.op).__name__}->{new.__name__}", line, new))
    elif isinstance(node, ast.Compare):
      for j, op in enumerate(node.ops):
        if type(op) in _CMP_SWAP:
          new = _CMP_SWAP[type(op)]
          sites.append(_Site(k, "cmp", f"{type(op).__name__}->{new.__name__}", line, (j, new)))
    elif isinstance(node, ast.BoolOp):
      new = _BOOL_SWAP[type(node.op)]
      sites.append(_Site(k, "boolop", f"{type(node.op).__name__}->{new.__name__}", line, new))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
      sites.append(_Site(k, "not", "drop", line))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
      sites.append(_Site(k, "const", f"{node.value}->{not node.value}", line, not node.value))
    elif _is_int(node) and not isinstance(parent, ast.Subscript) and not _is_range_arg(parent, field):
      for d in (1, -1):
        sites.append(_Site(k, "const", f"{node.value}->{node.value + d}", line, node.value + d))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
        and 1 <= len(node.args) <= 3 and not node.keywords:
      names = ["stop"] if len(node.args) == 1 else ["start", "stop"]
      for j, name in enumerate(names):
        for d in (1, -1):
          sites.append(_Site(k, "range", f"{name}{d:+d}", line, (j, d)))
    elif isinstance(node, ast.Subscript):
      if isinstance(node.slice, ast.Slice):
        for bound in ("lower", "upper"):
          if getattr(node.slice, bound) is not None:
            for d in (1, -1):
              sites.append(_Site(k, "slice", f"{bound}{d:+d}", line, (bound, d)))
      elif _looks_numeric(node.slice):
        for d in (1, -1):
          sites.append(_Site(k, "index", f"{d:+d}", line, d))
    elif isinstance(node, ast.Return) and node.value is not None and func is not None:
      if isinstance(node.value, _CONDITIONS):
        sites.append(_Site(k, "return", "negate", line))
      seen = {ast.unparse(node.value)}
      for other in returns.get(id(func), ()):
        text = ast.unparse(other.value)
        if text not in seen:
          seen.add(text)
          sites.append(_Site(k, "return", f"swap->{other.lineno}", line, other.value))
    elif isinstance(node, ast.If):
      if not (len(node.body) == 1 and isinstance(node.body[0], ast.Pass)):
        sites.append(_Site(k, "if", "drop-body", line))
      if node.orelse:
        sites.append(_Site(k, "if", "drop-else", line))
  return sites


def _is_range_arg(parent: ast.AST | None, field: str | None) -> bool:
  # range bounds get their own off-by-one mutants; constants there would repeat them
  return (isinstance(parent, ast.Call) and field == "args" and isinstance(parent.func, ast.Name)
          and parent.func.id == "range")


def _looks_numeric(node: ast.AST) -> bool:
  """An index that is plausibly an int (a name, int constant or arithmetic), not a key or a tuple."""
  if isinstance(node, ast.Constant):
    return _is_int(node)
  return isinstance(node, (ast.Name, ast.BinOp, ast.UnaryOp, ast.Call, ast.Attribute))


def _shift(expr: ast.expr, d: int) -> ast.expr:
  if _is_int(expr):
    return ast.Constant(expr.value + d)
  return ast.BinOp(copy.deepcopy(expr), ast.Add() if d > 0 else ast.Sub(), ast.Constant(abs(d)))


def _apply(tree: ast.AST, site: _Site) -> str:
  """The source of `tree` with `site` mutated (on a copy)."""
  tree = copy.deepcopy(tree)
  node, parent, field, index, _ = _nodes(tree)[site.index]

  def replace(new):
    if index is None:
      setattr(parent, field, new)
    else:
      getattr(parent, field)[index] = new

  if site.kind in ("binop", "augop", "boolop"):
    node.op = site.arg()
  elif site.kind == "cmp":
    j, new = site.arg
    node.ops[j] = new()
  elif site.kind == "not":
    replace(node.operand)
  elif site.kind == "const":
    node.value = site.arg
  elif site.kind == "range":
    j, d = site.arg
    if len(node.args) == 1:
      node.args[0] = _shift(node.args[0], d)
    else:
      node.args[j] = _shift(node.args[j], d)
  elif site.kind == "slice":
    bound, d = site.arg
    setattr(node.slice, bound, _shift(getattr(node.slice, bound), d))
  elif site.kind == "index":
    node.slice = _shift(node.slice, site.arg)
  elif site.kind == "return":
    if site.detail == "negate":
      node.value = ast.UnaryOp(ast.Not(), node.value)
    else:
      node.value = copy.deepcopy(site.arg)
  elif site.kind == "if":
    if site.detail == "drop-body":
      node.body = [ast.Pass()]
    else:
      node.orelse = []
  return ast.unparse(ast.fix_missing_locations(tree))


def mutants(source: str, n: int, seed: int | str) -> list[tuple[str, str]]:
  """Up to `n` (label, source) single-point mutants of `source`, deterministic in (source, seed).

  Each differs from `ast.unparse(ast.parse(source))` and from the others; raises SyntaxError for bad `source`.
  """
  tree = ast.parse(source)
  reference = ast.unparse(tree)
  rng = random.Random(f"{seed}")
  by_kind: dict[str, list[_Site]] = {}
  for site in _sites(tree):
    by_kind.setdefault(site.kind, []).append(site)
  kinds = sorted(by_kind)
  rng.shuffle(kinds)
  for kind in kinds:
    rng.shuffle(by_kind[kind])
  out, seen = [], {reference}
  # Kind by kind in turn, so a few mutants still cover several kinds of mistake.
  while len(out) < n and any(by_kind.values()):
    for kind in kinds:
      if len(out) >= n or not by_kind[kind]:
        continue
      site = by_kind[kind].pop()
      src = _apply(tree, site)
      if src in seen:
        continue
      try:
        compile(src, "<mutant>", "exec")
      except (SyntaxError, ValueError):
        continue
      seen.add(src)
      out.append((site.label, src))
  return out


# ---------------------------------------------------------------------------------------------------------------
# Running tests.

# main.py of each sandboxed run: runs the setup, the candidate and then each unit under its own alarm, writing one
# line per test to a copy of the real stdout (the candidate's prints go to /dev/null, so they cannot fake a line,
# which also carries a per-run nonce).
_HARNESS = r'''
import json, os, signal, sys
with open("spec.json", encoding="utf-8") as f:
  spec = json.load(f)
report_to = os.fdopen(os.dup(1), "w")
def report(*words):
  report_to.write(" ".join([spec["nonce"], *map(str, words)]) + "\n")
  report_to.flush()
class TestTimeout(BaseException):
  pass
def on_alarm(signum, frame):
  raise TestTimeout()
signal.signal(signal.SIGALRM, on_alarm)
sys.stdout = open(os.devnull, "w")
g = {"__name__": "__candidate__"}
try:
  signal.setitimer(signal.ITIMER_REAL, spec["unit_s"])
  for i, src in enumerate(spec["before"]):
    exec(compile(src, f"<setup {i}>", "exec"), g)
  exec(compile(spec["candidate"], "<candidate>", "exec"), g)
  for i, src in enumerate(spec["after"]):
    exec(compile(src, f"<tests {i}>", "exec"), g)
  if spec["bind"]:
    g[spec["bind"][0]] = g[spec["bind"][1]]
  signal.setitimer(signal.ITIMER_REAL, 0)
except BaseException as e:
  signal.setitimer(signal.ITIMER_REAL, 0)
  report("setup_error", type(e).__name__)
  sys.exit(0)
for i, (is_test, src) in enumerate(spec["units"]):
  passed = 1
  try:
    signal.setitimer(signal.ITIMER_REAL, spec["unit_s"])
    exec(compile(src, f"<test {i}>", "exec"), g)
  except BaseException:
    passed = 0
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  if is_test:
    report("test", i, passed)
report("done")
'''


def run_tests(problem: Problem, candidate: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Outcome:
  """Runs `problem`'s tests against `candidate` (a program) in the sandbox: how many passed, of how many."""
  unit_s = max(timeout_s / (len(problem.units) + 1), MIN_TEST_S)
  nonce = secrets.token_hex(8)
  spec = {"nonce": nonce, "unit_s": unit_s, "before": list(problem.setup), "candidate": candidate,
          "after": list(problem.after), "bind": problem.bind, "units": [list(u) for u in problem.units]}
  r = sandbox.run_python(_HARNESS, timeout_s=timeout_s + 1.0, memory_mb=memory_mb,
                         files={"spec.json": json.dumps(spec)})
  tests = {i for i, (is_test, _) in enumerate(problem.units) if is_test}
  passed, done, setup_error = set(), False, False
  for line in r.stdout.splitlines():
    words = line.split()
    if not words or words[0] != nonce:
      continue
    if words[1:2] == ["setup_error"]:
      setup_error = True
    elif words[1:2] == ["test"] and len(words) == 4 and words[3] == "1" and int(words[2]) in tests:
      passed.add(int(words[2]))
    elif words[1:2] == ["done"]:
      done = True
  status = ("setup_error" if setup_error else "ok" if done and r.returncode == 0 else
            "timeout" if r.timed_out else "crashed")
  return Outcome(passed=len(passed), total=len(tests), status=status)


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def comparisons(problem: Problem, candidates: list[tuple[str, str]], outcomes: list[Outcome],
                ranking: bool) -> list[Comparison]:
  """The ranking (best first, ties in candidate order) or the pairs with distinct scores of one problem."""
  order = sorted(range(len(candidates)), key=lambda i: -outcomes[i].fraction)  # stable: ties keep their order
  meta = {"task_id": problem.task_id, "dataset": problem.dataset, "tests": problem.n_tests, **problem.meta}
  base = f"{SOURCE}/{problem.task_id}"
  if ranking:
    return [Comparison(problem.statement, tuple(candidates[i][1] for i in order),
                       tuple(outcomes[i].fraction for i in order), SOURCE, base,
                       {**meta, "mutations": [candidates[i][0] for i in order]})]
  return [Comparison(problem.statement, (candidates[i][1], candidates[j][1]),
                     (outcomes[i].fraction, outcomes[j].fraction), SOURCE, f"{base}/{i}-{j}",
                     {**meta, "mutations": [candidates[i][0], candidates[j][0]]})
          for a, i in enumerate(order) for j in order[a + 1:] if outcomes[i].fraction > outcomes[j].fraction]


def load(path, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str]]:
  """Yields (task id, comparison, split); the path is checked (or the hub read) before this returns."""
  stats.source = SOURCE
  hf = load_lib.hf_spec(path, HUB)
  if hf is not None:
    name, config = hf
    if name == HUB_MBPP and config is None:
      config = HUB_MBPP_CONFIG
    ds = load_lib.hf_dataset(name, config)
    rows = (item for split in ds for item in load_lib.hf_rows(ds[split], f"{name}/{split}", stats))
  else:
    files = load_lib.data_files(path, SUFFIXES, "code problems jsonl")
    rows = (item for file in files for item in load_lib.json_lines(file, stats))
  return _load(rows, options, stats)


def _load(rows, options: Options, stats: MineStats) -> Iterator[tuple[str, Comparison, str]]:
  with concurrent.futures.ThreadPoolExecutor(max_workers=options.workers) as pool:
    for row, where, _ in rows:
      try:
        problem = problem_from_row(row)
        try:
          reference = ast.unparse(ast.parse(problem.solution))
        except (SyntaxError, ValueError):
          raise Skip("reference_syntax_error") from None
        candidates = [("reference", reference)]
        candidates += mutants(problem.solution, options.mutants, f"{options.seed}:{problem.task_id}")
        if len(candidates) < 2:
          raise Skip("no_mutants")
        outcome = run_tests(problem, reference, timeout_s=options.timeout_s, memory_mb=options.memory_mb)
        if outcome.passed < outcome.total or outcome.total == 0:
          raise Skip("reference_fails" if outcome.total else "no_tests")
        outcomes = [outcome] + list(pool.map(
            lambda c: run_tests(problem, c[1], timeout_s=options.timeout_s, memory_mb=options.memory_mb),
            candidates[1:]))
        if len({o.fraction for o in outcomes}) < 2:
          raise Skip("all_tied")  # no candidate is better than another: nothing to rank
        for c in comparisons(problem, candidates, outcomes, options.ranking):
          stats.comparisons += 1
          yield problem.task_id, c, problem.split
      except Skip as e:
        stats.skip(str(e), where)
      if options.limit and stats.records_read >= options.limit:
        return
