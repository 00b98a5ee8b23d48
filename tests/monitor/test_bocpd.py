"""Online change-point detection on planted streams (no server)."""

from __future__ import annotations

import numpy as np

from driftd.monitor.bocpd import OnlineChangeDetector, projection


def run(X, *, normalize=False):
    det = OnlineChangeDetector(projection(X.shape[1]), normalize=normalize)
    return [c for i, x in enumerate(X) if (c := det.update(x, i)) is not None]


def test_planted_changes_are_found_quickly_and_exactly():
    rng = np.random.default_rng(0)
    means = rng.standard_normal((5, 384)) * 0.6
    X = np.vstack([m + rng.standard_normal((120, 384)) for m in means])
    for normalize in (False, True):
        changes = run(X, normalize=normalize)
        starts = np.array([c.start_key for c in changes])
        assert len(starts) == 4 and np.abs(starts - [120, 240, 360, 480]).max() <= 5
        delays = [c.delay for c in changes]
        assert all(c.detected_key - c.start_key == c.delay for c in changes)
        # Typically confirmed after CONFIRM - 1 points; a weak change takes longer.
        assert np.median(delays) <= 6 and max(delays) <= 40
        assert all(0 < c.probability <= 1 for c in changes)


def test_a_stationary_stream_and_a_lone_outlier_raise_nothing():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1500, 384))
    X[700] += 8.0
    assert run(X) == []
