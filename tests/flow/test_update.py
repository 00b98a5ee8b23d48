"""FlowField.update: appended points refresh a fitted field close to a full refit,
deterministically, and anything that is not a plain append is refused;
FlowEnsemble.update carries the bootstrap over as if rebuilt on the updated field."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from driftd.flow import FlowEnsemble, FlowField, RefitRequired, find_attractors, simulate
from driftd.flow.ensemble import resample_counts

# The session's `wells` (6000 points, 10 series, time order) fitted whole is the full
# refit; the base model saw the first 5000, and the last 1000 are appended (+20 %).
N_BASE = 5000


def _mean_cosine(A, B):
    return float(
        np.mean(np.einsum("ij,ij->i", A, B) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1))
    )


def _stable_error(field, ps):
    stable = [a.center for a in find_attractors(field, n_seeds=32) if a.stability == "stable"]
    err = max(np.linalg.norm(np.array(stable) - c, axis=1).min() for c in ps.centers)
    return len(stable), err / ps.separation


# Module fixtures run before the autouse one-thread fixture: limit BLAS here too, or
# the bitwise comparisons below would compare different BLAS reduction orders.
@pytest.fixture(scope="module")
def base(wells):
    with threadpool_limits(limits=1, user_api="blas"):
        return FlowField(random_state=0).fit(
            wells.X[:N_BASE], wells.t[:N_BASE], wells.series[:N_BASE]
        )


@pytest.fixture(scope="module")
def updated(wells, base):
    with threadpool_limits(limits=1, user_api="blas"):
        return base.update(wells.X[N_BASE:], wells.t[N_BASE:], wells.series[N_BASE:])


def test_update_is_close_to_a_full_refit(wells, base, updated, wells_field):
    X = wells.X
    V, V_full = updated.predict(X), wells_field.predict(X)
    assert _mean_cosine(V, V_full) >= 0.99
    speed = np.linalg.norm(V, axis=1).mean() / np.linalg.norm(V_full, axis=1).mean()
    assert speed == pytest.approx(1.0, abs=0.02)
    # closer to the refit than the stale model is
    assert _mean_cosine(V, V_full) > _mean_cosine(base.predict(X), V_full)
    assert updated.n_transitions_ == wells_field.n_transitions_
    assert updated.reversion_rate_ == pytest.approx(wells_field.reversion_rate_, rel=0.02)
    assert updated.residual_scale_ == pytest.approx(wells_field.residual_scale_, rel=0.02)
    assert updated.support_threshold_ == pytest.approx(wells_field.support_threshold_, rel=0.1)
    assert updated.center_counts_.sum() == len(X)
    n_inc, err_inc = _stable_error(updated, wells)
    n_full, err_full = _stable_error(wells_field, wells)
    assert n_inc == n_full == 3
    assert err_inc <= 0.1 and abs(err_inc - err_full) < 0.02


def test_update_keeps_the_fit_and_its_stored_state_consistent(wells, base, updated):
    for name in ("mean_", "components_", "centers_", "pilot_coef_", "gap_window_"):
        np.testing.assert_array_equal(getattr(updated, name), getattr(base, name))
    assert (updated.bandwidth_, updated.alpha_, updated.time_scale_) == (
        base.bandwidth_,
        base.alpha_,
        base.time_scale_,
    )
    np.testing.assert_array_equal(updated.Z_[:N_BASE], base.Z_)  # base untouched, copied
    np.testing.assert_allclose(updated.Z_[N_BASE:], updated.transform(wells.X[N_BASE:]), atol=1e-6)
    # the accumulated normal equations are those of all stored transitions
    refit = updated._refit(np.ones(updated.n_transitions_))
    np.testing.assert_allclose(refit.coef_, updated.coef_, rtol=1e-6, atol=1e-9)
    last = [np.flatnonzero(wells.series == s)[-1] for s in updated.tail_series_]
    np.testing.assert_array_equal(updated.tail_index_, last)


def test_update_is_deterministic_and_composes(wells, base, updated):
    again = base.update(wells.X[N_BASE:], wells.t[N_BASE:], wells.series[N_BASE:])
    for name, value in vars(updated).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
    assert again.support_threshold_ == updated.support_threshold_
    assert again.reversion_rate_ == updated.reversion_rate_
    mid = N_BASE + 500
    twice = base.update(wells.X[N_BASE:mid], wells.t[N_BASE:mid], wells.series[N_BASE:mid])
    twice = twice.update(wells.X[mid:], wells.t[mid:], wells.series[mid:])
    np.testing.assert_allclose(twice.coef_, updated.coef_, rtol=1e-6, atol=1e-9)
    # each batch's transitions follow the earlier ones, grouped by series
    assert {tuple(p) for p in twice.transitions_} == {tuple(p) for p in updated.transitions_}


def test_positions_interleave_new_rows_with_the_fitted_ones(wells):
    # The last 50 points of every series arrive late (+20 %): in time order they
    # interleave with the other series' fitted points.
    n = 3000
    X, t, s = wells.X[:n], wells.t[:n], wells.series[:n]
    rank = np.array([np.sum(s[: i + 1] == s[i]) for i in range(n)])
    late = rank > np.bincount(s)[s] - 50
    old, new = np.flatnonzero(~late), np.flatnonzero(late)
    field = FlowField(random_state=0).fit(X[old], t[old], s[old])
    placed = field.update(X[new], t[new], s[new], positions=new)
    appended = field.update(X[new], t[new], s[new])
    order = np.concatenate([old, new])  # appended layout -> time order
    np.testing.assert_array_equal(placed.Z_[order], appended.Z_)
    np.testing.assert_array_equal(order[appended.transitions_], placed.transitions_)
    np.testing.assert_array_equal(placed.coef_, appended.coef_)
    np.testing.assert_array_equal(placed.tail_index_, order[appended.tail_index_])
    full = FlowField(random_state=0).fit(X, t, s)
    assert {tuple(p) for p in placed.transitions_} == {tuple(p) for p in full.transitions_}


def test_new_series_start_without_a_transition_into_them(wells, base):
    X, t = wells.X[N_BASE:], wells.t[N_BASE:]
    out = base.update(X[:20], t[:20], np.full(20, 99))
    assert out.n_transitions_ == base.n_transitions_ + 19
    assert out.tail_series_[-1] == 99 and out.tail_index_[-1] == N_BASE + 19


def test_update_refuses_what_it_cannot_absorb(wells, base):
    X, t, s = wells.X[N_BASE:], wells.t[N_BASE:], wells.series[N_BASE:]
    with pytest.raises(RefitRequired, match="precede"):
        base.update(X[:5], t[:5] - 1e6, s[:5])
    with pytest.raises(RefitRequired, match="added since the last full fit"):
        n = N_BASE // 3  # the same points replayed a week later: +33 %
        base.update(wells.X[:n], wells.t[:n] + 7 * 86_400, wells.series[:n])
    # a direction the subspace never saw
    rng = np.random.default_rng(0)
    e = rng.standard_normal(X.shape[1])
    e -= wells.basis @ (wells.basis.T @ e)
    off = X[:200] + 0.1 * e / np.linalg.norm(e)
    with pytest.raises(RefitRequired, match="off-subspace"):
        base.update(off, t[:200], s[:200])
    # inside the subspace, but where no data (and no control point) is
    far = wells.lift(3.0 * rng.standard_normal((200, wells.basis.shape[1] - 1)))
    with pytest.raises(RefitRequired, match="outside the support"):
        base.update(far, t[:200], s[:200])


def test_update_validates_input(wells, base):
    X, t, s = wells.X[N_BASE:], wells.t[N_BASE:], wells.series[N_BASE:]
    with pytest.raises(ValueError, match="features"):
        base.update(X[:3, :10], t[:3], s[:3])
    with pytest.raises(ValueError, match="positions"):
        base.update(X[:3], t[:3], s[:3], positions=[N_BASE, N_BASE, N_BASE + 1])
    with pytest.raises(ValueError, match="positions"):
        base.update(X[:3], t[:3], s[:3], positions=[0, 1, N_BASE + 3])
    same = base.update(X[:0], t[:0], s[:0])
    assert same is not base
    np.testing.assert_array_equal(same.coef_, base.coef_)


def test_ensemble_follows_updates_as_if_rebuilt(wells, base, wells_field):
    mid = N_BASE + 500  # two appended batches of +10 %
    first = base.update(wells.X[N_BASE:mid], wells.t[N_BASE:mid], wells.series[N_BASE:mid])
    second = first.update(wells.X[mid:], wells.t[mid:], wells.series[mid:])
    ensemble = FlowEnsemble(8, random_state=0).fit(base)
    carried = ensemble.update(first).update(second)
    rebuilt = FlowEnsemble(8, random_state=0).fit(second)
    assert carried.field_ is second and ensemble.field_ is base
    # each replicate is the direct refit on its resample of all three batches
    Z = second.Z_[::7].astype(np.float64)
    fit = second._velocity(Z)
    scale = np.abs(fit).max()
    for b in range(2):
        direct = second._refit(resample_counts(second.transition_batches_, 0, b))._velocity(Z)
        # measured 3e-5: the appended rows' Gram change is kept in the fit's span
        assert np.abs(carried.replicate(b)._velocity(Z) - direct).max() < 1e-4 * scale
        assert np.abs(fit - direct).max() > 1e-2 * scale
    # what the user sees matches a rebuild: measured 1e-6 (confidence), 3e-6 (band)
    X = wells.X[::10]
    np.testing.assert_allclose(carried.probe(X).confidence, rebuilt.probe(X).confidence, atol=1e-5)
    for x0 in wells.saddles:
        band = simulate(second, x0, n_steps=50, ensemble=carried).band_radius
        ref = simulate(second, x0, n_steps=50, ensemble=rebuilt).band_radius
        np.testing.assert_allclose(band, ref, rtol=0, atol=1e-4 * ref.max())
    again = ensemble.update(first).update(second)
    np.testing.assert_array_equal(again.coef_, carried.coef_)
    small = ensemble.subset(3).update(first).coef_
    full = ensemble.update(first).coef_[:3]
    np.testing.assert_allclose(small, full, rtol=0, atol=1e-9 * np.abs(full).max())
    with pytest.raises(ValueError, match="update"):
        ensemble.update(wells_field)  # a separate fit
