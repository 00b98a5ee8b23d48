"""Process-pool entry points of the flow math.

The engine runs these in a forkserver ``ProcessPoolExecutor``; this module
imports only numpy and driftd.flow. A fitted FlowField is sent to a worker once
and kept there under a key (collection, version, fit id): later tasks on the same
model send only the key, and a worker that does not hold it raises
:class:`ModelMissing` so the engine resends the model with the task.

All positions are indices into the time-ordered data the field was fitted on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from driftd.flow.attractors import Attractor, find_attractors
from driftd.flow.chapters import detect_chapters
from driftd.flow.field import FlowField
from driftd.flow.simulate import Trajectory, simulate
from driftd.flow.timeline import spread_ties

# Models kept per worker; a handful of collections are hot at a time.
_MAX_MODELS = 8
# Displacement per step, in kernel bandwidths, below which a path has stalled.
_STALL = 1e-4
_MODELS: OrderedDict[str, FlowField] = OrderedDict()


class ModelMissing(LookupError):
    """This worker does not hold the model ``key``: resend it with the task."""


def _model(key: str, field: FlowField | None) -> FlowField:
    if field is not None:
        _MODELS[key] = field
    elif key not in _MODELS:
        raise ModelMissing(key)
    _MODELS.move_to_end(key)
    while len(_MODELS) > _MAX_MODELS:
        _MODELS.popitem(last=False)
    return _MODELS[key]


def run(task: str, key: str, field: FlowField | None, *args, **kwargs):
    """Runs ``task`` (a name in TASKS) on the model ``key``.

    Raises:
        ModelMissing: ``field`` is None and this worker does not hold ``key``.
    """
    return TASKS[task](_model(key, field), *args, **kwargs)


def fit(
    key: str,
    X: np.ndarray,
    t: np.ndarray,
    series: np.ndarray,
    *,
    normalize: bool,
    random_state: int,
) -> FlowField:
    """Fits a FlowField on time-ordered data and keeps it in this worker under ``key``.

    Tied times within a series are spread over the clock's resolution first
    (:func:`driftd.flow.timeline.spread_ties`): their order is real.

    Raises:
        InsufficientDataError: too few points or transitions.
    """
    field = FlowField(normalize=normalize, random_state=random_state)
    field.fit(X, spread_ties(t, series), series)
    _model(key, field)
    return field


def _nearest(field: FlowField, Z: np.ndarray, k: int = 1) -> np.ndarray:
    """(n, k) positions of the k fitted data points nearest to reduced points Z (n, r)."""
    data = field.Z_
    d2 = (Z**2).sum(1)[:, None] - 2.0 * Z @ data.T + (data**2).sum(1)[None, :]
    k = min(k, len(data))
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(d2, part, axis=1).argsort(axis=1)
    return np.take_along_axis(part, order, axis=1)


@dataclass(frozen=True)
class ProbeOut:
    """velocity (n, d) per second, speed/support/confidence (n,), in_support (n,) bool,
    nearest (n,) positions."""

    velocity: np.ndarray
    speed: np.ndarray
    support: np.ndarray
    in_support: np.ndarray
    confidence: np.ndarray
    nearest: np.ndarray


def _probe(field: FlowField, X: np.ndarray) -> ProbeOut:
    p = field.probe(X)
    nearest = _nearest(field, field.transform(X))[:, 0]
    return ProbeOut(p.velocity, p.speed, p.support, p.in_support, p.confidence, nearest)


@dataclass(frozen=True)
class PathChunk:
    """One chunk of one simulated path: the trajectory, and for each of its (s,)
    positions the nearest data position and whether it is in the data's support."""

    trajectory: Trajectory
    nearest: np.ndarray
    in_support: np.ndarray


def _jittered_starts(field: FlowField, x0: np.ndarray, paths: int, seed: int) -> np.ndarray:
    """(paths, d) starts: x0 first, the others x0 displaced in the fitted subspace by
    10 % of the kernel bandwidth, so extra paths show the flow's local spread."""
    rng = np.random.default_rng(seed)
    z0 = field.transform(x0[None, :])[0]
    noise = rng.standard_normal((paths - 1, z0.size)) * (0.1 * field.bandwidth_ / np.sqrt(z0.size))
    # inverse_transform lands on the sphere already for normalized fields.
    starts = np.vstack([x0[None, :], field.inverse_transform(z0[None, :] + noise)])
    return starts.astype(np.float32)


def _simulate(
    field: FlowField, x0: np.ndarray, n_steps: int, dt: float | None, stop_outside_support: bool
) -> PathChunk:
    """Simulates n_steps from x0 (d,); resumable from the chunk's last position."""
    # A path whose step moves less than 1e-4 bandwidths has reached a fixed point.
    step = field.time_scale_ if dt is None else dt
    stop_speed = _STALL * field.bandwidth_ / step
    traj = simulate(
        field,
        x0,
        n_steps=n_steps,
        dt=dt,
        stop_speed=stop_speed,
        stop_outside_support=stop_outside_support,
    )
    nearest = _nearest(field, field.transform(traj.positions))[:, 0]
    return PathChunk(traj, nearest, field.in_support(traj.positions))


@dataclass(frozen=True)
class AttractorsOut:
    """Fixed points, their representatives (positions nearest each centre), and each
    data position's basin (index into attractors, -1 for none)."""

    attractors: list[Attractor]
    representatives: list[np.ndarray]
    basin: np.ndarray


def _attractors(
    field: FlowField, n_seeds: int, random_state: int, k: int, n_bootstrap: int = 0
) -> AttractorsOut:
    """find_attractors with k representatives each. ``n_bootstrap`` refits make
    ``reproducibility`` a measurement (1.0 without); each costs about one fit's
    final solve (~1 s at 20k points, ~4 s at 100k, d = 384, one thread)."""
    found = find_attractors(
        field, n_seeds=n_seeds, n_bootstrap=n_bootstrap, random_state=random_state
    )
    basin = np.full(len(field.Z_), -1, dtype=np.int64)
    for i, a in enumerate(found):
        basin[a.members] = i
    reps = [
        _nearest(field, a.center_reduced[None, :].astype(field.Z_.dtype), max(k, 1))[0][:k]
        for a in found
    ]
    return AttractorsOut(found, reps, basin)


@dataclass(frozen=True)
class ChaptersOut:
    """Chapters as [start, end) slices of the input rows, and each chapter's
    representative rows (nearest its mean)."""

    bounds: list[tuple[int, int]]
    representatives: list[np.ndarray]


def chapters(
    X: np.ndarray,
    *,
    normalize: bool,
    min_size: int,
    penalty: float | None,
    k: int,
    random_state: int,
) -> ChaptersOut:
    """Chapters of a time-ordered series X (n, d) by change-point detection.

    Runs on the full vectors (not a flow model's reduced data): on the SOTU
    paragraphs that aligned better with the administrations (ARI 0.63 vs 0.50).
    """
    if normalize:
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    found = detect_chapters(X, min_size=min_size, penalty=penalty, random_state=random_state)
    bounds, reps = [], []
    for c in found:
        seg = X[c.start : c.end]
        d2 = ((seg - seg.mean(0)) ** 2).sum(1)
        bounds.append((c.start, c.end))
        reps.append(c.start + np.argsort(d2, kind="stable")[:k])
    return ChaptersOut(bounds, reps)


TASKS = {
    "probe": _probe,
    "starts": _jittered_starts,
    "simulate": _simulate,
    "attractors": _attractors,
}
