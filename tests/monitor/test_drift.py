"""The drift tests on planted Gaussian data (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from driftd.monitor import drift


def windows(shift: float, *, n: int = 500, d: int = 384, dims: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    B = rng.standard_normal((n, d))
    B[:, :dims] += shift
    return A, B


def test_mean_shift_of_half_sigma_in_five_dims_is_detected():
    A, B = windows(0.5)
    r = drift.compare_windows(A, B, cosine=False, seed=1)
    assert r.verdict in ("drift", "severe")
    assert r.p_value <= r.alpha == 0.01
    assert r.mmd_squared > 0
    assert r.roc_auc > 0.6
    assert r.ks_rejected >= 1
    # The planted shift plus the sampling noise of two means: E|d|² = 5·0.5² + 2·384/500.
    assert r.centroid_euclidean_distance == pytest.approx(np.sqrt(1.25 + 1.536), rel=0.1)


def test_same_distribution_rarely_alarms_and_p_values_spread():
    p_values = []
    for seed in range(20):
        A, B = windows(0.0, n=100, d=32, seed=seed)
        r = drift.compare_windows(A, B, cosine=False, permutations=200, seed=seed)
        p_values.append(r.p_value)
        assert abs(r.roc_auc - 0.5) < 0.2
    p_values = np.array(p_values)
    assert (p_values <= 0.01).sum() <= 1
    # The permutation p-value is uniform under the null.
    assert 0.25 < np.median(p_values) < 0.75


def test_permutation_statistic_matches_the_unbiased_estimator():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((30, 4))
    Z[:12] += 0.7
    m = 12
    mmd2, _, h = drift.mmd_permutation_test(Z, m, 10, seed=0)
    D2 = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    assert h == pytest.approx(np.sqrt(np.median(D2[np.triu_indices(30, 1)])))
    K = np.exp(-D2 / (2 * h * h))
    A, B = K[:m, :m], K[m:, m:]
    n = 30 - m
    expected = (
        (A.sum() - np.trace(A)) / (m * (m - 1))
        + (B.sum() - np.trace(B)) / (n * (n - 1))
        - 2 * K[:m, m:].mean()
    )
    assert mmd2 == pytest.approx(expected, rel=1e-5)


def test_deterministic_under_a_seed_and_subsampled():
    A, B = windows(0.2, n=300, d=64)
    r1 = drift.compare_windows(A, B, cosine=True, max_points=200, seed=7)
    r2 = drift.compare_windows(A, B, cosine=True, max_points=200, seed=7)
    assert (r1.n_a, r1.n_b) == (200, 200)
    assert r1.p_value == r2.p_value and r1.roc_auc == r2.roc_auc
    assert np.array_equal(r1.ks_q_values, r2.ks_q_values)


def test_too_few_points_and_bad_input_raise():
    A, B = windows(0.0, n=20, d=8)
    with pytest.raises(ValueError, match="at least 10"):
        drift.compare_windows(A[:5], B, cosine=False)
    with pytest.raises(ValueError, match="dimensions"):
        drift.compare_windows(A, B[:, :4], cosine=False)
    A[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        drift.compare_windows(A, B, cosine=False)
