"""Tests for `hhh data mine SOURCE FOLDER` (hhh.data.mine.many): many real dump inputs into one dataset, any
worker count giving the same dataset, resume after a kill, --out safety; and the single-pass Stack Exchange miner
against the output of the three-pass one it replaced."""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil

import pytest

from hhh.data import commands, store
from hhh.data.mine import many, reddit
from hhh.data.mine import stackexchange as se
from hhh.data.mine.common import MineStats, open_binary

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
CARDANO = SHARED_DATA / "stackexchange" / "cardano.stackexchange.com"
RC = SHARED_DATA / "reddit" / "RC_2005-12.ndjson"


@pytest.fixture(scope="module")
def shared():
  if not CARDANO.is_dir() or not RC.is_file():
    pytest.skip("../shared/data not found: the real dumps are only in the development checkout")
  return SHARED_DATA


def digest(path, options: se.Options) -> tuple[int, str, str]:
  stats = MineStats(source="stackexchange")
  h, n = hashlib.sha256(), 0
  for key, c in se.mine(path, options, stats):
    h.update(json.dumps([key, c.to_json()], sort_keys=True, ensure_ascii=False).encode())
    n += 1
  record = stats.to_json()
  votes = record["notes"]["votes"]
  # The votes file is named by its absolute path; a checkout elsewhere must give the same digest.
  votes["votes_file"] = pathlib.Path(votes["votes_file"]).relative_to(SHARED_DATA).as_posix()
  return n, h.hexdigest()[:16], hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


# Digests of the three-pass miner's output (commit 8b75e70) on the real cardano dump: every comparison with its
# key, in order, and the whole stats record (counts, first skip places, notes; the votes file's path taken
# relative to ../shared/data, where the record matched the three-pass miner's byte for byte).
@pytest.mark.parametrize("options,expected", [
    (se.Options(), (323, "fd80bbe32482eccb", "e490fec0a4d5c143")),
    (se.Options(use_votes=False, max_answers=2, min_score_gap=1), (300, "93e25d4e701183ac", "5d1c0c23037a6403")),
])
def test_single_pass_equals_the_three_pass_miner(shared, options, expected):
  assert digest(CARDANO, options) == expected


def test_simple_html_path_equals_html_parser(shared):
  """Every real body the regex tokenizer takes gives html.parser's text; and it takes them all."""
  import xml.etree.ElementTree as ET
  bodies = [e.get("Body") for _, e in ET.iterparse(CARDANO / "Posts.xml") if e.get("Body")]
  assert len(bodies) == 2597
  assert sum(se._simple_text(b) is not None for b in bodies) == 2597
  for body in bodies:
    parser = se._HtmlToText()
    parser.feed(body)
    assert se.html_to_text(body) == (parser.text() or se._plain(body)), body[:200]
  # What it refuses goes to html.parser: a comment, a stray "<", a raw-text element, a reference at the end.
  for body in ("<p>a<!-- c --></p>", "<p>a < b</p>", "<script>x</script>", "<p>x</p>&amp", "<p a=x>y</p>"):
    assert se._simple_text(body) is None


def test_simple_html_path_equals_html_parser_on_random_markup():
  """Generated bodies mixing every tag the converter acts on, nesting, entities, attributes, self-closing and stray
  end tags: wherever the regex path takes a body, its text is html.parser's."""
  import random
  rng = random.Random(0)
  tags = ["p", "pre", "code", "blockquote", "ul", "ol", "li", "br", "hr", "h1", "h2", "table", "tr", "td", "th",
          "img", "a", "strong", "em", "span", "div"]
  words = ["x", "a  b", " lead", "trail ", "\n", "\n\n", "&amp;", "&lt;", "&#62;", "&nbsp;", "\u00e9", "`", "```",
           "  ", "\t", "text"]
  taken = 0
  for _ in range(3000):
    out = []
    for _ in range(rng.randint(1, 25)):
      r = rng.random()
      tag = rng.choice(tags)
      if r < 0.35:
        attrs = rng.choice(["", ' href="u"', ' alt="a b"', ' class="c" id="d"'])
        out.append(f"<{tag}{attrs}{rng.choice(['', ' /', '/'])}>")
      elif r < 0.6:
        out.append(f"</{tag}>")
      else:
        out.append(rng.choice(words))
    body = "".join(out)
    text = se._simple_text(body)
    if text is None:
      continue
    taken += 1
    parser = se._HtmlToText()
    parser.feed(body)
    assert text == parser.text(), body
  assert taken > 2000   # the generator stays within what the regex path takes


def test_open_binary_reads_the_first_file_of_a_7z(shared, tmp_path):
  py7zr = pytest.importorskip("py7zr")
  with py7zr.SevenZipFile(tmp_path / "RC.7z", "w") as z:
    z.write(RC, "RC_2005-12.ndjson")
  with open_binary(tmp_path / "RC.7z") as f:
    assert f.read() == RC.read_bytes()


def cli(*argv: str) -> dict:
  ap = argparse.ArgumentParser()
  commands.add_parsers(ap.add_subparsers(dest="command"))
  args = ap.parse_args(["data", "mine", *argv])
  args.func(args)
  out = pathlib.Path(argv[argv.index("--out") + 1])
  return json.loads((out / "summary.json").read_text())


def records(out: pathlib.Path) -> dict[str, list[dict]]:
  return {s: [c.to_json() for c in store.DataSource(out, s)] for s in store.splits_of(out)}


def untimed(summary: dict) -> dict:
  return {**summary, "inputs": [{k: v for k, v in r.items() if k != "seconds"} for r in summary["inputs"]]}


@pytest.fixture(scope="module")
def sites(shared, tmp_path_factory):
  """Three sites: two folders and one .7z (copies of cardano under other names), and a file that is no input."""
  py7zr = pytest.importorskip("py7zr")
  root = tmp_path_factory.mktemp("sites")
  for name in ("a.stackexchange.com", "b.stackexchange.com"):
    (root / name).mkdir()
    for f in ("Posts.xml", "Votes.xml"):
      shutil.copy(CARDANO / f, root / name / f)
  with py7zr.SevenZipFile(root / "c.stackexchange.com.7z", "w") as z:
    for f in ("Posts.xml", "Votes.xml"):
      z.write(CARDANO / f, f)
  (root / "README.txt").write_text("not a dump\n")
  return root


def test_inputs_of_a_folder(sites):
  assert [p.name for p in many.inputs("stackexchange", sites)] == [
      "a.stackexchange.com", "b.stackexchange.com", "c.stackexchange.com.7z"]
  assert many.inputs("stackexchange", sites / "a.stackexchange.com") == [sites / "a.stackexchange.com"]
  with pytest.raises(FileNotFoundError, match="no reddit dumps"):
    many.inputs("reddit", sites)


def test_many_sites_one_dataset_same_for_1_and_2_workers(sites, tmp_path):
  one = cli("stackexchange", str(sites), "--out", str(tmp_path / "w1"))
  two = cli("stackexchange", str(sites), "--out", str(tmp_path / "w2"), "--workers", "2")
  assert one["records_read"] == 3 * 2630 and one["total_kept"] == 3 * 323
  assert one["skipped"] == {"all_tied": 165, "community_wiki": 3, "other_post_type": 276, "question_dropped": 2037,
                            "too_few_answers": 1992}
  assert [(pathlib.Path(r["input"]).name, r["records_read"], r["comparisons"]) for r in one["inputs"]] == [
      ("a.stackexchange.com", 2630, 323), ("b.stackexchange.com", 2630, 323), ("c.stackexchange.com.7z", 2630, 323)]
  assert one["inputs"][2]["notes"]["votes"]["votes_file"] == f"{sites / 'c.stackexchange.com.7z'}:Votes.xml"
  assert untimed(one) == untimed(two)
  r1, r2 = records(tmp_path / "w1"), records(tmp_path / "w2")
  assert r1 == r2
  ids = [c["id"] for split in r1.values() for c in split]
  assert len(ids) == len(set(ids)) == 969
  assert {i.split("/")[1] for i in ids} == {"a.stackexchange.com", "b.stackexchange.com", "c.stackexchange.com"}
  assert not many.work_dir(tmp_path / "w1").exists()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_broken_input_is_one_error_for_any_worker_count(sites, tmp_path, workers):
  """The parent mines beside the pool processes: an input failing in either is the same one-line error."""
  dumps = tmp_path / "dumps"
  dumps.mkdir()
  for name in ("a.stackexchange.com", "b.stackexchange.com"):
    (dumps / name).symlink_to(sites / name)
  (dumps / "bad.stackexchange.com.7z").write_bytes(b"not a 7z")
  with pytest.raises(ValueError, match=r"bad\.stackexchange\.com\.7z: not a readable 7z archive"):
    cli("stackexchange", str(dumps), "--out", str(tmp_path / "out"), "--workers", str(workers))
  assert not (tmp_path / "out").exists()

_FORKED = r"""
import json, os, sys
from hhh.data.mine import many, stackexchange
sites, out, die = sys.argv[1], sys.argv[2], sys.argv[3] == "die"
parent, real = os.getpid(), many.mine_one

def mine_one(*job):
  if die and os.getpid() != parent:
    os._exit(3)  # what the OOM killer leaves of a worker
  return real(*job)

many.mine_one = mine_one
try:
  items, stats, per_input = many.mine_many("stackexchange", sites, stackexchange.Options(), out, workers=2,
                                           progress=False)
  print(json.dumps({"context": many.pool_context().get_start_method(), "ids": [c.id for _, c in items]}))
except RuntimeError as e:
  print(json.dumps({"context": many.pool_context().get_start_method(), "error": str(e)}))
"""


def _forked(*args) -> dict:
  import subprocess
  import sys
  from tests.conftest import REPO, hhh_env
  proc = subprocess.run([sys.executable, "-c", _FORKED, *map(str, args)], env=hhh_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forked_workers_mine_what_one_process_mines(sites, tmp_path):
  """Without JAX loaded (the `hhh` command) workers are forked: same comparisons, same order as one process."""
  got = _forked(sites, tmp_path / "two", "live")
  assert got["context"] == "fork"
  stats = MineStats(source="stackexchange")
  one = [c.id for p in many.inputs("stackexchange", sites) for _, c in se.mine(p, se.Options(), stats)]
  assert got["ids"] == one and len(one) == 969


def test_a_worker_that_dies_is_one_error_naming_its_input(sites, tmp_path):
  got = _forked(sites, tmp_path / "out", "die")
  assert got["error"].startswith("a mining worker died (exit code 3) while mining ")
  assert pathlib.Path(got["error"].rsplit(" ", 1)[1]).parent == sites

def test_one_site_summary_equals_the_miners_own_counts(shared, tmp_path):
  summary = cli("stackexchange", str(CARDANO), "--out", str(tmp_path / "one"))
  stats = MineStats(source="stackexchange")
  assert sum(1 for _ in se.mine(CARDANO, se.Options(), stats)) == 323
  expected = stats.to_json()
  assert {k: summary[k] for k in expected} == expected


def test_reddit_parts_equal_the_folder_read_in_one_process(shared, tmp_path):
  """A month split in two files: the pool's dataset equals what reddit.mine writes for the folder."""
  lines = RC.read_bytes().splitlines(keepends=True)
  assert len(lines) == 1075
  dumps = tmp_path / "dumps"
  dumps.mkdir()
  (dumps / "RC_2005-12a.ndjson").write_bytes(b"".join(lines[:500]))
  (dumps / "RC_2005-12b.ndjson").write_bytes(b"".join(lines[500:]))
  summary = cli("reddit", str(dumps), "--out", str(tmp_path / "pool"), "--workers", "2")
  stats = MineStats(source="reddit")
  sequential = [c.to_json() for _, c in reddit.mine(dumps, reddit.Options(), stats)]
  expected = stats.to_json()
  assert {k: summary[k] for k in expected} == expected
  assert [(r["records_read"], r["comparisons"]) for r in summary["inputs"]] == [(500, 9), (575, 7)]
  pooled = sorted((c for split in records(tmp_path / "pool").values() for c in split), key=lambda c: c["id"])
  assert pooled == sorted(sequential, key=lambda c: c["id"])


def test_a_killed_mine_redoes_only_unfinished_inputs(sites, tmp_path, monkeypatch):
  out = tmp_path / "out"
  real = many.mine_one
  calls = []

  def dies_on_the_second(source, path, index, options, part):
    calls.append(index)
    if index == 1:
      # What a kill mid-input leaves: a partial part file under its temporary name, no done marker.
      pathlib.Path(part + ".tmp-99999").write_text('["1", {"context"')
      raise KeyboardInterrupt
    return real(source, path, index, options, part)

  monkeypatch.setattr(many, "mine_one", dies_on_the_second)
  with pytest.raises(KeyboardInterrupt):
    cli("stackexchange", str(sites), "--out", str(out))
  assert calls == [0, 1] and not out.exists()
  work = many.work_dir(out)
  assert sorted(p.name for p in work.iterdir()) == [".lock", "000000.done.json", "000000.jsonl",
                                                    "000001.jsonl.tmp-99999", "plan.json"]
  calls.clear()
  monkeypatch.setattr(many, "mine_one", lambda *a: (calls.append(a[2]), real(*a))[1])
  resumed = cli("stackexchange", str(sites), "--out", str(out))
  assert calls == [1, 2]
  clean = cli("stackexchange", str(sites), "--out", str(tmp_path / "clean"))
  assert untimed(resumed) == untimed(clean)
  assert records(out) == records(tmp_path / "clean")
  assert not work.exists()


def test_other_options_start_the_parts_anew(sites, tmp_path, monkeypatch):
  out = tmp_path / "out"
  work = many.work_dir(out)
  work.mkdir()
  (work / "plan.json").write_text('{"source": "stackexchange", "inputs": [], "options": {}}')
  (work / "000000.jsonl").write_text("stale\n")
  (work / "000000.done.json").write_text("{}")
  summary = cli("stackexchange", str(sites / "a.stackexchange.com"), "--out", str(out), "--max-answers", "2")
  assert summary["total_kept"] == 301 and summary["skipped"]["over_max_answers"] == 175


def test_out_safety(sites, tmp_path):
  with pytest.raises(ValueError, match="overlaps the input"):
    cli("stackexchange", str(sites), "--out", str(sites / "a.stackexchange.com" / "out"))
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "thesis.tex").write_text("user data\n")
  with pytest.raises(ValueError, match="not an hhh dataset"):
    cli("stackexchange", str(sites), "--out", str(mine))
  assert (mine / "thesis.tex").read_text() == "user data\n" and not many.work_dir(mine).exists()
  work = many.work_dir(tmp_path / "out")
  work.mkdir()
  (work / "keep.txt").write_text("x")
  with pytest.raises(ValueError, match="did not write"):
    cli("stackexchange", str(sites), "--out", str(tmp_path / "out"))
  assert (work / "keep.txt").exists()


@pytest.mark.slow
def test_ray_backend_equals_the_pool(sites, tmp_path):
  pytest.importorskip("ray")
  pool = cli("stackexchange", str(sites), "--out", str(tmp_path / "pool"), "--workers", "2")
  on_ray = cli("stackexchange", str(sites), "--out", str(tmp_path / "ray"), "--workers", "2", "--backend", "ray")
  assert untimed(on_ray) == untimed(pool)
  assert records(tmp_path / "ray") == records(tmp_path / "pool")
