"""Fixed points of a fitted FlowField: stable attractors, saddles, their basins.

Seeds spread over the data by k-means++ (Arthur & Vassilvitskii 2007) are integrated
along the reduced flow; endpoints are clustered (single linkage at half a bandwidth)
and polished into exact zeros of the field with scipy.optimize.root (MINPACK hybrd)
using the analytic Jacobian, whose eigenvalues classify each point (Strogatz,
Nonlinear Dynamics and Chaos, ch. 6). Saddles are not reached by forward
integration, so they are root-found from where the flow along the segment between
two stable points turns round. Fixed points outside the data's support are dropped.
Reproducibility counts how often a moving-block bootstrap refit (Kuensch 1989; the
replicates of a :class:`driftd.flow.ensemble.FlowEnsemble`) has a fixed point of the
same type within half a bandwidth (root-found from the point). A refit with unit
multiplicities is the fit itself (same subspace, centres, hyperparameters,
bias-correcting pilot and weights), so replicates differ by resampling alone: the
score measures sampling variability (a weak focus whose stability flips under
resampling scores below 1), not estimator bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.optimize
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import kmeans_plusplus
from sklearn.utils.validation import check_is_fitted

from driftd.flow._linalg import nearest
from driftd.flow._validation import check_int, check_random_state, sklearn_seed
from driftd.flow.field import _jacobian
from driftd.flow.simulate import advance

_ROUNDS = 100  # relaxation rounds of 10 time scales each
_SLOW = 1e-2  # x median data speed: close enough to a fixed point to polish
_ROOT_TOL = 1e-4  # x median data speed: residual speed of an accepted fixed point
_SAME = 0.1  # bandwidths: two fixed points closer than this are one
_BASIN_SAMPLE = 256
_ORDER = {"stable": 0, "saddle": 1, "unstable": 2}


#: How a fixed point behaves, from the Jacobian's eigenvalues.
Stability = Literal["stable", "saddle", "unstable"]


@dataclass(frozen=True)
class Attractor:
    """A fixed point of the flow.

    ``center`` (d,) float64 full space (unit norm if the field normalises);
    ``center_reduced`` (r,) float64; ``eigenvalues`` (r,) complex128 of the reduced
    Jacobian at the centre, 1/second, sorted by real part, largest first;
    ``stability`` "stable" | "saddle" | "unstable"; ``basin_fraction`` share of data
    points whose flow ends here (0 for saddles and unstable points); ``speed`` |v| at
    the centre per second (~0); ``members`` (k,) int64 indices into the data of the
    basin's points, nearest to the centre first; ``reproducibility`` share of
    bootstrap refits that find a fixed point of the same type within half a bandwidth
    (NaN when no ensemble was given: not measured).
    """

    center: np.ndarray
    center_reduced: np.ndarray
    eigenvalues: np.ndarray
    stability: Stability
    basin_fraction: float
    speed: float
    members: np.ndarray
    reproducibility: float


def find_attractors(field, X=None, *, n_seeds=64, ensemble=None, random_state=0) -> list[Attractor]:
    """Fixed points of a fitted FlowField with basins, sorted by basin_fraction (desc).

    X (n, d) data for seeds and basins, or None for the field's own fitted data
    (``members`` then index the fit input). ``n_seeds`` integration seeds.
    ``ensemble`` a FlowEnsemble fitted on ``field`` whose B replicates measure
    ``reproducibility`` (each costs about one root finding per fixed point); None
    leaves it NaN. Deterministic under ``random_state``. Raises ValueError for bad
    arguments or an ensemble of another field.
    """
    check_is_fitted(field, "coef_")
    n_seeds = check_int(n_seeds, "n_seeds", minimum=1)
    if ensemble is not None and ensemble.field_ is not field:
        raise ValueError("ensemble must be fitted on this field")
    rng = check_random_state(random_state)
    Zd = field.Z_.astype(np.float64) if X is None else field.transform(X)
    if len(Zd) == 0:
        raise ValueError("X must contain at least one point")
    seeds = kmeans_plusplus(Zd, min(n_seeds, len(Zd)), random_state=sklearn_seed(rng))[0]
    speed_scale = _speed_scale(field, Zd, rng)
    points = _fixed_points(field, seeds, speed_scale)
    stable = [i for i, (_, _, kind) in enumerate(points) if kind == "stable"]
    labels = _basins(field, Zd, seeds, [points[i][0] for i in stable], speed_scale, rng)

    reproducibility = np.full(len(points), np.nan)
    if ensemble is not None:
        hits = np.zeros(len(points))
        for b in range(ensemble.n_replicates_):
            refit = ensemble.replicate(b)
            for i, (z, _, kind) in enumerate(points):
                hits[i] += _persists(refit, z, kind, speed_scale)
        reproducibility = hits / ensemble.n_replicates_

    result = []
    for i, (z, eig, kind) in enumerate(points):
        members = np.empty(0, dtype=np.int64)
        if kind == "stable":
            members = np.flatnonzero(labels == stable.index(i))
            dist = np.linalg.norm(Zd[members] - z, axis=1)
            members = members[np.argsort(dist, kind="stable")]
        result.append(
            Attractor(
                center=field._lift(z[None])[0],
                center_reduced=z,
                eigenvalues=eig,
                stability=kind,
                basin_fraction=len(members) / len(Zd),
                speed=float(
                    np.linalg.norm(field._lift_velocity(z[None], field._velocity(z[None])))
                ),
                members=members,
                reproducibility=float(reproducibility[i]),
            )
        )
    result.sort(key=lambda a: (-a.basin_fraction, _ORDER[a.stability], a.speed))
    return result


def _speed_scale(field, Zd: np.ndarray, rng: np.random.Generator) -> float:
    """Median reduced speed over (a sample of) the data: the unit for 'slow'."""
    sample = Zd[rng.permutation(len(Zd))[:2000]]
    return float(np.median(np.linalg.norm(field._velocity(sample), axis=1))) or 1.0


def _relax(field, Z, speed_scale, targets=()):
    """Integrate rows of Z until slow, stuck, or within 0.25 bandwidth of a target."""
    Z = np.array(Z, dtype=np.float64)
    active = np.arange(len(Z))
    h, tau = field.bandwidth_, field.time_scale_
    targets = np.asarray(targets).reshape(-1, Z.shape[1])
    for _ in range(_ROUNDS):
        if not active.size:
            break
        new = advance(field, Z[active], 10 * tau, tau)
        moved = np.linalg.norm(new - Z[active], axis=1)
        Z[active] = new
        going = (np.linalg.norm(field._velocity(new), axis=1) > _SLOW * speed_scale) & (
            moved > 1e-3 * h
        )
        if len(targets):
            going &= nearest(new, targets)[1] > 0.25 * h
        active = active[going]
    return Z


def _polish(field, z0, speed_scale):
    """Root of the reduced field near z0, or None if not converged or out of support."""
    res = scipy.optimize.root(
        lambda z: field._velocity(z[None])[0],
        z0,
        jac=lambda z: _jacobian(z, field.centers_, field.coef_, field.bandwidth_),
        method="hybr",
    )
    z = res.x
    if not res.success or np.linalg.norm(field._velocity(z[None])) > _ROOT_TOL * speed_scale:
        return None
    return z if field._support_z(z[None])[0] >= field.support_threshold_ else None


def _classify(field, z) -> tuple[np.ndarray, Stability]:
    eig = np.linalg.eigvals(_jacobian(z, field.centers_, field.coef_, field.bandwidth_))
    eig = eig[np.argsort(-eig.real, kind="stable")].astype(np.complex128)
    if eig.real.max() < 0:
        return eig, "stable"
    return eig, "unstable" if eig.real.min() > 0 else "saddle"


def _fixed_points(field, seeds, speed_scale):
    """[(z (r,), eigenvalues (r,), stability)] found from the seeds and between stable pairs."""
    ends = _relax(field, seeds, speed_scale)
    if len(ends) > 1:
        groups = fcluster(linkage(ends, "single"), 0.5 * field.bandwidth_, criterion="distance")
    else:
        groups = np.ones(1, dtype=int)
    speed = np.linalg.norm(field._velocity(ends), axis=1)
    starts = [ends[groups == g][speed[groups == g].argmin()] for g in np.unique(groups)]
    points: list[tuple] = []
    _add_roots(field, starts, speed_scale, points)
    stable = [z for z, _, kind in points if kind == "stable"]
    for i in range(len(stable)):
        for j in range(i + 1, len(stable)):
            _add_roots(field, _saddle_starts(field, stable[i], stable[j]), speed_scale, points)
    return points


def _add_roots(field, starts, speed_scale, points):
    for z0 in starts:
        z = _polish(field, z0, speed_scale)
        if z is not None and all(
            np.linalg.norm(z - q) > _SAME * field.bandwidth_ for q, _, _ in points
        ):
            points.append((z, *_classify(field, z)))


def _persists(refit, z, kind, speed_scale) -> bool:
    """Whether ``refit`` has a fixed point of stability ``kind`` within half a bandwidth
    of z: polished from z itself, so the answer is about the point, not the search."""
    q = _polish(refit, z, speed_scale)
    return (
        q is not None
        and np.linalg.norm(q - z) <= 0.5 * refit.bandwidth_
        and _classify(refit, q)[1] == kind
    )


def _saddle_starts(field, a, b):
    """Where the flow along the segment a -> b turns from towards a to towards b, and
    the midpoint: starting points for the saddle separating a and b."""
    s = np.linspace(0.0, 1.0, 33)[1:-1]
    P = a + s[:, None] * (b - a)
    g = field._velocity(P) @ (b - a)
    turns = np.flatnonzero((g[:-1] < 0) & (g[1:] >= 0))
    frac = s[turns] + (s[1] - s[0]) * g[turns] / (g[turns] - g[turns + 1])
    return [a + f * (b - a) for f in frac] + [(a + b) / 2]


def _basins(field, Zd, seeds, stable, speed_scale, rng):
    """Basin label (n,) int64 of every data point: index into ``stable`` or -1.

    A sample of data points is integrated until it reaches a stable point; every data
    point takes the label of its nearest integrated point in reduced space.
    """
    if not stable:
        return np.full(len(Zd), -1, dtype=np.int64)
    starts = np.vstack([seeds, Zd[rng.permutation(len(Zd))[:_BASIN_SAMPLE]]])
    ends = _relax(field, starts, speed_scale, targets=stable)
    which, dist = nearest(ends, np.asarray(stable))
    which[dist > field.bandwidth_] = -1
    return which[nearest(Zd, starts)[0]]
