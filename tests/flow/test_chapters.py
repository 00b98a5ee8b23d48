"""detect_chapters on planted regime switches."""

import numpy as np
import pytest
import ruptures as rpt

from bench.flow.metrics import boundary_f1, covering
from driftd.flow import Chapter, detect_chapters
from driftd.flow.planted import regime_switches


@pytest.mark.parametrize(
    ("n_points", "n_regimes", "seed", "excursions"),
    [(600, 6, 0, 0.0), (2000, 10, 1, 0.0), (5000, 25, 2, 0.0), (2000, 10, 3, 0.01)],
)
def test_planted_regimes_found(n_points, n_regimes, seed, excursions):
    X, t, true = regime_switches(
        n_points, n_regimes, dim=384, random_state=seed, excursion_rate=excursions
    )
    chapters = detect_chapters(X, min_size=5)
    starts = [c.start for c in chapters[1:]]
    assert boundary_f1(starts, true, margin=5) >= 0.95
    assert covering(starts, list(true), n_points) >= 0.9


def test_chapters_cover_the_series_contiguously():
    X, _, _ = regime_switches(800, 5, random_state=3)
    chapters = detect_chapters(X)
    assert chapters[0].start == 0 and chapters[-1].end == len(X)
    assert all(a.end == b.start for a, b in zip(chapters, chapters[1:], strict=False))
    assert all(c.end - c.start >= 5 for c in chapters)
    assert all(isinstance(c.start, int) and isinstance(c.end, int) for c in chapters)


def test_no_change_gives_one_chapter():
    X, _, _ = regime_switches(1500, 1, random_state=0)
    assert detect_chapters(X) == [Chapter(0, 1500)]
    noise = np.random.default_rng(0).standard_normal((3000, 64))
    assert detect_chapters(noise) == [Chapter(0, 3000)]


def test_short_or_constant_series_is_one_chapter():
    assert detect_chapters(np.ones((9, 4)), min_size=5) == [Chapter(0, 9)]
    assert detect_chapters(np.ones((100, 4))) == [Chapter(0, 100)]


def test_repeated_vectors_split_where_they_change():
    rng = np.random.default_rng(0)
    X = np.repeat(rng.standard_normal((3, 16)), [40, 25, 35], axis=0)  # zero MAD noise
    assert detect_chapters(X) == [Chapter(0, 40), Chapter(40, 65), Chapter(65, 100)]


def test_explicit_penalty_trades_off_chapters():
    X, _, true = regime_switches(1000, 8, random_state=4)
    few = detect_chapters(X, penalty=1e6)
    many = detect_chapters(X, penalty=1.0)
    assert len(few) == 1 and len(many) > len(true) + 1


def test_linear_kernel_pelt_is_ruptures_l2_pelt():
    # detect_chapters runs ruptures' C KernelCPD(linear); it must equal Pelt(model="l2").
    rng = np.random.default_rng(0)
    signal = np.repeat(rng.standard_normal((6, 3)) * 2, 50, axis=0) + rng.standard_normal((300, 3))
    for pen in (5.0, 20.0, 80.0):
        fast = rpt.KernelCPD(kernel="linear", min_size=5).fit(signal).predict(pen=pen)
        slow = rpt.Pelt(model="l2", min_size=5, jump=1).fit(signal).predict(pen=pen)
        assert fast == slow


def test_deterministic():
    X, _, _ = regime_switches(1000, 6, random_state=5)
    assert detect_chapters(X, random_state=1) == detect_chapters(X, random_state=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size": 0}, "min_size must be >= 1"),
        ({"penalty": 0.0}, "penalty must be a finite number > 0"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"rank": 4}, "rank must be <= 3"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        detect_chapters(np.ones((50, 3)), **kwargs)
    with pytest.raises(ValueError, match="X must be 2-D"):
        detect_chapters(np.ones(50))


def test_jitter_inside_regimes_is_not_cut_into_chapters(wells):
    # One series of the 3-well system: a few dozen well switches, strongly
    # autocorrelated jitter inside each well (DriftDB-style splitting gives hundreds).
    X = wells.X[wells.series == 0]
    latent = (X @ wells.basis[:, 1:]) / (0.5 * (X @ wells.basis[:, 0]))[:, None]
    well = np.linalg.norm(latent[:, None] - wells.latent_centers[None], axis=2).argmin(axis=1)
    switches = int(np.sum(well[1:] != well[:-1]))
    assert len(detect_chapters(X)) <= 2 * (switches + 1)
