"""The planted-system generators: determinism, ground truth, sampling modes."""

import numpy as np
import pytest

from driftd.flow.planted import (
    MEAN_GAP,
    k_well_system,
    limit_cycle,
    lorenz,
    regime_switches,
    toggle_switch,
)


@pytest.mark.parametrize("generator", [k_well_system, toggle_switch, limit_cycle, lorenz])
def test_generators_are_seeded_unit_rows_in_time_order(generator):
    a, b = generator(400, random_state=4), generator(400, random_state=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.t, b.t)
    assert a.X.shape == (400, 384) and a.X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a.X, axis=1), 1.0, atol=1e-6)
    assert np.all(np.diff(a.t) >= 0)
    assert not np.array_equal(a.X, generator(400, random_state=5).X)


@pytest.mark.parametrize("generator", [k_well_system, toggle_switch, limit_cycle, lorenz])
def test_planted_fixed_points_are_fixed(generator):
    ps = generator(200, random_state=0)
    for points in (ps.centers, ps.saddles, ps.unstable):
        if len(points):
            assert np.abs(ps.true_velocity(points)).max() < 1e-12


def test_limit_cycle_and_lorenz_have_no_stable_point():
    cycle, chaos = limit_cycle(200), lorenz(200)
    assert len(cycle.centers) == 0 and len(cycle.unstable) == 1
    assert len(chaos.centers) == 0 and len(chaos.saddles) == 3
    # Lorenz (sigma, rho, beta) = (10, 28, 8/3): every fixed point has a growing direction
    for z in chaos.drift.fixed_points():
        eps = 1e-6
        J = np.stack(
            [
                (chaos.drift((z + eps * e)[None]) - chaos.drift((z - eps * e)[None]))[0] / (2 * eps)
                for e in np.eye(3)
            ],
            axis=1,
        )
        assert np.linalg.eigvals(J).real.max() > 0


def test_regular_sampling_is_the_same_system_at_a_fixed_gap():
    irregular = k_well_system(500, random_state=3)
    regular = k_well_system(500, random_state=3, sampling="regular")
    np.testing.assert_array_equal(regular.basis, irregular.basis)
    np.testing.assert_array_equal(regular.centers, irregular.centers)
    for s in range(10):
        np.testing.assert_allclose(np.diff(regular.t[regular.series == s]), MEAN_GAP)
    with pytest.raises(ValueError, match="sampling must be"):
        k_well_system(500, sampling="poisson")


@pytest.mark.parametrize("k", [5, 8])
def test_many_wells_have_exactly_k_stable_points(k):
    # k = subspace_dim + 1 fits the simplex exactly; the centroid of the wells repels
    ps = k_well_system(200, k=k, subspace_dim=k - 1, random_state=0)
    assert len(ps.centers) == k
    dist = np.linalg.norm(ps.latent_centers[:, None] - ps.latent_centers[None], axis=2)
    np.testing.assert_allclose(dist[np.triu_indices(k, 1)], 1.0, atol=0.01)
    centroid = ps.latent_centers.mean(axis=0)
    eps = 1e-6
    J = np.stack(
        [
            (ps.drift((centroid + eps * e)[None]) - ps.drift((centroid - eps * e)[None]))[0]
            / (2 * eps)
            for e in np.eye(k - 1)
        ],
        axis=1,
    )
    assert np.linalg.eigvals(J).real.max() > 0


def test_excursions_leave_the_boundaries_alone():
    X0, t0, true0 = regime_switches(1000, 5, random_state=1)
    X1, t1, true1 = regime_switches(1000, 5, random_state=1, excursion_rate=0.01)
    np.testing.assert_array_equal(true0, true1)
    assert not np.array_equal(X0, X1)
    with pytest.raises(ValueError, match="excursion_rate"):
        regime_switches(1000, 5, excursion_rate=1.0)
