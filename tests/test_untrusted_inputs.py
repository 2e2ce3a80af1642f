"""HF directories, safetensors and dumps from strangers: each break a hostile user found is a one-line error now,
found before anything blocks, allocates or is written (the bundle's own cases are in test_bundle_untrusted.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import tracemalloc

import pytest

from hhh import cli
from hhh.data.mine import common
from hhh.data.mine.common import MineStats
from hhh.pretrained import hf
from hhh.reward import hf_export
from tests.conftest import random_bundle_and_hf

@pytest.fixture(scope="module")
def pristine_hf(tmp_path_factory):
  """An HF reward-model directory as `hhh export --format hf` writes it, from a random bundle."""
  return random_bundle_and_hf(tmp_path_factory.mktemp("hf")) / "hf"


@pytest.fixture
def hfdir(pristine_hf, tmp_path):
  return shutil.copytree(pristine_hf, tmp_path / "hf")


def _config(hfdir, fn) -> None:
  c = json.loads((hfdir / "config.json").read_text())
  c = fn(c) or c
  (hfdir / "config.json").write_text(json.dumps(c))


def _refused(hfdir, match: str) -> str:
  with pytest.raises(ValueError, match=match) as e:
    hf.load_hf(hfdir)
  assert "\n" not in str(e.value)
  return str(e.value)


def _convert(*args) -> tuple[int, str]:
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = cli.main(["convert", *map(str, args)])
  return rc, err.getvalue()


def test_the_pristine_directory_loads(hfdir, tmp_path):
  lm = hf.load_hf(hfdir)
  assert (lm.cfg.n_layers, lm.cfg.d_model, lm.cfg.vocab_size, lm.cfg.max_len) == (1, 32, 259, 64)
  rc, err = _convert(hfdir, "--out", tmp_path / "b", "--as-bundle")
  assert (rc, err) == (0, "")
  assert json.loads((tmp_path / "b" / "bundle.json").read_text())["normalization"]["std"] == 2.0


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json"])
def test_a_fifo_is_refused_without_blocking(hfdir, name):
  # Opening a FIFO for reading blocks until a writer comes: `hhh convert` once hung here.
  os.remove(hfdir / name)
  os.mkfifo(hfdir / name)
  errors = []
  reader = threading.Thread(target=lambda: errors.append(pytest.raises(ValueError, hf.load_hf, hfdir)), daemon=True)
  reader.start()
  reader.join(60)
  assert not reader.is_alive(), f"reading a FIFO {name} hung"
  assert str(errors[0].value) == f"{hfdir / name}: is a FIFO, not a regular file"


@pytest.mark.parametrize("name", ["tokenizer.json", "chat_template.jinja"])
def test_a_symlink_to_dev_zero_is_refused(hfdir, name):
  # Read as a file, /dev/zero never ends: this once grew to 2.3 GB in 5 s.
  if name == "chat_template.jinja":  # read only when tokenizer_config.json has no template
    tc = json.loads((hfdir / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (hfdir / "tokenizer_config.json").write_text(json.dumps(tc))
  else:
    os.remove(hfdir / name)
  os.symlink("/dev/zero", hfdir / name)
  assert _refused(hfdir, "character device") == f"{hfdir / name}: is a character device, not a regular file"


def test_a_huge_sparse_config_is_refused_by_its_size(hfdir):
  # A 3 GB sparse config.json once reached 3.4 GB of RSS.
  with open(hfdir / "config.json", "r+b") as f:
    f.truncate(3 << 30)
  assert _refused(hfdir, "over the limit") == \
      f"{hfdir / 'config.json'}: is {3 << 30} bytes, over the limit of {16 << 20}"


def _header(path) -> tuple[dict, bytes]:
  data = path.read_bytes()
  n = int.from_bytes(data[:8], "little")
  return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header: dict, body: bytes) -> None:
  h = json.dumps(header).encode()
  path.write_bytes(len(h).to_bytes(8, "little") + h + body)


def test_safetensors_that_lie(hfdir):
  st = hfdir / "model.safetensors"
  header, body = _header(st)
  name = "model.norm.weight"
  cases = [
      (lambda h: h[name].update(shape=[64]), f"tensor '{name}': shape [64] of F32 needs 256 bytes, data_offsets give 128"),
      (lambda h: h[name].update(data_offsets=[len(body) - 8, len(body) + 120]),
       f"tensor '{name}': data_offsets [{len(body) - 8}, {len(body) + 120}] do not lie within the file's "
       f"{len(body)} data bytes (truncated file?)"),
      (lambda h: h[name].update(dtype="F8_E4M3"), f"tensor '{name}': dtype 'F8_E4M3' is not supported"),
      (lambda h: h[name].update(shape=[-32]), f"tensor '{name}': shape [-32] is not a list of at most 8"),
  ]
  for edit, message in cases:
    h = json.loads(json.dumps(header))
    edit(h)
    _write(st, h, body)
    assert message in _refused(hfdir, f"{st}: "), message
  # Truncated: the last tensor's bytes are gone.
  _write(st, header, body[:-4])
  assert "do not lie within the file's" in _refused(hfdir, f"{st}: tensor ")
  # A 2^62 header length: once an attempt to read 4 EiB.
  st.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
  assert _refused(hfdir, f"{st}: header length ") == \
      f"{st}: header length {1 << 62} is past the end of the file (10 bytes) or over {100 << 20}; truncated or " \
      "not a safetensors file"
  st.write_bytes(b"\x01")
  _refused(hfdir, f"{st}: not a safetensors file \\(1 bytes")
  os.remove(st)
  st.mkdir()
  assert _refused(hfdir, "directory") == f"{st}: is a directory, not a regular file"


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(num_attention_heads=0), "num_attention_heads must be an integer from 1 to 1024, not 0"),
    (lambda c: c.update(hidden_size="64"), 'hidden_size must be an integer from 1 to 32768, not "64"'),
    (lambda c: [1, 2, 3], "must hold a JSON object, not list"),
    (lambda c: c.update(hhh_reward="evil"), "hhh_reward must be an object, not str"),
    (lambda c: c.update(num_hidden_layers=2000), "num_hidden_layers must be an integer from 1 to 512, not 2000"),
    (lambda c: c.update(max_position_embeddings=-5),
     "max_position_embeddings must be an integer from 1 to 1048576, not -5"),
    (lambda c: c.update(rms_norm_eps="tiny"), 'rms_norm_eps must be a finite number > 0 and <= 1, not "tiny"'),
    (lambda c: c.update(architectures=7), "architectures must be a list of strings"),
    (lambda c: c.update(rope_scaling=[1]), "rope_scaling must be an object or null"),
    (lambda c: c["hhh_reward"]["normalization"].update(std=0),
     "hhh_reward.normalization must hold a finite mean and a finite std > 0"),
    (lambda c: c["hhh_reward"].update(max_len=1e12), "hhh_reward.max_len must be an integer >= 2, not 1000000000000.0"),
])
def test_bad_config_fields_are_one_line_naming_the_file(hfdir, tmp_path, edit, message):
  _config(hfdir, edit)
  rc, err = _convert(hfdir, "--out", tmp_path / "b", "--as-bundle")
  assert rc == 1 and err == f"hhh: error: {hfdir / 'config.json'}: {message}\n"
  assert not (tmp_path / "b").exists()


def test_deeply_nested_config_is_one_line(hfdir, tmp_path):
  (hfdir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
  rc, err = _convert(hfdir, "--out", tmp_path / "b")
  assert rc == 1 and err == f"hhh: error: {hfdir / 'config.json'}: not valid JSON: nested too deeply\n"


def test_max_len_over_the_model_is_refused_before_writing(hfdir, tmp_path):
  # The bundle reader refuses max_len above model.max_len; --as-bundle once wrote such bundles anyway.
  _config(hfdir, lambda c: c["hhh_reward"].update(max_len=10**6))
  rc, err = _convert(hfdir, "--out", tmp_path / "b", "--as-bundle")
  assert rc == 1 and err == ("hhh: error: refusing to write a reward bundle: max_len must be an integer from 2 to "
                             "model.max_len=64, not 1000000\n")
  assert not (tmp_path / "b").exists()


def test_a_bad_tokenizer_json_is_one_line(hfdir):
  (hfdir / "tokenizer.json").write_text('{"model": 5}')
  assert _refused(hfdir, "tokenizer.json: not a tokenizer the tokenizers library reads: ").startswith(
      f"{hfdir / 'tokenizer.json'}: ")


# --- lines ------------------------------------------------------------------------------------------------------


def _zst(path, parts) -> None:
  import zstandard
  with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as w:
    for p in parts:
      w.write(p)


def test_an_endless_line_is_skipped_in_constant_memory(tmp_path):
  pytest.importorskip("zstandard")
  # 256 MB of zeros with no newline, then a good line: readline once held all of it, and more (4.3x).
  good = json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"})
  _zst(tmp_path / "z.jsonl.zst", [b"\0" * (1 << 20)] * 256 + [b"\n", good.encode(), b"\n"])
  assert (tmp_path / "z.jsonl.zst").stat().st_size < 20_000
  stats = MineStats("t")
  tracemalloc.start()
  try:
    got = list(common.json_lines(tmp_path / "z.jsonl.zst", stats, max_bytes=4 << 20))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert [w for _, w, _ in got] == [f"{tmp_path / 'z.jsonl.zst'}:2"]
  assert stats.records_read == 2 and dict(stats.skipped) == {"oversize_line": 1}
  assert peak < 12 << 20, peak


def test_lines_splits_and_caps_exactly():
  class Chunks(io.RawIOBase):  # reads of 3 bytes at most, so lines straddle chunks
    def __init__(self, data):
      self.data = io.BytesIO(data)

    def read(self, n=-1):
      return self.data.read(min(n, 3))

  data = b"ab\n\n12345\n123456\nxyz"
  assert list(common.lines(Chunks(data), max_bytes=5)) == [b"ab", b"", b"12345", None, b"xyz"]
  assert list(common.lines(io.BytesIO(b"1234567"), max_bytes=5)) == [None]
  assert list(common.lines(io.BytesIO(b""), max_bytes=5)) == []


def test_data_load_of_a_corrupt_zst_is_one_line(tmp_path):
  # `hhh data load hh_rlhf corrupt.jsonl.zst` once ended in a ZstdError traceback.
  (tmp_path / "corrupt.jsonl.zst").write_bytes(b"(\xb5/\xfd" + os.urandom(200))
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = cli.main(["data", "load", "hh_rlhf", str(tmp_path / "corrupt.jsonl.zst"), "--out", str(tmp_path / "o")])
  # Above the error only the progress line, redrawn with carriage returns.
  assert rc == 1 and "Traceback" not in err.getvalue()
  assert err.getvalue().splitlines()[-1] == "hhh: error: no comparisons mined from 0 records read (corrupt_file: 1)"


@pytest.mark.parametrize("name", ["tokenizer_config.json", "config.json"])
def test_convert_to_bundle_called_directly_refuses_a_fifo(hfdir, tmp_path, name):
  # The Python API, not only the CLI: convert_to_bundle reads config.json and tokenizer_config.json itself.
  os.remove(hfdir / name)
  os.mkfifo(hfdir / name)
  errors = []
  t = threading.Thread(target=lambda: errors.append(pytest.raises(
      ValueError, hf_export.convert_to_bundle, hfdir, tmp_path / "b")), daemon=True)
  t.start()
  t.join(60)
  assert not t.is_alive(), f"convert_to_bundle hung on a FIFO {name}"
  assert str(errors[0].value) == f"{hfdir / name}: is a FIFO, not a regular file"
  assert not (tmp_path / "b").exists()
