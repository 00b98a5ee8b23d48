"""Planted dynamical systems lifted into embedding space, with known ground truth.

Used by the flow tests, the benchmarks and the engine's integration tests. A latent
state y (a few dims) follows a Langevin SDE dy = f(y) dt + sqrt(2D) dW; it is placed
in a random subspace of R^dim around a random base direction b, an Ornstein-Uhlenbeck
process w adds mean-reverting noise in every other direction, and rows are L2
normalised like sentence embeddings:

    u = b + spread * U y + w,   x = u / |u|.

Observation gaps are exponential (irregular sampling; ``sampling="regular"`` gives the
same system observed at a fixed gap instead) and rare "kicks" move y to a random place
so every well is visited and transients between wells are observed. Everything is
deterministic under ``random_state``.

Systems: :func:`k_well_system` (gradient wells), :func:`toggle_switch` (bistable, with a
saddle), :func:`limit_cycle` (an orbit, no stable point), :func:`lorenz` (chaos: no stable
point, a negative control for attractor finding), :func:`regime_switches` (piecewise-
stationary regimes for chapters).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike

from driftd.flow._validation import check_int, check_matrix, check_random_state

T0 = 1_700_000_000.0  # epoch seconds of the first observation
MEAN_GAP = 60.0  # seconds between observations, on average
_SPREAD = 0.5  # in-subspace scale: well centres end up at cosine ~0.9 of each other
_OFF_NOISE = 0.003  # stationary std of w per coordinate
_OFF_RATE = 1.0 / (10 * MEAN_GAP)  # OU rate of w (1/s)
_KICK_PROB = 0.02  # per observation
_MIN_POINTS = 10
_RELAX_GAPS = 5  # wells relax (1/e) in this many mean gaps
_WELL_STD = 0.1  # stationary within-well std, latent units (wells are 1 apart)


@dataclass(frozen=True)
class WellDrift:
    """Gradient drift of a smoothed k-well potential (softmax-weighted pull to centres).

    f(y) = rate * sum_j pi_j(y) (c_j - y),  pi = softmax_j(-|y - c_j|^2 / (2 width^2)).
    ``centers`` (k, s) latent units, ``rate`` 1/s, ``width`` latent units.
    """

    centers: np.ndarray
    width: float
    rate: float

    def __call__(self, Y: np.ndarray) -> np.ndarray:
        """Drift (n, s) per second at latent states Y (n, s)."""
        diff = self.centers[None, :, :] - Y[:, None, :]
        logits = -0.5 * np.einsum("nks,nks->nk", diff, diff) / self.width**2
        pi = np.exp(logits - logits.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        return self.rate * np.einsum("nk,nks->ns", pi, diff)


@dataclass(frozen=True)
class ToggleDrift:
    """Gardner-Cantor-Collins genetic toggle switch (Nature 2000), rescaled.

    du/dt = a / (1 + v^n) - u, dv/dt = a / (1 + u^n) - v with a = 3, n = 3: two
    stable states and a saddle on the diagonal. Latent y = (u - s, v - s) / L puts the
    saddle at 0 and the stable states 1 apart; ``rate`` (1/s) sets the time unit.
    """

    saddle: float
    scale: float
    rate: float
    a: float = 3.0
    n: float = 3.0

    def __call__(self, Y: np.ndarray) -> np.ndarray:
        """Drift (n, 2) per second at latent states Y (n, 2)."""
        u, v = (self.saddle + self.scale * Y).T
        du = self.a / (1 + np.abs(v) ** self.n) - u
        dv = self.a / (1 + np.abs(u) ** self.n) - v
        return self.rate * np.stack([du, dv], axis=1) / self.scale


@dataclass(frozen=True)
class CycleDrift:
    """Stuart-Landau oscillator (the Hopf normal form; Strogatz, ch. 8.2).

    f(y) = rate (1 - |y|^2 / radius^2) y + omega (-y_2, y_1): a stable limit cycle of
    ``radius`` (latent units) travelled at ``omega`` rad/s around an unstable focus at 0.
    """

    radius: float
    rate: float
    omega: float

    def __call__(self, Y: np.ndarray) -> np.ndarray:
        """Drift (n, 2) per second at latent states Y (n, 2)."""
        radial = self.rate * (1.0 - np.einsum("ij,ij->i", Y, Y) / self.radius**2)
        return radial[:, None] * Y + self.omega * np.stack([-Y[:, 1], Y[:, 0]], axis=1)


@dataclass(frozen=True)
class LorenzDrift:
    """Lorenz (1963) system, sigma = 10, rho = 28, beta = 8/3, rescaled.

    Latent y = (L - (0, 0, rho - 1)) / scale for Lorenz state L; ``rate`` Lorenz time
    units per second. Its three fixed points (0 and the two wing centres) are saddles,
    so a correct attractor search reports no stable point.
    """

    scale: float
    rate: float
    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0

    def __call__(self, Y: np.ndarray) -> np.ndarray:
        """Drift (n, 3) per second at latent states Y (n, 3)."""
        x, y, z = (self.scale * Y + [0.0, 0.0, self.rho - 1.0]).T
        dL = np.stack([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z], axis=1)
        return self.rate * dL / self.scale

    def fixed_points(self) -> np.ndarray:
        """The three fixed points (3, 3) in latent coordinates: origin, then the wings."""
        c = np.sqrt(self.beta * (self.rho - 1.0))
        L = np.array([[0.0, 0.0, 0.0], [c, c, self.rho - 1.0], [-c, -c, self.rho - 1.0]])
        return (L - [0.0, 0.0, self.rho - 1.0]) / self.scale


@dataclass(frozen=True)
class PlantedSystem:
    """A planted system and a sample of it.

    ``X`` (n, dim) float32 unit rows in time order; ``t`` (n,) float64 epoch seconds;
    ``series`` (n,) int64 codes; ``centers`` (k, dim) float64 stable fixed points,
    ``saddles`` (m, dim) saddle points and ``unstable`` (u, dim) unstable (repelling)
    points, all on the unit sphere; ``latent_centers`` (k, s) the stable points in latent
    coordinates. ``basis`` (dim, s + 1) is [b, U]. k = 0 for the limit cycle and Lorenz.
    """

    X: np.ndarray
    t: np.ndarray
    series: np.ndarray
    centers: np.ndarray
    saddles: np.ndarray
    latent_centers: np.ndarray
    basis: np.ndarray
    drift: WellDrift | ToggleDrift | CycleDrift | LorenzDrift
    unstable: np.ndarray

    @property
    def separation(self) -> float:
        """Smallest Euclidean distance between two planted stable centres (full space);
        NaN with fewer than two."""
        if len(self.centers) < 2:
            return float("nan")
        diff = self.centers[:, None] - self.centers[None]
        dist = np.linalg.norm(diff, axis=2)
        return float(dist[np.triu_indices(len(self.centers), 1)].min())

    def lift(self, Y: np.ndarray) -> np.ndarray:
        """Unit vectors (n, dim) for latent states Y (n, s) with no off-subspace noise."""
        return _lift(self.basis, Y)

    def true_velocity(self, X) -> np.ndarray:
        """Exact drift dx/dt (n, dim) per second at points X (n, dim), any norm.

        Inverts the lift (u = x / (x . b)), evaluates du/dt = spread U f(y) - rate_w w
        and maps it through the normalisation: dx/dt = (I - x x^T) du/dt / |u|.
        """
        X = check_matrix(X, n_features=self.basis.shape[0]).astype(np.float64)
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        b, U = self.basis[:, 0], self.basis[:, 1:]
        c = X @ b  # = 1 / |u|
        u = X / c[:, None]
        y = (u @ U) / _SPREAD
        w = u - np.outer(u @ b, b) - (u @ U) @ U.T
        du = _SPREAD * self.drift(y) @ U.T - _OFF_RATE * w
        du -= np.einsum("ij,ij->i", du, X)[:, None] * X
        return du * c[:, None]


def _lift(basis: np.ndarray, Y: np.ndarray) -> np.ndarray:
    u = basis[:, 0] + _SPREAD * Y @ basis[:, 1:].T
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _basis(dim: int, s: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, s + 1)))
    return q


def _gaps(sampling: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Observation gaps (length, n_series) seconds: exponential or fixed, mean MEAN_GAP."""
    if sampling == "exponential":
        return rng.exponential(MEAN_GAP, size=shape)
    if sampling == "regular":
        return np.full(shape, MEAN_GAP)
    raise ValueError(f"sampling must be 'exponential' or 'regular', got {sampling!r}")


def _sample(drift, kick, basis, n_points, n_series, diffusion, rng, sampling="exponential"):
    """Simulate ``n_series`` independent paths; Euler-Maruyama in y, exact OU for w."""
    dim, s = basis.shape[0], basis.shape[1] - 1
    length = -(-n_points // n_series)
    Y = kick(n_series)
    W = _OFF_NOISE * rng.standard_normal((n_series, dim))
    gaps = _gaps(sampling, (length, n_series), rng)
    times = T0 + rng.uniform(0, MEAN_GAP, n_series) + np.cumsum(gaps, axis=0) - gaps
    h_max = MEAN_GAP / 10
    Ys, Ws = np.empty((length, n_series, s)), np.empty((length, n_series, dim), np.float32)
    for j in range(length):
        Ys[j], Ws[j] = Y, W
        n_sub = int(np.ceil(gaps[j].max() / h_max))
        h = (gaps[j] / n_sub)[:, None]
        for _ in range(n_sub):
            Y = Y + drift(Y) * h + np.sqrt(2 * diffusion * h) * rng.standard_normal(Y.shape)
        rho = np.exp(-_OFF_RATE * gaps[j])[:, None]
        W = rho * W + _OFF_NOISE * np.sqrt(1 - rho**2) * rng.standard_normal(W.shape)
        kicked = rng.random(n_series) < _KICK_PROB
        Y[kicked] = kick(int(kicked.sum()))
    keep = np.arange(length)[:, None] < (
        n_points // n_series + (np.arange(n_series) < n_points % n_series)
    )
    Ys, Ws, times = Ys[keep], Ws[keep], times[keep]
    series = np.broadcast_to(np.arange(n_series), keep.shape)[keep]
    W = Ws.astype(np.float64)
    W -= (W @ basis) @ basis.T  # noise lives off the signal subspace
    U = basis[:, 0] + _SPREAD * Ys @ basis[:, 1:].T + W
    X = U / np.linalg.norm(U, axis=1, keepdims=True)
    order = np.argsort(times, kind="stable")
    return X[order].astype(np.float32), times[order], series[order].astype(np.int64)


def _fixed_points(drift, starts: Iterable[ArrayLike]) -> np.ndarray:
    roots = [scipy.optimize.root(lambda y: drift(y[None])[0], y0, tol=1e-12).x for y0 in starts]
    return np.array(roots)


def k_well_system(
    n_points: int,
    k: int = 3,
    dim: int = 384,
    subspace_dim: int = 4,
    n_series: int = 10,
    random_state: int = 0,
    sampling: str = "exponential",
) -> PlantedSystem:
    """A k-well gradient system in a ``subspace_dim``-dim subspace of R^dim.

    Well centres form a regular simplex with edge 1 (latent units), randomly rotated;
    wells relax in 5 mean gaps (5 min), within-well std is 0.1, and the softmax width
    shrinks like 1 / sqrt(k) so no other stable point appears between them. Requires
    2 <= k <= subspace_dim + 1. ``centers`` are the exact stable fixed points (root
    found), ``saddles`` those between each pair of wells. ``sampling`` "exponential"
    (irregular gaps) or "regular" (every MEAN_GAP): the same system under one seed.
    """
    check_int(n_points, "n_points", minimum=_MIN_POINTS)
    check_int(k, "k", minimum=2)
    check_int(subspace_dim, "subspace_dim", minimum=k - 1)
    check_int(dim, "dim", minimum=subspace_dim + 2)
    check_int(n_series, "n_series", minimum=1)
    rng = check_random_state(random_state)
    simplex = np.eye(k) / np.sqrt(2) - 1 / (k * np.sqrt(2))  # edge 1, centred
    rot, _ = np.linalg.qr(rng.standard_normal((k, subspace_dim)).T)  # (s, min(s, k))
    if k > subspace_dim:  # k = s + 1: write the simplex in its own (k - 1)-dim span first
        simplex = simplex @ np.linalg.svd(simplex)[2][: k - 1].T
    # At the centroid of m wells the drift's Jacobian is rate (-1 + 1 / (2 m width^2))
    # along their span: width 0.35 sqrt(3 / k) keeps every such centroid (m <= k) a
    # repeller, 1.36x past neutral, so the k wells are the only stable points (a fixed
    # 0.35 makes the centroid of k >= 5 wells a sixth, shallow well).
    width = 0.35 * np.sqrt(3 / k)
    drift = WellDrift(simplex @ rot.T, width=width, rate=1 / (_RELAX_GAPS * MEAN_GAP))
    basis = _basis(dim, subspace_dim, rng)

    def kick(m):
        mix = rng.dirichlet(np.ones(k), size=m)
        return mix @ drift.centers + 0.25 * rng.standard_normal((m, subspace_dim))

    diffusion = _WELL_STD**2 * drift.rate
    X, t, series = _sample(drift, kick, basis, n_points, n_series, diffusion, rng, sampling)
    stable = _fixed_points(drift, drift.centers)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    saddles = _fixed_points(drift, [(stable[i] + stable[j]) / 2 for i, j in pairs])
    return PlantedSystem(
        X,
        t,
        series,
        _lift(basis, stable),
        _lift(basis, saddles),
        stable,
        basis,
        drift,
        np.empty((0, dim)),
    )


def toggle_switch(
    n_points: int,
    dim: int = 384,
    n_series: int = 10,
    random_state: int = 0,
    sampling: str = "exponential",
) -> PlantedSystem:
    """The genetic toggle switch (two stable states, one saddle) lifted into R^dim.

    Time unit: the toggle relaxes at rate 1 / (10 mean gaps). Latent noise std 0.05 of
    the stable-state separation; kicks land uniformly in the square spanned by the
    stable states, so transients cross the saddle region. ``sampling`` as for
    :func:`k_well_system`.
    """
    check_int(n_points, "n_points", minimum=_MIN_POINTS)
    check_int(dim, "dim", minimum=4)
    check_int(n_series, "n_series", minimum=1)
    rng = check_random_state(random_state)
    saddle = scipy.optimize.brentq(lambda s: s**4 + s - 3.0, 0.0, 3.0)  # s = 3 / (1 + s^3)
    unit = ToggleDrift(saddle, 1.0, 1.0)
    hi = _fixed_points(unit, [[3.0 - saddle, 0.1 - saddle]])[0]
    scale = float(np.linalg.norm(hi - hi[::-1]))
    drift = ToggleDrift(saddle, scale, 1 / (10 * MEAN_GAP))
    basis = _basis(dim, 2, rng)
    lo, hi_y = -saddle / scale, (3.2 - saddle) / scale

    def kick(m):
        return rng.uniform(lo, hi_y, size=(m, 2))

    X, t, series = _sample(
        drift, kick, basis, n_points, n_series, 0.0025 * drift.rate, rng, sampling
    )
    stable = np.stack([hi / scale, hi[::-1] / scale])
    saddles = np.zeros((1, 2))
    return PlantedSystem(
        X,
        t,
        series,
        _lift(basis, stable),
        _lift(basis, saddles),
        stable,
        basis,
        drift,
        np.empty((0, dim)),
    )


def limit_cycle(
    n_points: int,
    dim: int = 384,
    n_series: int = 10,
    random_state: int = 0,
    sampling: str = "exponential",
) -> PlantedSystem:
    """A stable limit cycle (Stuart-Landau) lifted into R^dim: no stable point at all.

    The orbit has radius 0.5 (latent units; diameter 1, like the well spacing) and a
    period of 20 mean gaps; it attracts at rate 2 / (5 mean gaps). The only fixed
    point, its centre, is an unstable focus (``unstable``). Latent noise std ~0.05
    across the orbit; kicks land uniformly in the disk of radius 0.6, so the inside
    (spiralling out) is observed too. ``sampling`` as for :func:`k_well_system`.
    """
    check_int(n_points, "n_points", minimum=_MIN_POINTS)
    check_int(dim, "dim", minimum=4)
    check_int(n_series, "n_series", minimum=1)
    rng = check_random_state(random_state)
    radius = 0.5
    drift = CycleDrift(radius, 1 / (_RELAX_GAPS * MEAN_GAP), 2 * np.pi / (20 * MEAN_GAP))
    basis = _basis(dim, 2, rng)

    def kick(m):
        angle = rng.uniform(0, 2 * np.pi, m)
        r = 1.2 * radius * np.sqrt(rng.uniform(0, 1, m))
        return r[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)

    # radial relaxation rate at the orbit is 2 rate: stationary radial std 0.05
    diffusion = 0.05**2 * 2 * drift.rate
    X, t, series = _sample(drift, kick, basis, n_points, n_series, diffusion, rng, sampling)
    empty = np.empty((0, dim))
    return PlantedSystem(
        X, t, series, empty, empty, np.empty((0, 2)), basis, drift, _lift(basis, np.zeros((1, 2)))
    )


def lorenz(
    n_points: int,
    dim: int = 384,
    n_series: int = 10,
    random_state: int = 0,
    sampling: str = "exponential",
) -> PlantedSystem:
    """The Lorenz attractor lifted into R^dim: chaos, a negative control for attractors.

    Lorenz coordinates are divided by 20 (the butterfly spans ~2 latent units) and one
    Lorenz time unit lasts 20 mean gaps (~13 observations per turn around a wing).
    All three fixed points are saddles (``saddles``); there is no stable point, so a
    method should report none, or report low reproducibility. Small latent noise (std
    0.014 per Lorenz time unit) and kicks to random states of the butterfly's bounding
    box keep transients in view. ``sampling`` as for :func:`k_well_system`.
    """
    check_int(n_points, "n_points", minimum=_MIN_POINTS)
    check_int(dim, "dim", minimum=5)
    check_int(n_series, "n_series", minimum=1)
    rng = check_random_state(random_state)
    drift = LorenzDrift(scale=20.0, rate=1 / (20 * MEAN_GAP))
    basis = _basis(dim, 3, rng)
    lo, hi = np.array([-0.8, -1.0, -1.0]), np.array([0.8, 1.0, 0.9])

    def kick(m):
        return rng.uniform(lo, hi, size=(m, 3))

    diffusion = 0.01**2 * drift.rate
    X, t, series = _sample(drift, kick, basis, n_points, n_series, diffusion, rng, sampling)
    empty = np.empty((0, dim))
    return PlantedSystem(
        X,
        t,
        series,
        empty,
        _lift(basis, drift.fixed_points()),
        np.empty((0, 3)),
        basis,
        drift,
        empty,
    )


def regime_switches(
    n_points: int,
    n_regimes: int,
    dim: int = 384,
    random_state: int = 0,
    excursion_rate: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A time-ordered series of ``n_regimes`` regimes with abrupt switches.

    Each regime is a cloud around its own latent mean in an 8-dim subspace (means
    N(0, 0.5^2), consecutive ones >= 1 apart; in-regime std 0.5 per latent dim) plus
    isotropic noise, L2 normalised. Regime lengths are random, each >= max(10, n / (4 regimes)).
    Excursions: each point starts one with probability ``excursion_rate``; it moves
    1-3 consecutive points 2 latent units (4 in-regime stds) away in a random direction
    and back. They are not regime changes: a chapter method should ride over them.
    Returns X (n, dim) float32, t (n,) float64 epoch seconds (exponential gaps) and
    the true boundaries (n_regimes - 1,) int64: indices where a new regime starts.
    """
    check_int(n_regimes, "n_regimes", minimum=1)
    check_int(n_points, "n_points", minimum=10 * n_regimes)
    check_int(dim, "dim", minimum=10)
    if not 0.0 <= excursion_rate < 1.0:
        raise ValueError(f"excursion_rate must be in [0, 1), got {excursion_rate}")
    min_len = max(10, n_points // (4 * n_regimes))
    rng = check_random_state(random_state)
    s = 8
    means = [0.5 * rng.standard_normal(s)]
    while len(means) < n_regimes:
        m = 0.5 * rng.standard_normal(s)
        if np.linalg.norm(m - means[-1]) >= 1.0:
            means.append(m)
    extra = rng.multinomial(n_points - min_len * n_regimes, rng.dirichlet(np.ones(n_regimes)))
    lengths = min_len + extra
    labels = np.repeat(np.arange(n_regimes), lengths)
    Y = np.asarray(means)[labels] + 0.5 * rng.standard_normal((n_points, s))
    if excursion_rate:
        # drawn only when asked, so excursion_rate=0 keeps the seed's earlier series
        for i in np.flatnonzero(rng.random(n_points) < excursion_rate):
            away = rng.standard_normal(s)
            Y[i : i + rng.integers(1, 4)] += 2.0 * away / np.linalg.norm(away)
    basis = _basis(dim, s, rng)
    U = basis[:, 0] + 0.1 * Y @ basis[:, 1:].T + 0.01 * rng.standard_normal((n_points, dim))
    X = (U / np.linalg.norm(U, axis=1, keepdims=True)).astype(np.float32)
    t = T0 + np.cumsum(rng.exponential(MEAN_GAP, n_points))
    return X, t, np.cumsum(lengths)[:-1].astype(np.int64)
