"""Process-pool entry points of the flow math.

The engine runs these in a forkserver ``ProcessPoolExecutor``; this module
imports only numpy, scipy and driftd.flow. A fitted FlowField is sent to a worker once
and kept there under a key (collection, version, fit id): later tasks on the same
model send only the key, and a worker that does not hold it raises
:class:`ModelMissing` so the engine resends the model with the task. A model's
bootstrap ensemble (:class:`driftd.flow.ensemble.FlowEnsemble`) is built right
after the fit, carried over by "update" (which refreshes a held model from
appended rows alone), and travels with the model when it is resent; a worker
builds it on first use only if it got the model without one.

All positions are indices into the time-ordered data the field was fitted on.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.spatial

from driftd.flow.attractors import Attractor, find_attractors
from driftd.flow.chapters import detect_chapters, nearest_to_means
from driftd.flow.ensemble import FlowEnsemble
from driftd.flow.field import FlowField
from driftd.flow.simulate import Trajectory, simulate
from driftd.flow.timeline import spread_ties

# Models kept per worker; a handful of collections are hot at a time.
_MAX_MODELS = 8
# Displacement per step, in kernel bandwidths, below which a path has stalled.
_STALL = 1e-4
_MODELS: OrderedDict[str, FlowField] = OrderedDict()
# The largest bootstrap ensemble built so far for each held model.
_ENSEMBLES: dict[str, FlowEnsemble] = {}
# Nearest-neighbour index of each model's reduced data, dropped with the model.
_TREES: weakref.WeakKeyDictionary[FlowField, scipy.spatial.cKDTree] = weakref.WeakKeyDictionary()


class ModelMissing(LookupError):
    """This worker does not hold the model ``key``: resend it with the task."""


def _model(key: str, field: FlowField | None, ensemble: FlowEnsemble | None = None) -> FlowField:
    if field is not None:
        # A key names one fitted model: a resend to a worker that holds it (after a
        # ModelMissing elsewhere) keeps the held copy, which its ensemble refers to.
        if _MODELS.setdefault(key, field) is field and ensemble is not None:
            _ENSEMBLES[key] = ensemble
    elif key not in _MODELS:
        raise ModelMissing(key)
    _MODELS.move_to_end(key)
    while len(_MODELS) > _MAX_MODELS:
        _ENSEMBLES.pop(_MODELS.popitem(last=False)[0], None)
    return _MODELS[key]


def _ensemble(key: str, field: FlowField, n: int) -> FlowEnsemble:
    """The model's first ``n`` bootstrap refits, built on first use (a larger request
    rebuilds: replicate b depends only on b, the seed and the field's batches, so the
    first ones stay, up to the span truncation if they were carried over updates)."""
    built = _ENSEMBLES.get(key)
    if built is None or built.n_replicates_ < n:
        seed = field.random_state if field.random_state is not None else 0
        built = _ENSEMBLES[key] = FlowEnsemble(n, random_state=seed).fit(field)
    return built.subset(n)


def run(
    task: str,
    key: str,
    field: FlowField | None,
    ensemble: FlowEnsemble | None,
    *args,
    replicates: int = 0,
    **kwargs,
):
    """Runs ``task`` (a name in TASKS) on the model ``key``, given as ``field`` and its
    ``ensemble`` (of ``field``, or None) when resent, else both None; with
    ``replicates`` >= 2 the task also gets ``ensemble=``, the model's FlowEnsemble of
    that many refits (built here if missing: 8 refits ~0.2 s at 20k points, 2.4 s at 100k;
    bench/flow/scale.py).

    Raises:
        ModelMissing: ``field`` is None and this worker does not hold ``key``.
    """
    model = _model(key, field, ensemble)
    if replicates:
        kwargs["ensemble"] = _ensemble(key, model, replicates)
    return TASKS[task](model, *args, **kwargs)


def fit(
    key: str,
    X: np.ndarray,
    t: np.ndarray,
    series: np.ndarray,
    *,
    normalize: bool,
    random_state: int,
    replicates: int,
) -> tuple[FlowField, FlowEnsemble]:
    """Fits a FlowField on time-ordered data and its FlowEnsemble of ``replicates``
    refits, keeps both in this worker under ``key`` and returns them (the engine
    resends the ensemble with the model, so no other worker builds it).

    Tied times within a series are spread over the clock's resolution first
    (:func:`driftd.flow.timeline.spread_ties`): their order is real.

    Raises:
        InsufficientDataError: too few points or transitions.
    """
    field = FlowField(normalize=normalize, random_state=random_state)
    field.fit(X, spread_ties(t, series), series)
    _model(key, field)
    return field, _ensemble(key, field, replicates)


def _update(
    field: FlowField,
    key: str,
    X: np.ndarray,
    t: np.ndarray,
    series: np.ndarray,
    positions: np.ndarray,
    replicates: int,
) -> tuple[FlowField, FlowEnsemble | None]:
    """The model refreshed with rows appended to its data (:meth:`FlowField.update`)
    and the first ``replicates`` of its held ensemble carried over
    (:meth:`FlowEnsemble.update`), both kept in this worker under ``key`` next to the
    old ones; the ensemble is None if this worker holds none (or fewer replicates)
    for the old model: it is then built on first use.

    X (m, d), t (m,) spread times (:func:`driftd.flow.timeline.spread_appended`),
    series (m,) codes, positions (m,) of the new rows in the new time order.

    Raises:
        RefitRequired: the rows cannot be absorbed; fit from scratch.
    """
    updated = field.update(X, t, series, positions=positions)
    # Ensembles refer to their held model: at most _MAX_MODELS to look through.
    held = next((e for e in _ENSEMBLES.values() if e.field_ is field), None)
    ensemble = None
    if held is not None and held.n_replicates_ >= replicates:
        ensemble = held.subset(replicates).update(updated)
    _model(key, updated, ensemble)
    return updated, ensemble


def _nearest(field: FlowField, Z: np.ndarray, k: int = 1) -> np.ndarray:
    """(n, k) positions of the k fitted data points nearest to reduced points Z (n, r)."""
    tree = _TREES.get(field)
    if tree is None:
        # Built once per held model (~0.05 s at 100k points, r = 4); a query then takes
        # microseconds instead of a pass over all N points (5 ms at 100k).
        tree = _TREES[field] = scipy.spatial.cKDTree(field.Z_)
    k = min(k, len(field.Z_))
    return tree.query(np.asarray(Z, dtype=np.float64), k=[*range(1, k + 1)])[1]


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


def _probe(field: FlowField, X: np.ndarray, *, ensemble: FlowEnsemble) -> ProbeOut:
    """The ensemble's probe (confidence = bootstrap agreement) at X (n, d)."""
    p = ensemble.probe(X)
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
    field: FlowField,
    x0: np.ndarray,
    n_steps: int,
    dt: float | None,
    stop_outside_support: bool,
    band_coverage: float,
    ensemble_state: np.ndarray | None,
    *,
    ensemble: FlowEnsemble,
) -> PathChunk:
    """Simulates n_steps from x0 (d,) with the ensemble's band at ``band_coverage``;
    resumable from the chunk's last position and ``trajectory.ensemble_state``
    (None: the replicates start at x0)."""
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
        ensemble=ensemble,
        band_coverage=band_coverage,
        ensemble_state=ensemble_state,
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
    field: FlowField, n_seeds: int, random_state: int, k: int, *, ensemble: FlowEnsemble
) -> AttractorsOut:
    """find_attractors with k representatives each; the ensemble's refits measure
    ``reproducibility``."""
    found = find_attractors(field, n_seeds=n_seeds, ensemble=ensemble, random_state=random_state)
    basin = np.full(len(field.Z_), -1, dtype=np.int64)
    for i, a in enumerate(found):
        basin[a.members] = i
    reps = [_nearest(field, a.center_reduced[None, :], max(k, 1))[0][:k] for a in found]
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
    bounds = [(c.start, c.end) for c in found]
    return ChaptersOut(bounds, nearest_to_means(X, bounds, k))


TASKS: dict[str, Callable[..., Any]] = {
    "update": _update,
    "probe": _probe,
    "starts": _jittered_starts,
    "simulate": _simulate,
    "attractors": _attractors,
}
