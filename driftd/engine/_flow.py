"""Flow: probes, simulations, attractors and chapters over each collection's
fitted flow model, one per collection version; after appends the model is
refreshed from the new points alone (:meth:`FlowMixin._refresh`). Part of
:class:`AsyncDriftDB`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime

import numpy as np

from driftd import metrics
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine._core import EngineCore, _Collection, _FlowModel, _utc
from driftd.engine.cache import Snapshot
from driftd.engine.pool import Rows
from driftd.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from driftd.flow import MIN_POINTS, InsufficientDataError
from driftd.flow import tasks as flow_tasks
from driftd.flow.chapters import nearest_to_means
from driftd.flow.ensemble import FlowEnsemble
from driftd.flow.field import FlowField, RefitRequired
from driftd.flow.timeline import spread_appended
from driftd.types import (
    AttractorInfo,
    AttractorSet,
    ChapterInfo,
    ChapterSet,
    FlowProbe,
    Representative,
    SimulationStep,
)

log = logging.getLogger(__name__)

# Steps computed per pool task while streaming a simulation: small enough that a
# cancelled stream stops within one chunk, big enough to amortise the round trip.
# A path's first chunk is one step (the first step streams after ~1/50 of a chunk's
# work), and each next one doubles, up to SIM_CHUNK_STEPS.
SIM_CHUNK_STEPS = 50
#: The last second a Timestamp can hold (9999-12-31T23:59:59Z), in epoch seconds: a
#: simulated path stops there with stop_reason "time_limit".
MAX_EPOCH_SECONDS = 253_402_300_799


class FlowMixin(EngineCore):
    """Flow methods of the engine."""

    async def _model(self, coll: _Collection) -> _FlowModel:
        """The fitted flow of the collection's current version (fitted once, shared).

        Raises FailedPrecondition(NOT_ENOUGH_POINTS).
        """
        cache = await self._loaded(coll)
        async with coll.fit_lock:
            if coll.model is not None and coll.model.snapshot.version == cache.version:
                return coll.model
            snap = cache.snapshot()
            if len(snap) < MIN_POINTS:
                raise _not_enough(MIN_POINTS, len(snap))
            key = f"{coll.meta.name}/{snap.version}/{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            fitted = None if coll.model is None else await self._refresh(coll, snap, key)
            kind = "full" if fitted is None else "incremental"
            if fitted is None:
                try:
                    fitted = await self.pool.submit(
                        flow_tasks.fit,
                        key,
                        Rows(cache.vectors, snap.rows),  # gathered off the event loop
                        snap.times,
                        snap.series,
                        normalize=coll.meta.distance == "cosine",
                        random_state=0,
                        replicates=self.settings.ensemble_size,
                    )
                except InsufficientDataError as exc:
                    raise _not_enough(exc.n_required, exc.n_available) from exc
            metrics.FLOW_FITS.labels(
                collection=metrics.collection_label(coll.meta.name), kind=kind
            ).inc()
            metrics.FLOW_FIT_SECONDS.labels(kind=kind).observe(time.perf_counter() - t0)
            if coll.model is None:
                metrics.CACHED_MODELS.inc()
            coll.model = _FlowModel(key, fitted[0], snap, fitted[1])
            # The result's unpickling buffers (tens of MB at 100k points) are freed
            # below glibc's raised mmap threshold: give their pages back.
            self._runner.call(memory.trim)
            return coll.model

    async def _refresh(
        self, coll: _Collection, snap: Snapshot, key: str
    ) -> tuple[FlowField, FlowEnsemble | None] | None:
        """The collection's model refreshed with the points appended since its version
        (:meth:`FlowField.update`, in the pool worker that holds it: only the new rows
        travel) and its ensemble carried over (:meth:`FlowEnsemble.update`; None if
        that worker has none), kept there under ``key``; None when a full fit is
        needed: rows were overwritten or deleted since, a new point lands before its
        series' last one or changes how tied times spread, or the field refuses
        (:class:`RefitRequired`). Call under the fit lock."""
        old, cache = coll.model, coll.cache
        if old is None or cache is None:
            return None
        if cache.rewrite_version > old.snapshot.version:
            return None
        # No row changed or went since the model's version: the new ones come after.
        positions = np.flatnonzero(snap.rows >= len(old.snapshot))
        series = snap.series[positions]
        t = spread_appended(old.snapshot.times, old.snapshot.series, snap.times[positions], series)
        if t is None:
            return None
        X = cache.vectors[snap.rows[positions]]
        try:
            return await self.pool.on_model(
                "update", old, key, X, t, series, positions, self.settings.ensemble_size
            )
        except RefitRequired as exc:
            log.info("full refit of %s: %s", coll.meta.name, exc)
            return None

    async def flow_vector(
        self, name: str, *, vector=None, text: str | None = None, point_id: str | None = None
    ) -> FlowProbe:
        """The flow's velocity at a vector, text or stored point.

        Raises NotFound, InvalidArgument, FailedPrecondition (NOT_ENOUGH_POINTS,
        NO_EMBED_MODEL).
        """
        coll = await self._collection(name)
        x = await self._start_vector(coll, vector=vector, text=text, point_id=point_id)
        model = await self._model(coll)
        out = await self.pool.on_model(
            "probe", model, x[None, :], replicates=self.settings.ensemble_size
        )
        speed = float(out.speed[0])
        return FlowProbe(
            velocity=out.velocity[0].astype(np.float32),
            speed=speed,
            speed_per_step=speed * float(model.field.time_scale_),
            confidence=float(out.confidence[0]),
            support=float(out.support[0]),
            in_support=bool(out.in_support[0]),
            nearest_point_id=str(model.snapshot.ids[out.nearest[0]]),
        )

    async def flow_simulate(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        point_id: str | None = None,
        steps: int = 100,
        dt_seconds: float | None = None,
        paths: int = 1,
        stop_outside_support: bool = False,
        seed: int = 0,
        band_coverage: float = 0.9,
    ) -> AsyncGenerator[SimulationStep, None]:
        """Follows the flow from a start: yields each step of path 0, then path 1, ...

        Each path carries the uncertainty band of the flow's bootstrap ensemble
        (``settings.ensemble_size`` refits, each following its own flow from the
        path's start): the refits' mean position and the radius holding
        ``band_coverage`` of them. Computed in the pool in chunks of 1, 2, 4, ... up to
        SIM_CHUNK_STEPS steps, so the first step comes at once and closing the
        generator stops the work within one chunk (a cancelled chunk stops at once:
        :mod:`driftd.flow.worker`).

        The work is bounded before any is done: each step is integrated in RK4
        sub-steps of at most the model's time scale, so a step takes at least
        ceil(dt / time_scale) of them; that must stay within
        ``settings.max_substeps_per_step`` and steps x paths x that within
        ``settings.max_simulation_substeps``. A path whose next step would pass
        9999-12-31T23:59:59Z (the last Timestamp) ends before it with stop_reason
        "time_limit".

        Raises NotFound, InvalidArgument (limits, LIMIT_EXCEEDED for the work
        bounds, start, dt_seconds <= 0, band_coverage outside (0, 1)),
        FailedPrecondition (NOT_ENOUGH_POINTS, NO_EMBED_MODEL).
        """
        v.check_range(steps, 1, self.settings.max_steps, "steps")
        v.check_range(paths, 1, self.settings.max_paths, "paths")
        if dt_seconds is not None and not (dt_seconds > 0 and np.isfinite(dt_seconds)):
            raise InvalidArgument(
                f"step duration must be positive, got {dt_seconds}",
                field_violations=[FieldViolation("step_duration", "must be positive")],
            )
        if not 0.0 < band_coverage < 1.0:
            raise InvalidArgument(
                f"band_coverage must be between 0 and 1 (exclusive), got {band_coverage}",
                field_violations=[FieldViolation("band_coverage", "must be in (0, 1)")],
            )
        coll = await self._collection(name)
        x0 = await self._start_vector(coll, vector=vector, text=text, point_id=point_id)
        model = await self._model(coll)
        cache = coll.loaded
        row = cache.row_of(point_id) if point_id else None
        t_start = cache.time_of_row(row) if row is not None else time.time()
        dt = float(dt_seconds) if dt_seconds else float(model.field.time_scale_)
        room = (MAX_EPOCH_SECONDS - t_start) // dt
        time_limited = room < steps
        steps = int(max(0, min(steps, room)))
        if steps:
            self._check_simulation_work(steps, paths, dt, float(model.field.time_scale_))
        starts = await self.pool.on_model("starts", model, x0, paths, seed)
        cosine = coll.meta.distance == "cosine"
        for path, x in enumerate(starts):
            done, state, size = 0, None, 1
            while True:
                n = min(size, steps - done)  # 0: only the start, before the time limit
                size = min(2 * size, SIM_CHUNK_STEPS)
                chunk = await self.pool.on_model(
                    "simulate",
                    model,
                    x,
                    n,
                    dt,
                    stop_outside_support,
                    band_coverage,
                    state,
                    replicates=self.settings.ensemble_size,
                )
                traj = chunk.trajectory
                last = len(traj.positions) - 1
                finished = traj.stop_reason != "steps" or done + last >= steps
                reason = traj.stop_reason
                if reason == "steps" and time_limited:
                    reason = "time_limit"
                # A chunk starts where the previous one ended: emit that position once.
                for i in range(0 if done == 0 else 1, last + 1):
                    nearest = int(chunk.nearest[i])
                    pos = traj.positions[i]
                    yield SimulationStep(
                        path=path,
                        step=done + i,
                        time=_utc(t_start + (done + i) * dt),
                        position=pos,
                        speed=float(traj.speeds[i]),
                        nearest_point_id=str(model.snapshot.ids[nearest]),
                        nearest_similarity=_similarity(
                            pos, cache.vectors[model.snapshot.rows[nearest]], cosine
                        ),
                        support=float(traj.support[i]),
                        in_support=bool(chunk.in_support[i]),
                        stop_reason=reason if finished and i == last else "",
                        ensemble_position=traj.ensemble_positions[i],
                        band_radius=float(traj.band_radius[i]),
                    )
                done += last
                if finished:
                    break
                x, state = traj.positions[-1], traj.ensemble_state

    def _check_simulation_work(self, steps: int, paths: int, dt: float, time_scale: float):
        """Raises InvalidArgument(LIMIT_EXCEEDED) when a simulation of ``steps`` x
        ``paths`` steps of ``dt`` seconds needs more RK4 sub-steps (each at most
        ``time_scale`` seconds) than the settings allow."""
        per_step = int(np.ceil(dt / time_scale * (1 - 1e-12)))
        limit = self.settings.max_substeps_per_step
        if per_step > limit:
            raise InvalidArgument(
                f"a step of {dt:g} s needs {per_step} integration sub-steps of at most "
                f"{time_scale:g} s (the flow's time scale); the limit is {limit}",
                reason="LIMIT_EXCEEDED",
                field_violations=[
                    FieldViolation("step_duration", f"must be at most {limit * time_scale:g} s")
                ],
                metadata={"limit": limit, "substeps_per_step": per_step},
            )
        total, limit = steps * paths * per_step, self.settings.max_simulation_substeps
        if total > limit:
            raise InvalidArgument(
                f"steps x paths x sub-steps per step = {steps} x {paths} x {per_step} = "
                f"{total} integration sub-steps; the limit is {limit}",
                reason="LIMIT_EXCEEDED",
                field_violations=[FieldViolation("steps", "too much work with these paths")],
                metadata={"limit": limit, "substeps": total},
            )

    async def _attractors(
        self,
        coll: _Collection,
        model: _FlowModel,
        seeds: int,
        seed: int,
        k: int,
        bootstrap: int | None = None,
    ) -> flow_tasks.AttractorsOut:
        """find_attractors in the pool; ``bootstrap`` refits (None: the server's
        ensemble) measure reproducibility. The default call is cached with the model."""
        default = seeds == 64 and seed == 0 and bootstrap in (None, self.settings.ensemble_size)
        if model.attractors is not None and default and k <= 3:
            return model.attractors
        out = await self.pool.on_model(
            "attractors",
            model,
            seeds,
            seed,
            max(k, 3),
            replicates=bootstrap or self.settings.ensemble_size,
        )
        if default:
            model.attractors = out  # the default call is what chapters link to
        return out

    async def flow_attractors(
        self,
        name: str,
        *,
        seeds: int = 64,
        representatives: int = 3,
        seed: int = 0,
        bootstrap: int | None = None,
    ) -> AttractorSet:
        """Fixed points of the flow, largest basin first; ``bootstrap`` refits
        (2 to ``settings.max_bootstrap``; None: the server's ensemble of
        ``settings.ensemble_size``) measure each one's reproducibility.

        Raises NotFound, InvalidArgument (limits; LIMIT_EXCEEDED when seeds x
        refits passes ``settings.max_attractor_work``), FailedPrecondition
        (NOT_ENOUGH_POINTS).
        """
        v.check_range(seeds, 1, self.settings.max_seeds, "seeds")
        v.check_range(representatives, 0, 100, "representatives")
        if bootstrap is not None:
            v.check_range(bootstrap, 2, self.settings.max_bootstrap, "bootstrap")
        # Each seed is relaxed once and each fixed point it finds is looked for in
        # every refit: the work grows like seeds x refits.
        work, limit = (
            seeds * (bootstrap or self.settings.ensemble_size),
            self.settings.max_attractor_work,
        )
        if work > limit:
            raise InvalidArgument(
                f"seeds x bootstrap = {work}; the limit is {limit}",
                reason="LIMIT_EXCEEDED",
                field_violations=[FieldViolation("seeds", "too much work with this bootstrap")],
                metadata={"limit": limit, "work": work},
            )
        coll = await self._collection(name)
        model = await self._model(coll)
        out = await self._attractors(coll, model, seeds, seed, representatives, bootstrap)
        cosine = coll.meta.distance == "cosine"
        infos = []
        for i, a in enumerate(out.attractors):
            reps = await self._representatives(
                coll, model.snapshot, out.representatives[i][:representatives], a.center, cosine
            )
            infos.append(
                AttractorInfo(
                    id=f"attractor-{i}",
                    stability=a.stability,
                    center=np.asarray(a.center, dtype=np.float32),
                    basin_fraction=float(a.basin_fraction),
                    eigenvalues=tuple(float(e) for e in np.real(a.eigenvalues)),
                    speed=float(a.speed),
                    reproducibility=float(a.reproducibility),
                    representatives=reps,
                )
            )
        return AttractorSet(
            tuple(infos), model.snapshot.version, bootstrap or self.settings.ensemble_size
        )

    async def _representatives(
        self, coll: _Collection, snap: Snapshot, positions, center: np.ndarray, cosine: bool
    ) -> tuple[Representative, ...]:
        ids = [str(snap.ids[p]) for p in positions]
        if not ids:
            return ()
        records = await self._runner.call(
            lambda: self._store.fetch(coll.meta, ids, include_vectors=False)
        )
        out = []
        for p, pid in zip(positions, ids, strict=True):
            vec = coll.loaded.vectors[snap.rows[p]]
            r = records.get(pid)
            out.append(
                Representative(
                    pid,
                    _utc(snap.times[p]),
                    (r.text or "") if r else "",
                    _similarity(center, vec, cosine),
                )
            )
        return tuple(out)

    async def flow_chapters(
        self,
        name: str,
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        penalty: float | None = None,
        representatives: int = 3,
    ) -> ChapterSet:
        """Chapters (regimes) of the timeline by change-point detection (ruptures PELT).

        The search runs in ruptures' compiled solver, which cannot stop half-way
        (measured: 1.7 s at 5k points, 5.7 s at 20k, 17.7 s at 50k, d = 384): its
        work is bounded up front by ``settings.max_chapter_points`` selected points.

        Raises NotFound, InvalidArgument (limits; LIMIT_EXCEEDED for a selection
        over ``settings.max_chapter_points``), FailedPrecondition (NOT_ENOUGH_POINTS).
        """
        v.check_range(min_size, 2, 10_000, "min_size")
        v.check_range(representatives, 0, 100, "representatives")
        if penalty is not None and not (penalty > 0 and np.isfinite(penalty)):
            raise InvalidArgument(
                f"penalty must be positive, got {penalty}",
                field_violations=[FieldViolation("penalty", "must be positive")],
            )
        coll = await self._collection(name)
        model = await self._model(coll)
        snap = model.snapshot
        positions = snap.select(start, end, series)
        if len(positions) < 2 * min_size:
            raise _not_enough(2 * min_size, len(positions), what="points in the selection")
        limit = self.settings.max_chapter_points
        if len(positions) > limit:
            raise InvalidArgument(
                f"{len(positions)} points selected; chapters are searched in at most {limit}: "
                "narrow time_range or series",
                reason="LIMIT_EXCEEDED",
                field_violations=[FieldViolation("time_range", f"at most {limit} points")],
                metadata={"limit": limit, "selected": len(positions)},
            )
        # np.take lets the GIL go while it copies (fancy indexing held it ~50 ms at 100k).
        X = await asyncio.to_thread(np.take, coll.loaded.vectors, snap.rows[positions], 0)
        cosine = coll.meta.distance == "cosine"
        out = await self.pool.submit(
            flow_tasks.chapters,
            X,
            normalize=cosine,
            min_size=min_size,
            penalty=penalty,
            k=representatives,
            random_state=0,
        )
        basins = (await self._attractors(coll, model, 64, 0, 3)).basin
        chapters = []
        for i, ((lo, hi), reps) in enumerate(zip(out.bounds, out.representatives, strict=True)):
            labels = basins[positions[lo:hi]]
            labels = labels[labels >= 0]
            chapters.append(
                await self._chapter(
                    coll,
                    snap,
                    i,
                    positions[lo:hi],
                    positions[reps],
                    X[lo:hi].mean(0),
                    f"attractor-{np.bincount(labels).argmax()}" if len(labels) else "",
                )
            )
        return ChapterSet(tuple(chapters), snap.version)

    async def split_chapters(
        self,
        name: str,
        starts,
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        representatives: int = 3,
    ) -> ChapterSet:
        """Chapters of a selection split at given chapter starts, with no change-point
        search and no flow fit: how DetectChapters(ONLINE) turns the monitor's online
        detector (:mod:`driftd.monitor.bocpd`) into chapters. ``attractor_id`` is empty.

        Args:
            starts: (m,) epoch seconds at which chapters after the first begin; a
                chapter begins at the first selected point at or after its time.
            series, start, end: the selection, as in :meth:`flow_chapters`.
            min_size: a chapter with fewer selected points merges into the one before
                it (the first one, cut short by ``start``, into the one after it).
            representatives: points nearest each chapter's mean, 0-100.

        Raises NotFound, InvalidArgument (limits), FailedPrecondition
        (NOT_ENOUGH_POINTS: fewer than 2 ``min_size`` selected points).
        """
        v.check_range(min_size, 2, 10_000, "min_size")
        v.check_range(representatives, 0, 100, "representatives")
        coll = await self._collection(name)
        cache = await self._loaded(coll)
        snap = cache.snapshot()
        positions = snap.select(start, end, series)
        n = len(positions)
        if n < 2 * min_size:
            raise _not_enough(2 * min_size, n, what="points in the selection")
        cuts = np.searchsorted(snap.times[positions], np.asarray(starts, dtype=np.float64))
        edges = [0]
        for c in np.unique(cuts):
            if c - edges[-1] >= min_size and c < n:
                edges.append(int(c))
        while len(edges) > 1 and n - edges[-1] < min_size:
            edges.pop()
        bounds = list(zip(edges, [*edges[1:], n], strict=True))
        cosine = coll.meta.distance == "cosine"

        def centres():
            # On a thread, with take (which lets the GIL go): a long series is a large copy.
            X = np.take(cache.vectors, snap.rows[positions], axis=0)
            if cosine:
                X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            means = [X[lo:hi].mean(0) for lo, hi in bounds]
            return nearest_to_means(X, bounds, representatives), means

        reps, means = await asyncio.to_thread(centres)
        chapters = [
            await self._chapter(coll, snap, i, positions[lo:hi], positions[r], mean, "")
            for i, ((lo, hi), r, mean) in enumerate(zip(bounds, reps, means, strict=True))
        ]
        return ChapterSet(tuple(chapters), snap.version)

    async def _chapter(
        self,
        coll: _Collection,
        snap: Snapshot,
        index: int,
        segment: np.ndarray,
        reps: np.ndarray,
        centre: np.ndarray,
        attractor_id: str,
    ) -> ChapterInfo:
        """The chapter of time-ordered positions ``segment`` of ``snap``, with the
        points at positions ``reps`` as its representatives (similarity to ``centre``)."""
        cosine = coll.meta.distance == "cosine"
        return ChapterInfo(
            index=index,
            start_time=_utc(snap.times[segment[0]]),
            end_time=_utc(snap.times[segment[-1]]),
            point_count=len(segment),
            start_point_id=str(snap.ids[segment[0]]),
            end_point_id=str(snap.ids[segment[-1]]),
            representatives=await self._representatives(coll, snap, reps, centre, cosine),
            attractor_id=attractor_id,
        )


def _not_enough(required: int, available: int, what: str = "points") -> FailedPrecondition:
    return FailedPrecondition(
        f"too few {what} to fit a flow: {available} available, at least {required} needed",
        reason="NOT_ENOUGH_POINTS",
        metadata={"required": required, "available": available},
    )


def _similarity(a: np.ndarray, b: np.ndarray, cosine: bool) -> float:
    """Cosine similarity for cosine collections, negative Euclidean distance otherwise."""
    if cosine:
        denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
        return float(np.dot(a, b)) / denom
    return -float(np.linalg.norm(a - b))
