"""A frozen trunk's residual-stream states for a dataset, computed once and memory-mapped.

    cache = build(lm, comparisons, root, CacheSpec(layers=(6, 8, 14, 16, 28, 30)), name="truthfulqa-train")
    x_LxD = cache.row_states(28, r)          # float16 view of the states entering block 28 for row r

Rows are exactly what hhh's PM pipeline feeds a model: `context + response + <eoc>`, tokenized by
`hhh.data.pipeline.encode_comparison` (contexts cut from the left, responses from the right, at most max_k
responses), one row per response. Each row is run on its own (right-padded in a length bucket; padding never
changes a real token's states), so a cached state is the state the whole model computes for that token.

Layout of a cache directory ROOT/NAME-KEY/ (KEY: the first 16 hex digits of the fingerprint's sha256):
  manifest.json   fingerprint (model name and parameter digest, tokenizer digest, data digest, layers, max_len,
                  max_k, dtype, format version), counts, shards, build wall time
  tokens.npy      int32 [T]   every row's tokens, concatenated
  rows.npy        int64 [R, 4] (token offset, length, response start, comparison index)
  scores.npy      float32 [R] each row's score in its comparison (higher is better)
  comparisons.json  per comparison: id, group (the cluster for statistics: the context's sha1 unless the
                  comparison's meta names one), first row and K
  shard_SSSSS/hLL.npy  float16 [tokens of the shard, D]: the residual stream entering block LL (LL = n_layers:
                  the final norm's input); shards hold whole rows, in row order, ~shard_tokens each

A build writes into a staging directory and renames it into place, so a cache directory that exists is complete;
the same inputs always map to the same directory, and a second build returns the first one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hhh.data import pipeline
from hhh.data.schema import Comparison

FORMAT_VERSION = 1
_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  layers: tuple[int, ...]               # block inputs to store (n_layers = the final norm's input)
  max_len: int = 256
  max_k: int = 4
  dtype: str = "float16"                # "float32" for exactness tests
  shard_tokens: int = 1 << 18
  batch_tokens: int = 4096              # rows per trunk call = batch_tokens // bucket length


def params_digest(params) -> str:
  """sha256 over every parameter's name, shape and bytes (a changed weight is a different trunk)."""
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def data_digest(comparisons: Sequence[Comparison]) -> str:
  h = hashlib.sha256()
  for c in comparisons:
    h.update(json.dumps(c.to_json(), sort_keys=True, ensure_ascii=False).encode())
    h.update(b"\n")
  return h.hexdigest()


def fingerprint(lm, comparisons: Sequence[Comparison], spec: CacheSpec, *, trunk_digest: str | None = None) -> dict:
  tok_json = json.dumps(lm.tokenizer.to_json(), sort_keys=True)
  return {
      "format_version": FORMAT_VERSION, "model": lm.name,
      "params_sha256": trunk_digest or params_digest(lm.params),
      "tokenizer_sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
      "data_sha256": data_digest(comparisons), "layers": sorted(set(int(l) for l in spec.layers)),
      "max_len": spec.max_len, "max_k": spec.max_k, "dtype": spec.dtype, "d_model": lm.cfg.d_model,
      "n_layers": lm.cfg.n_layers}


def group_of(c: Comparison) -> str:
  """The cluster a comparison belongs to for statistics: meta["group"] when a source sets it, else its context."""
  g = c.meta.get("group") if c.meta else None
  return str(g) if g is not None else hashlib.sha1(c.context.encode()).hexdigest()[:16]


def _bucket(n: int, max_len: int) -> int:
  for b in _BUCKETS:
    if n <= b:
      return min(b, max(max_len, n))
  return max_len


def _trunk_fn(lm, top: int, layers: tuple[int, ...]):
  """A jitted function (params of blocks < top, tokens, valid) -> {layer: states}, and those params."""
  import jax
  from flax import nnx
  from hhh.model.params import model_structure
  cfg = dataclasses.replace(lm.cfg, n_layers=max(top, 1))
  graphdef = model_structure(cfg)[0]
  params = dict(lm.params)
  params["layers"] = {i: lm.params["layers"][i] for i in range(cfg.n_layers)}
  # A depth equal to the trunk's own is the final norm's input: block_inputs of the full model.
  fn = jax.jit(lambda p, t, v: nnx.merge(graphdef, p).block_inputs(t, v, layers))
  return fn, params


def _encode(comparisons, tok, spec: CacheSpec):
  stats = pipeline.EncodeStats()
  rows, tokens, scores, comps = [], [], [], []
  offset = 0
  for ci, c in enumerate(comparisons):
    ex = pipeline.encode_comparison(c, tok, spec.max_len, spec.max_k, stats)
    comps.append({"id": c.id, "group": group_of(c), "first_row": len(rows), "k": len(ex.seqs)})
    for seq, start, score in zip(ex.seqs, ex.starts, ex.scores):
      rows.append((offset, len(seq), start, ci))
      tokens.append(seq)
      scores.append(score)
      offset += len(seq)
  rows_Rx4 = np.asarray(rows, np.int64).reshape(-1, 4)
  tokens_T = np.concatenate(tokens).astype(np.int32) if tokens else np.zeros((0,), np.int32)
  return rows_Rx4, tokens_T, np.asarray(scores, np.float32), comps, stats


def _shards(rows_Rx4, shard_tokens: int) -> list[dict]:
  shards, start_row, t0 = [], 0, 0
  for r in range(len(rows_Rx4)):
    end = int(rows_Rx4[r, 0] + rows_Rx4[r, 1])
    if end - t0 >= shard_tokens or r == len(rows_Rx4) - 1:
      shards.append({"rows": [start_row, r + 1], "tokens": [t0, end]})
      start_row, t0 = r + 1, end
  return shards


def _shard_of_row(shards: list[dict], n_rows: int) -> np.ndarray:
  out = np.zeros(n_rows, np.int64)
  for s, sh in enumerate(shards):
    out[sh["rows"][0]:sh["rows"][1]] = s
  return out


def cache_dir(root, name: str, fp: dict) -> pathlib.Path:
  key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
  return pathlib.Path(root) / f"{name}-{key}"


def build(lm, comparisons: Sequence[Comparison], root, spec: CacheSpec, *, name: str, progress: bool = True,
          trunk_digest: str | None = None) -> "Cache":
  """The cache of `comparisons` under `root` (built unless an identical one exists); see the module docstring."""
  import jax
  import jax.numpy as jnp
  from tqdm.auto import tqdm
  comparisons = list(comparisons)
  if not comparisons:
    raise ValueError(f"{name}: no comparisons to cache")
  layers = tuple(sorted(set(int(l) for l in spec.layers)))
  if layers[0] < 0 or layers[-1] > lm.cfg.n_layers:
    raise ValueError(f"cache layers {layers} must lie in [0, {lm.cfg.n_layers}]")
  fp = fingerprint(lm, comparisons, spec, trunk_digest=trunk_digest)
  out = cache_dir(root, name, fp)
  if (out / "manifest.json").exists():
    return Cache(out)
  t_start = time.time()
  rows_Rx4, tokens_T, scores_R, comps, enc_stats = _encode(comparisons, lm.tokenizer, spec)
  shards = _shards(rows_Rx4, spec.shard_tokens)
  stage = out.parent / f".{out.name}.building-{os.getpid()}"
  shutil.rmtree(stage, ignore_errors=True)
  stage.mkdir(parents=True)
  np.save(stage / "tokens.npy", tokens_T)
  np.save(stage / "rows.npy", rows_Rx4)
  np.save(stage / "scores.npy", scores_R)
  (stage / "comparisons.json").write_text(json.dumps(comps))
  dtype = np.dtype(spec.dtype)
  D = lm.cfg.d_model
  maps = []
  for s, sh in enumerate(shards):
    d = stage / f"shard_{s:05d}"
    d.mkdir()
    n = sh["tokens"][1] - sh["tokens"][0]
    maps.append({l: np.lib.format.open_memmap(d / f"h{l:02d}.npy", mode="w+", dtype=dtype, shape=(n, D))
                 for l in layers})
  shard_of_row = _shard_of_row(shards, len(rows_Rx4))
  fn, params = _trunk_fn(lm, layers[-1], layers)
  # Rows sorted by length into buckets: one compiled program per bucket, every batch padded to its full B.
  order = np.argsort(rows_Rx4[:, 1], kind="stable")
  plan: list[tuple[int, list[int]]] = []
  by_bucket: dict[int, list[int]] = {}
  for r in order:
    by_bucket.setdefault(_bucket(int(rows_Rx4[r, 1]), spec.max_len), []).append(int(r))
  for L, rs in sorted(by_bucket.items()):
    B = max(1, spec.batch_tokens // L)
    plan += [(L, rs[i:i + B]) for i in range(0, len(rs), B)]
  bar = tqdm(total=int(rows_Rx4[:, 1].sum()), unit="tok", desc=f"cache {name}", disable=not progress)
  pending = None

  def flush(p):
    rs, L, states = p
    host = {l: np.asarray(states[l]) for l in layers}
    for b, r in enumerate(rs):
      off, n = int(rows_Rx4[r, 0]), int(rows_Rx4[r, 1])
      s = int(shard_of_row[r])
      lo = off - shards[s]["tokens"][0]
      for l in layers:
        maps[s][l][lo:lo + n] = host[l][b, :n].astype(dtype)
    bar.update(int(rows_Rx4[rs, 1].sum()))

  for L, rs in plan:
    B = max(1, spec.batch_tokens // L)
    tok_BxL = np.full((B, L), lm.tokenizer.pad_id, np.int32)
    valid_BxL = np.zeros((B, L), bool)
    for b, r in enumerate(rs):
      off, n = int(rows_Rx4[r, 0]), int(rows_Rx4[r, 1])
      tok_BxL[b, :n] = tokens_T[off:off + n]
      valid_BxL[b, :n] = True
    states = fn(params, jnp.asarray(tok_BxL), jnp.asarray(valid_BxL))
    # Dispatch the next batch before copying this one back, so the host copy overlaps the trunk.
    if pending is not None:
      flush(pending)
    pending = (rs, L, states)
  if pending is not None:
    flush(pending)
  bar.close()
  for m in maps:
    for a in m.values():
      a.flush()
  del maps
  manifest = {"fingerprint": fp, "name": name, "rows": int(len(rows_Rx4)), "tokens": int(len(tokens_T)),
              "comparisons": len(comps), "shards": shards, "build_seconds": round(time.time() - t_start, 1),
              "encode": dataclasses.asdict(enc_stats), "jax_backend": jax.default_backend()}
  (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
  try:
    os.rename(stage, out)
  except OSError:
    if not (out / "manifest.json").exists():   # another process finished the same cache first: keep theirs
      raise
    shutil.rmtree(stage, ignore_errors=True)
  return Cache(out)


class Cache:
  """A built cache (read-only, memory-mapped)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    mf = self.path / "manifest.json"
    if not mf.exists():
      raise FileNotFoundError(f"{self.path}: not a frozen-trunk cache (no manifest.json)")
    self.manifest: dict[str, Any] = json.loads(mf.read_text())
    self.fingerprint = self.manifest["fingerprint"]
    self.layers = tuple(self.fingerprint["layers"])
    self.tokens_T = np.load(self.path / "tokens.npy", mmap_mode="r")
    self.rows_Rx4 = np.load(self.path / "rows.npy")
    self.scores_R = np.load(self.path / "scores.npy")
    self.comparisons: list[dict] = json.loads((self.path / "comparisons.json").read_text())
    self._shards = self.manifest["shards"]
    self._shard_of_row = _shard_of_row(self._shards, len(self.rows_Rx4))
    self._maps: dict[tuple[int, int], np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.comparisons)

  @property
  def d_model(self) -> int:
    return int(self.fingerprint["d_model"])

  def _map(self, s: int, layer: int) -> np.ndarray:
    if layer not in self.layers:
      raise ValueError(f"{self.path.name}: layer {layer} is not cached (cached: {list(self.layers)})")
    if (s, layer) not in self._maps:
      self._maps[(s, layer)] = np.load(self.path / f"shard_{s:05d}" / f"h{layer:02d}.npy", mmap_mode="r")
    return self._maps[(s, layer)]

  def row_tokens(self, r: int) -> np.ndarray:
    off, n = int(self.rows_Rx4[r, 0]), int(self.rows_Rx4[r, 1])
    return np.asarray(self.tokens_T[off:off + n])

  def row_states(self, layer: int, r: int) -> np.ndarray:
    off, n = int(self.rows_Rx4[r, 0]), int(self.rows_Rx4[r, 1])
    s = int(self._shard_of_row[r])
    lo = off - self._shards[s]["tokens"][0]
    return self._map(s, layer)[lo:lo + n]

  def rows_of(self, c: int) -> range:
    first, k = self.comparisons[c]["first_row"], self.comparisons[c]["k"]
    return range(first, first + k)

  def max_row_len(self, comps: Sequence[int] | None = None) -> int:
    comps = range(len(self)) if comps is None else comps
    return max(int(self.rows_Rx4[r, 1]) for c in comps for r in self.rows_of(c))

  def batch(self, comps: Sequence[int], *, layer: int, K: int, L: int, with_states: bool = True) -> dict:
    """Arrays for comparisons `comps` padded to [len(comps), K, L]: states (float32, when asked), tokens,
    lengths, response starts, scores and valid_BxK. A padded response slot has length 0 and valid False."""
    B = len(comps)
    out = {"tokens_BxKxL": np.zeros((B, K, L), np.int32), "lengths_BxK": np.zeros((B, K), np.int32),
           "starts_BxK": np.zeros((B, K), np.int32), "scores_BxK": np.zeros((B, K), np.float32),
           "valid_BxK": np.zeros((B, K), bool)}
    if with_states:
      out["x_BxKxLxD"] = np.zeros((B, K, L, self.d_model), np.float32)
    for b, c in enumerate(comps):
      rows = self.rows_of(int(c))
      if len(rows) > K:
        raise ValueError(f"comparison {c} has {len(rows)} responses, the batch holds {K}")
      for k, r in enumerate(rows):
        n = int(self.rows_Rx4[r, 1])
        if n > L:
          raise ValueError(f"row {r} has {n} tokens, the batch holds {L}")
        out["tokens_BxKxL"][b, k, :n] = self.row_tokens(r)
        out["lengths_BxK"][b, k] = n
        out["starts_BxK"][b, k] = self.rows_Rx4[r, 2]
        out["scores_BxK"][b, k] = self.scores_R[r]
        out["valid_BxK"][b, k] = True
        if with_states:
          out["x_BxKxLxD"][b, k, :n] = self.row_states(layer, r)
    return out
