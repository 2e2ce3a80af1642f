"""Honest uncertainty for evaluation numbers: cluster bootstraps, paired tests, binomial intervals. Pure numpy.

Items of one eval are rarely independent: hhh_alignment items share contexts, and a training recipe is run
with a few seeds. Treating every (item, seed) cell as an independent draw understates the error, so these
functions resample whole clusters (and, with seeds, whole seeds: a two-stage bootstrap).

    r = cluster_bootstrap(correct_CxS)            # {"mean", "lo", "hi", "se", "n_clusters", "n_seeds"}
    d = paired_difference(prompt_CxS, base_CxS)   # same resampled indices for both; adds "p_two_sided"
    mcnemar(a_correct_N, b_correct_N)             # exact test for paired 0/1 outcomes
    binomial_ci(k, n)                             # Wilson interval
    clustered_mean_shift(shift_N, cluster_N)      # per-item shifts, items grouped by a cluster id

Intervals are percentile intervals of the bootstrap distribution; `se` is its standard deviation.
A bootstrap is reproducible for a seed (numpy's default generator).
"""

from __future__ import annotations

import math
import statistics

import numpy as np

# Bootstrap replicates are built in chunks of at most this many cells (n_boot x clusters x seeds) to cap memory.
_CHUNK_CELLS = 2_000_000


def _z(ci: float) -> float:
  if not 0.0 < ci < 1.0:
    raise ValueError(f"ci={ci} must be in (0, 1)")
  return statistics.NormalDist().inv_cdf(0.5 + ci / 2)


def _matrix(values, name: str) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if v.ndim == 1:
    v = v[:, None]
  if v.ndim != 2 or v.size == 0:
    raise ValueError(f"{name} must be a non-empty [clusters, seeds] matrix, got shape {np.shape(values)}")
  if np.isnan(v).all():
    raise ValueError(f"{name} has no value that is not NaN")
  return v


def _check_boot(n_boot: int, ci: float) -> None:
  if n_boot < 1:
    raise ValueError(f"n_boot={n_boot} must be >= 1")
  _z(ci)


def _two_stage_means(values_CxS: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
  """[n_boot] nan-means of values resampled by clusters then by seeds (with replacement)."""
  C, S = values_CxS.shape
  ci_BxC = rng.integers(0, C, size=(n_boot, C))
  si_BxS = rng.integers(0, S, size=(n_boot, S))
  out = np.empty(n_boot)
  step = max(1, _CHUNK_CELLS // (C * S))
  for s in range(0, n_boot, step):
    cells_BxCxS = values_CxS[ci_BxC[s:s + step, :, None], si_BxS[s:s + step, None, :]]
    ok = ~np.isnan(cells_BxCxS)
    n = ok.sum(axis=(1, 2))
    total = np.where(ok, cells_BxCxS, 0.0).sum(axis=(1, 2))
    # A replicate that drew only missing cells has no mean; it is NaN and left out of the interval.
    out[s:s + step] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
  return out


def _interval(mean: float, boots: np.ndarray, ci: float) -> dict:
  b = boots[~np.isnan(boots)]
  alpha = (1 - ci) / 2
  lo, hi = np.quantile(b, [alpha, 1 - alpha])
  # A replicate mean equals the point estimate exactly only up to float summation order; keep lo <= mean <= hi.
  return {"mean": float(mean), "lo": float(min(lo, mean)), "hi": float(max(hi, mean)),
          "se": float(b.std(ddof=1)) if len(b) > 1 else 0.0}


def cluster_bootstrap(values_CxS, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
  """Mean of values_CxS ([clusters, seeds], NaN = missing) with a two-stage (clusters, then seeds) bootstrap.

  The mean weighs every present cell equally. With one seed column this is the plain cluster bootstrap.
  Returns {"mean", "lo", "hi", "se", "n_clusters", "n_seeds"}.
  """
  _check_boot(n_boot, ci)
  v = _matrix(values_CxS, "values_CxS")
  boots = _two_stage_means(v, n_boot, np.random.default_rng(seed))
  out = _interval(float(np.nanmean(v)), boots, ci)
  return {**out, "n_clusters": int(v.shape[0]), "n_seeds": int(v.shape[1])}


def paired_difference(a_CxS, b_CxS, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
  """Mean of a - b, paired per cell, with the same two-stage resampled indices for both.

  A cell missing (NaN) in either matrix is left out of both. p_two_sided = 2 * min(share of replicates <= 0,
  share >= 0), floored at 1 / n_boot and capped at 1. Returns {"mean", "lo", "hi", "se", "p_two_sided"}.
  """
  _check_boot(n_boot, ci)
  a, b = _matrix(a_CxS, "a_CxS"), _matrix(b_CxS, "b_CxS")
  if a.shape != b.shape:
    raise ValueError(f"a_CxS {a.shape} and b_CxS {b.shape} must have the same shape")
  d = a - b  # NaN where either is missing
  if np.isnan(d).all():
    raise ValueError("a_CxS and b_CxS share no cell that is present in both")
  boots = _two_stage_means(d, n_boot, np.random.default_rng(seed))
  out = _interval(float(np.nanmean(d)), boots, ci)
  kept = boots[~np.isnan(boots)]
  p = 2 * min(float(np.mean(kept <= 0)), float(np.mean(kept >= 0)))
  return {**out, "p_two_sided": float(min(1.0, max(p, 1.0 / n_boot)))}


def mcnemar(a_N, b_N) -> dict:
  """Exact two-sided McNemar test of paired correctness: b01 = a wrong and b right, b10 = a right and b wrong.

  p = min(1, 2 * P(X <= min(b01, b10))) for X ~ Binomial(b01 + b10, 1/2); no discordant pair gives p = 1.
  """
  a, b = np.asarray(a_N), np.asarray(b_N)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"a_N {a.shape} and b_N {b.shape} must be 1-d of the same length")
  if a.dtype != bool or b.dtype != bool:
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
      raise ValueError("mcnemar takes 0/1 (bool) correctness per item")
    a, b = a.astype(bool), b.astype(bool)
  b01, b10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
  n, k = b01 + b10, min(b01, b10)
  # Exact integer sum: no float underflow for large n.
  tail = sum(math.comb(n, i) for i in range(k + 1))
  p = min(1.0, 2 * tail / 2 ** n) if n else 1.0
  return {"b01": b01, "b10": b10, "p": float(p)}


def binomial_ci(k: int, n: int, ci: float = 0.95) -> tuple[float, float]:
  """Wilson score interval (lo, hi) for k successes in n trials."""
  if n <= 0 or not 0 <= k <= n:
    raise ValueError(f"binomial_ci needs 0 <= k <= n and n > 0, got k={k}, n={n}")
  z = _z(ci)
  p = k / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # At k = 0 (k = n) the bound is exactly 0 (1); the float formula leaves a rounding residue there.
  lo = 0.0 if k == 0 else max(0.0, centre - half)
  hi = 1.0 if k == n else min(1.0, centre + half)
  return lo, hi


def clustered_mean_shift(shift_N, cluster_N, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
  """Mean of per-item shifts (every item weighs the same) with a bootstrap that resamples whole clusters.

  cluster_N holds any hashable id per item (e.g. the item's context text). Returns {"mean", "lo", "hi", "se",
  "p_two_sided", "n", "n_clusters"}; p as in `paired_difference`.
  """
  _check_boot(n_boot, ci)
  shift = np.asarray(shift_N, np.float64)
  if shift.ndim != 1 or len(shift) == 0 or len(cluster_N) != len(shift):
    raise ValueError(f"shift_N ({np.shape(shift_N)}) and cluster_N ({len(cluster_N)}) must be 1-d, non-empty and "
                     "of the same length")
  if np.isnan(shift).any():
    raise ValueError("shift_N has NaN values")
  ids = {c: i for i, c in enumerate(dict.fromkeys(cluster_N))}
  g_N = np.asarray([ids[c] for c in cluster_N])
  G = len(ids)
  sums_G = np.bincount(g_N, weights=shift, minlength=G)
  counts_G = np.bincount(g_N, minlength=G).astype(np.float64)
  rng = np.random.default_rng(seed)
  boots = np.empty(n_boot)
  step = max(1, _CHUNK_CELLS // G)
  for s in range(0, n_boot, step):
    idx = rng.integers(0, G, size=(min(step, n_boot - s), G))
    boots[s:s + len(idx)] = sums_G[idx].sum(1) / counts_G[idx].sum(1)
  out = _interval(float(shift.mean()), boots, ci)
  p = 2 * min(float(np.mean(boots <= 0)), float(np.mean(boots >= 0)))
  return {**out, "p_two_sided": float(min(1.0, max(p, 1.0 / n_boot))), "n": int(len(shift)), "n_clusters": G}


def paired_mde(discordant_share: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
  """Smallest paired accuracy difference detectable at two-sided level alpha with the given power.

  Normal approximation for n paired 0/1 outcomes whose per-item difference is -1, 0 or +1: under a small true
  difference its variance is about the share of discordant items, so MDE = (z_{1-alpha/2} + z_power) *
  sqrt(discordant_share / n).
  """
  if n <= 0 or not 0.0 <= discordant_share <= 1.0:
    raise ValueError(f"paired_mde needs n > 0 and 0 <= discordant_share <= 1, got {n}, {discordant_share}")
  nd = statistics.NormalDist()
  return (nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)) * math.sqrt(discordant_share / n)
