"""FlowEnsemble on planted systems: replicates equal direct refits, confidence is high
inside the data and ~0 far from it, the simulation band widens where the data are
sparse, and reproducibility separates strong wells from weak features."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

from driftd.flow import FlowEnsemble, FlowField, find_attractors, simulate
from driftd.flow.ensemble import _replicate_rng, block_bootstrap_counts, resample_counts
from driftd.flow.planted import k_well_system


@pytest.fixture(scope="module")
def wells_ensemble(wells_field):
    # Module fixtures run before the autouse one-thread fixture; the bits of a BLAS
    # product depend on its thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        return FlowEnsemble(8, random_state=0).fit(wells_field)


def test_replicates_match_direct_refits(wells_field, wells_ensemble):
    Z = wells_field.Z_[::7].astype(np.float64)
    fit = wells_field._velocity(Z)
    for b in range(2):
        counts = block_bootstrap_counts(wells_field.n_transitions_, _replicate_rng(0, b))
        direct = wells_field._refit(counts)._velocity(Z)
        fast = wells_ensemble.replicate(b)._velocity(Z)
        scale = np.abs(direct).max()
        # the low-rank Gram update is exact to ~1e-6; resampling moves the field ~10 %
        assert np.abs(fast - direct).max() < 1e-4 * scale
        assert np.abs(fit - direct).max() > 1e-2 * scale


def test_replicates_depend_only_on_seed_and_index(wells_field, wells_ensemble):
    small = FlowEnsemble(3, random_state=0).fit(wells_field)
    np.testing.assert_array_equal(small.coef_, wells_ensemble.coef_[:3])
    np.testing.assert_array_equal(wells_ensemble.subset(3).coef_, small.coef_)
    np.testing.assert_array_equal(wells_ensemble.members_[0], wells_field.coef_)
    other = FlowEnsemble(3, random_state=1).fit(wells_field)
    assert not np.allclose(other.coef_, small.coef_)


def test_appended_batches_are_resampled_in_poisson_blocks():
    batches = np.array([100_000, 101_000, 101_001])
    counts = resample_counts(batches, 0, 3)
    np.testing.assert_array_equal(
        counts[:100_000], block_bootstrap_counts(100_000, _replicate_rng(0, 3))
    )
    np.testing.assert_array_equal(resample_counts(batches, 0, 3, first=1), counts[100_000:])
    # runs of the fit's block length (46) share a count; counts are ~Poisson(1), like
    # a moving-block resample's interior ones, so appended data keep their variance
    appended = np.stack([resample_counts(batches, 0, b, first=1)[:-1] for b in range(200)])
    assert np.all(appended[:, :46] == appended[:, :1]) and np.any(
        appended[:, 45] != appended[:, 46]
    )
    fitted = np.stack([block_bootstrap_counts(100_000, _replicate_rng(0, b)) for b in range(20)])
    interior = fitted[:, 1000:-1000]
    assert appended.mean() == pytest.approx(1.0, abs=0.05)
    assert appended.var() == pytest.approx(interior.var(), rel=0.1)


def test_confidence_is_high_in_the_data_and_zero_far_away(wells, wells_field, wells_ensemble):
    inside = wells.X[::10]
    probe = wells_ensemble.probe(inside)
    plain = wells_field.probe(inside)
    np.testing.assert_array_equal(probe.velocity, plain.velocity)
    np.testing.assert_array_equal(probe.support, plain.support)
    assert np.all((probe.confidence >= 0) & (probe.confidence <= 1))
    assert np.median(probe.confidence) > 0.9
    # at the planted fixed points the direction is noise: the refits disagree
    at_centres = wells_ensemble.probe(wells.centers).confidence
    assert at_centres.max() < np.quantile(probe.confidence, 0.05)
    # far away in random directions: no support, no confidence
    far = np.random.default_rng(1).standard_normal((5, wells.X.shape[1]))
    out = wells_ensemble.probe(far)
    assert not out.in_support.any()
    assert out.confidence.max() < 0.01
    # out along the wells' own plane the refits still agree (the pull back is
    # smooth), but the confidence falls with the support, below any in the data
    ladder = [wells_ensemble.probe(wells.lift(m * wells.latent_centers)) for m in (4, 8, 16)]
    assert not any(p.in_support.any() for p in ladder)
    assert ladder[0].confidence.max() < probe.confidence.min()
    for near, farther in zip(ladder, ladder[1:], strict=False):
        assert np.all(farther.confidence < near.confidence)


@pytest.fixture(scope="module")
def five_wells():
    """Five wells on 1,500 points: some visited often, one barely; the saddles
    between wells lie where few transitions pass."""
    ps = k_well_system(1500, k=5, random_state=0)
    with threadpool_limits(limits=1, user_api="blas"):
        field = FlowField(random_state=0).fit(ps.X, ps.t, ps.series)
        return ps, field, FlowEnsemble(16, random_state=0).fit(field)


def test_band_widens_where_the_data_are_sparse(five_wells):
    ps, field, ensemble = five_wells
    support = field.support(ps.centers)
    paths = [simulate(field, c, n_steps=50, ensemble=ensemble) for c in ps.centers]
    radius = np.array([p.band_radius[-1] for p in paths])
    # the least-visited well has the widest band, the most-visited the narrowest
    assert radius.argmax() == support.argmin() and radius.argmin() == support.argmax()
    assert radius.max() > 3 * radius.min()
    for traj in paths:
        assert traj.band_radius[0] < 1e-12  # every refit starts at the start
        assert traj.ensemble_positions.shape == traj.positions.shape
        assert traj.ensemble_state.shape == (16, field.rank_)
        np.testing.assert_allclose(np.linalg.norm(traj.ensemble_positions, axis=1), 1.0, atol=1e-6)
    # a wider coverage holds more of the refits
    sparse = ps.centers[support.argmin()]
    wide = simulate(field, sparse, n_steps=50, ensemble=ensemble, band_coverage=0.99)
    assert wide.band_radius[-1] > radius.max()


def test_band_is_resumable_and_deterministic(wells, wells_field, wells_ensemble):
    x0 = wells.saddles[1]
    whole = simulate(wells_field, x0, n_steps=20, ensemble=wells_ensemble)
    again = simulate(wells_field, x0, n_steps=20, ensemble=wells_ensemble)
    np.testing.assert_array_equal(whole.band_radius, again.band_radius)
    first = simulate(wells_field, x0, n_steps=10, ensemble=wells_ensemble)
    second = simulate(
        wells_field,
        first.positions[-1],
        n_steps=10,
        ensemble=wells_ensemble,
        ensemble_state=first.ensemble_state,
    )
    np.testing.assert_array_equal(
        np.concatenate([first.band_radius, second.band_radius[1:]]), whole.band_radius
    )
    np.testing.assert_array_equal(
        np.concatenate([first.ensemble_positions, second.ensemble_positions[1:]]),
        whole.ensemble_positions,
    )


def test_reproducibility_separates_strong_wells_from_weak_features(five_wells):
    ps, field, ensemble = five_wells
    found = find_attractors(field, n_seeds=32, ensemble=ensemble)
    stable = [a for a in found if a.stability == "stable"]
    strong = [a for a in stable if a.basin_fraction >= 0.15]
    assert len(strong) == 4
    for a in strong:
        assert np.linalg.norm(ps.centers - a.center, axis=1).min() < 0.05
        assert a.reproducibility >= 0.9
    weakest = min(stable, key=lambda a: a.basin_fraction)
    assert weakest.basin_fraction < 0.1 and weakest.reproducibility < 0.5
    saddles = [a.reproducibility for a in found if a.stability == "saddle"]
    assert saddles and np.mean(saddles) < 0.6


def test_rejects_bad_input(wells, wells_field, wells_ensemble, toggle_field):
    with pytest.raises(ValueError, match="n_replicates must be >= 2"):
        FlowEnsemble(1).fit(wells_field)
    with pytest.raises(ValueError, match="random_state must be >= 0"):
        FlowEnsemble(2, random_state=-1).fit(wells_field)
    with pytest.raises(NotFittedError):
        FlowEnsemble(2).fit(FlowField())
    with pytest.raises(ValueError, match="n must be <= 8"):
        wells_ensemble.subset(9)
    with pytest.raises(ValueError, match="coverage must be in"):
        wells_ensemble.band(np.zeros((8, wells_field.rank_)), 1.0)
    x0 = wells.X[0]
    with pytest.raises(ValueError, match="band_coverage must be in"):
        simulate(wells_field, x0, n_steps=2, ensemble=wells_ensemble, band_coverage=0.0)
    with pytest.raises(ValueError, match="ensemble must be fitted on this field"):
        simulate(toggle_field, wells.X[0], n_steps=2, ensemble=wells_ensemble)
    with pytest.raises(ValueError, match="ensemble_state must have 8 rows"):
        simulate(
            wells_field,
            x0,
            n_steps=2,
            ensemble=wells_ensemble,
            ensemble_state=np.zeros((3, wells_field.rank_)),
        )
