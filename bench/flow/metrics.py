"""Scores for the flow benchmark: velocity agreement, attractor recovery, chapters."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score


def mean_cosine(A: np.ndarray, B: np.ndarray) -> float:
    """Mean cosine similarity of matching rows of A and B (n, d)."""
    num = np.einsum("ij,ij->i", A, B)
    return float(np.mean(num / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))))


def speed_ratio(A: np.ndarray, B: np.ndarray) -> float:
    """Mean |row| of A over mean |row| of B (1 = calibrated speeds)."""
    return float(np.linalg.norm(A, axis=1).mean() / np.linalg.norm(B, axis=1).mean())


def centre_error(found: np.ndarray, true: np.ndarray, separation: float) -> float:
    """Largest distance from a true centre to its nearest found one, in units of the
    smallest true separation; inf if nothing was found."""
    if len(found) == 0:
        return float("inf")
    dist = np.linalg.norm(true[:, None, :] - found[None, :, :], axis=2)
    return float(dist.min(axis=1).max() / separation)


def boundary_f1(predicted, true, margin: float) -> float:
    """F1 of change points, one-to-one matches within ``margin`` (same units as the
    positions), greedy from the closest pair; 1.0 when both are empty."""
    predicted, true = sorted(predicted), sorted(true)
    if not predicted or not true:
        return float(len(predicted) == len(true) == 0)
    pairs = sorted(
        (abs(p - b), i, j)
        for i, p in enumerate(predicted)
        for j, b in enumerate(true)
        if abs(p - b) <= margin
    )
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    hits = len(used_p)
    if not hits:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(true)
    return 2 * precision * recall / (precision + recall)


def labels_from_starts(starts, n: int) -> np.ndarray:
    """Segment label (n,) int64 of every position, given the segment starts (no 0)."""
    return np.searchsorted(np.sort(np.asarray(starts, dtype=np.int64)), np.arange(n), "right")


def covering(predicted_starts, true_starts, n: int) -> float:
    """Covering of the true segmentation by the predicted one (Arbelaez et al. 2011,
    as used by van den Burg & Williams 2020): sum over true segments A of
    |A| / n * max over predicted segments A' of Jaccard(A, A'). 1 = identical."""
    true_b = [0, *sorted(true_starts), n]
    pred_b = [0, *sorted(predicted_starts), n]
    total = 0.0
    for a0, a1 in zip(true_b[:-1], true_b[1:], strict=True):
        best = 0.0
        for p0, p1 in zip(pred_b[:-1], pred_b[1:], strict=True):
            inter = min(a1, p1) - max(a0, p0)
            if inter > 0:
                best = max(best, inter / (max(a1, p1) - min(a0, p0)))
        total += (a1 - a0) * best
    return total / n


def adjusted_rand(predicted_starts, true_labels: np.ndarray) -> float:
    """Adjusted Rand index of the predicted segmentation against per-position labels."""
    predicted = labels_from_starts(predicted_starts, len(true_labels))
    return float(adjusted_rand_score(true_labels, predicted))
