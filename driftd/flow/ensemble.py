"""FlowEnsemble: a moving-block bootstrap ensemble of refits of a fitted FlowField.

Each replicate refits the field's kernel ridge regression with the transitions'
weights multiplied by the multiplicities of a moving-block bootstrap resample
(Kuensch, Annals of Statistics 1989; blocks of n^(1/3) consecutive transitions, so
the serial dependence of a timeline survives resampling). Subspace, centres,
hyperparameters, bias-correcting pilot and targets are the fit's own, so a replicate
with unit multiplicities is the fit: the spread of the ensemble is sampling
variability of the flow, not estimator bias.

Refitting B replicates naively costs B passes of T x M^2 (the Gram matrix of T
transitions on M centres: ~2.5 s each at 100k transitions). The fit keeps its
weighted Gram matrix G = Phi^T W Phi (``gram_``), whose spectrum falls off like a
Gaussian kernel's (1e-9 of its top eigenvalue by the 50th on the planted wells), so
each replicate's Gram matrix is G plus its perturbation inside the span Q of G's
leading eigenvectors: G_b = G + Q (Phi Q)^T W (c_b - 1) (Phi Q) Q^T; its moment
matrix Phi^T W c_b Y is exact. The perturbation outside Q is bounded by the
discarded eigenvalues (< 1e-14 of the top one): replicates match a direct refit
(``FlowField._refit``) to ~1e-5 of the velocity scale while resampling moves them by
~10 % (tests/flow/test_ensemble.py), for one eigendecomposition, one pass of kernel
rows (T M k, k ~ 150-260), T k^2 per replicate and one shared Cholesky factor: the
replicates' systems differ from the fit's by rank k, solved by the Woodbury identity
(:meth:`_solve`).

After :meth:`FlowField.update` appends transitions, :meth:`FlowEnsemble.update` keeps
each replicate's change of the normal equations and adds that of the appended
transitions alone (in the same span Q), then solves again: M^3 / 3 + 2 M^2 k + B k^3,
not a rebuild. Appended transitions are resampled too, batch by batch (the field's
``transition_batches_``): cut into runs of the fit's block length L, each run weighted
by an independent Poisson(1) count per replicate (non-overlapping blocks, Carlstein,
Annals of Statistics 1986, with the Poisson bootstrap's weights, Hanley & MacGibbon,
Computer Methods and Programs in Biomedicine 2006). An interior transition's count
in a moving-block resample is Binomial(T / L, L / T), about Poisson(1) too, and runs
keep the serial dependence, so appended data, even a single point, add their own
sampling variability; weight 1 would treat them as known exactly, and the spread
would shrink as updates pile up (up to 25 % of the data before a full refit).
:meth:`fit` on an updated field draws the same per-batch resamples, so a rebuilt
ensemble equals the carried one up to the span truncation.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from driftd.flow._linalg import CHUNK, gaussian_kernel
from driftd.flow._validation import check_int, check_matrix, check_positive
from driftd.flow.field import FlowField, Probe, _ridge_factor
from driftd.flow.simulate import advance

# Eigenvalues of the Gram matrix below this share of the largest are left unperturbed.
_SPAN_TOL = 1e-14
_BLAS_SYRK = scipy.linalg.blas.dsyrk


class FlowEnsemble(BaseEstimator):
    """Bootstrap ensemble of a fitted FlowField (see the module docstring for the method).

    Parameters
    ----------
    n_replicates : int
        Number of bootstrap refits B, >= 2.
    random_state : int
        Seed of the resamples. Replicate b draws from the streams (random_state, b, ...)
        (:func:`resample_counts`), so the first B replicates of a larger ensemble are
        those of a smaller one.

    Fitted attributes: ``field_`` the FlowField (shared, not copied), ``coef_``
    (B, M, r) float64 replicate coefficients in reduced units per second,
    ``n_replicates_``, ``members_`` (B + 1, M, r) the fit's coefficients then the
    replicates' (member 0 is the fit, member b + 1 replicate b). Kept for
    :meth:`update`: ``span_`` (M, k) the leading eigenvectors Q of the fitted Gram
    matrix, and each replicate's change of the field's normal equations,
    ``gram_delta_`` (B, k, k) in that span, ``moment_delta_`` (B, M, r) and
    ``weight_delta_`` (B,).
    """

    def __init__(self, n_replicates=8, *, random_state=0):
        self.n_replicates = n_replicates
        self.random_state = random_state

    def fit(self, field: FlowField) -> FlowEnsemble:
        """Refit ``field`` (a fitted FlowField) on ``n_replicates`` block-bootstrap resamples.

        Raises ValueError for bad parameters, NotFittedError for an unfitted field.
        Returns self.
        """
        n_rep = check_int(self.n_replicates, "n_replicates", minimum=2)
        seed = check_int(self.random_state, "random_state", minimum=0)
        if not isinstance(field, FlowField):
            raise ValueError(f"field must be a FlowField, got {type(field).__name__}")
        check_is_fitted(field, "coef_")
        batches = field.transition_batches_
        counts = np.stack([resample_counts(batches, seed, b) for b in range(n_rep)])
        vals, vecs = scipy.linalg.eigh(field.gram_)
        self.span_ = vecs[:, vals > _SPAN_TOL * vals[-1]]
        self.gram_delta_, self.moment_delta_, self.weight_delta_ = _deltas(
            field, self.span_, counts
        )
        self.n_replicates_ = n_rep
        return self._solve(field)

    def update(self, field: FlowField) -> FlowEnsemble:
        """The ensemble of ``field``, this ensemble's field after one or more
        :meth:`FlowField.update` calls: each replicate keeps its resample of the
        transitions it has and resamples the appended ones (module docstring).

        Matches ``fit(field)`` up to the span truncation (tests/flow/test_ensemble.py);
        costs the appended transitions' kernel rows and the solves (0.05 s for B = 8,
        M = 254, k = 191, 1k appended to 100k points, one thread). Returns a new FlowEnsemble
        sharing ``span_`` with this one.

        Raises ValueError if ``field`` is not such an update.
        """
        check_is_fitted(self, "coef_")
        seed = check_int(self.random_state, "random_state", minimum=0)
        old = self.field_
        done = len(old.transition_batches_)
        if not (
            isinstance(field, FlowField)
            and np.array_equal(field.transition_batches_[:done], old.transition_batches_)
            and np.array_equal(field.centers_, old.centers_)
        ):
            raise ValueError("field must be an update (FlowField.update) of the ensemble's field")
        out = copy.copy(self)
        if field.n_transitions_ > old.n_transitions_:
            counts = np.stack(
                [
                    resample_counts(field.transition_batches_, seed, b, first=done)
                    for b in range(self.n_replicates_)
                ]
            )
            gram, moment, weight = _deltas(field, self.span_, counts)
            out.gram_delta_ = self.gram_delta_ + gram
            out.moment_delta_ = self.moment_delta_ + moment
            out.weight_delta_ = self.weight_delta_ + weight
        return out._solve(field)

    def subset(self, n: int) -> FlowEnsemble:
        """The ensemble of the first ``n`` replicates (2 <= n <= n_replicates_), sharing
        arrays with this one: what a fit with n_replicates=n gives."""
        check_is_fitted(self, "coef_")
        n = check_int(n, "n", minimum=2)
        if n > self.n_replicates_:
            raise ValueError(f"n must be <= {self.n_replicates_}, got {n}")
        if n == self.n_replicates_:
            return self
        out = copy.copy(self)
        out.n_replicates, out.n_replicates_ = n, n
        out.members_ = self.members_[: n + 1]
        out.coef_ = out.members_[1:]
        out.gram_delta_ = self.gram_delta_[:n]
        out.moment_delta_ = self.moment_delta_[:n]
        out.weight_delta_ = self.weight_delta_[:n]
        return out

    def replicate(self, b: int) -> FlowField:
        """Replicate ``b`` as a FlowField (a shallow copy of the field with its coefficients)."""
        check_is_fitted(self, "coef_")
        b = check_int(b, "b", minimum=0)
        if b >= self.n_replicates_:
            raise ValueError(f"b must be < {self.n_replicates_}, got {b}")
        refit = copy.copy(self.field_)
        refit.coef_ = self.coef_[b]
        return refit

    def velocity_reduced(self, Z) -> np.ndarray:
        """Every replicate's velocity (B, n, r) float64, reduced units per second, at
        reduced points Z (n, r)."""
        check_is_fitted(self, "coef_")
        Z = self.field_._check_Z(Z)
        K = gaussian_kernel(Z, self.field_.centers_, self.field_.bandwidth_)
        return np.einsum("nm,bmr->bnr", K, self.coef_)

    def agreement(self, X) -> np.ndarray:
        """Directional agreement (n,) in [0, 1] of the replicates with the fit at X (n, d).

        The mean over replicates of the cosine between the replicate's and the fit's
        in-subspace velocity (the part estimated from transitions; the off-subspace
        mean reversion is common to all), clipped to [0, 1]; 0 where the fit's
        velocity is exactly 0. With B replicates, directions that are pure noise
        score about 1/sqrt(2) at most, so read values near 1 as determined.
        """
        Z = self.field_.transform(X)
        F0 = self.field_._velocity(Z)
        Fb = self.velocity_reduced(Z)
        dot = np.einsum("bnr,nr->bn", Fb, F0)
        norms = np.linalg.norm(Fb, axis=2) * np.linalg.norm(F0, axis=1)
        cos = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
        return np.clip(cos.mean(axis=0), 0.0, 1.0)

    def probe(self, X) -> Probe:
        """The field's :meth:`FlowField.probe` at X (n, d) with ``confidence`` = agreement
        x min(1, support / support_threshold_): the bootstrap cannot see extrapolation
        (every replicate extrapolates from the same centres), so out of support the
        confidence falls with the support, to ~0 far from the data."""
        check_is_fitted(self, "coef_")
        base = self.field_.probe(X)
        damping = np.minimum(1.0, base.support / self.field_.support_threshold_)
        return Probe(
            velocity=base.velocity,
            speed=base.speed,
            support=base.support,
            in_support=base.in_support,
            confidence=self.agreement(X) * damping,
        )

    def advance(self, Z, duration) -> np.ndarray:
        """Advance every member's path by ``duration`` seconds: row 0 of Z (B + 1, r)
        along the fit's flow, row b + 1 along replicate b's, in one batch (RK4,
        per-row sub-steps as :func:`driftd.flow.simulate.advance`, so each row moves
        as it would alone). Returns (B + 1, r) float64."""
        check_is_fitted(self, "coef_")
        Z = check_matrix(Z, "Z", n_features=self.field_.rank_)
        if len(Z) != len(self.members_):
            raise ValueError(f"Z must have {len(self.members_)} rows (the fit, then replicates)")
        duration = check_positive(duration, "duration")
        field = self.field_
        return advance(field, Z, duration, field.time_scale_, velocity=self._member_velocity)

    def band(self, Z, coverage: float) -> tuple[np.ndarray, float]:
        """Centre and radius of the replicates' positions Z (B, r).

        Returns the lifted mean of Z (d,) float64 (on the unit sphere if the field
        normalises) and the ``coverage`` quantile (0 < coverage < 1, linear
        interpolation between the B order statistics) of the replicates' full-space
        Euclidean distances from it, in embedding units.
        """
        check_is_fitted(self, "coef_")
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
        Z = check_matrix(Z, "Z", n_features=self.field_.rank_).astype(np.float64, copy=False)
        centre = self.field_._lift(Z.mean(axis=0, keepdims=True))
        dist = np.linalg.norm(self.field_._lift(Z) - centre, axis=1)
        return centre[0], float(np.quantile(dist, coverage))

    def _solve(self, field: FlowField) -> FlowEnsemble:
        """Sets the members from ``field``'s normal equations plus each replicate's
        change (Gram part Q D_b Q^T). Returns self.

        Replicate b solves (G + Q D_b Q^T) / t_b + lam K' with t_b = W + its weight
        change: the field's system A = G / W + lam K' plus Q E_b Q^T, where E_b =
        (1 / t_b - 1 / W) Q^T G Q + D_b / t_b (G's part outside the span Q is below
        the span tolerance). One Cholesky factor of A then serves every replicate
        through the Woodbury identity, (A + Q E Q^T)^-1 = A^-1 - A^-1 Q (I + E H)^-1
        E Q^T A^-1 with H = Q^T A^-1 Q (k, k): k^3 per replicate instead of M^3 / 3
        plus the M^2 k of forming Q D_b Q^T (8 replicates at 100k points: 0.68 s ->
        0.2 s)."""
        Q = self.span_
        K = gaussian_kernel(field.centers_, field.centers_, field.bandwidth_)
        W = field.weight_sum_
        factor = _ridge_factor(field.gram_ / W, K, field.alpha_)  # A = U^T U (or L L^T)

        def solve(B):
            return scipy.linalg.cho_solve(factor, B, check_finite=False)

        U, lower = factor
        V = scipy.linalg.solve_triangular(U, Q, trans="N" if lower else "T", lower=lower)
        H = V.T @ V  # Q^T A^-1 Q
        GQ = Q.T @ (field.gram_ @ Q)
        eye = np.eye(Q.shape[1])
        coef = np.empty((self.n_replicates_, *field.coef_.shape))
        for b in range(self.n_replicates_):
            t_b = W + self.weight_delta_[b]
            E = (1.0 / t_b - 1.0 / W) * GQ + self.gram_delta_[b] / t_b
            y = solve((field.target_moment_ + self.moment_delta_[b]) / t_b)
            coef[b] = y - solve(Q @ np.linalg.solve(eye + E @ H, E @ (Q.T @ y)))
        self.members_ = np.concatenate([field.coef_[None], coef])
        self.coef_ = self.members_[1:]
        self.field_ = field
        return self

    def _member_velocity(self, Z: np.ndarray, members: np.ndarray) -> np.ndarray:
        """Velocity (n, r) of row i of Z (n, r) under member members[i] (sorted, distinct)."""
        # All members: no (n, M, r) gather.
        C = self.members_ if len(members) == len(self.members_) else self.members_[members]
        K = gaussian_kernel(Z, self.field_.centers_, self.field_.bandwidth_)
        return np.matmul(K[:, None, :], C)[:, 0]


def resample_counts(batches, seed: int, b: int, first: int = 0) -> np.ndarray:
    """Replicate ``b``'s multiplicities (float64) of the transitions of batches
    ``first``, ``first`` + 1, ... of a field with ``transition_batches_`` = batches
    (cumulative counts): the full fit's batch 0 by a moving-block resample
    (:func:`block_bootstrap_counts`, stream (seed, b)), each appended batch by
    :func:`poisson_block_counts` with batch 0's block length (stream (seed, b, start
    of the batch))."""
    ends = [int(e) for e in batches]
    parts = [block_bootstrap_counts(ends[0], _replicate_rng(seed, b))] if first == 0 else []
    for lo, hi in zip(ends[max(first, 1) - 1 : -1], ends[max(first, 1) :], strict=True):
        rng = _replicate_rng(seed, b, lo)
        parts.append(poisson_block_counts(hi - lo, _block_length(ends[0]), rng))
    return np.concatenate(parts)


def block_bootstrap_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (n,) float64 of a moving-block bootstrap resample of n time-ordered
    transitions (Kuensch 1989): ceil(n / L) blocks of L = round(n^(1/3)) consecutive
    transitions with uniform starts, cut to n."""
    length = _block_length(n)
    first = rng.integers(0, n - length + 1, size=-(-n // length))
    idx = (first[:, None] + np.arange(length)).ravel()[:n]
    return np.bincount(idx, minlength=n).astype(np.float64)


def poisson_block_counts(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (n,) float64 of n time-ordered transitions cut into runs of
    ``length`` (the last one shorter), each run weighted by one Poisson(1) draw."""
    return np.repeat(rng.poisson(1.0, -(-n // length)), length)[:n].astype(np.float64)


def _block_length(n: int) -> int:
    return max(1, round(n ** (1 / 3)))


def _replicate_rng(seed: int, b: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(b, *stream)))


def _deltas(field: FlowField, Q: np.ndarray, counts: np.ndarray):
    """Change of each replicate's normal equations when the field's last n transitions
    are weighted ``transition_weight_ * counts[b]`` (counts (B, n)) instead of once:
    Gram part inside the span Q (M, k) as (B, k, k), moment (B, M, r), weight sum (B,)."""
    n_rep, n = counts.shape
    idx = np.arange(field.n_transitions_ - n, field.n_transitions_)
    Z = field.Z_.astype(np.float64)
    Zs = Z[field.transitions_[idx, 0]]
    Y = field.transition_target_[idx]
    dw_all = field.transition_weight_[idx] * (counts - 1.0)  # (B, n) weight change
    centers, h = field.centers_, field.bandwidth_
    (M, r), k = field.coef_.shape, Q.shape[1]
    gram = [np.zeros((k, k), order="F") for _ in range(n_rep)]  # upper triangles
    rhs = np.zeros((M, n_rep * r))
    c_sq = np.einsum("ij,ij->i", centers, centers)
    for s in range(0, n, CHUNK):
        P = gaussian_kernel(Zs[s : s + CHUNK], centers, h, c_sq)
        A = P @ Q
        dw = dw_all[:, s : s + CHUNK]
        rhs += P.T @ (dw.T[:, :, None] * Y[s : s + CHUNK, None, :]).reshape(len(P), -1)
        for b in range(n_rep):
            # A^T diag(dw) A over the rows it moves (a third have multiplicity 1), as
            # rank updates of the upper triangle (dsyrk: half a GEMM's flops).
            for sign in (1.0, -1.0):
                rows = np.flatnonzero(sign * dw[b] > 0)
                scaled = A[rows] * np.sqrt(sign * dw[b, rows])[:, None]
                gram[b] = _BLAS_SYRK(sign, scaled.T, beta=1.0, c=gram[b], trans=0, overwrite_c=1)
    full = np.stack([np.triu(g) + np.triu(g, 1).T for g in gram])
    return full, rhs.reshape(M, n_rep, r).transpose(1, 0, 2), dw_all.sum(axis=1)
