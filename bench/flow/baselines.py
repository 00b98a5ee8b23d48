"""Baselines for the flow benchmark (bench code, not the product).

``DriftDBBaseline`` is the original DriftDB method, written here from its public
description in DESIGN.md ("Flow math: the anchors to beat"); none of its (AGPL) code
was read or copied:

- velocities are raw difference quotients (x_(i+1) - x_i) / dt of consecutive points
  of a series, in the full dimension, all with equal weight;
- the field at x is their Nadaraya-Watson average with a Gaussian kernel whose
  bandwidth is the median distance from one random data point to the data;
- attractors: data points drawn as seeds are moved along that field (Euler steps of
  one median gap) and the endpoints are clustered with DBSCAN; each cluster's mean is
  an attractor (no stability classes);
- chapters: every point is relabelled by its nearest attractor and a chapter ends
  wherever the label changes.

``ruptures_chapters`` is PELT with the L2 cost on the raw series, with the BIC penalty
log(n) d sigma^2 of the ruptures documentation and sigma^2 estimated from the data.
"""

from __future__ import annotations

import numpy as np
import ruptures as rpt
from sklearn.cluster import DBSCAN

_CHUNK = 2048


class DriftDBBaseline:
    """The original DriftDB flow (see the module docstring).

    Parameters: ``n_seeds`` attractor seeds, ``n_steps`` Euler steps per seed,
    ``random_state`` seed for the bandwidth point and the seeds.
    Fitted: ``data_`` (N, d) float32 the points in (series, time) order, ``X_`` (T, d)
    float32 transition starts, ``V_`` (T, d) float32 their velocities per second,
    ``bandwidth_``, ``step_`` (median gap, seconds).
    """

    def __init__(self, *, n_seeds: int = 64, n_steps: int = 200, random_state: int = 0):
        self.n_seeds = n_seeds
        self.n_steps = n_steps
        self.random_state = random_state

    def fit(self, X, t, series) -> DriftDBBaseline:
        """X (N, d), t (N,) seconds, series (N,) int codes; any order."""
        X = np.asarray(X, dtype=np.float32)
        t = np.asarray(t, dtype=np.float64)
        series = np.asarray(series)
        order = np.lexsort((t, series))
        X, t, series = X[order], t[order], series[order]
        dt = np.diff(t)
        ok = (series[1:] == series[:-1]) & (dt > 0)
        self.X_ = X[:-1][ok]
        self.V_ = ((X[1:][ok] - X[:-1][ok]) / dt[ok, None]).astype(np.float32)
        self.step_ = float(np.median(dt[ok]))
        rng = np.random.default_rng(self.random_state)
        self.data_ = X
        point = X[rng.integers(len(X))]
        self.bandwidth_ = float(np.median(np.linalg.norm(X - point, axis=1)))
        return self

    def predict(self, Q) -> np.ndarray:
        """Nadaraya-Watson velocity (n, d) float64 per second at Q (n, d)."""
        Q = np.asarray(Q, dtype=np.float32)
        out = np.empty(Q.shape)
        x_sq = np.einsum("ij,ij->i", self.X_, self.X_)
        for s in range(0, len(Q), _CHUNK):
            q = Q[s : s + _CHUNK]
            d2 = np.einsum("ij,ij->i", q, q)[:, None] + x_sq[None, :] - 2.0 * (q @ self.X_.T)
            logits = -np.maximum(d2, 0.0) / (2.0 * self.bandwidth_**2)
            # shift by the row maximum: exp of -d^2/2h^2 underflows in 384-d
            w = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[s : s + _CHUNK] = (w @ self.V_) / w.sum(axis=1, keepdims=True)
        return out

    def attractors(self) -> np.ndarray:
        """Attractor centres (k, d) float64: DBSCAN clusters of the seeds' endpoints."""
        rng = np.random.default_rng(self.random_state + 1)
        seeds = self.data_[rng.choice(len(self.data_), self.n_seeds, replace=False)]
        x = seeds.astype(np.float64)
        for _ in range(self.n_steps):
            x = x + self.step_ * self.predict(x)
        labels = DBSCAN(eps=0.5 * self.bandwidth_, min_samples=2).fit_predict(x)
        return np.array([x[labels == k].mean(axis=0) for k in np.unique(labels[labels >= 0])])

    def chapters(self, X, centers: np.ndarray) -> list[int]:
        """Chapter starts (sorted, without 0) of the time-ordered X (n, d): where the
        nearest attractor changes."""
        if len(centers) == 0:
            return []
        X = np.asarray(X, dtype=np.float64)
        d2 = (
            np.einsum("ij,ij->i", X, X)[:, None]
            + np.einsum("ij,ij->i", centers, centers)[None, :]
            - 2.0 * X @ centers.T
        )
        label = d2.argmin(axis=1)
        return (np.flatnonzero(label[1:] != label[:-1]) + 1).tolist()


def ruptures_chapters(X, *, min_size: int = 5) -> list[int]:
    """Chapter starts (sorted, without 0) of the time-ordered X (n, d) by PELT with the
    L2 cost on the raw series, penalty log(n) d sigma^2 (BIC, as in the ruptures
    documentation), sigma^2 the mean per-coordinate noise variance (MAD of first
    differences / sqrt 2, squared). KernelCPD(linear) is ruptures' C implementation of
    exactly Pelt(model="l2", jump=1) (asserted in tests/flow/test_chapters.py).
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    diffs = np.diff(X, axis=0)
    mad = np.median(np.abs(diffs - np.median(diffs, axis=0)), axis=0)
    sigma2 = float(np.mean((1.4826 * mad / np.sqrt(2)) ** 2))
    pen = np.log(n) * d * max(sigma2, 1e-12)
    ends = rpt.KernelCPD(kernel="linear", min_size=min_size).fit(X).predict(pen=pen)
    return [int(e) for e in ends[:-1]]
