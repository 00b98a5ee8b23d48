"""FlowField: a smooth velocity field estimated from timestamped embeddings.

The estimator follows the vector-field-reconstruction line of work used for RNA
velocity (SparseVFC in dynamo: Qiu et al., Cell 2022; Ma et al., Pattern Recognition
2013), adapted to irregularly sampled embedding trajectories:

1. rows are L2 normalised (cosine collections), centred and reduced by PCA (on the
   plane orthogonal to the mean direction) to the r dims above a Marchenko-Pastur
   noise floor, with the sample size discounted for autocorrelation;
2. transitions are pairs of consecutive points of one series; the velocity sample is
   dz/dt at the start point (Ito-consistent: a midpoint would correlate the regressor
   with the increment's noise and bias the field by the score of the data density);
3. a Gaussian-kernel ridge regression on M control points (subset-of-regressors /
   Nystroem, Rasmussen & Williams 2006, sec. 8.3.1) is fitted by weighted least
   squares; M is the shortest k-means++ prefix that covers the data at half a
   bandwidth (more control points add nothing the kernel resolves);
4. bandwidth and ridge strength are chosen by blocked cross-validation (contiguous
   blocks of the (series, time) order: Roberts et al., Ecography 2017), which also
   gives a coarse pilot model;
5. the difference quotient is the chord of the path, biased inside curved or rotating
   flow by dt/2 J f + O(dt^2). Targets are corrected with the pilot's own flow map,
   p(z_s) + (z_e - phi_p(z_s, dt)) / dt (exact if p is the drift, to every order in
   dt), and the pilot is refitted on them a few times (a fixed-point iteration);
   without this the finite-difference bias made speeds 0.87 of the truth on three
   wells and the Lorenz wing centres stable under exponential gaps;
6. weights are inverse variances dt / g(dt), with g the gap profile of the pilot's
   dt |residual|^2 (flat under pure diffusion, rising where discretisation or model
   error grows with the gap), and transitions far beyond it (jumps, topic switches)
   are down-weighted Cauchy style;
7. the part of a point off the PCA subspace is modelled as Ornstein-Uhlenbeck mean
   reversion towards the subspace, with a rate fitted to the lagged residual
   correlation exp(-rate dt), so ``predict`` gives a full-space velocity.

:meth:`FlowField.update` refreshes a fitted field with appended points from their
transitions alone: the normal equations of step 3 are sums over transitions, so the
new rows are added and the system solved again, with subspace, centres and
hyperparameters kept until a full refit.

For ``normalize=True`` the reduced model lives on the sphere: ``inverse_transform``
lifts a reduced point z to the unit vector whose projection is exactly z, adding the
missing norm along the off-subspace part of the mean direction (the hemisphere over
the PCA plane). ``transform(inverse_transform(z)) == z`` up to rounding, which makes
simulations resumable from their unit-norm output positions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
from sklearn.base import BaseEstimator
from sklearn.cluster import kmeans_plusplus
from sklearn.utils.validation import check_is_fitted

from driftd.flow._linalg import (
    CHUNK,
    fit_pca,
    gaussian_kernel,
    nearest,
    normalize_rows,
    project,
    sq_distances,
)
from driftd.flow._validation import (
    check_int,
    check_matrix,
    check_positive,
    check_random_state,
    check_vector,
    sklearn_seed,
)
from driftd.flow.simulate import advance

MIN_POINTS = 10
MIN_TRANSITIONS = MIN_POINTS - 1
_MAX_RANK = 32
_MAX_CENTERS = 1000
# Control points beyond a cover of the data at half a bandwidth add nothing the kernel
# can resolve (a Gaussian of width h varies little over h / 2) but cost O(T M^2): the
# default keeps the shortest k-means++ prefix, at least _MIN_CENTERS, that leaves 99 %
# of the points within _FILL_RADIUS bandwidths of a centre.
_MIN_CENTERS = 100
_FILL_RADIUS = 0.5
_FILL_QUANTILE = 0.99
_FILL_SAMPLE = 5000  # points the fill distances are measured on
# Gaps outside [1e-3, 25] x median are clock glitches or session breaks, not dynamics.
_MIN_GAP, _MAX_GAP = 1e-3, 25.0
_CV_FOLDS = 5
_CV_MAX_TRANSITIONS = 20_000
# CV runs on the first k-means++ centres (a coarse cover): it needs 405 Cholesky solves
# (9 x 9 grid, 5 folds), each ~37x dearer at M = 1000.
_CV_MAX_CENTERS = 300
# Half-octave bandwidths and half-decade ridge strengths: with whole octaves and decades
# the ridge shrinkage landed a step too strong on the planted 5- to 8-well systems
# (speeds 0.77-0.83 of the truth; 0.89-0.96 on this grid).
_BANDWIDTH_FACTORS = tuple(2.0 ** (-k / 2) for k in range(8, -1, -1))  # 1/16 .. 1
_ALPHAS = tuple(10.0 ** (k / 2) for k in range(-10, -1))  # 1e-5 .. 1e-1
_JITTER = 1e-4  # plain-ridge share of the penalty: keeps the system positive definite
_OUTLIER_MADS = 5.0
_PILOT_ROUNDS = 3  # Lorenz: 1 round leaves its wing centres stable, 2-5 give saddles
_SUPPORT_QUANTILE = 0.01
# Half the 1 % quantile: with broad kernels the support varies little over the data, and
# corners of the data (where stable states of e.g. a toggle switch sit) come close to q01.
_SUPPORT_FACTOR = 0.5
_SUPPORT_SAMPLE = 5000
_RESIDUAL_QUANTILE = 0.99
# update() refuses (RefitRequired) when the appended data may need a new subspace,
# centres or hyperparameters: the points added since the last full fit exceed this
# share of it (on the planted 3 wells, 5,000 -> 6,000 points kept the CV choice and
# rank, and the update's velocity had cosine 0.9997 to the refit's), the new points'
# mean off-subspace energy exceeds the fitted points' by this factor (a direction the
# PCA never saw), or more than this share of them lie outside the fitted support (a
# region without control points; the threshold leaves out < 1 % of the data).
_REFIT_GROWTH = 0.25
_REFIT_RESIDUAL = 1.5
_REFIT_OUTSIDE = 0.05


class InsufficientDataError(ValueError):
    """Too few points or transitions to fit a flow field.

    Attributes: ``n_required`` (int), ``n_available`` (int), ``what`` ("points" or
    "transitions"). Picklable, so it survives the trip back from a worker process.
    """

    def __init__(self, n_required: int, n_available: int, what: str = "points"):
        self.n_required = int(n_required)
        self.n_available = int(n_available)
        self.what = what
        super().__init__(
            f"need at least {self.n_required} {what} to fit a flow field, got {self.n_available}"
        )

    def __reduce__(self):
        return type(self), (self.n_required, self.n_available, self.what)


class RefitRequired(ValueError):
    """:meth:`FlowField.update` cannot absorb the new points; fit from scratch instead.
    The message says why."""


@dataclass(frozen=True)
class Probe:
    """Local flow at query points (n of them), from :meth:`FlowField.probe`.

    ``velocity`` (n, d) float64, full-space units per second; ``speed`` (n,) its norm;
    ``support`` (n,) effective number of nearby observations (kernel-weighted count);
    ``in_support`` (n,) bool; ``confidence`` (n,) in [0, 1], from
    :meth:`FlowField.probe` support / (support + threshold): 0.5 exactly at the support
    threshold, -> 1 deep inside the data; from :meth:`FlowEnsemble.probe
    <driftd.flow.ensemble.FlowEnsemble.probe>` the bootstrap replicates' agreement.
    """

    velocity: np.ndarray
    speed: np.ndarray
    support: np.ndarray
    in_support: np.ndarray
    confidence: np.ndarray


class FlowField(BaseEstimator):
    """Velocity field of timestamped embeddings (see the module docstring for the method).

    Parameters
    ----------
    rank : int or None
        Reduced dimension r. None: the smaller of the 90 %-variance rank and the number
        of components above a Marchenko-Pastur noise floor, clipped to [2, 32] and to
        N / 10.
    n_centers : int or None
        Kernel control points M. None: of max(min(50, N), 0.05 N) k-means++ centres (at
        most 1000), the shortest prefix, at least 100, that leaves 99 % of the points
        within half a bandwidth of a centre.
    bandwidth : float or None
        Gaussian kernel bandwidth in reduced (Euclidean) units. None: median pairwise
        distance times a factor chosen by blocked cross-validation.
    alpha : float or None
        Ridge strength (relative to the mean squared kernel). None: cross-validated.
    normalize : bool
        L2-normalise rows first (cosine collections); the model then lives on the
        unit sphere.
    random_state : int or None
        Seed for centre selection and subsampling; same seed and data give identical
        results.

    Fitted attributes: ``mean_`` (d,), ``components_`` (r, d), ``rank_``,
    ``explained_variance_ratio_`` (r,), ``centers_`` (M, r), ``coef_`` (M, r) in
    reduced units per second, ``bandwidth_``, ``alpha_``, ``n_transitions_``,
    ``time_scale_`` (median gap, seconds), ``reversion_rate_`` (1/second, OU rate
    off the subspace), ``lift_direction_`` (d,) or None, ``center_counts_`` (M,),
    ``support_threshold_``, ``residual_scale_`` (99 % quantile of the data's distance
    to the model, full-space units), ``Z_`` (N, r) float32 reduced data in input order,
    ``transitions_`` (T, 2) int64 input indices (start, end), ``transition_dt_`` (T,)
    seconds, ``transition_weight_`` (T,) final regression weights,
    ``transition_target_`` (T, r) float64 their bias-corrected velocity targets
    (:meth:`_targets`; kept so bootstrap refits need not rerun the pilot), ``pilot_coef_``
    (min(M, 300), r) the pilot on the first centres (cross-validated, then refitted on
    its own bias-corrected targets; it corrects the targets), ``n_features_in_``.

    Kept for :meth:`update`: ``gram_`` (M, M) and ``target_moment_`` (M, r), the
    unnormalised weighted normal equations, and ``weight_sum_``; ``weight_profile_``
    the fitted weighting rule; ``gap_window_`` (2,) usable gaps, seconds;
    ``residual_sq_`` (N,) squared off-subspace residual of each point;
    ``transition_cross_`` (T,) lagged residual products (NaN: not known);
    ``tail_series_``, ``tail_index_``, ``tail_time_`` (S,) each series' code, last
    point (input index) and its time; ``n_samples_full_fit_`` points at the last full
    fit; ``transition_batches_`` (u + 1,) int64 transition counts after the full fit
    and after each of u updates (the bootstrap resamples each batch on its own).
    """

    def __init__(
        self,
        *,
        rank=None,
        n_centers=None,
        bandwidth=None,
        alpha=None,
        normalize=True,
        random_state=0,
    ):
        self.rank = rank
        self.n_centers = n_centers
        self.bandwidth = bandwidth
        self.alpha = alpha
        self.normalize = normalize
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def fit(self, X, t, series=None) -> FlowField:
        """Fit the field.

        X (N, d) float32/float64 vectors; t (N,) float64 epoch seconds; series (N,)
        integer codes or None (one series). Input need not be sorted: points are
        ordered by (series, t), stably. Raises InsufficientDataError for fewer than
        MIN_POINTS points or MIN_POINTS - 1 usable transitions, ValueError for
        malformed input. Returns self.
        """
        check_int(self.rank, "rank", minimum=1, allow_none=True)
        check_int(self.n_centers, "n_centers", minimum=1, allow_none=True)
        check_positive(self.bandwidth, "bandwidth", allow_none=True)
        check_positive(self.alpha, "alpha", allow_none=True)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be a bool, got {self.normalize!r}")
        rng = check_random_state(self.random_state)
        X = check_matrix(X)
        n, d = X.shape
        if n < MIN_POINTS:
            raise InsufficientDataError(MIN_POINTS, n, "points")
        t = check_vector(t, "t", n)
        series = (
            np.zeros(n, dtype=np.int64)
            if series is None
            else check_vector(series, "series", n, integer=True)
        )
        if self.normalize and d < 2:
            raise ValueError("normalize=True needs at least 2 features")
        if self.rank is not None and self.rank > d - int(self.normalize):
            raise ValueError(
                f"rank must be <= {d - int(self.normalize)} for {d} features"
                + (" with normalize=True" if self.normalize else "")
                + f", got {self.rank}"
            )

        order, keep, dt, self.gap_window_ = _transitions(t, series)
        start, end = order[:-1][keep], order[1:][keep]
        self.time_scale_ = float(np.median(dt))
        self.n_samples_full_fit_ = n
        self.tail_series_, self.tail_index_, self.tail_time_ = _series_tails(order, t, series)

        Xn = normalize_rows(X) if self.normalize else X
        pca = fit_pca(
            Xn,
            rank=self.rank,
            min_rank=2,
            max_rank=max(2, min(_MAX_RANK, n // 10)),
            n_extra=int(self.normalize),
            seed=sklearn_seed(rng),
            # A low-variance direction can carry fast dynamics (the x - y axis of
            # Lorenz holds 6 % of the variance): keep every direction above the noise.
            max_share=None,
            exclude=_chart_normal(Xn) if self.normalize else None,
            n_eff=_effective_size(Xn, start, end),
        )
        r = pca.rank
        self.n_features_in_ = d
        self.mean_ = pca.mean
        self.components_ = pca.components[:r]
        self.rank_ = r
        self.explained_variance_ratio_ = pca.explained_variance[:r] / max(
            pca.total_variance, 1e-300
        )
        self.lift_direction_ = _lift_direction(pca.mean, pca.components) if self.normalize else None
        # Rounded to the stored float32 once, so bootstrap refits (_refit) start from
        # exactly the data the fit saw.
        self.Z_ = project(Xn, self.mean_, self.components_).astype(np.float32)
        Z = self.Z_.astype(np.float64)

        # Random draws index the (series, t) order, so shuffled input gives the same fit.
        Z_sorted = Z[order]
        n_centers = self.n_centers or int(min(_MAX_CENTERS, max(min(50, n), 0.05 * n)))
        n_centers = min(n_centers, n)
        self.centers_ = kmeans_plusplus(
            Z_sorted[rng.permutation(n)[: 10 * n_centers]],
            n_centers,
            random_state=sklearn_seed(rng),
        )[0]

        self.transitions_ = np.stack([start, end], axis=1)
        self.transition_dt_ = dt
        self.n_transitions_ = len(dt)
        self.transition_batches_ = np.array([self.n_transitions_])
        Zs = Z[start]
        Y = (Z[end] - Zs) / dt[:, None]
        h0 = _median_distance(Z_sorted, rng)
        fill = (
            _fill_distances(Z_sorted[rng.permutation(n)[:_FILL_SAMPLE]], self.centers_)
            if self.n_centers is None
            else None
        )

        def centers_for(h):
            """Control points used with bandwidth h: a covering prefix, or all of them."""
            return n_centers if fill is None else _covering_size(fill, _FILL_RADIUS * h)

        h, lam, sub, self.pilot_coef_ = self._select(
            Zs, Y, dt / self.time_scale_, h0, centers_for, rng
        )
        self.bandwidth_, self.alpha_ = h, lam
        n_used = centers_for(h)
        # Refine the pilot on its own bias-corrected targets (step 5): a fixed-point
        # iteration that the planted systems settle in within 3 rounds.
        pilot_centers = self.centers_[: min(n_used, _CV_MAX_CENTERS)]
        for _ in range(_PILOT_ROUNDS):
            Y, P = self._targets(Z, sub)
            w, _ = _transition_weights(dt[sub], Y - P)
            self.pilot_coef_ = _solve(Zs[sub], Y, w, pilot_centers, h, lam)
        self.centers_ = self.centers_[:n_used]
        Y, P = self._targets(Z)
        self.transition_target_ = Y
        self.transition_weight_, self.weight_profile_ = _transition_weights(dt, Y - P)
        # The normal equations are kept: update() adds new transitions' rows to them.
        self.gram_, self.target_moment_, self.weight_sum_ = _gram(
            Zs, Y, self.transition_weight_, self.centers_, h
        )
        self.coef_ = self._solve_normal()

        cross, own = self._residual_products(Xn, Z, order)
        self.residual_sq_ = np.empty(n)
        self.residual_sq_[order] = own
        self.transition_cross_ = cross[keep]
        self.residual_scale_ = float(np.sqrt(np.quantile(own, _RESIDUAL_QUANTILE)))
        self.reversion_rate_ = _fit_reversion(cross[keep], own[:-1][keep], dt, self.time_scale_)
        self.center_counts_ = np.bincount(nearest(Z, self.centers_)[0], minlength=n_used)
        sample = Z_sorted[rng.permutation(n)[:_SUPPORT_SAMPLE]]
        self.support_threshold_ = _SUPPORT_FACTOR * float(
            np.quantile(self._support_z(sample), _SUPPORT_QUANTILE)
        )
        return self

    def _select(self, Zs, Y, w, h0, centers_for, rng):
        """Blocked-CV choice of (bandwidth, alpha) on at most 20k transitions (raw
        difference quotients Y, weights w); a bandwidth h is scored with the first
        min(centers_for(h), 300) centres. Returns them, the sorted indices of those
        transitions, and that coarse model's coefficients: the pilot used to correct
        the finite-difference bias."""
        n = len(Zs)
        sub = np.sort(rng.permutation(n)[:_CV_MAX_TRANSITIONS])
        Zc, Yc, wc = Zs[sub], Y[sub], w[sub]
        n_folds = min(_CV_FOLDS, len(sub))
        fold_of = np.arange(len(sub)) * n_folds // len(sub)
        hs = (self.bandwidth,) if self.bandwidth else tuple(f * h0 for f in _BANDWIDTH_FACTORS)
        lams = (self.alpha,) if self.alpha else _ALPHAS
        # The first candidate stands should no loss be finite.
        best_loss, best = np.inf, (hs[0], lams[0])
        for h in hs:
            centers = self.centers_[: min(centers_for(h), _CV_MAX_CENTERS)]
            G, B, S, Wk = _normal_equations(Zc, Yc, wc, centers, h, fold_of, n_folds)
            K = gaussian_kernel(centers, centers, h)
            G_all, B_all, W_all = G.sum(0), B.sum(0), Wk.sum()
            for lam in lams:
                loss = 0.0
                for k in range(n_folds):
                    W_train = W_all - Wk[k]
                    C = _ridge((G_all - G[k]) / W_train, (B_all - B[k]) / W_train, K, lam)
                    loss += np.sum(C * (G[k] @ C)) - 2 * np.sum(C * B[k]) + S[k]
                if loss < best_loss:
                    best_loss, best = loss, (h, lam)
        h, lam = best
        centers = self.centers_[: min(centers_for(h), _CV_MAX_CENTERS)]
        return h, lam, sub, _solve(Zc, Yc, wc, centers, h, lam)

    def _residual_products(self, Xn, Z, order):
        """e_i . e_(i+1) (N - 1,) over consecutive rows of ``order`` and |e_i|^2 (N,) of
        each, where e = x - lift(z) is the part of a point the reduced model does not
        represent."""
        cross = np.empty(len(order) - 1)
        own = np.empty(len(order))
        for s in range(0, len(order), CHUNK):
            idx = order[s : s + CHUNK + 1]
            E = Xn[idx].astype(np.float64) - self._lift(Z[idx])
            cross[s : s + len(idx) - 1] = np.einsum("ij,ij->i", E[:-1], E[1:])
            own[s : s + len(idx)] = np.einsum("ij,ij->i", E, E)
        return cross, own

    def _solve_normal(self) -> np.ndarray:
        """Coefficients (M, r) from the kept normal equations."""
        return _ridge(
            self.gram_ / self.weight_sum_,
            self.target_moment_ / self.weight_sum_,
            gaussian_kernel(self.centers_, self.centers_, self.bandwidth_),
            self.alpha_,
        )

    # ------------------------------------------------------------ reduced space

    def _velocity(self, Z: np.ndarray) -> np.ndarray:
        return _kernel_apply(Z, self.centers_, self.bandwidth_, self.coef_)

    def _support_z(self, Z: np.ndarray) -> np.ndarray:
        counts = self.center_counts_[:, None].astype(np.float64)
        return _kernel_apply(Z, self.centers_, self.bandwidth_, counts)[:, 0]

    def _support(self, Xn: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Support of normalised points Xn (n, d) with reduced coordinates Z (n, r).

        The reduced-space count is damped by how much farther than the data (its 99 %
        residual quantile) the point lies off the model: a point that projects into
        the data cloud from far away is not supported.
        """
        excess = np.linalg.norm(Xn - self._lift(Z), axis=1) - self.residual_scale_
        damping = np.exp(-0.5 * (np.maximum(excess, 0.0) / self.bandwidth_) ** 2)
        return self._support_z(Z) * damping

    def _lift(self, Z: np.ndarray) -> np.ndarray:
        """Reduced (n, r) -> full (n, d) float64; on the unit sphere if normalize."""
        if not self.normalize:
            return self.mean_ + Z @ self.components_
        zeta = Z + self.components_ @ self.mean_
        sq = np.einsum("ij,ij->i", zeta, zeta)
        # Outside the unit disk there is no sphere point above z: use its direction.
        scale = 1.0 / np.sqrt(np.maximum(sq, 1.0))
        height = np.sqrt(np.maximum(1.0 - sq, 0.0))
        return (zeta * scale[:, None]) @ self.components_ + height[:, None] * self.lift_direction_

    def _lift_velocity(self, Z: np.ndarray, F: np.ndarray) -> np.ndarray:
        """Full-space velocity (n, d) of the lifted path through Z moving at dZ/dt = F."""
        V = F @ self.components_
        if self.normalize:
            zeta = Z + self.components_ @ self.mean_
            height = np.sqrt(np.maximum(1.0 - np.einsum("ij,ij->i", zeta, zeta), 1e-12))
            V -= (np.einsum("ij,ij->i", zeta, F) / height)[:, None] * self.lift_direction_
        return V

    # ------------------------------------------------------------------- public

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = check_matrix(X, n_features=self.n_features_in_)
        return normalize_rows(X) if self.normalize else X

    def _check_Z(self, Z) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return check_matrix(Z, "Z", n_features=self.rank_).astype(np.float64, copy=False)

    def transform(self, X) -> np.ndarray:
        """Reduced coordinates (n, r) float64 of X (n, d) (rows normalised first if normalize)."""
        return project(self._check_X(X), self.mean_, self.components_)

    def inverse_transform(self, Z) -> np.ndarray:
        """Full-space points (n, d) float64 for reduced Z (n, r).

        normalize=False: mean + Z components. normalize=True: the unit vector whose
        projection is Z (see module docstring), so transform(inverse_transform(Z)) == Z
        for every Z inside the projected unit ball.
        """
        return self._lift(self._check_Z(Z))

    def velocity_reduced(self, Z) -> np.ndarray:
        """Velocity (n, r) float64 in reduced units per second at reduced points Z (n, r)."""
        return self._velocity(self._check_Z(Z))

    def predict(self, X) -> np.ndarray:
        """Full-space velocity (n, d) float64 per second at X (n, d).

        The in-subspace flow, lifted, plus OU mean reversion of the off-subspace
        residual; for normalize=True the velocity of the normalised point, tangent to
        the unit sphere.
        """
        Xn = self._check_X(X)
        V = np.empty(Xn.shape)
        for s in range(0, len(Xn), CHUNK):
            x = Xn[s : s + CHUNK].astype(np.float64)
            z = project(x, self.mean_, self.components_)
            v = self._lift_velocity(z, self._velocity(z)) - self.reversion_rate_ * (
                x - self._lift(z)
            )
            if self.normalize:
                v -= np.einsum("ij,ij->i", v, x)[:, None] * x
            V[s : s + CHUNK] = v
        return V

    def jacobian_reduced(self, z) -> np.ndarray:
        """Analytic Jacobian (r, r) of ``velocity_reduced`` at one reduced point z (r,).

        J[i, j] = d v_i / d z_j = -1/h^2 sum_m k_m coef_mi (z - center_m)_j; units 1/second.
        """
        z = self._check_Z(np.asarray(z).reshape(1, -1))[0]
        return _jacobian(z, self.centers_, self.coef_, self.bandwidth_)

    def support(self, X) -> np.ndarray:
        """Effective sample count (n,) float64 at X (n, d).

        sum over the data of exp(-|z - z_i|^2 / (2 h^2)) in reduced space, computed
        from the M control points weighted by how many data points are nearest to
        each (a binned kernel density: O(M) per query instead of O(N)), times
        exp(-excess^2 / (2 h^2)) where excess is how much farther X lies off the
        subspace than 99 % of the data.
        """
        Xn = self._check_X(X).astype(np.float64)
        return self._support(Xn, project(Xn, self.mean_, self.components_))

    def in_support(self, X) -> np.ndarray:
        """(n,) bool: support >= ``support_threshold_``, half the 1 % quantile of the
        data's own support."""
        return self.support(X) >= self.support_threshold_

    def probe(self, X) -> Probe:
        """Velocity, speed, support and confidence at X (n, d); see :class:`Probe`."""
        velocity = self.predict(X)
        support = self.support(X)
        return Probe(
            velocity=velocity,
            speed=np.linalg.norm(velocity, axis=1),
            support=support,
            in_support=support >= self.support_threshold_,
            confidence=support / (support + self.support_threshold_),
        )

    def _targets(self, Z: np.ndarray, idx: np.ndarray | None = None):
        """Velocity targets Y (T', r) of the stored transitions ``idx`` (all if None),
        free of discretisation bias to all orders of the pilot model p, and the pilot
        P = p(z_s) (T', r): Y = p(z_s) + (z_e - phi_p(z_s, dt)) / dt, phi_p the pilot's
        flow map (RK4). The raw difference quotient (z_e - z_s) / dt is the chord of
        the path: it cuts inside curved and rotating flow, and the first-order fix
        dt/2 J f fell short on long gaps (Lorenz: its wing centres came out stable
        with exponential gaps, saddles with regular ones)."""
        start, end = self.transitions_[slice(None) if idx is None else idx].T
        dt = self.transition_dt_[slice(None) if idx is None else idx]
        pilot = copy.copy(self)
        pilot.centers_ = self.centers_[: len(self.pilot_coef_)]
        pilot.coef_ = self.pilot_coef_
        Zs = Z[start]
        P = pilot._velocity(Zs)
        return P + (Z[end] - advance(pilot, Zs, dt, self.time_scale_)) / dt[:, None], P

    def _refit(self, sample_weight: np.ndarray) -> FlowField:
        """Copy with coefficients refitted on the stored transitions, weights multiplied by
        ``sample_weight`` (T,); subspace, centres, hyperparameters and pilot unchanged, so
        ``_refit(ones)`` is the fit itself (bootstrap replicates centre on it)."""
        clone = copy.copy(self)
        Z = self.Z_.astype(np.float64)
        w = self.transition_weight_ * sample_weight
        Zs = Z[self.transitions_[:, 0]]
        Y = self._targets(Z)[0]
        clone.coef_ = _solve(Zs, Y, w, self.centers_, self.bandwidth_, self.alpha_)
        return clone

    def update(self, X, t, series=None, *, positions=None) -> FlowField:
        """A copy refreshed with appended points, touching only their transitions.

        X (m, d) float32/float64 new vectors; t (m,) float64 epoch seconds; series (m,)
        integer codes as in :meth:`fit` (None: series 0); positions (m,) int64 or None:
        where the new rows go in the combined input order of n + m rows (the fitted
        rows keep their relative order in the remaining slots; None: after them).
        ``Z_``, ``transitions_`` and ``tail_index_`` of the copy index that order.

        Subspace, centres, bandwidth, ridge strength, pilot, time scale, gap window and
        weight profile stay as fitted. The new transitions (each series' last point to
        its first new one, then consecutive new points) get pilot-corrected targets and
        weights; their rows are added to the kept normal equations, which are solved
        again (recursive least squares in batch form, e.g. Hastie, Tibshirani &
        Friedman 2009, sec. 3.2: the Gram and moment matrices are sums over rows).
        Centre counts, support threshold, residual scale and OU rate are recomputed
        over all points; the OU fit leaves out transitions from a fitted point (its
        full-space residual is not kept). Appended transitions follow the fitted
        ones, in (series, t) order. Costs O(m M^2 + M^3), not O(N M^2) plus
        cross-validation; deterministic under ``random_state``.

        Raises:
            RefitRequired: a new point precedes (or ties and precedes in input order)
                the last fitted point of its series; or the points added since the
                last full fit exceed 25 % of it, or their mean off-subspace energy is
                above 1.5x the fitted points', or more than 5 % of them are outside
                the fitted support.
            ValueError: malformed input.
        """
        check_is_fitted(self, "gram_")
        X = check_matrix(X, n_features=self.n_features_in_)
        m, n = len(X), len(self.Z_)
        t = check_vector(t, "t", m)
        series = (
            np.zeros(m, dtype=np.int64)
            if series is None
            else check_vector(series, "series", m, integer=True)
        )
        if positions is None:
            positions = np.arange(n, n + m)
        else:
            positions = check_vector(positions, "positions", m, integer=True)
            if np.any((positions < 0) | (positions >= n + m)) or len(np.unique(positions)) < m:
                raise ValueError(f"positions must be {m} distinct integers in [0, {n + m})")
        if m == 0:
            return copy.copy(self)
        is_new = np.zeros(n + m, dtype=bool)
        is_new[positions] = True
        old_at = np.flatnonzero(~is_new)  # combined position of each fitted row

        # New rows in the stable (series, t) order, each paired with its predecessor.
        o = np.lexsort((positions, t, series))
        s_o, t_o, p_o = series[o], t[o], positions[o]
        first = np.append(True, s_o[1:] != s_o[:-1])
        k = np.minimum(np.searchsorted(self.tail_series_, s_o), len(self.tail_series_) - 1)
        has_tail = self.tail_series_[k] == s_o
        tail_pos, tail_t = old_at[self.tail_index_[k]], self.tail_time_[k]
        if np.any(has_tail & ((t_o < tail_t) | ((t_o == tail_t) & (p_o < tail_pos)))):
            raise RefitRequired("new points precede the last fitted point of their series")
        grown = n + m - self.n_samples_full_fit_
        if grown > _REFIT_GROWTH * self.n_samples_full_fit_:
            raise RefitRequired(
                f"{grown} points added since the last full fit of {self.n_samples_full_fit_}"
            )
        Xn = (normalize_rows(X) if self.normalize else X).astype(np.float64)
        Z_new = project(Xn, self.mean_, self.components_).astype(np.float32)
        Zd = Z_new.astype(np.float64)
        E = Xn - self._lift(Zd)
        own = np.einsum("ij,ij->i", E, E)
        energy = own.mean() / max(self.residual_sq_.mean(), 1e-300)
        if energy > _REFIT_RESIDUAL:
            raise RefitRequired(f"new points' off-subspace energy is {energy:.2f}x the fitted")
        outside = np.mean(self._support(Xn, Zd) < self.support_threshold_)
        if outside > _REFIT_OUTSIDE:
            raise RefitRequired(f"{outside:.1%} of the new points are outside the support")

        prev_pos = np.append(-1, p_o[:-1])
        prev_t = np.append(t_o[0], t_o[:-1])
        prev_pos[first], prev_t[first] = tail_pos[first], np.where(has_tail, tail_t, t_o)[first]
        dt = t_o - prev_t  # 0 for a new series' first point: no predecessor
        lo, hi = self.gap_window_
        keep = (dt > 0) & (dt >= lo) & (dt <= hi)
        start, end, dt = prev_pos[keep], p_o[keep], dt[keep]
        cross = np.full(m, np.nan)  # unknown from a fitted point
        cross[1:] = np.einsum("ij,ij->i", E[o[:-1]], E[o[1:]])
        cross[first] = np.nan

        clone = copy.copy(self)
        clone.Z_ = np.empty((n + m, self.rank_), dtype=np.float32)
        clone.Z_[old_at], clone.Z_[positions] = self.Z_, Z_new
        clone.residual_sq_ = np.empty(n + m)
        clone.residual_sq_[old_at], clone.residual_sq_[positions] = self.residual_sq_, own
        clone.transitions_ = np.concatenate(
            [old_at[self.transitions_], np.stack([start, end], axis=1)]
        )
        clone.transition_dt_ = np.concatenate([self.transition_dt_, dt])
        clone.transition_cross_ = np.concatenate([self.transition_cross_, cross[keep]])
        clone.n_transitions_ = len(clone.transition_dt_)
        clone.transition_batches_ = np.append(self.transition_batches_, clone.n_transitions_)
        Z = clone.Z_.astype(np.float64)
        Y, P = clone._targets(Z, np.arange(self.n_transitions_, clone.n_transitions_))
        w = self.weight_profile_(dt, Y - P)
        G, B, W = _gram(Z[start], Y, w, self.centers_, self.bandwidth_)
        clone.transition_weight_ = np.concatenate([self.transition_weight_, w])
        clone.transition_target_ = np.concatenate([self.transition_target_, Y])
        clone.gram_ = self.gram_ + G
        clone.target_moment_ = self.target_moment_ + B
        clone.weight_sum_ = self.weight_sum_ + W
        clone.coef_ = clone._solve_normal()

        known = np.isfinite(clone.transition_cross_)
        clone.reversion_rate_ = _fit_reversion(
            clone.transition_cross_[known],
            clone.residual_sq_[clone.transitions_[known, 0]],
            clone.transition_dt_[known],
            self.time_scale_,
        )
        clone.residual_scale_ = float(np.sqrt(np.quantile(clone.residual_sq_, _RESIDUAL_QUANTILE)))
        clone.center_counts_ = self.center_counts_ + np.bincount(
            nearest(Zd, self.centers_)[0], minlength=len(self.centers_)
        )
        rng = check_random_state(self.random_state)
        sample = Z[rng.permutation(n + m)[:_SUPPORT_SAMPLE]]
        clone.support_threshold_ = _SUPPORT_FACTOR * float(
            np.quantile(clone._support_z(sample), _SUPPORT_QUANTILE)
        )
        # The last point of a series is its last new one, else its fitted tail.
        last = np.append(s_o[1:] != s_o[:-1], True)
        codes = np.concatenate([self.tail_series_, s_o[last]])
        index = np.concatenate([old_at[self.tail_index_], p_o[last]])
        times = np.concatenate([self.tail_time_, t_o[last]])
        codes, rev = np.unique(codes[::-1], return_index=True)
        pick = len(index) - 1 - rev
        clone.tail_series_, clone.tail_index_, clone.tail_time_ = codes, index[pick], times[pick]
        return clone


# ----------------------------------------------------------------------- helpers


def _kernel_apply(Z: np.ndarray, centers: np.ndarray, h: float, coef: np.ndarray) -> np.ndarray:
    """sum_m k(z, centers_m) coef_m for rows of Z (n, r); coef (M, q) -> (n, q)."""
    out = np.empty((len(Z), coef.shape[1]))
    c_sq = np.einsum("ij,ij->i", centers, centers)
    for s in range(0, len(Z), CHUNK):
        out[s : s + CHUNK] = gaussian_kernel(Z[s : s + CHUNK], centers, h, c_sq) @ coef
    return out


def _transitions(t: np.ndarray, series: np.ndarray):
    """Stable (series, t) order and the usable consecutive pairs.

    Returns order (N,), keep (N - 1,) bool over consecutive pairs of ``order``, dt (T,)
    of the kept pairs and the usable gap window (2,) seconds. Raises
    InsufficientDataError if too few remain.
    """
    order = np.lexsort((t, series))
    dt = np.diff(t[order])
    valid = (series[order][1:] == series[order][:-1]) & (dt > 0)
    if valid.sum() < MIN_TRANSITIONS:
        raise InsufficientDataError(MIN_TRANSITIONS, int(valid.sum()), "transitions")
    window = np.median(dt[valid]) * np.array([_MIN_GAP, _MAX_GAP])
    keep = valid & (dt >= window[0]) & (dt <= window[1])
    if keep.sum() < MIN_TRANSITIONS:
        raise InsufficientDataError(MIN_TRANSITIONS, int(keep.sum()), "transitions")
    return order, keep, dt[keep], window


def _series_tails(order: np.ndarray, t: np.ndarray, series: np.ndarray):
    """The last point of every series in the stable (series, t) ``order``: sorted codes
    (S,) int64, their input indices (S,) int64 and times (S,) float64."""
    codes = series[order]
    last = np.flatnonzero(np.append(codes[1:] != codes[:-1], True))
    return codes[last].astype(np.int64), order[last].astype(np.int64), t[order][last]


def _effective_size(Xn: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """Effective number of independent rows of Xn (n, d) given the transitions
    start -> end (T,): n (1 - rho) / (1 + rho), the AR(1) variance inflation (e.g.
    Bartlett 1946), with rho in [0, 0.99] the lag-one autocorrelation pooled over all
    coordinates. Finely sampled paths (rho ~ 0.9 on the planted systems) carry ~n / 20
    independent rows' worth of noise, and their noise eigenvalues spread that much
    wider than the Marchenko-Pastur law for n rows predicts.
    """
    mean = Xn.mean(axis=0, dtype=np.float64)
    cross = own = 0.0
    for s in range(0, len(start), CHUNK):
        a = Xn[start[s : s + CHUNK]].astype(np.float64) - mean
        b = Xn[end[s : s + CHUNK]].astype(np.float64) - mean
        cross += np.einsum("ij,ij->", a, b)
        own += 0.5 * (np.einsum("ij,ij->", a, a) + np.einsum("ij,ij->", b, b))
    rho = float(np.clip(cross / own, 0.0, 0.99)) if own > 0 else 0.0
    return len(Xn) * (1.0 - rho) / (1.0 + rho)


def _chart_normal(Xn: np.ndarray) -> np.ndarray | None:
    """Unit mean direction (d,) of unit rows Xn (n, d), or None if the mean is ~0.

    PCA runs on the rows' projections onto the plane orthogonal to it: on the sphere
    the data curve away from that plane (the height 1 - |z|^2 / 2 of a small cap), and
    that curvature is a deterministic function of the in-plane coordinates, not a
    direction of its own; the lift restores it exactly (module docstring).
    """
    mean = Xn.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    return mean / norm if norm > 1e-6 else None


def _lift_direction(mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Unit vector orthogonal to the first r components along which the sphere is
    lifted: the off-subspace part of the mean, or the next principal direction when
    the mean lies in the subspace (data spread evenly around the sphere)."""
    W = components[:-1]
    off = mean - (W @ mean) @ W
    norm = np.linalg.norm(off)
    return off / norm if norm > 1e-6 else components[-1]


def _fit_reversion(cross, own, dt, tau) -> float:
    """OU rate of the off-subspace residual e: least squares fit of
    e(t) . e(t + dt) = exp(-rate dt) |e(t)|^2 over the transitions, rate in
    [1e-4, 1] / tau (faster reversion is not resolvable from the sampling)."""
    if not own.any():
        return 1.0 / tau

    def loss(log_rate):
        return np.sum((cross - np.exp(-np.exp(log_rate) * dt) * own) ** 2)

    res = scipy.optimize.minimize_scalar(
        loss, bounds=(np.log(1e-4 / tau), np.log(1.0 / tau)), method="bounded"
    )
    return float(np.exp(res.x))


def _fill_distances(Z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Fill distance (M,) of every prefix of centers (M, r) over the rows of Z (n, r):
    entry m - 1 is the _FILL_QUANTILE quantile of the distance from a row to the
    nearest of the first m centres (k-means++ order makes every prefix a spread-out
    seeding of its own). Non-increasing."""
    nearest_so_far = np.minimum.accumulate(np.sqrt(sq_distances(Z, centers)), axis=1)
    return np.quantile(nearest_so_far, _FILL_QUANTILE, axis=0)


def _covering_size(fill: np.ndarray, radius: float) -> int:
    """Smallest m >= min(_MIN_CENTERS, M) whose prefix has fill distance (see
    :func:`_fill_distances`) at most ``radius``; M if none has. The error of a
    Gaussian-kernel fit is governed by the fill distance over the bandwidth
    (Wendland 2005, ch. 11)."""
    low = min(_MIN_CENTERS, len(fill))
    covered = np.flatnonzero(fill[low - 1 :] <= radius)
    return low + int(covered[0]) if covered.size else len(fill)


def _median_distance(Z: np.ndarray, rng: np.random.Generator) -> float:
    """Median heuristic (Gretton et al. 2012): median distance of 2000 random pairs."""
    i, j = rng.integers(len(Z), size=(2, 2000))
    dist = np.linalg.norm(Z[i] - Z[j], axis=1)
    return float(np.median(dist[dist > 0])) if np.any(dist > 0) else 1.0


def _normal_equations(Zs, Y, w, centers, h, fold_of, n_folds):
    """Per-fold sufficient statistics of the weighted kernel regression.

    Returns G (F, M, M) = Phi^T W Phi, B (F, M, r) = Phi^T W Y, S (F,) = sum w |y|^2
    and Wk (F,) = sum w, so any fold's validation loss follows without Phi.
    """
    M, r = len(centers), Y.shape[1]
    G, B = np.zeros((n_folds, M, M)), np.zeros((n_folds, M, r))
    S, Wk = np.zeros(n_folds), np.zeros(n_folds)
    c_sq = np.einsum("ij,ij->i", centers, centers)
    bounds = np.searchsorted(fold_of, np.arange(n_folds + 1))
    for k in range(n_folds):
        for s in range(bounds[k], bounds[k + 1], CHUNK):
            e = min(s + CHUNK, bounds[k + 1])
            sw = np.sqrt(w[s:e])[:, None]
            P = gaussian_kernel(Zs[s:e], centers, h, c_sq) * sw
            G[k] += scipy.linalg.blas.dsyrk(1.0, P.T, trans=0)
            B[k] += P.T @ (Y[s:e] * sw)
            S[k] += np.sum(w[s:e] * np.einsum("ij,ij->i", Y[s:e], Y[s:e]))
            Wk[k] += w[s:e].sum()
    # dsyrk fills the upper triangle only
    G = np.triu(G) + np.triu(G, 1).transpose(0, 2, 1)
    return G, B, S, Wk


def _ridge_factor(G, K, lam):
    """Cholesky factor (scipy.linalg.cho_factor) of G + lam (K + jitter I) (M, M)."""
    A = G + lam * (K + _JITTER * np.eye(len(K)))
    return scipy.linalg.cho_factor(A, check_finite=False)


def _ridge(G, B, K, lam):
    """Solve (G + lam (K + jitter I)) C = B: RKHS-norm ridge on the control points."""
    return scipy.linalg.cho_solve(_ridge_factor(G, K, lam), B)


@dataclass(frozen=True)
class _GapWeights:
    """Regression weights of transitions from their gaps and pilot residuals, as fitted
    by :func:`_transition_weights`: the variance profile g (``level`` (g,) at the
    ``log_gap`` (g,) nodes, log seconds), the outlier cut-off ``cut`` of the
    standardised residual and ``scale``, the mean raw weight of the fitted transitions
    (so their weights have mean 1)."""

    log_gap: np.ndarray
    level: np.ndarray
    cut: float
    scale: float

    def __call__(self, dt: np.ndarray, resid: np.ndarray) -> np.ndarray:
        """Weights (T,) of transitions with gaps dt (T,) seconds and residuals resid (T, r)."""
        energy = dt * np.einsum("ij,ij->i", resid, resid)
        profile = np.interp(np.log(dt), self.log_gap, self.level)
        z = np.sqrt(energy / profile)  # sqrt(w) |resid|
        w = dt / profile
        w *= np.where(z <= self.cut, 1.0, (self.cut / np.maximum(z, 1e-300)) ** 2)
        return w / self.scale


def _transition_weights(dt: np.ndarray, resid: np.ndarray) -> tuple[np.ndarray, _GapWeights]:
    """Regression weights (T,), mean 1, of transitions with gaps dt (T,) and pilot
    residuals resid (T, r): inverse variances, then Cauchy down-weighting of outliers;
    and the fitted rule, which weighs further transitions on the same scale.

    Under pure diffusion dt |resid|^2 has the same law for every gap (weights ~ dt);
    discretisation and model error make it grow with the gap. Its median over ten
    equal-count gap groups, made non-decreasing and interpolated in log dt, gives the
    variance profile g(dt) and the weight dt / g(dt). Regular sampling: equal weights.
    The standardised residual sqrt(weight) |resid| then gets min(1, (c / .)^2), c =
    median + 5 MAD (jumps and topic switches are not dynamics).
    """
    energy = dt * np.einsum("ij,ij->i", resid, resid)
    groups = np.array_split(np.argsort(dt, kind="stable"), min(10, len(dt)))
    mid = np.array([np.median(dt[g]) for g in groups])
    level = np.maximum.accumulate([np.median(energy[g]) for g in groups])
    level = np.maximum(level, 1e-12 * level.max() + 1e-300)
    # equal gaps in several groups (ties, regular clocks): keep the last, largest level
    mid, last = np.unique(mid[::-1], return_index=True)
    log_gap, level = np.log(mid), level[::-1][last]
    z = np.sqrt(energy / np.interp(np.log(dt), log_gap, level))
    med = np.median(z)
    cut = float(med + _OUTLIER_MADS * 1.4826 * np.median(np.abs(z - med)))
    raw = _GapWeights(log_gap, level, cut, 1.0)(dt, resid)
    rule = _GapWeights(log_gap, level, cut, float(raw.mean()))
    return raw / rule.scale, rule


def _jacobian(z, centers, coef, h):
    diff = z - centers
    k = np.exp(-0.5 * np.einsum("ij,ij->i", diff, diff) / h**2)
    return -(coef * k[:, None]).T @ diff / h**2


def _gram(Zs, Y, w, centers, h):
    """Unnormalised normal equations of the weighted kernel regression of velocities
    Y (n, r) at Zs (n, r): Phi^T W Phi (M, M), Phi^T W Y (M, r) and sum w. Sums over
    rows, so blocks of rows add up."""
    G, B, _, Wk = _normal_equations(Zs, Y, w, centers, h, np.zeros(len(Zs), dtype=np.int64), 1)
    return G[0], B[0], float(Wk[0])


def _solve(Zs, Y, w, centers, h, lam):
    """Coefficients (M, r) of the weighted kernel ridge fit of velocities Y (n, r) at Zs."""
    G, B, W = _gram(Zs, Y, w, centers, h)
    return _ridge(G / W, B / W, gaussian_kernel(centers, centers, h), lam)
