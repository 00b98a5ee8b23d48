"""Chapters: offline change-point segmentation of a time-ordered trajectory.

The series is reduced by PCA, each reduced coordinate is standardised by a robust
noise scale (MAD of lag-2 min_size differences / sqrt 2, insensitive to the mean
shifts being looked for), and segmented by PELT (Killick, Fearnhead & Eckley, JASA 2012) with
the least-squares (L2) cost and a BIC penalty of (p + 1) log N per change for p
standardised dimensions. The solver is ruptures' (Truong, Oudre & Vayatis 2020)
KernelCPD with the linear kernel: the same L2 cost and exact PELT (jump=1) as
``Pelt(model="l2")``, but in C; the pure-Python Pelt takes ~30 s on 20k points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ruptures as rpt

from driftd.flow._linalg import fit_pca, project
from driftd.flow._validation import (
    check_int,
    check_matrix,
    check_positive,
    check_random_state,
    sklearn_seed,
)

_MAX_RANK = 32


@dataclass(frozen=True)
class Chapter:
    """A regime of the timeline: rows ``[start, end)`` of the time-ordered input."""

    start: int
    end: int


def detect_chapters(X, *, min_size=5, penalty=None, rank=None, random_state=0) -> list[Chapter]:
    """Split a time-ordered series X (N, d) into chapters covering [0, N) contiguously.

    ``min_size`` minimum chapter length (points); ``penalty`` per change point in
    units of the noise variance of the standardised reduced series (None: BIC,
    (p + 1) log N); ``rank`` PCA dimension (None: automatic, <= 32, as FlowField).
    Rows are used as given: normalise them first for cosine collections. Returns a
    single chapter when N < 2 min_size or the series is constant.
    """
    X = check_matrix(X)
    min_size = check_int(min_size, "min_size", minimum=1)
    penalty = check_positive(penalty, "penalty", allow_none=True)
    check_int(rank, "rank", minimum=1, allow_none=True)
    rng = check_random_state(random_state)
    n, d = X.shape
    if n == 0:
        raise ValueError("X must contain at least one point")
    if rank is not None and rank > d:
        raise ValueError(f"rank must be <= {d} for {d} features, got {rank}")
    if n < 2 * min_size:
        return [Chapter(0, n)]
    pca = fit_pca(
        X,
        rank=rank,
        min_rank=1,
        max_rank=max(1, min(_MAX_RANK, n // 10)),
        n_extra=0,
        seed=sklearn_seed(rng),
    )
    Z = project(X, pca.mean, pca.components)
    # Differences over 2 min_size steps: short-range autocorrelation (a state jittering
    # inside one regime) then counts as noise instead of being cut into chapters;
    # the MAD ignores the few differences that straddle a true change.
    lag = min(2 * min_size, n // 2)
    diffs = Z[lag:] - Z[:-lag]
    noise = 1.4826 * np.median(np.abs(diffs - np.median(diffs, axis=0)), axis=0) / np.sqrt(2)
    spread = Z.std(axis=0)
    keep = spread > 1e-12 * max(1.0, float(np.abs(Z).max()))
    if not keep.any():
        return [Chapter(0, n)]
    # Floor: piecewise-constant series (repeated vectors) have a zero MAD.
    Z = Z[:, keep] / np.maximum(noise[keep], 1e-3 * spread[keep])
    if penalty is None:
        penalty = (Z.shape[1] + 1) * np.log(n)
    ends = rpt.KernelCPD(kernel="linear", min_size=min_size).fit(Z).predict(pen=penalty)
    starts = [0, *ends[:-1]]
    return [Chapter(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def nearest_to_means(X, bounds, k: int) -> list[np.ndarray]:
    """For each chapter ``(start, end)`` of X (n, d), the row positions (int64, at most
    ``k``, nearest first, ties by position) of its rows nearest the chapter's mean in
    Euclidean distance: the chapter's representatives. Normalise X first for cosine."""
    reps = []
    for start, end in bounds:
        seg = X[start:end]
        d2 = ((seg - seg.mean(0)) ** 2).sum(1)
        reps.append(start + np.argsort(d2, kind="stable")[:k])
    return reps
