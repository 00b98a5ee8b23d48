"""Health of a set of embeddings: outliers, near-duplicates, norms, rank, model mixing.

- Outliers: each point's mean distance to its k nearest neighbours, as a robust
  z-score (median and MAD over all points; the "modified z-score" of Iglewicz &
  Hoaglin 1993, whose cut 3.5 is used here).
- Near-duplicates: points with another point at cosine similarity >= a threshold.
- Norms: min/max/mean/std/median, zero vectors, and in cosine collections the
  vectors not stored at unit length.
- Rank: the effective rank (Roy & Vetterli, EUSIPCO 2007), exp of the entropy of
  the normalised covariance spectrum, and the participation ratio. Dimensional
  collapse shows as an effective rank far below the dimension.
- Model mixing: different embed models place texts in unrelated coordinate
  systems, so cosine similarities *between* their vectors behave like those of
  random unit vectors, whose standard deviation is 1/sqrt(d), while similarities
  within one model, even across unrelated topics, spread wider (measured here
  with all-MiniLM-L6-v2: 1.4-2.2 / sqrt(d) between State of the Union speeches
  and booking dialogues, 1.0 / sqrt(d) against a rotated copy). A spherical
  2-means split gives the two candidate groups.

Pure numpy/scipy/scikit-learn; the engine runs :func:`embedding_health` in its
process pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from driftd.monitor.drift import principal_components

#: Fewest points the report needs.
MIN_POINTS = 10
#: Neighbours averaged in the outlier score.
NEIGHBOURS = 10
#: Modified z-score above which a point is an outlier (Iglewicz & Hoaglin 1993).
OUTLIER_CUT = 3.5
#: |norm - 1| above which a vector of a cosine collection counts as unnormalised.
NORM_TOLERANCE = 1e-3
#: Effective rank / min(N - 1, d) below which the vectors have collapsed.
COLLAPSE_RATIO = 0.05
#: Model mixing: smallest group share considered, largest cross-group spread
#: (random directions give 1), smallest within-group spread (structure).
MIN_MINORITY = 0.05
MAX_CROSS_SPREAD = 1.2
MIN_WITHIN_SPREAD = 1.5
# Rows of the similarity matrix computed at once: a (1024, N) float64 block.
_CHUNK = 1024
# Points per group used for the spread statistics.
_SPREAD_SAMPLE = 1000


@dataclass(frozen=True)
class HealthResult:
    """The outcome of :func:`embedding_health`.

    ``outliers`` holds (row index, score) pairs, highest score first; the other
    fields are as in the proto's EmbeddingHealthResponse.
    """

    n: int
    outliers: tuple[tuple[int, float], ...]
    outlier_count: int
    near_duplicate_rate: float
    norm_min: float
    norm_max: float
    norm_mean: float
    norm_std: float
    norm_median: float
    non_normalized_count: int
    zero_count: int
    effective_rank: float
    participation_ratio: float
    top_component_variance: float
    rank_ratio: float
    collapsed: bool
    mixing_suspected: bool
    mixing_reason: str
    payload_models: tuple[str, ...]
    cross_group_spread: float
    within_group_spread: float
    minority_fraction: float
    warnings: tuple[str, ...]


@threadpool_limits.wrap(limits=1)
def embedding_health(
    X: np.ndarray,
    *,
    cosine: bool,
    duplicate_similarity: float = 0.98,
    max_outliers: int = 10,
    payload_models: tuple[str, ...] = (),
    seed: int = 0,
) -> HealthResult:
    """Health report of the vectors X (N, d).

    Args:
        X: finite vectors, at least :data:`MIN_POINTS` rows.
        cosine: the collection compares by cosine: outliers are measured between
            unit vectors, and non-unit norms are counted.
        duplicate_similarity: cosine similarity at or above which two points are
            near-duplicates, in (0, 1].
        max_outliers: outliers to return (the count covers all).
        payload_models: the distinct "embed_model" payload values of the points,
            if they carry that key; two or more means mixed models outright.
        seed: seeds the 2-means split.

    Raises:
        ValueError: fewer than MIN_POINTS rows, non-finite values, bad parameters.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < MIN_POINTS:
        raise ValueError(f"need a 2-D array of at least {MIN_POINTS} points, got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity")
    if not 0 < duplicate_similarity <= 1:
        raise ValueError(f"duplicate_similarity must be in (0, 1], got {duplicate_similarity}")
    n, d = X.shape
    norms = np.linalg.norm(X, axis=1)
    unit = X / np.where(norms > 0, norms, 1.0)[:, None]
    space = unit if cosine else X

    knn_dist, max_sim = _neighbours(space, unit, min(NEIGHBOURS, n - 1))
    score = _robust_z(knn_dist.mean(axis=1))
    order = np.argsort(-score, kind="stable")
    flagged = order[score[order] > OUTLIER_CUT]

    ev, _ = principal_components(space)
    total = float(ev.sum())
    if total > 0:
        p = ev[ev > 0] / total
        erank = float(np.exp(-(p * np.log(p)).sum()))
        pratio = float(total**2 / (ev**2).sum())
        top = float(ev[0] / total)
    else:
        erank, pratio, top = 1.0, 1.0, 1.0
    rank_ratio = erank / max(1, min(n - 1, d))
    collapsed = rank_ratio < COLLAPSE_RATIO

    cross, within, minority = _mixing_statistics(unit[norms > 0], seed)
    reasons = []
    if len(payload_models) > 1:
        reasons.append(f"points carry {len(payload_models)} embed_model payload values")
    if minority >= MIN_MINORITY and cross <= MAX_CROSS_SPREAD and within >= MIN_WITHIN_SPREAD:
        reasons.append(
            f"{minority:.0%} of the vectors look unrelated to the rest: similarities "
            f"between the groups spread like random directions ({cross:.2f} / sqrt(d); "
            f"within groups {within:.2f} / sqrt(d))"
        )
    non_normalized = int((np.abs(norms - 1.0) > NORM_TOLERANCE).sum()) if cosine else 0
    zero = int((norms == 0).sum())

    warnings = []
    if non_normalized:
        warnings.append(f"{non_normalized} vector(s) of this cosine collection are not unit length")
    if zero:
        warnings.append(f"{zero} zero vector(s): they have no direction")
    if collapsed:
        warnings.append(
            f"dimensional collapse: effective rank {erank:.1f} of at most {min(n - 1, d)}"
        )
    if reasons:
        warnings.append("embed models seem mixed: " + "; ".join(reasons))
    if len(flagged):
        warnings.append(f"{len(flagged)} outlier(s) (modified z-score > {OUTLIER_CUT})")
    return HealthResult(
        n=n,
        outliers=tuple((int(i), float(score[i])) for i in flagged[:max_outliers]),
        outlier_count=len(flagged),
        near_duplicate_rate=float((max_sim >= duplicate_similarity).mean()),
        norm_min=float(norms.min()),
        norm_max=float(norms.max()),
        norm_mean=float(norms.mean()),
        norm_std=float(norms.std()),
        norm_median=float(np.median(norms)),
        non_normalized_count=non_normalized,
        zero_count=zero,
        effective_rank=erank,
        participation_ratio=pratio,
        top_component_variance=top,
        rank_ratio=float(rank_ratio),
        collapsed=bool(collapsed),
        mixing_suspected=bool(reasons),
        mixing_reason="; ".join(reasons),
        payload_models=tuple(payload_models),
        cross_group_spread=cross,
        within_group_spread=within,
        minority_fraction=minority,
        warnings=tuple(warnings),
    )


def _neighbours(space: np.ndarray, unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) Euclidean distances in ``space`` to each point's k nearest others,
    and (N,) each point's largest cosine similarity to another point. Chunked
    so the N x N matrices never exist at once."""
    n = len(space)
    sq = np.einsum("ij,ij->i", space, space)
    dist = np.empty((n, k))
    max_sim = np.empty(n)
    for s in range(0, n, _CHUNK):
        rows = np.arange(s, min(s + _CHUNK, n))
        sim = unit[rows] @ unit.T
        sim[np.arange(len(rows)), rows] = -np.inf
        max_sim[rows] = sim.max(axis=1)
        d2 = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * (space[rows] @ space.T), 0.0)
        d2[np.arange(len(rows)), rows] = np.inf
        dist[rows] = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k])
    return dist, max_sim


def _robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-scores 0.6745 (x - median) / MAD; all 0 when the MAD is 0."""
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad <= 0:
        return np.zeros_like(x)
    return 0.6745 * (x - med) / mad


def _mixing_statistics(unit: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(cross-group spread, smaller within-group spread, minority share) of a
    spherical 2-means split of unit rows; spreads are similarity standard
    deviations times sqrt(d). (0, 0, 0) when there are too few points."""
    n, d = unit.shape
    if n < MIN_POINTS:
        return 0.0, 0.0, 0.0
    labels = KMeans(2, n_init=4, random_state=seed % 2**32).fit_predict(unit)
    rng = np.random.default_rng(seed)
    groups = []
    for g in (0, 1):
        rows = np.flatnonzero(labels == g)
        if len(rows) > _SPREAD_SAMPLE:
            rows = rng.choice(rows, _SPREAD_SAMPLE, replace=False)
        groups.append(unit[rows])
    minority = min(int((labels == 0).sum()), int((labels == 1).sum())) / n
    if min(len(g) for g in groups) < 2:
        return 0.0, 0.0, minority
    scale = np.sqrt(d)
    cross = float((groups[0] @ groups[1].T).std()) * scale
    within = min(float(_off_diagonal(g @ g.T).std()) * scale for g in groups)
    return cross, within, minority


def _off_diagonal(S: np.ndarray) -> np.ndarray:
    return S[~np.eye(len(S), dtype=bool)]
