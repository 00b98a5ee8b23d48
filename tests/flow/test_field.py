"""FlowField: accuracy on planted systems, input handling, determinism, pickling."""

import pickle

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import driftd.flow._linalg
from bench.flow.metrics import mean_cosine
from driftd.flow import (
    MIN_POINTS,
    FlowField,
    InsufficientDataError,
    Probe,
    find_attractors,
    simulate,
)
from driftd.flow.planted import k_well_system, limit_cycle, lorenz
from driftd.flow.simulate import advance


def _mean_cosine(A, B):
    return float(
        np.mean(np.einsum("ij,ij->i", A, B) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1))
    )


def _held_out_scores(ps):
    """Velocity cosine and mean-speed ratio (full space) on series 8-9 of a field
    fitted on series 0-7, and the field."""
    train = ps.series < 8
    field = FlowField().fit(ps.X[train], ps.t[train], ps.series[train])
    V, T = field.predict(ps.X[~train]), ps.true_velocity(ps.X[~train])
    assert V.shape == T.shape
    ratio = np.linalg.norm(V, axis=1).mean() / np.linalg.norm(T, axis=1).mean()
    return _mean_cosine(V, T), ratio, field


def test_velocity_matches_planted_field_on_held_out_series(wells):
    cosine, ratio, _ = _held_out_scores(wells)
    assert cosine >= 0.85
    # speed calibration (finite-difference bias corrected): mean speeds agree
    assert 0.8 <= ratio <= 1.2


def test_regular_and_irregular_sampling_agree(wells):
    # the same system (seed) observed every 60 s instead of at exponential gaps
    regular = k_well_system(6000, k=3, dim=384, random_state=0, sampling="regular")
    results = []
    for ps in (wells, regular):
        cosine, ratio, field = _held_out_scores(ps)
        stable = [a.center for a in find_attractors(field, n_seeds=32) if a.stability == "stable"]
        assert len(stable) == 3
        err = max(np.linalg.norm(np.array(stable) - c, axis=1).min() for c in ps.centers)
        results.append((cosine, ratio, err / ps.separation))
    (c1, r1, e1), (c2, r2, e2) = results
    assert abs(c1 - c2) < 0.05 and abs(r1 - r2) < 0.05 and abs(e1 - e2) < 0.05
    assert max(e1, e2) <= 0.1


@pytest.mark.parametrize(("generator", "rank"), [(lorenz, 3), (limit_cycle, 2)])
def test_rank_keeps_low_variance_dynamics_and_drops_sphere_curvature(generator, rank):
    # Lorenz's x - y axis holds ~6 % of the variance but carries the dynamics; the
    # normalisation's curvature (a function of the in-plane state) is not a dimension
    ps = generator(3000, random_state=0)
    field = FlowField().fit(ps.X, ps.t, ps.series)
    assert field.rank_ == rank
    assert field.reversion_rate_ == pytest.approx(1 / 600, rel=0.1)  # the planted OU


def test_bootstrap_refit_with_unit_weights_is_the_fit(wells_field):
    refit = wells_field._refit(np.ones(wells_field.n_transitions_))
    np.testing.assert_array_equal(refit.coef_, wells_field.coef_)


def test_fitted_attributes(wells, wells_field):
    f, n = wells_field, len(wells.X)
    r, M = f.rank_, len(f.centers_)
    assert 2 <= r <= 32
    assert f.mean_.shape == (384,) and f.components_.shape == (r, 384)
    np.testing.assert_allclose(f.components_ @ f.components_.T, np.eye(r), atol=1e-10)
    assert f.centers_.shape == (M, r) and f.coef_.shape == (M, r)
    assert min(100, n) <= M <= max(min(50, n), int(0.05 * n))
    assert f.Z_.shape == (n, r) and f.Z_.dtype == np.float32
    assert f.bandwidth_ > 0 and f.alpha_ > 0 and f.reversion_rate_ > 0
    assert f.n_transitions_ == len(f.transitions_) <= n - 10
    assert 0 < f.time_scale_ < 60  # median of exponential gaps with mean 60 s


def test_centres_cover_the_data_at_half_a_bandwidth():
    # the default keeps the shortest k-means++ prefix within h / 2 of 99 % of the points
    ps = k_well_system(12_000, k=3, random_state=1)
    field = FlowField().fit(ps.X, ps.t, ps.series)
    cap = int(0.05 * len(ps.X))
    M = len(field.centers_)
    assert 100 <= M < cap
    Z, h = field.Z_.astype(np.float64), field.bandwidth_
    fill = [
        np.quantile(driftd.flow._linalg.nearest(Z, field.centers_[:m])[1], 0.99) for m in (M, M - 1)
    ]
    assert fill[0] <= 0.5 * h * 1.05 < fill[1] * 1.1  # chosen on a 5,000-point sample
    # the prefix loses nothing the full set of control points resolves
    full = FlowField(n_centers=cap).fit(ps.X, ps.t, ps.series)
    assert len(full.centers_) == cap
    X = ps.X[::20]
    assert mean_cosine(field.predict(X), full.predict(X)) > 0.999


def test_off_subspace_reversion_rate_is_recovered(toggle_field):
    # planted OU rate off the subspace: 1 / (10 * 60 s)
    assert toggle_field.rank_ == 2  # the planted subspace, so the residual is the planted OU
    assert toggle_field.reversion_rate_ == pytest.approx(1 / 600, rel=0.1)


def test_velocity_is_tangent_to_sphere(wells, wells_field):
    X = wells.X[:200].astype(np.float64)
    V = wells_field.predict(X)
    assert np.abs(np.einsum("ij,ij->i", V, X)).max() < 1e-10


def test_inverse_transform_lifts_onto_sphere_and_round_trips(wells_field):
    Z = wells_field.Z_[:100].astype(np.float64)
    X = wells_field.inverse_transform(Z)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(wells_field.transform(X), Z, atol=1e-10)


def test_jacobian_matches_finite_differences(wells_field):
    z = wells_field.Z_[7].astype(np.float64)
    J = wells_field.jacobian_reduced(z)
    eps = 1e-6 * wells_field.bandwidth_
    r = len(z)
    numeric = np.stack(
        [
            (
                wells_field.velocity_reduced((z + eps * e)[None])
                - wells_field.velocity_reduced((z - eps * e)[None])
            )[0]
            / (2 * eps)
            for e in np.eye(r)
        ],
        axis=1,
    )
    np.testing.assert_allclose(J, numeric, rtol=1e-5, atol=1e-8 * np.abs(J).max())


def test_probe_support_and_confidence(wells, wells_field):
    rng = np.random.default_rng(1)
    far = rng.standard_normal((5, 384))  # random directions: far from the data
    probe = wells_field.probe(np.vstack([wells.X[:500], far]))
    assert isinstance(probe, Probe)
    assert probe.velocity.shape == (505, 384)
    np.testing.assert_allclose(probe.speed, np.linalg.norm(probe.velocity, axis=1))
    assert np.all((probe.confidence >= 0) & (probe.confidence <= 1))
    assert probe.in_support[:500].mean() > 0.98
    assert not probe.in_support[500:].any()
    np.testing.assert_array_equal(
        probe.in_support, wells_field.in_support(np.vstack([wells.X[:500], far]))
    )


def test_unsorted_input_gives_the_same_field(wells):
    n = 1500
    X, t, s = wells.X[:n], wells.t[:n], wells.series[:n]
    perm = np.random.default_rng(3).permutation(n)
    a = FlowField().fit(X, t, s)
    b = FlowField().fit(X[perm], t[perm], s[perm])
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(a.Z_[perm], b.Z_, atol=1e-6)


def test_randomized_pca_for_wide_vectors_matches_exact(wells, monkeypatch):
    # d > 2048 (e.g. 3072-d embeddings) uses randomised SVD with implicit centring
    args = wells.X[:3000], wells.t[:3000], wells.series[:3000]
    exact = FlowField().fit(*args)
    monkeypatch.setattr(driftd.flow._linalg, "_MAX_EXACT_DIM", 0)
    approx = FlowField().fit(*args)
    assert approx.rank_ == exact.rank_
    cosines = np.linalg.svd(approx.components_ @ exact.components_.T, compute_uv=False)
    assert cosines.min() > 0.999
    assert _mean_cosine(approx.predict(args[0]), exact.predict(args[0])) > 0.99


def test_same_seed_same_field_bitwise(wells):
    n = 1500
    args = wells.X[:n], wells.t[:n], wells.series[:n]
    a = FlowField(random_state=5).fit(*args)
    b = FlowField(random_state=5).fit(*args)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.predict(wells.X[:50]), b.predict(wells.X[:50]))


def test_pickle_round_trip(wells, wells_field):
    clone = pickle.loads(pickle.dumps(wells_field))
    np.testing.assert_array_equal(clone.predict(wells.X[:20]), wells_field.predict(wells.X[:20]))


def test_transitions_skip_ties_gaps_and_series_changes():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8))
    t = np.arange(40, dtype=np.float64) * 10.0
    t[5] = t[4]  # a tie: skipped
    t[20:] += 1e6  # a session break: gap far beyond the median, skipped
    series = np.repeat([0, 1], 20)  # 19 transitions per series
    f = FlowField(normalize=False).fit(X, t, series)
    assert f.n_transitions_ == 19 + 19 - 1
    assert f.time_scale_ == 10.0
    assert not any(set(pair) == {4, 5} for pair in f.transitions_.tolist())


def test_normalize_false_uses_euclidean_geometry(toggle):
    X = 3.0 * toggle.X[:2000].astype(np.float64) + 1.0
    f = FlowField(normalize=False).fit(X, toggle.t[:2000], toggle.series[:2000])
    assert f.lift_direction_ is None
    Z = f.transform(X[:10])
    np.testing.assert_allclose(f.transform(f.inverse_transform(Z)), Z, atol=1e-9)
    assert _mean_cosine(f.predict(X), 3.0 * toggle.true_velocity(toggle.X[:2000])) > 0.8


def test_insufficient_points():
    X = np.ones((MIN_POINTS - 1, 4))
    with pytest.raises(InsufficientDataError) as info:
        FlowField().fit(X, np.arange(MIN_POINTS - 1.0))
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.n_required, err.n_available) == (MIN_POINTS, MIN_POINTS - 1)
    clone = pickle.loads(pickle.dumps(err))  # raised in worker processes
    assert (clone.n_required, clone.n_available, str(clone)) == (
        err.n_required,
        err.n_available,
        str(err),
    )


def test_insufficient_transitions():
    rng = np.random.default_rng(0)
    n = 30
    with pytest.raises(InsufficientDataError) as info:
        FlowField().fit(rng.standard_normal((n, 4)), np.zeros(n) + 5.0)  # all times tied
    assert info.value.what == "transitions"
    assert info.value.n_available == 0 and info.value.n_required == MIN_POINTS - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"X": np.ones(20)}, "X must be 2-D"),
        ({"X": np.full((20, 3), np.nan)}, "X contains NaN"),
        ({"t": np.arange(19.0)}, r"t must have shape \(20,\)"),
        ({"t": np.r_[np.arange(19.0), np.inf]}, "t contains NaN or infinity"),
        ({"series": np.zeros(20)}, "series must hold integer codes"),
        ({"X": np.zeros((20, 3))}, "zero vector"),
    ],
)
def test_fit_rejects_bad_input(kwargs, message):
    rng = np.random.default_rng(0)
    args = {"X": rng.standard_normal((20, 3)), "t": np.arange(20.0), "series": None} | kwargs
    with pytest.raises(ValueError, match=message):
        FlowField().fit(args["X"], args["t"], args["series"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"rank": 3}, "rank must be <= 2"),
        ({"bandwidth": -1.0}, "bandwidth must be a finite number > 0"),
        ({"alpha": "big"}, "alpha must be a positive number"),
        ({"normalize": 1}, "normalize must be a bool"),
        ({"random_state": -1}, "random_state must be >= 0"),
    ],
)
def test_fit_rejects_bad_parameters(params, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        FlowField(**params).fit(rng.standard_normal((20, 3)), np.arange(20.0))


def test_methods_need_a_fit_and_matching_dimension(wells_field):
    with pytest.raises(NotFittedError):
        FlowField().predict(np.ones((1, 3)))
    with pytest.raises(ValueError, match="X has 3 features, but the model was fitted with 384"):
        wells_field.predict(np.ones((1, 3)))
    with pytest.raises(ValueError, match="Z has 1 features"):
        wells_field.velocity_reduced(np.ones((1, 1)))


# ---------------------------------------------------------------- simulate


def test_simulate_is_resumable_in_chunks(wells, wells_field):
    x0 = wells.X[123]
    whole = simulate(wells_field, x0, n_steps=100)
    first = simulate(wells_field, x0, n_steps=50)
    second = simulate(wells_field, first.positions[-1], n_steps=50)
    np.testing.assert_array_equal(first.positions, whole.positions[:51])
    np.testing.assert_allclose(second.positions[0], whole.positions[50], atol=1e-6)
    np.testing.assert_array_equal(second.positions[1:], whole.positions[51:])
    np.testing.assert_array_equal(second.speeds[1:], whole.speeds[51:])


def test_simulate_output_shapes_and_units(wells, wells_field):
    traj = simulate(wells_field, wells.X[0], n_steps=30, dt=90.0)
    assert traj.stop_reason == "steps"
    assert traj.positions.shape == (31, 384) and traj.positions.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(traj.positions, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(traj.times, 90.0 * np.arange(31))
    assert traj.speeds.shape == traj.support.shape == (31,)
    # positions[0] is x0 projected onto the model
    np.testing.assert_allclose(
        traj.positions[0],
        wells_field.inverse_transform(wells_field.transform(wells.X[:1]))[0],
        atol=1e-6,
    )


def test_simulate_flows_into_a_planted_well(wells, wells_field):
    traj = simulate(wells_field, wells.X[500], n_steps=200, dt=wells_field.time_scale_)
    dist = np.linalg.norm(wells.centers - traj.positions[-1], axis=1).min()
    assert dist < 0.1 * wells.separation
    assert traj.speeds[-1] < 0.1 * np.median(traj.speeds[:5])


def test_simulate_stops(wells, wells_field):
    stopped = simulate(wells_field, wells.X[0], n_steps=10, stop_speed=1e9)
    assert stopped.stop_reason == "low_speed" and len(stopped.times) == 1
    slow = simulate(
        wells_field,
        wells.X[0],
        n_steps=500,
        stop_speed=1e-3 * np.median(wells_field.probe(wells.X[:100]).speed),
    )
    assert slow.stop_reason == "low_speed" and len(slow.times) < 501
    far = -wells.X[0]  # the antipode: no data anywhere near
    left = simulate(wells_field, far, n_steps=10, stop_outside_support=True)
    assert left.stop_reason == "left_support"


def test_simulate_rejects_bad_arguments(wells, wells_field):
    with pytest.raises(ValueError, match="x0 must be 1-D"):
        simulate(wells_field, wells.X[:2], n_steps=3)
    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        simulate(wells_field, wells.X[0], n_steps=-1)
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        simulate(wells_field, wells.X[0], n_steps=3, dt=0.0)


def test_advance_takes_a_duration_per_row(wells_field):
    Z = wells_field.Z_[:3].astype(np.float64)
    tau = wells_field.time_scale_
    moved = advance(wells_field, Z, np.array([0.0, tau, 5 * tau]), tau)
    np.testing.assert_array_equal(moved[0], Z[0])
    np.testing.assert_allclose(moved[1:2], advance(wells_field, Z[1:2], tau, tau))
    np.testing.assert_allclose(moved[2:], advance(wells_field, Z[2:], 5 * tau, tau))
