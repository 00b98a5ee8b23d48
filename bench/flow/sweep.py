"""Robustness sweep of attractor finding (issue 16): K-well systems in the noise regime
of real sentence embeddings, drawn by generators of this module alone (independent of
:mod:`driftd.flow.planted`, whose systems the rest of the flow bench uses).

A system: K wells in an s-dim latent subspace of R^384, at least one latent unit
apart; each well's latent spread (std per dimension) is ``sep / 3.4``. The latent
state follows overdamped Langevin dynamics in a smoothed K-well potential
(Euler-Maruyama); hops between wells happen on their own (the barrier is ~1.4 kT) and
through rare jumps to a random well (chosen with the occupancy weights). Every
observation adds fresh isotropic Gaussian noise to *every* coordinate, with a
full-space norm of ``noise`` x the separation (the off-topic part of a sentence
embedding is new with every sentence), and rows are L2 normalised.

Regimes sampled (a Latin-hypercube style draw, :func:`draw_specs`): noise 0.1-1.5x
separation, latent rank 2-16, K 2-10 (K <= 2^rank), 1k-100k points (log-uniform,
most below 10k), 1-50 series, regular or exponential gaps, equal or unequal wells
(depths differ 2x: the rarest well is visited several times less than the most).

Success of one system (:func:`score`): every planted well has a reported stable point
within 0.1 x sep (one-to-one), no other stable point is reported (a spurious or
duplicated well), and no planted well is reported as a saddle or unstable point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from sklearn.mixture import GaussianMixture

from bench.flow.baselines import DriftDBBaseline
from driftd.flow import FlowField, find_attractors
from driftd.flow._linalg import fit_pca, project

DIM = 384
SPREAD = 0.5  # full-space length of one latent unit (before normalisation)
WIDTH = 1 / 3.4  # within-well std per latent dimension, in units of the separation
MEAN_GAP = 60.0  # seconds
RELAX = 1.0  # mean gaps for a well to relax (1/e)
JUMP_PROB = 0.01  # per observation: jump to a random well
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Spec:
    """One sweep system: ``k`` wells, latent ``rank``, off-subspace ``noise`` (full-space
    norm / separation), ``n_points``, ``n_series``, ``sampling`` ("regular" or
    "exponential"), ``unequal`` wells, and the generator ``seed``."""

    k: int
    rank: int
    noise: float
    n_points: int
    n_series: int
    sampling: str
    unequal: bool
    seed: int


@dataclass(frozen=True)
class System:
    """A drawn system: ``X`` (n, 384) float32 unit rows in time order, ``t`` (n,) float64
    seconds, ``series`` (n,) int64; ``centers`` (k, 384) the stable fixed points of the
    latent drift lifted to the sphere; ``separation`` their smallest pairwise distance
    (full space); ``occupancy`` (k,) share of observations nearest each well."""

    spec: Spec
    X: np.ndarray
    t: np.ndarray
    series: np.ndarray
    centers: np.ndarray
    separation: float
    occupancy: np.ndarray


def _place_wells(k: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """k latent centres (k, rank), pairwise >= 1 apart, the closest pair exactly 1:
    sequential draws from a Gaussian cloud, accepted when 1 away from the others (the
    cloud widens when crowded)."""
    scale = 0.6 * max(1.0, k ** (1.0 / rank))
    centres = [np.zeros(rank)]
    tries = 0
    while len(centres) < k:
        c = scale * rng.standard_normal(rank)
        if np.min(np.linalg.norm(np.array(centres) - c, axis=1)) >= 1.0:
            centres.append(c)
        tries += 1
        if tries % 200 == 0:
            scale *= 1.1
    C = np.array(centres)
    C -= C.mean(axis=0)
    dist = np.linalg.norm(C[:, None] - C[None], axis=2)[np.triu_indices(k, 1)]
    return C / dist.min()


def _drift(C: np.ndarray, rates: np.ndarray):
    """f(y) = sum_j pi_j(y) rate_j (c_j - y), pi = softmax(-|y - c_j|^2 / (2 WIDTH^2)):
    a well per centre; every point where wells meet repels (sep / width = 3.4)."""

    def f(Y):
        diff = C[None] - Y[:, None]
        logits = -0.5 * np.einsum("nks,nks->nk", diff, diff) / WIDTH**2
        pi = np.exp(logits - logits.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        return np.einsum("nk,k,nks->ns", pi, rates, diff)

    return f


def draw(spec: Spec) -> System:
    """Simulate the system of ``spec`` (deterministic under ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    k, s = spec.k, spec.rank
    C = _place_wells(k, s, rng)
    base_rate = 1.0 / (RELAX * MEAN_GAP)
    if spec.unequal:
        rates = base_rate * np.geomspace(1.0, 2.0, k)[rng.permutation(k)]
        weights = np.geomspace(1.0, 0.2, k)[rng.permutation(k)]
    else:
        rates, weights = np.full(k, base_rate), np.ones(k)
    weights = weights / weights.sum()
    f = _drift(C, rates)
    # One diffusion for all wells: the shallowest has std WIDTH per dimension, deeper
    # ones are narrower and held longer (escape ~ exp(-barrier / D)), so unequal
    # wells also differ in occupancy; jumps land with the weights.
    diffusion = base_rate * WIDTH**2

    n_series = spec.n_series
    length = -(-spec.n_points // n_series)
    if spec.sampling == "regular":
        gaps = np.full((length, n_series), MEAN_GAP)
    else:
        gaps = rng.exponential(MEAN_GAP, (length, n_series))
    times = T0 + rng.uniform(0, MEAN_GAP, n_series) + np.cumsum(gaps, axis=0) - gaps
    start = rng.choice(k, n_series, p=weights)
    Y = C[start] + WIDTH * rng.standard_normal((n_series, s))
    Ys = np.empty((length, n_series, s))
    h_max = MEAN_GAP / 8
    for j in range(length):
        Ys[j] = Y
        n_sub = int(np.ceil(gaps[j].max() / h_max))
        h = (gaps[j] / n_sub)[:, None]
        for _ in range(n_sub):
            Y = Y + f(Y) * h + np.sqrt(2 * diffusion * h) * rng.standard_normal(Y.shape)
        jump = rng.random(n_series) < JUMP_PROB
        if jump.any():
            to = rng.choice(k, int(jump.sum()), p=weights)
            Y[jump] = C[to] + WIDTH * rng.standard_normal((int(jump.sum()), s))
    counts = spec.n_points // n_series + (np.arange(n_series) < spec.n_points % n_series)
    keep = np.arange(length)[:, None] < counts[None, :]
    Ys, times = Ys[keep], times[keep]
    series = np.broadcast_to(np.arange(n_series), keep.shape)[keep]

    basis, _ = np.linalg.qr(rng.standard_normal((DIM, s + 1)))
    stable = np.array([scipy.optimize.root(lambda y: f(y[None])[0], c, tol=1e-12).x for c in C])
    sigma = spec.noise * SPREAD / np.sqrt(DIM)  # separation is SPREAD in full space
    U = basis[:, 0] + SPREAD * Ys @ basis[:, 1:].T + sigma * rng.standard_normal((len(Ys), DIM))
    X = U / np.linalg.norm(U, axis=1, keepdims=True)
    order = np.argsort(times, kind="stable")
    centres = basis[:, 0] + SPREAD * stable @ basis[:, 1:].T
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=2)[np.triu_indices(k, 1)]
    near = np.argmin(np.linalg.norm(Ys[:, None] - C[None], axis=2), axis=1)
    return System(
        spec,
        X[order].astype(np.float32),
        times[order],
        series[order].astype(np.int64),
        centres,
        float(dist.min()),
        np.bincount(near, minlength=k) / len(near),
    )


def issue_specs(seeds=range(4)) -> list[Spec]:
    """The issue's setup: K = 3 and K = 5 wells, 8-d latent, noise norm ~ separation,
    2,000 points in 4 irregular series of 500."""
    return [
        Spec(k, 8, 1.0, 2000, 4, "exponential", False, 1000 * k + seed)
        for k in (3, 5)
        for seed in seeds
    ]


def draw_specs(n: int, seed: int) -> list[Spec]:
    """n sweep systems, each regime axis stratified (a Latin hypercube over noise,
    rank, K, size and series, shuffled independently), sampling and wells alternating.
    Sizes are log-uniform over 1k-100k with the top decade thinned to one draw in ten
    (runtime: a 100k-point system costs as much as ~40 small ones)."""
    rng = np.random.default_rng(seed)

    def strata(lo, hi):
        return lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n

    noise = strata(0.1, 1.5)
    rank = np.floor(strata(2, 17)).astype(int)
    k = np.floor(strata(2, 11)).astype(int)
    k = np.minimum(k, 2**rank)
    log_n = strata(3.0, 4.0)
    large = rng.random(n) < 0.1
    log_n[large] = strata(4.0, 5.0)[large]
    series = np.floor(np.exp(strata(0.0, np.log(51)))).astype(int)
    return [
        Spec(
            int(k[i]),
            int(rank[i]),
            round(float(noise[i]), 3),
            int(round(10 ** log_n[i], -2)),
            int(min(series[i], max(1, int(10 ** log_n[i]) // 100))),
            "regular" if rng.random() < 0.5 else "exponential",
            bool(rng.random() < 0.5),
            int(rng.integers(2**31)),
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class Score:
    """Attractor recovery on one system: wells found within 0.1 sep (one-to-one), stable
    points reported beyond those (spurious or duplicates), planted wells reported as a
    saddle or unstable point, the worst matched centre error / sep, and ``ok``."""

    found: int
    spurious: int
    wells_as_saddles: int
    error: float
    ok: bool


def score(system: System, stable: np.ndarray, others: np.ndarray) -> Score:
    """Score reported stable centres (m, d) and non-stable fixed points (q, d) (full
    space) against the system's wells (Hungarian matching of stable to planted)."""
    k, sep = len(system.centers), system.separation
    stable = np.asarray(stable, dtype=np.float64).reshape(-1, DIM)
    others = np.asarray(others, dtype=np.float64).reshape(-1, DIM)
    found, error = 0, float("inf")
    if len(stable):
        dist = np.linalg.norm(system.centers[:, None] - stable[None], axis=2) / sep
        rows, cols = scipy.optimize.linear_sum_assignment(dist)
        matched = dist[rows, cols]
        found = int(np.sum(matched <= 0.1))
        error = float(matched.max()) if len(matched) == k else float("inf")
    spurious = len(stable) - found
    as_saddle = 0
    if len(others):
        dist = np.linalg.norm(system.centers[:, None] - others[None], axis=2) / sep
        as_saddle = int(np.sum(dist.min(axis=1) <= 0.1))
    return Score(found, spurious, as_saddle, error, found == k and spurious == 0 and not as_saddle)


# ------------------------------------------------------------------------- methods


def driftd_points(system: System) -> tuple[np.ndarray, np.ndarray]:
    """driftd with its defaults (FlowField, find_attractors with 64 seeds): stable
    centres (m, d) and the other fixed points (q, d)."""
    field = FlowField(random_state=0).fit(system.X, system.t, system.series)
    found = find_attractors(field, n_seeds=64, random_state=0)
    stable = [a.center for a in found if a.stability == "stable"]
    others = [a.center for a in found if a.stability != "stable"]
    return np.array(stable).reshape(-1, DIM), np.array(others).reshape(-1, DIM)


def driftdb_points(system: System) -> np.ndarray:
    """The original DriftDB method (bench/flow/baselines.py): DBSCAN'd endpoints."""
    base = DriftDBBaseline(n_seeds=64, random_state=0).fit(system.X, system.t, system.series)
    return base.attractors().reshape(-1, DIM)


def gmm_points(system: System, seed: int = 0) -> np.ndarray:
    """What a data scientist tries first: PCA to the rank above the Marchenko-Pastur
    noise floor (driftd.flow._linalg.fit_pca, no variance cap), a Gaussian mixture
    there with components (1-12) and covariance ("full", "tied") by BIC on <= 4000
    rows; the component means, lifted back and normalised, are the states."""
    X = system.X.astype(np.float64)
    pca = fit_pca(X, rank=None, min_rank=2, max_rank=32, n_extra=0, seed=seed, max_share=None)
    Z = project(X, pca.mean, pca.components[: pca.rank])
    rng = np.random.default_rng(seed)
    sample = Z[rng.permutation(len(Z))[:4000]]
    best, best_bic = None, np.inf
    for cov in ("full", "tied"):
        for k in range(1, 13):
            gm = GaussianMixture(k, covariance_type=cov, random_state=seed).fit(sample)
            bic = gm.bic(sample)
            if bic < best_bic:
                best, best_bic = gm, bic
    centres = pca.mean + best.means_ @ pca.components[: pca.rank]
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


METHODS = ("driftd", "DriftDB-orig", "GMM-BIC")
_DRIFTDB_MAX_POINTS = 3000  # its attractor search costs O(seeds x steps x N x d)


def run_system(spec: Spec) -> dict:
    """Scores of the three methods on one system (DriftDB-orig: None above 3,000 points)."""
    system = draw(spec)
    stable, others = driftd_points(system)
    out = {"driftd": score(system, stable, others)}
    empty = np.empty((0, DIM))
    out["GMM-BIC"] = score(system, gmm_points(system), empty)
    out["DriftDB-orig"] = (
        score(system, driftdb_points(system), empty)
        if spec.n_points <= _DRIFTDB_MAX_POINTS
        else None
    )
    return out


_BANDS = (
    ("noise < 0.5 sep", lambda s: s.noise < 0.5),
    ("noise 0.5-1 sep", lambda s: 0.5 <= s.noise < 1.0),
    ("noise >= 1 sep", lambda s: s.noise >= 1.0),
    ("rank 2-4", lambda s: s.rank <= 4),
    ("rank 5-8", lambda s: 5 <= s.rank <= 8),
    ("rank 9-16", lambda s: s.rank >= 9),
    ("K 2-3", lambda s: s.k <= 3),
    ("K 4-6", lambda s: 4 <= s.k <= 6),
    ("K 7-10", lambda s: s.k >= 7),
    ("N < 3k", lambda s: s.n_points < 3000),
    ("N 3k-10k", lambda s: 3000 <= s.n_points < 10000),
    ("N >= 10k", lambda s: s.n_points >= 10000),
    ("1-4 series", lambda s: s.n_series <= 4),
    ("5-50 series", lambda s: s.n_series >= 5),
    ("regular gaps", lambda s: s.sampling == "regular"),
    ("exponential gaps", lambda s: s.sampling == "exponential"),
    ("equal wells", lambda s: not s.unequal),
    ("unequal wells", lambda s: s.unequal),
    ("all", lambda s: True),
)


def _rate(results, specs, method, keep) -> str:
    scored = [r[method] for r, s in zip(results, specs, strict=True) if keep(s)]
    scored = [x for x in scored if x is not None]
    if not scored:
        return "-"
    return f"{100 * np.mean([x.ok for x in scored]):.0f}% ({len(scored)})"


def sweep_lines(n_systems: int, seed: int = 16) -> list[str]:
    """The sweep: success rate per regime band for each method, then the issue's setup
    (K = 3 and 5, 4 draws each) with each system's found / spurious / as-saddle counts.
    Success = all wells within 0.1 sep, no other stable point, no well as a saddle."""
    specs = draw_specs(n_systems, seed)
    t0 = time.perf_counter()
    results = [run_system(s) for s in specs]
    seconds = time.perf_counter() - t0
    header = ["regime", "systems", *METHODS]
    rows = [header]
    for name, keep in _BANDS:
        count = sum(keep(s) for s in specs)
        rows.append([name, str(count), *(_rate(results, specs, m, keep) for m in METHODS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"attractor sweep: {n_systems} systems (seed {seed}), {seconds:.0f} s"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        "success rate (systems scored): every well within 0.1 x sep, no other stable point, "
        f"no well reported as a saddle; DriftDB-orig only up to {_DRIFTDB_MAX_POINTS} points."
    )
    issue = issue_specs()
    lines.append("issue setup (K wells, 8-d latent, noise norm = sep, 2,000 points, 4 series):")
    for spec in issue:
        r = run_system(spec)
        cells = [
            f"{m} {r[m].found}/{spec.k} found, {r[m].spurious} spurious, "
            f"{r[m].wells_as_saddles} as saddle"
            for m in METHODS
        ]
        lines.append(f"  K={spec.k} seed {spec.seed}: " + "; ".join(cells))
    return lines
