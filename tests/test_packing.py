"""Packed training rows (hhh.data.packing + hhh.train.step.packed_loss_fn): the same rewards, loss and gradients
as one sequence per row, on real HH-RLHF conversations and Stack Exchange rankings, and `hhh train` with
data.pack=true and false on the same loss trajectory.

The model is tiny and random with every parameter perturbed, so activations and rewards are O(1) and 1e-5 is a
real tolerance. Real texts are cut to their first few hundred bytes (byte tokenizer) to keep compiles short.
"""

from __future__ import annotations

import collections
import functools
import itertools
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hhh.data import packing
from hhh.data.load import hh_rlhf
from hhh.data.mine import stackexchange as se
from hhh.data.mine.common import MineStats
from hhh.data.pipeline import Encoded, collate, encode_all
from hhh.data.schema import Comparison
from hhh.data.tokenizer import ByteTokenizer
from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer
from hhh.train.step import loss_fn, packed_loss_fn
from tests.conftest import SHARED_DATA, read_metrics, run_hhh

ATOL = 1e-5
TOK = ByteTokenizer()
CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=256)


def _params(cfg: ModelConfig, seed: int = 0, noise: float = 0.1):
  # Zero biases, unit norm scales and the 0.02-std init would let a misplaced term hide under 1e-5.
  state = nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + noise * rng.standard_normal(x.shape, np.float32)),
                      nnx.to_pure_dict(state))


GRAPHDEF = nnx.graphdef(nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0))))
PARAMS = _params(CFG)


def _cut(c: Comparison, n: int) -> Comparison:
  # Keep the end of the context (the last turns) and the start of each response, as encoding truncation does.
  return Comparison(c.context[-n:], tuple(r[: n // 2] for r in c.responses), c.scores, c.id, c.source)


def hh_comparisons(n: int) -> list[Comparison]:
  path = SHARED_DATA / "hh_rlhf" / "helpful-base"
  if not path.is_dir():
    pytest.skip("../shared/data/hh_rlhf not found: the real HH-RLHF files are only in the development checkout")
  rows = itertools.islice(hh_rlhf.load(path, hh_rlhf.Options(), MineStats("")), n)
  return [c for _, c, _ in rows]


def se_rankings(n: int, min_k: int = 3) -> list[Comparison]:
  path = SHARED_DATA / "stackexchange" / "cardano.stackexchange.com"
  if not path.is_dir():
    pytest.skip("../shared/data/stackexchange not found: the real dump is only in the development checkout")
  out = []
  for _, c in se.mine(path, se.Options(), MineStats("stackexchange")):
    if c.k >= min_k:
      out.append(c)
    if len(out) == n:
      break
  return out


def _grads_and_loss(fn, batch, objective, lm_coef):
  grad_fn = jax.jit(jax.value_and_grad(fn, has_aux=True), static_argnums=(1, 4, 5))
  (loss, metrics), grads = grad_fn(PARAMS, GRAPHDEF, batch, None, objective, lm_coef)
  return float(loss), metrics, grads


def _unpacked(examples: list[Encoded], K: int) -> dict:
  L = max(e.length for e in examples)
  L = -(-L // 32) * 32
  return {k: jnp.asarray(v) for k, v in collate(examples, L, K, TOK.pad_id).items()}


def _rewards_unpacked(batch):
  model = nnx.merge(GRAPHDEF, PARAMS)
  B, K, L = batch["tokens"].shape
  tokens, lengths = batch["tokens"].reshape(B * K, L), batch["lengths"].reshape(B * K)
  valid = jnp.arange(L)[None] < lengths[:, None]
  return np.asarray(model.reward(model(tokens, valid), valid).reshape(B, K))


def _rewards_packed(batch):
  from hhh.model.transformer import segment_mask
  model = nnx.merge(GRAPHDEF, PARAMS)
  seg = batch["segments"]
  h = model(batch["tokens"], seg >= 0, positions_BxL=batch["positions"],
            mask_BxLxL=segment_mask(seg, batch["contexts"]))
  return np.asarray(model.reward_all(h).reshape(-1)[batch["reward_index"]])


def check_same(examples, K, objective="ranked", lm_coef=0.0, row_len=256, buckets=(64, 128, 256), n_shards=1):
  stats = packing.PackStats()
  packed = packing.collate_rows(examples, K=K, pad_id=TOK.pad_id, buckets=packing.row_buckets(buckets, row_len),
                                n_shards=n_shards, stats=stats, one_row=packing.long_rows(buckets, row_len))
  pb = {k: jnp.asarray(v) for k, v in packed.items()}
  ub = _unpacked(examples, K)
  valid = np.asarray(ub["lengths"]) > 0
  np.testing.assert_allclose(_rewards_packed(pb)[valid], _rewards_unpacked(ub)[valid], atol=ATOL, rtol=0)
  lp, mp, gp = _grads_and_loss(packed_loss_fn, pb, objective, lm_coef)
  lu, mu, gu = _grads_and_loss(loss_fn, ub, objective, lm_coef)
  assert abs(lp - lu) < ATOL
  for k in ("accuracy", "pairs") + (("lm_loss",) if lm_coef else ()):
    assert abs(float(mp[k]) - float(mu[k])) < ATOL, k
  flat_p, flat_u = jax.tree.leaves(gp), jax.tree.leaves(gu)
  assert max(float(jnp.abs(a).max()) for a in flat_u) > 1e-3  # gradients that could hide a mismatch are not zero
  for a, b in zip(flat_p, flat_u):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=0)
  return packed, stats


@pytest.mark.parametrize("objective,lm_coef", [("ranked", 0.0), ("binary", 0.0), ("ranked", 0.5)])
def test_hh_rlhf_rows_several_comparisons_per_row(objective, lm_coef):
  comps = [_cut(c, 150) for c in hh_comparisons(8)]
  examples, _ = encode_all(comps, TOK, max_len=256, max_k=2)
  packed, stats = check_same(examples, K=2, objective=objective, lm_coef=lm_coef, row_len=1024)
  assert stats.packed == 8 and stats.fallback == 0
  # Several comparisons share rows: fewer rows than comparisons, and each context is there once.
  R = packed["tokens"].shape[0]
  assert R < 8
  real = int((packed["segments"] >= 0).sum())
  assert real == sum(packing.packed_length(e) for e in examples)
  assert real < sum(len(s) for e in examples for s in e.seqs)


def test_hh_rlhf_comparisons_end_to_end_in_one_long_row():
  # A row longer than any piece (what data.pack_len=0 picks on CPU): all 8 comparisons lie end to end in one row
  # of the fine grid (tiled attention, skipping the other comparisons' tiles), with the unpacked numbers.
  comps = [_cut(c, 150) for c in hh_comparisons(8)]
  examples, _ = encode_all(comps, TOK, max_len=256, max_k=2)
  packed, stats = check_same(examples, K=2, lm_coef=0.5, row_len=4096, buckets=(64, 128, 256))
  need = sum(packing.packed_length(e) for e in examples)
  R, L = packed["tokens"].shape
  assert stats.packed == 8 and R == 1
  # The shortest grid row that holds them: less than 1/8 of it is padding.
  grid = packing.row_buckets((64, 128, 256), 4096)
  assert L == min(b for b in grid if b >= need) and (L - need) / L < 1 / 8


def test_row_grid_and_automatic_row_length():
  assert packing.row_buckets((128, 256, 512, 1024), 8192) == (
      128, 256, 512, 1024, 1152, 1344, 1536, 1728, 1984, 2240, 2560, 2880, 3264, 3712, 4224, 4800, 5440, 6144,
      6912, 7808, 8192)
  assert packing.row_buckets((64, 128), 1024) == (64, 128, 256, 512, 576, 704, 832, 960, 1024)
  assert packing.row_buckets((64, 128), 128) == (64, 128)
  # data.pack_len=0: long rows only on CPU, for rows that use tiled attention.
  assert packing.row_length((256, 1024)) == 8192
  assert packing.row_length((256, 1024), backend="gpu") == 1024
  # Token-budget steps on CPU: one row per batch shard where it is a multiple of 64 up to 8 buckets.
  assert packing.row_length((256, 1024), batch_tokens=4096) == 4096
  assert packing.row_length((256, 1024), batch_tokens=4096, n_shards=2) == 2048
  assert packing.row_length((256, 1024), batch_tokens=4096, backend="gpu") == 1024
  assert packing.row_length((256, 1024), batch_tokens=1024) == 1024
  assert packing.row_length((256, 1024), batch_tokens=16384) == 1024     # past 8 buckets
  assert packing.row_length((256, 1000), batch_tokens=3000) == 1000      # not a multiple of 64
  assert packing.row_length((256, 1024), batch_tokens=4096, n_shards=3) == 1024
  assert packing.row_length((64, 256)) == 256
  assert packing.row_length((64, 256), pack_len=512, backend="tpu") == 512


@pytest.mark.parametrize("one_row", [False, True])
def test_packed_shape_is_the_shape_collate_rows_builds(one_row):
  # A streaming process agrees on the global batch's shape from lengths alone (packed_shape): it must be the
  # shape collate_rows lays out, on every path (one long row, fewest slots, a shard too full for one row).
  rng = np.random.default_rng(0)
  E = TOK.eoc_id
  grid = packing.row_buckets((64, 128), 1024)
  for trial in range(60):
    C = int(rng.choice([2, 4, 8]))
    n_shards = int(rng.choice([1, 2]))
    exs = []
    for _ in range(C):
      n_ctx, n_resp = int(rng.integers(1, 60)), int(rng.integers(1, 60))
      ctx = rng.integers(1, 200, n_ctx)
      exs.append(Encoded([np.concatenate([ctx, rng.integers(1, 200, n_resp), [E]]),
                          np.concatenate([ctx, rng.integers(1, 200, n_resp + 3), [E]])],
                         [n_ctx, n_ctx], np.array([0.0, 1.0], np.float32)) if rng.random() > 0.1 else None)
    pl = [[len(p) for p in packing.pieces_of(e, 1024)[0]] if e is not None else [] for e in exs]
    R_s, L = packing.packed_shape(pl, buckets=grid, n_shards=n_shards, one_row=one_row)
    got = packing.collate_rows(exs, K=2, pad_id=0, buckets=grid, n_shards=n_shards, one_row=one_row)["tokens"]
    assert got.shape == (R_s * n_shards, L), trial
    if one_row:
      per = C // n_shards
      most = max(sum(map(sum, pl[s * per:(s + 1) * per])) for s in range(n_shards))
      assert R_s == 1 and L == min(b for b in grid if b >= max(most, 1)), trial


def test_truncated_hh_rows_fall_back_and_still_match():
  # max_len 96 cuts contexts differently per response (a longer response leaves less room): those comparisons
  # fall back to one piece per response, next to packed ones in the same rows.
  comps = [_cut(c, 200) for c in hh_comparisons(8)]
  examples, enc = encode_all(comps, TOK, max_len=96, max_k=2)
  assert enc.contexts_truncated > 0
  _, stats = check_same(examples, K=2, lm_coef=0.5, row_len=192, buckets=(64, 96))
  assert stats.fallback > 0 and stats.packed > 0


def test_stack_exchange_rankings_k_varies_within_batch_and_splits():
  comps = [_cut(c, 120) for c in se_rankings(6)]
  ks = sorted({c.k for c in comps})
  examples, _ = encode_all(comps, TOK, max_len=128, max_k=5)
  assert len({len(e.seqs) for e in examples}) > 1, ks  # K differs between comparisons of one batch
  # Rows of 128 tokens cannot hold a whole 3..5-way ranking: they split, each piece repeating the context.
  _, stats = check_same(examples, K=5, row_len=128, buckets=(64, 128))
  assert stats.split > 0
  _, stats = check_same(examples, K=5, lm_coef=0.5, row_len=512, buckets=(64, 128), n_shards=2)
  assert stats.split == 0 and stats.packed >= len(examples) - 1


def test_short_last_batch_and_shards_keep_their_own_rows():
  comps = [_cut(c, 120) for c in hh_comparisons(6)]
  examples, _ = encode_all(comps, TOK, max_len=128, max_k=2)
  exs = examples + [None, None]  # a short last batch: two empty comparison slots
  packed = packing.collate_rows(exs, K=2, pad_id=TOK.pad_id, buckets=(128, 256), n_shards=2)
  R, L = packed["tokens"].shape
  assert R % 2 == 0 and not packed["lengths"][6:].any()
  # Shard s's comparisons read their rewards in shard s's rows only.
  row_of = packed["reward_index"] // L
  assert (row_of[:4] < R // 2).all() and (row_of[4:6] >= R // 2).all()


def test_layout_hand_example():
  # Two comparisons: context [1, 2] with responses [5] and [6, 7]; context [3] with one response [8].
  E = TOK.eoc_id
  a = Encoded([np.array([1, 2, 5, E]), np.array([1, 2, 6, 7, E])], [2, 2], np.array([0.0, 1.0], np.float32))
  b = Encoded([np.array([3, 8, E])], [1], np.array([0.0], np.float32))
  p = packing.collate_rows([a, b], K=2, pad_id=0, buckets=(8, 16))
  assert p["tokens"].shape == (2, 8)
  # a (7 tokens) fills row 0 first; b (3 tokens) does not fit its last slot, so it opens row 1.
  np.testing.assert_array_equal(p["tokens"][0], [1, 2, 5, E, 6, 7, E, 0])
  np.testing.assert_array_equal(p["positions"][0], [0, 1, 2, 3, 2, 3, 4, 0])
  np.testing.assert_array_equal(p["segments"][0], [0, 0, 1, 1, 2, 2, 2, -1])
  np.testing.assert_array_equal(p["contexts"][0], [0, 0, 0, 0, 0, 0, 0, -2])
  np.testing.assert_array_equal(p["tokens"][1, :3], [3, 8, E])
  np.testing.assert_array_equal(p["reward_index"], [[3, 6], [8 + 2, 0]])
  np.testing.assert_array_equal(p["lengths"], [[4, 5], [3, 0]])
  # a's preferred sequence is 1 2 6 7 E: each token but E predicts the next; b's is 3 8 E.
  np.testing.assert_array_equal(p["lm_weight"][0], [1, 1, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(p["lm_target"][0][[0, 1, 4, 5]], [2, 6, 7, E])
  np.testing.assert_array_equal(p["lm_weight"][1, :3], [1, 1, 0])
  np.testing.assert_array_equal(p["lm_target"][1, :2], [8, E])


def test_round_rows_grid():
  assert [packing.round_rows(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]


def test_hhh_train_pack_true_and_false_give_the_same_losses(tiny_experiment, tmp_path):
  runs = {}
  for pack in ("true", "false"):
    wd = tmp_path / pack
    run_hhh("train", tiny_experiment, "--workdir", wd, "--set", f"data.pack={pack}", "--set", "steps=6",
            "--set", "checkpoint_every=6", "--set", "data.toy_k=3", "--set", "data.max_k=3")
    runs[pack] = [m["loss"] for m in read_metrics(wd)]
  assert len(runs["true"]) == 6
  np.testing.assert_allclose(runs["true"], runs["false"], atol=1e-4, rtol=0)


def test_hhh_train_long_rows_on_cpu(tiny_experiment, tmp_path):
  """Buckets of 512: `hhh train` on CPU packs a step into one long row (tiled attention) with the unpacked losses,
  and token-budget steps are one row of data.batch_tokens."""
  long = ["--set", "model.max_len=512", "--set", "data.max_len=512", "--set", "data.buckets=256,512",
          "--set", "steps=3", "--set", "checkpoint_every=3"]
  runs, outs = {}, {}
  for pack in ("true", "false"):
    wd = tmp_path / pack
    outs[pack] = run_hhh("train", tiny_experiment, "--workdir", wd, "--set", f"data.pack={pack}", *long).stdout
    runs[pack] = [m["loss"] for m in read_metrics(wd)]
  assert "packed rows of up to 4096 tokens" in outs["true"] and "packed rows" not in outs["false"]
  np.testing.assert_allclose(runs["true"], runs["false"], atol=1e-4, rtol=0)
  out = run_hhh("train", tiny_experiment, "--workdir", tmp_path / "budget", "--set", "data.batch_tokens=2048",
                "--set", "batch_size=16", *long).stdout
  assert "packed rows of up to 2048 tokens" in out
  losses = [m["loss"] for m in read_metrics(tmp_path / "budget")]
  assert len(losses) == 3 and all(np.isfinite(losses))


def test_remat_gives_the_same_gradients():
  import dataclasses
  comps = [_cut(c, 120) for c in hh_comparisons(4)]
  examples, _ = encode_all(comps, TOK, max_len=128, max_k=2)
  batch = {k: jnp.asarray(v) for k, v in packing.collate_rows(examples, K=2, pad_id=TOK.pad_id, buckets=(256,)).items()}
  remat_def = nnx.graphdef(nnx.eval_shape(lambda: Transformer(dataclasses.replace(CFG, remat=True), rngs=nnx.Rngs(0))))
  grad = jax.jit(jax.grad(lambda p, g: packed_loss_fn(p, g, batch, None, "ranked", 0.5)[0]), static_argnums=1)
  a, b = grad(PARAMS, GRAPHDEF), grad(PARAMS, remat_def)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_token_plan_hand_example():
  # Pieces of 6, 5, 4, 3, 7 tokens into steps of 2 rows of 10 tokens, at most 4 comparisons, looking 2 ahead.
  plan = packing.TokenPlan([[6], [5], [4], [3], [7]], row_len=10, rows=2, max_comparisons=4, seed=0, window=2)
  order = np.random.default_rng([0, 0]).permutation(5).tolist()
  steps = plan.epoch_plan(0)
  # Replayed by hand from the epoch's order: a comparison joins when first-fit decreasing still fits 2 rows.
  lengths = [6, 5, 4, 3, 7]
  expect, queue = [], list(order)
  while queue:
    taken, j = [], 0
    while len(taken) < 4 and j < min(2, len(queue)):
      cand = [lengths[i] for i in taken] + [lengths[queue[j]]]
      rows = packing.first_fit(cand, 10)
      if len(rows) <= 2:
        taken.append(queue.pop(j))
      else:
        j += 1
    expect.append(taken + [-1] * (4 - len(taken)))
  assert [s.tolist() for s in steps] == expect
  # Every comparison exactly once per epoch; epochs differ; the plan is a pure function of (seed, epoch).
  flat = sorted(i for s in steps for i in s.tolist() if i >= 0)
  assert flat == [0, 1, 2, 3, 4]
  again = packing.TokenPlan([[6], [5], [4], [3], [7]], row_len=10, rows=2, max_comparisons=4, seed=0, window=2)
  assert [s.tolist() for s in again.epoch_plan(0)] == expect
  n0 = len(steps)
  assert plan[n0][1].tolist() == again.epoch_plan(1)[0].tolist()


def test_token_plan_fixed_order_example():
  # A fixed window-1 walk: with window 1 the plan is the plain greedy cut of the epoch order.
  plan = packing.TokenPlan([[8], [8], [2], [2]], row_len=10, rows=1, max_comparisons=4, seed=3, window=1)
  order = np.random.default_rng([3, 0]).permutation(4).tolist()
  steps = [[i for i in s.tolist() if i >= 0] for s in plan.epoch_plan(0)]
  assert [i for s in steps for i in s] == order       # window 1 keeps the order exactly
  assert all(sum([8, 8, 2, 2][i] for i in s) <= 10 for s in steps)
  with pytest.raises(ValueError, match="raise data.batch_tokens"):
    packing.TokenPlan([[11]], row_len=10, rows=1, max_comparisons=4, seed=0)



class _ListTokenPlan:
  """The reference: `TokenPlan` as it was with a Python list of lists and a list of step arrays."""

  def __init__(self, piece_lengths, *, row_len, rows, max_comparisons, seed, n_shards=1, window=16, shuffle=True):
    self.piece_lengths = [list(p) for p in piece_lengths]
    self.row_len, self.rows, self.n_shards, self.window = row_len, rows, n_shards, window
    self.per_shard, self.seed, self.shuffle = max_comparisons // n_shards, seed, shuffle
    self._counts = []

  @functools.lru_cache(maxsize=2)
  def epoch_plan(self, epoch):
    n = len(self.piece_lengths)
    order = collections.deque(np.random.default_rng([self.seed, epoch]).permutation(n).tolist() if self.shuffle
                              else range(n))
    cap, R_s, C_s = self.row_len, self.rows // self.n_shards, self.per_shard
    steps = []
    while order:
      slots = np.full(C_s * self.n_shards, -1, np.int64)
      for s in range(self.n_shards):
        taken, lengths, j = [], [], 0
        while len(taken) < C_s and j < min(self.window, len(order)):
          cand = lengths + self.piece_lengths[order[j]]
          if packing.fits(cand, cap, R_s):
            taken.append(order[j])
            del order[j]
            lengths = cand
          else:
            j += 1
        slots[s * C_s:s * C_s + len(taken)] = taken
      steps.append(slots)
    return steps

  def _epoch_len(self, e):
    while len(self._counts) <= e:
      self._counts.append(len(self.epoch_plan(len(self._counts))))
    return self._counts[e]

  def __getitem__(self, i):
    e = 0
    while i >= self._epoch_len(e):
      i -= self._epoch_len(e)
      e += 1
    return self.row_len, self.epoch_plan(e)[i]


@pytest.mark.parametrize("K,n_shards,window,row_len,shuffle", [
    (1, 1, 16, 512, True), (1, 2, 16, 512, True), (1, 2, 1, 512, True), (3, 1, 4, 512, True),
    (3, 2, 16, 512, True), (3, 2, 3, 512, False), (2, 2, 16, 1 << 17, True)])
def test_token_plan_is_the_list_reference_step_by_step(K, n_shards, window, row_len, shuffle):
  # Comparisons of 1..K pieces (a split one has several), from a generator: the same steps, slots and order.
  rng = np.random.default_rng([K, n_shards, window])
  pieces = [rng.integers(1, row_len // 2, int(rng.integers(1, K + 1))).tolist() for _ in range(500)]
  kw = dict(row_len=row_len, rows=3 * n_shards, max_comparisons=8 * n_shards, seed=11, n_shards=n_shards,
            window=window, shuffle=shuffle)
  ref, plan = _ListTokenPlan(pieces, **kw), packing.TokenPlan((p for p in pieces), **kw)
  n_steps = sum(len(ref.epoch_plan(e)) for e in range(2))
  assert n_steps > 2 * 500 / (8 * n_shards)
  for i in range(n_steps + 1):
    (L, want), (got_L, got) = ref[i], plan[i]
    assert got_L == L and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
  for e in range(2):
    np.testing.assert_array_equal(plan.epoch_plan(e), np.stack(ref.epoch_plan(e)))


def test_token_plan_holds_about_ten_bytes_a_comparison():
  """200,000 comparisons from a generator: the plan's arrays take < 20 bytes each, and building it never holds a
  list of them (a list of one-int lists alone is ~90 bytes a comparison)."""
  n = 200_000
  lens = np.random.default_rng(0).integers(20, 201, n).tolist()
  tracemalloc.start()
  try:
    plan = packing.TokenPlan(([x] for x in lens), row_len=512, rows=8, max_comparisons=16, seed=0)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  own = sum(v.nbytes for v in vars(plan).values() if isinstance(v, np.ndarray))
  assert own / n < 20 and peak / n < 40, (own / n, peak / n)
  steps = plan.epoch_plan(0)
  assert steps.dtype == np.int32 and steps.shape[1] == 16
  np.testing.assert_array_equal(np.sort(steps[steps >= 0]), np.arange(n))

@pytest.mark.parametrize("row_len", [512, 1024], ids=["two_rows", "one_long_row"])
def test_token_budget_batches_are_full_and_exact(row_len):
  """Real HH-RLHF comparisons under a token budget: each epoch holds every comparison once, in fewer slots than
  steps of a fixed comparison count, and a step's loss and gradients are those of its comparisons unpacked.
  Steps of 1,024 tokens as two rows of 512 or as one long row (CPU's layout, `packing.row_length`)."""
  examples, _ = encode_all(hh_comparisons(32), TOK, max_len=256, max_k=2)
  kw = dict(row_len=row_len, max_k=2, buckets=(128, 256), pad_id=TOK.pad_id, seed=5)
  ds = packing.PackedBatchSource(examples, batch_tokens=1024, batch_size=16, **kw).dataset(shuffle=True, epochs=None)
  rows = 1024 // row_len
  plan = packing.TokenPlan([[len(p) for p in packing.pieces_of(e, row_len)[0]] for e in examples], row_len=row_len,
                           rows=rows, max_comparisons=16, seed=5)
  seen = []
  for i in range(len(plan.epoch_plan(0))):
    batch = ds[i]
    assert batch["tokens"].shape == (rows, row_len)
    ix = [j for j in plan[i][1].tolist() if j >= 0]
    assert sorted(np.flatnonzero(batch["lengths"][:, 0] > 0).tolist()) == list(range(len(ix)))
    seen += ix
    if i == 0:
      pb = {k: jnp.asarray(v) for k, v in batch.items()}
      ub = _unpacked([examples[j] for j in ix], 2)
      lp, _, gp = _grads_and_loss(packed_loss_fn, pb, "ranked", 0.0)  # empty comparison slots included
      lu, _, gu = _grads_and_loss(loss_fn, ub, "ranked", 0.0)
      assert abs(lp - lu) < ATOL
      for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=0)
  assert sorted(seen) == list(range(len(examples)))
  # 12,165 tokens needed: 15 steps of 1,024 slots, against 16,640 for steps of 8 comparisons (rows of 256 or 512).
  assert sum(packing.packed_length(e) for e in examples) == 12165
  fixed = packing.PackedBatchSource(examples, batch_size=8, **dict(kw, row_len=512)).dataset(shuffle=True, epochs=1)
  assert (len(plan.epoch_plan(0)) * 1024, sum(fixed[i]["tokens"].size for i in range(len(fixed)))) \
      == (15360, 16640)

