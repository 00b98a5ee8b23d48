"""Online chapter detection: Bayesian online change-point detection (BOCPD).

Adams & MacKay, "Bayesian Online Changepoint Detection", arXiv:0710.3742 (2007),
computed in log space. After each point the detector holds a posterior over the
run length (points since the last change point); a constant hazard 1/lambda is
the prior probability that any point starts a new run.

Observation model. Vectors are (for cosine collections) normalised, then
projected to ``k`` dimensions by a fixed random Gaussian matrix (distances are
kept up to a small factor, Johnson-Lindenstrauss), and each projected coordinate
is modelled independently as Gaussian with unknown mean and variance under a
Normal-Gamma prior. Its posterior predictive is a Student-t, whose heavy tails
keep single outliers from looking like change points, mixed with a 1 % outlier
component scored by the broad prior predictive (so one outlier costs a long run
a constant factor instead of its whole mass); and a run's posterior is
updated with the point clipped to 3 predictive scales (a Huber-type update), so
an outlier does not inflate the variance of the run it lands in. The prior's mean and
scale come from the series' first ``warmup`` points.

Signal. The detector reports a change when the most probable run length says
the current run started at least ``confirm`` points after the current chapter's
start and has already lasted ``confirm`` points: a lone outlier briefly makes a
short run most probable, but the long run wins again at the next ordinary
point, so it is not reported.

Memory is bounded: run lengths whose posterior falls below e^-30 of the best, or
beyond the ``max_runs`` most probable, are dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaln

from driftd.flow.worker import checkpoint

#: Defaults: projected dimensions, expected run length, warm-up and confirmation points.
PROJECTION_DIM = 16
HAZARD_LAMBDA = 100.0
WARMUP = 10
CONFIRM = 5
MAX_RUNS = 200
#: Deviations beyond this many predictive scales are clipped in run updates.
CLIP = 3.0
#: Prior probability that a point is an outlier (scored by the broad prior predictive).
OUTLIER = 0.01
# Normal-Gamma prior: the prior mean counts as KAPPA0 observations, the variance
# as 2 * ALPHA0 (so the predictive of a fresh run is a t with 2 degrees of freedom).
_KAPPA0 = 1.0
_ALPHA0 = 1.0
_PRUNE = -30.0


@dataclass(frozen=True)
class Change:
    """A detected change: the new chapter began at the point keyed ``start_key``
    (``delay`` points before the point ``detected_key`` that confirmed it), and
    ``probability`` is the posterior of that run length at confirmation."""

    start_key: Any
    detected_key: Any
    delay: int
    probability: float


def projection(dim: int, k: int = PROJECTION_DIM, seed: int = 0) -> np.ndarray:
    """A fixed (dim, min(k, dim)) random Gaussian projection, entries N(0, 1/k)."""
    k = min(k, dim)
    return np.random.default_rng(seed).standard_normal((dim, k)) / np.sqrt(k)


class OnlineChangeDetector:
    """BOCPD over one time-ordered series of vectors; feed points with :meth:`update`.

    Args:
        proj: (d, k) projection from :func:`projection`.
        normalize: scale vectors to unit length before projecting (cosine).
        hazard_lambda: expected points between changes (> 1).
        warmup: points that set the prior before detection starts (>= 2).
        confirm: points of the new run needed to report it (>= 1).
        max_runs: run lengths kept.
    """

    def __init__(
        self,
        proj: np.ndarray,
        *,
        normalize: bool,
        hazard_lambda: float = HAZARD_LAMBDA,
        warmup: int = WARMUP,
        confirm: int = CONFIRM,
        max_runs: int = MAX_RUNS,
    ) -> None:
        if hazard_lambda <= 1 or warmup < 2 or confirm < 1 or max_runs < confirm + 1:
            raise ValueError("need hazard_lambda > 1, warmup >= 2, 1 <= confirm < max_runs")
        self._proj = proj
        self._normalize = normalize
        self._log_h = np.log(1.0 / hazard_lambda)
        self._log_1mh = np.log1p(-1.0 / hazard_lambda)
        self._warmup = warmup
        self._confirm = confirm
        self._max_runs = max_runs
        self._pending: list[tuple[np.ndarray, Any]] = []
        self._t = -1  # index of the last point fed
        self._chapter_start = 0
        # Keys of recent points, to name a change's first point.
        self._keys: deque[Any] = deque(maxlen=max_runs + confirm)
        self._prior: tuple[np.ndarray, np.ndarray] | None = None
        self._runs = np.zeros(0, dtype=np.int64)
        self._log_p = np.zeros(0)
        self._mu = self._beta = np.zeros((0, proj.shape[1]))
        self._kappa = self._alpha = np.zeros(0)

    def project(self, X: np.ndarray) -> np.ndarray:
        """(n, d) vectors -> (n, k) float64 rows of the observation space
        (normalised first for cosine), what :meth:`update_projected` takes."""
        Y = np.asarray(X, dtype=np.float64)
        if self._normalize:
            norms = np.linalg.norm(Y, axis=1, keepdims=True)
            Y = Y / np.where(norms > 0, norms, 1.0)
        return Y @ self._proj

    def update(self, x: np.ndarray, key: Any = None) -> Change | None:
        """Feeds one point (d,) labelled ``key``; returns the change it confirms, if any."""
        return self.update_projected(self.project(np.asarray(x)[None])[0], key)

    def update_projected(self, y: np.ndarray, key: Any = None) -> Change | None:
        """:meth:`update` for a row (k,) already through :meth:`project`."""
        if self._prior is None:
            self._pending.append((y, key))
            if len(self._pending) < self._warmup:
                return None
            Y = np.array([p[0] for p in self._pending])
            var = np.maximum(Y.var(axis=0, ddof=1), 1e-12 + 1e-6 * float(Y.var()))
            self._prior = (Y.mean(axis=0), var)
            pending, self._pending = self._pending, []
            change = None
            for yy, kk in pending:
                change = self._step(yy, kk) or change
            return change
        return self._step(y, key)

    def _step(self, y: np.ndarray, key: Any) -> Change | None:
        if self._prior is None:
            raise RuntimeError("a point was scored before the prior was estimated")
        self._t += 1
        self._keys.append(key)
        mu0, var0 = self._prior
        # y either starts a new run (probability H, scored by the prior
        # predictive) or extends run r (probability 1 - H, scored by run r's).
        broad = _student_t_logpdf(
            y, mu0[None], np.array([_KAPPA0]), np.array([_ALPHA0]), (_ALPHA0 * var0)[None]
        )[0]
        fresh = self._log_h + broad
        # Outlier mixture: with probability OUTLIER a point is scored by the
        # broad prior predictive instead of the run's, so one outlier costs a
        # long run a factor OUTLIER rather than wiping it out.
        fit = _student_t_logpdf(y, self._mu, self._kappa, self._alpha, self._beta)
        grow = self._log_p + np.logaddexp(np.log1p(-OUTLIER) + fit, np.log(OUTLIER) + broad)
        log_p = np.concatenate(([fresh], grow + self._log_1mh))
        top = log_p.max()
        log_p -= top + np.log(np.exp(log_p - top).sum())
        runs = np.concatenate(([1], self._runs + 1))
        # Posterior parameters after y: the fresh run starts from the prior. A
        # run's update sees y clipped to CLIP predictive scales from its mean, so
        # one outlier cannot inflate a long run's variance (which would make a
        # fresh run after the outlier look better: a false change).
        scale = np.sqrt(self._beta * ((self._kappa + 1.0) / (self._alpha * self._kappa))[:, None])
        seen = np.vstack([y[None], self._mu + np.clip(y - self._mu, -CLIP * scale, CLIP * scale)])
        mu = np.vstack([mu0[None], self._mu])
        kappa = np.concatenate(([_KAPPA0], self._kappa))
        alpha = np.concatenate(([_ALPHA0], self._alpha))
        beta = np.vstack([(_ALPHA0 * var0)[None], self._beta])
        beta = beta + (kappa / (2.0 * (kappa + 1.0)))[:, None] * (seen - mu) ** 2
        mu = (kappa[:, None] * mu + seen) / (kappa + 1.0)[:, None]
        keep = np.flatnonzero(log_p >= _PRUNE)  # log_p is normalised: its max is <= 0
        if len(keep) > self._max_runs:
            keep = np.sort(keep[np.argsort(-log_p[keep], kind="stable")[: self._max_runs]])
        self._runs, self._log_p = runs[keep], log_p[keep]
        self._mu, self._beta = mu[keep], beta[keep]
        self._kappa, self._alpha = kappa[keep] + 1.0, alpha[keep] + 0.5

        best = int(np.argmax(self._log_p))
        run = int(self._runs[best])
        begin = self._t - run + 1
        # A start within `confirm` points of the last reported one is the same
        # change with a refined boundary, not a new chapter; the warm-up points
        # set the prior and are taken as one regime.
        fresh = begin >= max(self._chapter_start + self._confirm, self._warmup)
        if run >= self._confirm and fresh and run <= len(self._keys):
            self._chapter_start = begin
            return Change(
                start_key=self._keys[-run],
                detected_key=key,
                delay=run - 1,
                probability=float(np.exp(self._log_p[best])),
            )
        return None


def replay(
    detector: OnlineChangeDetector, Y: np.ndarray, keys: list[Any]
) -> tuple[OnlineChangeDetector, list[Change]]:
    """Feeds projected rows Y (n, k) (from :meth:`OnlineChangeDetector.project`),
    labelled ``keys`` (n,), in order; returns the detector and the changes found.

    A process-pool task: catching a detector up on a stored series costs
    ~0.1 ms per point of small numpy operations, which would hold the GIL.
    """
    changes = []
    for y, key in zip(Y, keys, strict=True):
        checkpoint()
        if c := detector.update_projected(y, key):
            changes.append(c)
    return detector, changes


def _student_t_logpdf(
    y: np.ndarray, mu: np.ndarray, kappa: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Sum over dimensions of the Normal-Gamma posterior predictive log density:
    a Student-t with 2 alpha degrees of freedom, location mu and squared scale
    beta (kappa + 1) / (alpha kappa). y (k,); mu, beta (R, k); kappa, alpha (R,)
    (the same for every dimension of a run); returns (R,)."""
    k = len(y)
    nu = 2.0 * alpha
    scale2 = beta * ((kappa + 1.0) / (alpha * kappa))[:, None]
    z = (y - mu) ** 2 / (nu[:, None] * scale2)
    const = gammaln((nu + 1.0) / 2.0) - gammaln(nu / 2.0) - 0.5 * np.log(np.pi * nu)
    return (
        k * const - 0.5 * np.log(scale2).sum(axis=1) - ((nu + 1.0) / 2.0) * np.log1p(z).sum(axis=1)
    )
