"""Streaming training data (hhh.data.stream): the same batches as the in-memory path, each process reading only its
own rows, the length index cached, and `hhh train` with data.stream giving the in-memory losses."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from hhh.config import DataConfig
from hhh.data import packing, pipeline, sources, store, stream, toy
from hhh.data.mine.common import MineStats
from hhh.data.tokenizer import ByteTokenizer
from tests.conftest import REPO, free_port, hhh_cmd, hhh_env, read_metrics, run_hhh

TOK = ByteTokenizer()
# Contexts cut per response, so some comparisons fall back to one piece per response (the harder plan).
DCFG = DataConfig(max_len=96, max_k=2, buckets=(48, 96), context_cut="each")
KW = dict(batch_size=8, max_k=2, buckets=DCFG.buckets, pad_id=TOK.pad_id)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  """Two stores: 300 toy comparisons of 3 responses (max_k 2 drops one) and 120 pairs, binarized in the mix."""
  root = tmp_path_factory.mktemp("stores")
  for name, n, k, seed in (("a", 300, 3, 1), ("b", 120, 2, 2)):
    cs = toy.generate_comparisons(n, k=k, seed=seed, source=name)
    store.write_dataset(root / name, ((c.id, c) for c in cs), MineStats(source=name))
  return root


def _mix(stores):
  return f"{stores / 'a'}:2,{stores / 'b'}:1:binarize"


@pytest.fixture
def reads(monkeypatch):
  """Every store read, as (process tag, path, record) tuples; `reads.tag` names the reading process."""
  log = []
  real = stream._Reader.read

  def counted(self, records):
    log.extend((counted.tag, self.path, int(r)) for r in records)
    return real(self, records)
  counted.tag = 0
  monkeypatch.setattr(stream._Reader, "read", counted)
  return counted, log


# (contexts truncated, packed, split, fallback) per context cut: "each" cuts 481 responses' contexts and 287
# comparisons fall back; "shared" cuts more contexts (the shorter responses' too) and none falls back.
@pytest.mark.parametrize("cut,counts", [("each", (481, 48, 150, 287)), ("shared", (584, 48, 437, 0))])
def test_examples_are_the_in_memory_list(stores, cut, counts):
  spec = _mix(stores)
  dcfg = dataclasses.replace(DCFG, context_cut=cut)
  mem, mem_stats = pipeline.encode_all(sources.load_comparisons(spec, dcfg, "train", 7), TOK, 96, 2, cut)
  lazy = stream.examples(spec, dcfg, "train", 7, TOK, cache=False)
  # 275 train records of a and 2 x 105 binarized ones of b (485 in all), resampled 2:1.
  assert len(lazy) == len(mem) == 485
  assert lazy.lengths().tolist() == [e.length for e in mem]
  assert lazy.stats() == mem_stats and mem_stats.responses_dropped == 323
  assert mem_stats.contexts_truncated == counts[0]
  for i in range(len(mem)):
    assert lazy.pieces(i, 96) == [len(p) for p in packing.pieces_of(mem[i], 96)[0]]
  assert lazy.pack_summary(96) == packing.summary(mem, 96)
  assert packing.summary(mem, 96) == packing.PackStats(485, *counts[1:])
  got = lazy.encoded([0, 484, 17])
  for i, e in zip([0, 484, 17], got):
    assert [s.tolist() for s in e.seqs] == [s.tolist() for s in mem[i].seqs]
    assert e.scores.tolist() == mem[i].scores.tolist()


def test_plan_is_the_batch_plan():
  lengths = np.random.default_rng(0).integers(1, 97, 1000)
  for shuffle in (True, False):
    old = pipeline._BatchPlan(lengths.tolist(), 16, (48, 96), 5, shuffle, None)
    new = stream._Plan(lambda: lengths, 16, (48, 96), 5, shuffle, None)
    assert len(old) == len(new)
    for i in [0, 1, 30, 63, 64, 65, 200]:
      (L0, ix0), (L1, ix1) = old[i], new[i]
      assert L0 == L1 and ix0.tolist() == ix1.tolist()


@pytest.mark.parametrize("packed,batch_tokens", [(False, 0), (True, 0), (True, 384)],
                         ids=["unpacked", "packed", "batch_tokens"])
def test_two_processes_build_the_global_batch_reading_each_row_once(stores, reads, packed, batch_tokens):
  counted, log = reads
  spec = _mix(stores)
  mem, _ = pipeline.encode_all(sources.load_comparisons(spec, DCFG, "train", 7), TOK, 96, 2)
  if packed:
    ref = packing.PackedBatchSource(mem, row_len=96, n_shards=2, seed=3, batch_tokens=batch_tokens, **KW)
  else:
    ref = pipeline.BatchSource(mem, seed=3, **KW)
  ref_ds = ref.dataset(shuffle=True, epochs=None, rows=slice(None))
  lazy = stream.examples(spec, DCFG, "train", 7, TOK)
  log.clear()
  one = stream.StreamBatchSource(lazy, seed=3, packed=packed, row_len=96, n_shards=2, batch_tokens=batch_tokens, **KW)
  two = [stream.StreamBatchSource(lazy, seed=3, packed=packed, row_len=96, n_shards=2, batch_tokens=batch_tokens,
                                  process_index=p, process_count=2, **KW) for p in range(2)]
  plan = one._plan(True, None)

  def record_of(j):
    source, element = lazy.locate(j)
    index = lazy.indexes[source]
    return lazy.readers[source].path, int(index.record[element]) if index.record is not None else element
  for i in range(70):  # past the end of the first epoch (about 62 batches of 8)
    want = ref_ds[i]
    got1 = one.dataset(shuffle=True, epochs=None)[i]
    log.clear()
    parts = []
    for p, src in enumerate(two):
      counted.tag = p
      parts.append(src.dataset(shuffle=True, epochs=None)[i])
    for k in want:
      np.testing.assert_array_equal(got1[k], want[k], err_msg=f"batch {i} {k}")
      np.testing.assert_array_equal(np.concatenate([x[k] for x in parts]), want[k], err_msg=f"batch {i} {k}")
    # Each process read exactly the records of the comparisons in its own rows (a record drawn twice by the mixture
    # may sit in both halves), one batched read per source, and nothing else.
    _, ix = plan[i]
    slots = [int(j) for j in ix if j >= 0]
    for p, src in enumerate(two):
      own = [j for j in (list(ix) + [-1] * 8)[src.rows] if j >= 0]
      want_reads = sorted({record_of(int(j)) for j in own})
      assert sorted((path, r) for tag, path, r in log if tag == p) == want_reads
    assert sum(1 for _ in log) <= len(slots)


def test_index_is_cached_beside_the_store_and_read_once(stores, reads):
  _, log = reads
  spec = f"{stores / 'b'}:binarize"
  first = stream.examples(spec, DCFG, "validation", 0, TOK)
  n_records = len(store.DataSource(stores / "b", "validation"))
  assert len(log) == n_records and len(first) == 2 * n_records
  cached = list((stores / "b" / "index").glob("validation-*.npz"))
  assert len(cached) == 1
  log.clear()
  again = stream.examples(spec, DCFG, "validation", 0, TOK)
  assert log == [] and again.lengths().tolist() == first.lengths().tolist()
  # Another context cut is another index, and so is another max_len.
  stream.examples(spec, dataclasses.replace(DCFG, context_cut="shared"), "validation", 0, TOK)
  assert len(list((stores / "b" / "index").glob("validation-*.npz"))) == 2
  stream.examples(spec, DataConfig(max_len=64, max_k=2, buckets=(64,)), "validation", 0, TOK)
  assert len(list((stores / "b" / "index").glob("validation-*.npz"))) == 3


def test_workers_get_the_cached_index_by_path(stores):
  """What travels to a grain worker names the cached index file; unpickled, it makes the same batches."""
  import pickle
  lazy = stream.examples(str(stores / "a"), DCFG, "train", 0, TOK)
  src = stream.StreamBatchSource(lazy, seed=1, packed=True, row_len=96, **KW)
  ds = src.dataset(shuffle=True, epochs=None)
  blob = pickle.dumps(ds)
  assert lazy.indexes[0].cache.endswith(".npz") and lazy.indexes[0].cache.encode() in blob
  assert lazy.indexes[0].seq_len.tobytes() not in blob
  again = pickle.loads(blob)
  for i in (0, 5, 40):
    for k, v in ds[i].items():
      np.testing.assert_array_equal(again[i][k], v)


def _train_args(stores, workdir, *extra):
  mix = _mix(stores)
  return ["train", "experiments/tiny_pm.py", "--workdir", workdir, "--set", f"data.train={mix}",
          "--set", f"data.validation={mix}", "--set", "data.max_len=96", "--set", "data.buckets=48,96",
          "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
          "--set", "model.max_len=96", "--set", "batch_size=8", "--set", "log_every=1", "--set", "progress=false",
          "--set", "eval_every=1000", *extra]


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in read_metrics(workdir)]


@pytest.mark.parametrize("extra", [["--set", "data.pack=false"], [],
                                   ["--set", "data.batch_tokens=384", "--set", "data.stream_workers=0"]],
                         ids=["unpacked", "packed", "batch_tokens"])
def test_train_streamed_equals_in_memory(stores, tmp_path, extra):
  args = ["--set", "steps=6", "--set", "checkpoint_every=6", *extra]
  run_hhh(*_train_args(stores, tmp_path / "mem", *args))
  out = run_hhh(*_train_args(stores, tmp_path / "stream", "--set", "data.stream=true", *args)).stdout
  assert "485 train / 18 held-out examples" in out
  mem, streamed = _losses(tmp_path / "mem"), _losses(tmp_path / "stream")
  assert [s for s, _ in mem] == [1, 2, 3, 4, 5, 6]
  assert streamed == mem  # exact: the same rows in the same order
  assert read_metrics(tmp_path / "stream", "validation") == read_metrics(tmp_path / "mem", "validation")


def test_streamed_run_killed_resumes_to_the_in_memory_losses(stores, tmp_path):
  """SIGKILL after a checkpoint; the rerun restores the grain worker iterator and ends on the in-memory losses."""
  args = ["--set", "steps=30", "--set", "checkpoint_every=5", "--set", "keep_checkpoints=2"]
  run_hhh(*_train_args(stores, tmp_path / "mem", *args))
  killed = tmp_path / "killed"
  cmd = hhh_cmd(*_train_args(stores, killed, "--set", "data.stream=true", "--set", "data.stream_workers=1", *args))
  proc = subprocess.Popen(cmd, env=hhh_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  first = killed / "checkpoints" / "5" / "commit_success.txt"
  deadline = time.time() + 240
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  still_running = proc.poll() is None
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert first.exists() and still_running
  assert max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()) < 30
  run_hhh(*_train_args(stores, killed, "--set", "data.stream=true", "--set", "data.stream_workers=1", *args))
  assert _losses(killed) == _losses(tmp_path / "mem")
  assert [s for s, _ in _losses(killed)] == list(range(1, 31))


def test_two_processes_streamed_equal_one_in_memory(stores, tmp_path):
  """Fresh stores, so the two processes also build the length index, each over half of the records."""
  fresh = tmp_path / "stores"
  for name in ("a", "b"):
    shutil.copytree(stores / name, fresh / name, ignore=shutil.ignore_patterns("index"))
  stores = fresh
  args = ["--set", "steps=4", "--set", "checkpoint_every=2"]
  run_hhh(*_train_args(stores, tmp_path / "single", *args))
  port = free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      hhh_cmd(*_train_args(stores, multi, "--set", "data.stream=true", *args,
                           "--set", f"distributed.coordinator=127.0.0.1:{port}",
                           "--set", "distributed.num_processes=2", "--set", f"distributed.process_id={i}")),
      env=hhh_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "2 device(s)" in outs[0][0]
  one, two = _losses(tmp_path / "single"), _losses(multi)
  assert [s for s, _ in two] == [1, 2, 3, 4]
  np.testing.assert_allclose([x for _, x in two], [x for _, x in one], rtol=1e-5)
  # Process 0 wrote each index it built; a, unbinarized, and b, binarized, for train and validation each.
  for name in ("a", "b"):
    assert len(list((stores / name / "index").glob("*.npz"))) == 2


def test_a_large_store_read_into_memory_suggests_streaming(stores):
  from hhh.config import TrainConfig
  from hhh.train import loop
  cfg = TrainConfig(objective="ranked", data=DataConfig(train=_mix(stores)))
  note = loop.stream_hint(cfg, loop.STREAM_HINT)
  assert note == (f"hhh: note: {loop.STREAM_HINT:,} training comparisons are read into memory on every process; "
                  "--set data.stream=true reads them lazily from the store, each process only its own rows")
  assert loop.stream_hint(cfg, loop.STREAM_HINT - 1) is None
  assert loop.stream_hint(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stream=True)),
                          loop.STREAM_HINT) is None
  assert loop.stream_hint(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train="toy")),
                          loop.STREAM_HINT) is None
