"""Embedding health on planted data (no server)."""

from __future__ import annotations

import numpy as np

from driftd.monitor import health


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def one_model(n: int, d: int, rng, topics: int = 2) -> np.ndarray:
    """Unit vectors of one synthetic "model": a shared direction, a shared
    20-dimensional latent basis with topic means, and isotropic noise."""
    shared = rng.standard_normal(d)
    basis = rng.standard_normal((20, d))
    centres = rng.standard_normal((topics, 20)) * 1.5
    z = centres[rng.integers(0, topics, n)] + rng.standard_normal((n, 20))
    return unit(1.5 * shared + z @ basis / np.sqrt(20) + 0.6 * rng.standard_normal((n, d)))


def test_outliers_duplicates_and_norms():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 32))
    X[:3] *= 6.0  # far from everything
    X[10] = X[11]  # an exact duplicate pair
    r = health.embedding_health(X, cosine=False, max_outliers=5)
    assert {i for i, _ in r.outliers[:3]} == {0, 1, 2}
    assert r.outlier_count >= 3 and all(s > health.OUTLIER_CUT for _, s in r.outliers)
    assert r.near_duplicate_rate == 2 / 400
    assert r.non_normalized_count == 0  # only counted for cosine collections
    rc = health.embedding_health(X, cosine=True)
    assert rc.non_normalized_count == 400
    assert any("not unit length" in w for w in rc.warnings)


def test_collapse_is_reported_and_healthy_spread_is_not():
    rng = np.random.default_rng(1)
    collapsed = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 384))
    r = health.embedding_health(collapsed, cosine=False)
    assert r.collapsed and r.effective_rank < 4
    spread = health.embedding_health(rng.standard_normal((500, 384)), cosine=False)
    assert not spread.collapsed and spread.rank_ratio > 0.5


def test_mixed_models_are_suspected_one_model_is_not():
    rng = np.random.default_rng(2)
    d = 128
    same = one_model(600, d, rng)
    r = health.embedding_health(same, cosine=True)
    assert not r.mixing_suspected, r.mixing_reason
    assert r.cross_group_spread > health.MAX_CROSS_SPREAD
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mixed = np.vstack([same[:450], one_model(150, d, rng) @ rotation.T])
    r = health.embedding_health(mixed, cosine=True)
    assert r.mixing_suspected
    assert abs(r.cross_group_spread - 1.0) < 0.15
    assert r.minority_fraction > 0.2
    assert any("embed models seem mixed" in w for w in r.warnings)


def test_payload_models_alone_flag_mixing():
    rng = np.random.default_rng(3)
    r = health.embedding_health(one_model(100, 64, rng), cosine=True, payload_models=("a", "b"))
    assert r.mixing_suspected and "2 embed_model payload values" in r.mixing_reason
