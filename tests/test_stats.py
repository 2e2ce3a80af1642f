"""hhh.stats: hand-computed McNemar and Wilson values, bootstrap edge cases and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from hhh import stats


def test_mcnemar_exact_on_a_hand_made_table():
  a = np.asarray([1, 1, 1, 0, 0, 1], bool)
  b = np.asarray([0, 0, 0, 0, 1, 1], bool)
  # b01 (a wrong, b right) = 1, b10 = 3: p = 2 * (C(4,0) + C(4,1)) / 2^4 = 10/16.
  assert stats.mcnemar(a, b) == {"b01": 1, "b10": 3, "p": 0.625}
  # All 6 discordant pairs one way: p = 2 / 2^6.
  assert stats.mcnemar(np.ones(6, bool), np.zeros(6, bool)) == {"b01": 0, "b10": 6, "p": 0.03125}
  # No discordant pair, and a balanced table: p = 1.
  assert stats.mcnemar(a, a)["p"] == 1.0
  assert stats.mcnemar([1, 0], [0, 1])["p"] == 1.0
  with pytest.raises(ValueError, match="same length"):
    stats.mcnemar(a, b[:3])


def test_wilson_interval():
  # 0 of 10: lo = 0, hi = z^2 / (n + z^2) with z = 1.959964.
  lo, hi = stats.binomial_ci(0, 10)
  assert lo == 0.0 and hi == pytest.approx(3.841459 / 13.841459, abs=1e-6)
  assert stats.binomial_ci(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
  lo, hi = stats.binomial_ci(10, 10)
  assert hi == 1.0 and lo == pytest.approx(10 / 13.841459, abs=1e-6)
  with pytest.raises(ValueError, match="0 <= k <= n"):
    stats.binomial_ci(3, 2)


def test_constant_matrix_has_a_zero_width_interval():
  r = stats.cluster_bootstrap(np.full((7, 3), 0.5), n_boot=200)
  assert r == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "se": 0.0, "n_clusters": 7, "n_seeds": 3}


def test_two_clusters_and_two_seeds_resample_as_computed_by_hand():
  # Two clusters, 1 and 0: a replicate's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4: se = sqrt(1/8).
  r = stats.cluster_bootstrap([[1.0], [0.0]], n_boot=20000, seed=1)
  assert r["mean"] == 0.5 and (r["lo"], r["hi"]) == (0.0, 1.0)
  assert r["se"] == pytest.approx(np.sqrt(1 / 8), abs=0.01)
  # One cluster, two seeds: the seeds are resampled too (a cluster-only bootstrap would give se = 0).
  r = stats.cluster_bootstrap([[1.0, 0.0]], n_boot=20000, seed=1)
  assert r["se"] == pytest.approx(np.sqrt(1 / 8), abs=0.01) and r["n_seeds"] == 2
  # NaN cells are missing, not zero.
  assert stats.cluster_bootstrap([[1.0, np.nan], [0.0, 0.0]], n_boot=10)["mean"] == pytest.approx(1 / 3)


def test_bootstrap_is_reproducible_for_a_seed():
  v = np.random.default_rng(0).integers(0, 2, size=(40, 3)).astype(float)
  assert stats.cluster_bootstrap(v, seed=5) == stats.cluster_bootstrap(v, seed=5)
  assert stats.cluster_bootstrap(v, seed=5)["lo"] != stats.cluster_bootstrap(v, seed=6)["lo"] or \
      stats.cluster_bootstrap(v, seed=5)["se"] != stats.cluster_bootstrap(v, seed=6)["se"]


def test_paired_difference():
  x = np.random.default_rng(0).integers(0, 2, size=(30, 2)).astype(float)
  d = stats.paired_difference(x, x, n_boot=500)
  assert (d["mean"], d["lo"], d["hi"], d["se"], d["p_two_sided"]) == (0.0, 0.0, 0.0, 0.0, 1.0)
  d = stats.paired_difference(np.ones((10, 1)), np.zeros((10, 1)), n_boot=500)
  assert d["mean"] == 1.0 and d["p_two_sided"] == 1 / 500  # every replicate > 0: p floored at 1 / n_boot
  # The same indices for both: a shifted copy differs by exactly the shift in every replicate.
  d = stats.paired_difference(x + 0.25, x, n_boot=300)
  assert d["lo"] == pytest.approx(0.25) and d["hi"] == pytest.approx(0.25)
  with pytest.raises(ValueError, match="same shape"):
    stats.paired_difference(x, x[:5])


def test_clustered_mean_shift_by_hand():
  # Clusters a (three items of +1) and b (one of -3): mean 0. Replicates: aa -> 1, bb -> -3, ab or ba -> 0,
  # with probability 1/4, 1/4, 1/2: mean -0.5, variance 2.25, so se = 1.5.
  r = stats.clustered_mean_shift([1.0, 1.0, 1.0, -3.0], ["a", "a", "a", "b"], n_boot=20000, seed=0)
  assert r["mean"] == 0.0 and (r["lo"], r["hi"]) == (-3.0, 1.0)
  assert r["se"] == pytest.approx(1.5, abs=0.03)
  assert r["n"] == 4 and r["n_clusters"] == 2
  with pytest.raises(ValueError, match="same length"):
    stats.clustered_mean_shift([1.0, 2.0], ["a"])


def test_paired_mde():
  # (z_0.975 + z_0.8) * sqrt(0.2 / 1000) = (1.959964 + 0.841621) * 0.0141421
  assert stats.paired_mde(0.2, 1000) == pytest.approx(0.039621, abs=1e-6)
