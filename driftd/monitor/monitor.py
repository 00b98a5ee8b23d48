"""The engine side of monitoring: drift tests and health on collections, drift
rules, and the live work behind WatchCollection.

:class:`Monitor` reads windows from the engine's in-memory trajectory cache
(never from Chroma), runs the statistics of :mod:`driftd.monitor.drift` and
:mod:`driftd.monitor.health` in the engine's process pool, keeps drift rules through its
repository (:class:`driftd.monitor.ports.RuleRepository`), and listens to the
engine's event hub (``db.events``): for each durable upsert it feeds the new
points to a per-series online change-point detector (:mod:`driftd.monitor.bocpd`)
and checks the collection's drift rules, publishing chapter and drift-alarm
events back into the hub. That work runs in one background task per collection,
off the write path; the detectors run in a thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from driftd.engine.validate import check_range
from driftd.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driftd.monitor import bocpd, drift, health
from driftd.monitor.events import (
    POINTS_DELETED,
    POINTS_UPSERTED,
    ChapterDetected,
    DriftAlarm,
    Event,
    PointsUpserted,
    Watcher,
)
from driftd.monitor.ports import PointsEngine, RuleRepository
from driftd.types import ChapterSet

log = logging.getLogger(__name__)

RULE_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
#: Upsert batches queued per collection for the live detectors; beyond it a
#: batch is skipped (logged) and the collection's detectors restart.
LIVE_QUEUE = 256
#: CompareWindows defaults used by drift rules.
RULE_PERMUTATIONS = 500
RULE_MAX_POINTS = 2000
#: Payload key in which clients may record the embed model of a vector they send.
MODEL_KEY = "embed_model"


@dataclass(frozen=True)
class Window:
    """A selection: ``[start, end)`` (None = open) and a series ("" = all)."""

    start: datetime | None = None
    end: datetime | None = None
    series: str = ""


#: The whole timeline, all series.
ALL = Window()


@dataclass(frozen=True)
class WindowComparison:
    """CompareWindows' answer: the windows' point counts and the test results."""

    count_a: int
    count_b: int
    result: drift.DriftResult
    version: int


@dataclass(frozen=True)
class HealthReport:
    """EmbeddingHealth's answer; ``outliers`` are (point id, score)."""

    point_count: int
    result: health.HealthResult
    outliers: tuple[tuple[str, float], ...]
    version: int


@dataclass(frozen=True)
class RuleEvaluation:
    """A drift rule's comparison of windows ``a`` and ``b`` ((start, end) epoch seconds)."""

    window_a: tuple[float, float]
    window_b: tuple[float, float]
    p_value: float
    verdict: str
    evaluate_time: float


@dataclass(frozen=True)
class DriftRule:
    """A standing drift test; ``last_index`` is the index (time // window) of
    the window the timeline was in at the last check."""

    collection: str
    rule_id: str
    window_seconds: float
    p_value_threshold: float
    series: str
    min_points: int
    create_time: float
    last_index: int | None = None
    last_evaluation: RuleEvaluation | None = None
    alarm_count: int = 0
    #: Chroma's id of the collection: a collection created again under the same
    #: name does not inherit the rules of the deleted one.
    collection_uid: str = ""


@dataclass
class _SeriesState:
    """The online change-point detector of one series and what it has been fed.

    ``complete``: fed from the series' first point (as stored at collection
    version ``base_version``), so its chapters cover the whole series; otherwise
    it only publishes live events and DetectChapters replays the series first.
    ``cache`` is the engine's trajectory cache it follows (a new cache means the
    collection was recreated or reloaded). ``starts`` are the confirmed chapter
    starts, (point id, epoch seconds), in order.
    """

    detector: bocpd.OnlineChangeDetector
    cache: weakref.ref
    complete: bool
    base_version: int
    fed_version: int
    last_time: float
    starts: list[tuple[str, float]]


@dataclass
class _Watched:
    """Everything the monitor keeps for one collection (dropped with it)."""

    rules: dict[str, DriftRule] = field(default_factory=dict)
    #: ``rules`` were read from Chroma (on the collection's first use here).
    loaded: bool = False
    #: Upsert events waiting for the live worker, and the worker.
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(LIVE_QUEUE))
    worker: asyncio.Task[None] | None = None
    #: Online change-point detectors by series, and their lock (live feed vs replay).
    detectors: dict[str, _SeriesState] = field(default_factory=dict)
    detector_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Version of the last delete: detectors built before it are replayed on demand.
    deleted: int = 0
    #: Versions of the last upsert queued and of the last one the worker finished.
    queued: int = 0
    finished: int = 0
    #: Set (and replaced) each time the worker finishes an event.
    progress: asyncio.Event | None = None
    #: The detectors missed a batch (queue full): dropped before the next one.
    stale: bool = False


def parse_rule_name(name: str, field: str = "name") -> tuple[str, str]:
    """``"collections/{c}/driftRules/{r}"`` -> ``(c, r)``.

    Raises:
        InvalidArgument(INVALID_NAME): not of that form.
    """
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "collections"
        or parts[2] != "driftRules"
        or not RULE_ID.match(parts[3])
    ):
        raise InvalidArgument(
            f"{field} must be 'collections/{{collection_id}}/driftRules/{{drift_rule_id}}', "
            f"got {name!r}",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must be a drift rule resource name")],
        )
    return parts[1], parts[3]


def _utc(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(seconds))


class Monitor:
    """Monitoring over the points engine (``AsyncDriftDB``).

    Call :meth:`open` once the engine is open (it subscribes to the engine's
    events; each collection's drift rules are read from Chroma on its first use
    here) and :meth:`aclose` before closing it.
    """

    def __init__(self, db: PointsEngine, rules: RuleRepository) -> None:
        self._db = db
        self._repo = rules
        self._opened = False
        self._watched: dict[str, _Watched] = {}
        self._projections: dict[int, np.ndarray] = {}

    async def open(self) -> None:
        """Starts listening to the engine's events."""
        self._opened = True
        self._db.events.add_listener(self._on_event)
        self._db.events.add_drop_listener(self._on_drop)

    async def aclose(self) -> None:
        """Ends the watches (UNAVAILABLE, so a draining server is not held up by
        them) and stops the background work (pending batches are dropped)."""
        self._db.events.close()
        workers = [w.worker for w in self._watched.values() if w.worker is not None]
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for w in self._watched.values():
            w.worker = None

    def _state(self, collection: str) -> _Watched:
        state = self._watched.get(collection)
        if state is None:
            state = self._watched[collection] = _Watched()
        return state

    def _rules_of(self, collection: str) -> dict[str, DriftRule]:
        """The collection's rules; call after :meth:`_cached`, which reads them."""
        if not self._opened:
            raise Unavailable("driftd is not serving: the monitor has not started")
        return self._state(collection).rules

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forgets the rules and live work of every collection ``keep(name)``
        rejects (another replica owns it now); its rules stay in Chroma, where
        the new owner reads them, and are read again if it comes back here."""
        for name in [n for n in self._watched if not keep(n)]:
            self._forget(name)

    # --- windows -------------------------------------------------------------

    async def _cached(self, name: str):
        """(stored collection settings, trajectory cache) of a collection.

        Uses the engine's in-memory cache: reading windows back from Chroma would
        cost seconds per 20k points. Reads the collection's drift rules on its
        first use here. Raises NotFound.
        """
        meta, cache = await self._db.trajectory_cache(name)
        state = self._state(name)
        if not state.loaded:
            rules = await self._load_rules(name, meta.uid)
            if not state.loaded:
                state.rules, state.loaded = {r.rule_id: r for r in rules}, True
        return meta, cache

    @staticmethod
    def _check_window(w: Window, field: str) -> None:
        if w.start is not None and w.end is not None and w.start >= w.end:
            raise InvalidArgument(
                f"{field}: start_time {w.start.isoformat()} is not before end_time "
                f"{w.end.isoformat()}",
                field_violations=[FieldViolation(f"{field}.time_range", "start must be < end")],
            )

    async def compare_windows(
        self,
        name: str,
        window_a: Window,
        window_b: Window,
        *,
        permutations: int = 500,
        alpha: float = 0.01,
        max_points: int = 2000,
        seed: int = 0,
    ) -> WindowComparison:
        """Tests whether window B's points are distributed like window A's.

        Raises:
            NotFound: unknown collection.
            InvalidArgument: a window with start >= end, or permutations (10-10,000),
                alpha ((0, 0.5]) or max_points (10-10,000) out of range (LIMIT_EXCEEDED).
            FailedPrecondition(NOT_ENOUGH_POINTS): a window has fewer than 10
                points; metadata names the window.
        """
        self._check_window(window_a, "window_a")
        self._check_window(window_b, "window_b")
        check_range(permutations, 10, 10_000, "permutations")
        check_range(alpha, 1e-6, 0.5, "alpha")
        check_range(max_points, 10, 10_000, "max_points_per_window")
        meta, cache = await self._cached(name)
        snap = cache.snapshot()
        samples = []
        for which, w in (("window_a", window_a), ("window_b", window_b)):
            pos = snap.select(w.start, w.end, w.series)
            if len(pos) < drift.MIN_POINTS:
                raise _too_few(which, drift.MIN_POINTS, len(pos))
            samples.append(cache.vectors[snap.rows[pos]])
        result = await self._db.pool.submit(
            drift.compare_windows,
            samples[0],
            samples[1],
            cosine=meta.distance == "cosine",
            permutations=permutations,
            alpha=alpha,
            max_points=max_points,
            seed=seed,
        )
        return WindowComparison(len(samples[0]), len(samples[1]), result, snap.version)

    async def embedding_health(
        self,
        name: str,
        window: Window = ALL,
        *,
        max_outliers: int = 10,
        duplicate_similarity: float = 0.98,
        max_points: int = 5000,
        seed: int = 0,
    ) -> HealthReport:
        """Health of the collection's embeddings (or of one window).

        Raises:
            NotFound: unknown collection.
            InvalidArgument: a window with start >= end, or max_outliers (0-1,000),
                duplicate_similarity ((0, 1]) or max_points (10-20,000) out of range.
            FailedPrecondition(NOT_ENOUGH_POINTS): fewer than 10 points selected.
        """
        self._check_window(window, "window")
        check_range(max_outliers, 0, 1000, "max_outliers")
        check_range(duplicate_similarity, 1e-6, 1.0, "duplicate_similarity")
        check_range(max_points, 10, 20_000, "max_points")
        meta, cache = await self._cached(name)
        snap = cache.snapshot()
        pos = snap.select(window.start, window.end, window.series)
        selected = len(pos)
        if selected < health.MIN_POINTS:
            raise _too_few("window", health.MIN_POINTS, selected)
        if selected > max_points:
            rng = np.random.default_rng(seed)
            pos = np.sort(rng.choice(pos, size=max_points, replace=False))
        X = cache.vectors[snap.rows[pos]]
        ids = [str(i) for i in snap.ids[pos]]
        models: set[str] = set()
        step = self._db.settings.max_batch_points
        for lo in range(0, len(ids), step):
            found, _ = await self._db.get_points(name, ids[lo : lo + step])
            models.update(str(p.payload[MODEL_KEY]) for p in found if MODEL_KEY in p.payload)
        result = await self._db.pool.submit(
            health.embedding_health,
            X,
            cosine=meta.distance == "cosine",
            duplicate_similarity=duplicate_similarity,
            max_outliers=max_outliers,
            payload_models=tuple(sorted(models)),
            seed=seed,
        )
        outliers = tuple((ids[i], score) for i, score in result.outliers)
        return HealthReport(selected, result, outliers, snap.version)

    # --- watching ------------------------------------------------------------

    async def watch(
        self, name: str, *, after_sequence: int = 0, types: Sequence[str] = ()
    ) -> Watcher:
        """A watcher of the collection's events (see :meth:`EventHub.watch`).

        Raises:
            NotFound: unknown collection.
            FailedPrecondition(EVENTS_EXPIRED), InvalidArgument: bad resume point.
        """
        await self._cached(name)
        return self._db.events.watch(name, after_sequence=after_sequence, types=types)

    # --- drift rules ---------------------------------------------------------

    async def create_rule(
        self,
        name: str,
        *,
        rule_id: str = "",
        window_seconds: float,
        p_value_threshold: float = 0.01,
        series: str = "",
        min_points: int = 20,
    ) -> DriftRule:
        """Registers a drift rule on collection ``name``.

        Raises:
            NotFound: unknown collection.
            InvalidArgument: bad rule id (INVALID_NAME), window under 1 s,
                threshold outside (0, 0.5] or min_points outside 10-10,000.
            AlreadyExists(DRIFT_RULE_ALREADY_EXISTS): the id is taken.
        """
        if rule_id and not RULE_ID.match(rule_id):
            raise InvalidArgument(
                f"drift_rule_id {rule_id!r} must be 1-63 characters of [a-z0-9-] starting "
                f"with a letter",
                reason="INVALID_NAME",
                field_violations=[FieldViolation("drift_rule_id", "must match [a-z][a-z0-9-]*")],
            )
        window_seconds = window_seconds if math.isfinite(window_seconds) else math.inf
        check_range(window_seconds, 1.0, 100 * 365 * 86_400.0, "drift_rule.window")
        check_range(p_value_threshold, 1e-6, 0.5, "drift_rule.p_value_threshold")
        check_range(min_points, drift.MIN_POINTS, 10_000, "drift_rule.min_points")
        meta, cache = await self._cached(name)
        rules = self._rules_of(name)
        rule_id = rule_id or f"rule-{uuid.uuid4().hex[:8]}"
        if rule_id in rules:
            raise AlreadyExists(
                f"drift rule {rule_id!r} already exists on collection {name!r}",
                reason="DRIFT_RULE_ALREADY_EXISTS",
            )
        span = cache.span()
        rule = DriftRule(
            collection=name,
            collection_uid=meta.uid,
            rule_id=rule_id,
            window_seconds=float(window_seconds),
            p_value_threshold=float(p_value_threshold),
            series=series,
            min_points=int(min_points),
            create_time=round(time.time() * 1_000_000) / 1_000_000,
            # Windows already complete at creation are history: start from now.
            last_index=math.floor(span[1] / window_seconds) if span else None,
        )
        await self._save(rule)
        rules[rule_id] = rule
        return rule

    def _rule(self, name: str, rule_id: str) -> DriftRule:
        rule = self._rules_of(name).get(rule_id)
        if rule is None:
            raise NotFound(
                f"drift rule {rule_id!r} does not exist on collection {name!r}",
                reason="DRIFT_RULE_NOT_FOUND",
            )
        return rule

    async def get_rule(self, name: str, rule_id: str) -> DriftRule:
        """Raises NotFound (COLLECTION_NOT_FOUND, DRIFT_RULE_NOT_FOUND)."""
        await self._cached(name)
        return self._rule(name, rule_id)

    async def list_rules(
        self, name: str, *, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[DriftRule], str]:
        """A page of the collection's rules in id order and the next page token.

        Raises NotFound, InvalidArgument (page_size 1-1000, INVALID_PAGE_TOKEN).
        """
        check_range(page_size, 1, 1000, "page_size")
        if page_token and not RULE_ID.match(page_token):
            raise InvalidArgument(
                "page_token is not one this server issued",
                reason="INVALID_PAGE_TOKEN",
                field_violations=[FieldViolation("page_token", "invalid")],
            )
        await self._cached(name)
        after = sorted(r for r in self._rules_of(name) if r > page_token)
        page = after[:page_size]
        token = page[-1] if len(after) > page_size else ""
        return [self._rules_of(name)[r] for r in page], token

    async def delete_rule(self, name: str, rule_id: str) -> None:
        """Raises NotFound (COLLECTION_NOT_FOUND, DRIFT_RULE_NOT_FOUND)."""
        await self._cached(name)
        self._rule(name, rule_id)
        await self._repo.delete([f"{name}/{rule_id}"])
        self._rules_of(name).pop(rule_id, None)

    # --- rule storage --------------------------------------------------------

    async def _load_rules(self, name: str, uid: str) -> list[DriftRule]:
        """The rules of collection ``name`` (Chroma id ``uid``). Rules left by an
        earlier collection of the same name are deleted; rules stored before
        they carried their collection's id are given it."""
        rules, orphans = [], []
        for record in await self._repo.load(name):
            rule = _rule_from_metadata(record.metadata)
            if rule.collection_uid not in ("", uid):
                orphans.append(record.id)
            elif not rule.collection_uid:
                rule = replace(rule, collection_uid=uid)
                await self._save(rule)
                rules.append(rule)
            else:
                rules.append(rule)
        if orphans:
            log.info("deleting %d drift rules of an earlier collection %s", len(orphans), name)
            await self._repo.delete(orphans)
        return rules

    async def _save(self, rule: DriftRule) -> None:
        await self._repo.save(f"{rule.collection}/{rule.rule_id}", _rule_to_metadata(rule))

    # --- live work -----------------------------------------------------------

    def _on_drop(self, name: str, uid: str) -> None:
        """Hub drop listener: the collection was deleted, so its rules (in memory
        and, submitted now so before any later store call, in Chroma) and its
        live work go; a collection created again under the name starts afresh."""

        def logged(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("deleting the drift rules of %s failed", name, exc_info=done.exception())

        self._repo.delete_of_collection(name, uid).add_done_callback(logged)
        self._forget(name)

    def _forget(self, name: str) -> None:
        """Drops the collection's rules from memory and stops its live work."""
        state = self._watched.pop(name, None)
        if state is None:
            return
        if state.worker is not None:
            state.worker.cancel()
        if state.progress is not None:  # online_chapters calls waiting on the cancelled worker
            state.progress.set()

    def _on_event(self, event: Event) -> None:
        """Hub listener: queues upserts for the collection's background task."""
        name = event.collection
        if event.type == POINTS_DELETED:
            self._state(name).deleted = event.version
            return
        if event.type != POINTS_UPSERTED:
            return
        state = self._state(name)
        if state.worker is None or state.worker.done():
            state.worker = asyncio.get_running_loop().create_task(
                self._work(name, state), name=f"driftd-monitor-{name}"
            )
        try:
            state.queue.put_nowait(event)
            state.queued = event.version
        except asyncio.QueueFull:
            log.warning(
                "monitor of %s is %d batches behind: skipping one; its chapter detectors restart",
                name,
                LIVE_QUEUE,
            )
            # The detectors missed points; the worker drops them before its next batch.
            state.stale = True

    async def _work(self, name: str, state: _Watched) -> None:
        while True:
            event = await state.queue.get()
            try:
                if isinstance(event.data, PointsUpserted):  # all that _on_event queues
                    await self._detect_chapters(event, event.data)
                    await self._check_rules(event, event.data)
            except Exception:
                # A failure on one batch (e.g. the collection was deleted) must
                # not stop the monitoring of the next ones.
                log.exception("monitor of %s failed on event %d", name, event.sequence)
            finally:
                state.finished = event.version
                progress, state.progress = state.progress, None
                if progress is not None:  # wake online_chapters calls waiting for it
                    progress.set()

    async def _detect_chapters(self, event: Event, data: PointsUpserted) -> None:
        name = event.collection
        watched = self._state(name)
        async with watched.detector_lock:
            if watched.stale:
                watched.stale = False
                watched.detectors.clear()
            meta, cache = await self._cached(name)
            items: list[tuple[str, float, str, int]] = []  # (id, time, series, row in rows)
            rows: list[int] = []
            for pid, t, series in sorted(
                zip(data.point_ids, data.times, data.point_series, strict=True),
                key=lambda x: (x[2], x[1]),
            ):
                row = cache.row_of(pid)
                if row is not None:
                    items.append((pid, t, series, len(rows)))
                    rows.append(row)
            # Copied now, on the loop (the cache may change while the thread runs), as
            # one array: an array per point made 17 MB of small heap blocks per 10k.
            vectors = np.take(cache.vectors, rows, axis=0)
            states = {}
            for series in {item[2] for item in items}:
                state = watched.detectors.get(series)
                if state is None or state.cache() is not cache:
                    # Complete when this batch holds every point of the series.
                    fed = sum(item[2] == series for item in items)
                    state = watched.detectors[series] = _SeriesState(
                        bocpd.OnlineChangeDetector(
                            self._projection(meta.dimension), normalize=meta.distance == "cosine"
                        ),
                        weakref.ref(cache),
                        complete=cache.version == event.version
                        and cache.series_size(series) == fed,
                        base_version=event.version,
                        fed_version=0,
                        last_time=-math.inf,
                        starts=[],
                    )
                if state.fed_version < event.version:  # not replayed past this batch
                    states[series] = state
            items = [item for item in items if item[2] in states]
            if not items:
                return
            changes = await asyncio.to_thread(self._feed, states, items, vectors, event.version)
        for series, change in changes:
            (start_id, start_time), (detected_id, _) = change.start_key, change.detected_key
            self._db.events.publish(
                name,
                event.version,
                ChapterDetected(
                    series=series,
                    start_point_id=start_id,
                    start_time=start_time,
                    detected_point_id=detected_id,
                    delay_points=change.delay,
                    probability=change.probability,
                ),
            )

    @staticmethod
    def _feed(states: dict[str, _SeriesState], items, vectors: np.ndarray, version: int):
        """Runs the detectors over time-ordered points ``items`` (id, time, series,
        row of ``vectors``) on a worker thread; points older than their series'
        latest are skipped (the detector is online)."""
        changes = []
        for series, state in states.items():
            batch = [item for item in items if item[2] == series and item[1] >= state.last_time]
            if not batch:
                continue
            Y = state.detector.project(vectors[[item[3] for item in batch]])
            for (pid, t, _, _), y in zip(batch, Y, strict=True):
                change = state.detector.update_projected(y, (pid, t))
                if change is not None:
                    state.starts.append(change.start_key)
                    changes.append((series, change))
            state.last_time = batch[-1][1]
            state.fed_version = version
        return changes

    def _projection(self, dimension: int) -> np.ndarray:
        proj = self._projections.get(dimension)
        if proj is None:
            proj = self._projections[dimension] = bocpd.projection(dimension)
        return proj

    # --- online chapters -----------------------------------------------------

    async def online_chapters(
        self,
        name: str,
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        representatives: int = 3,
    ) -> ChapterSet:
        """DetectChapters(method=ONLINE): the chapters that the series' online
        detector (BOCPD, :mod:`driftd.monitor.bocpd`) has confirmed, with no refit.

        Waits until the live feed has taken in every upsert acknowledged before the
        call. A series the detector has not followed from its first point (written
        before this server started, an attached collection, points deleted since,
        or a batch the live feed had to skip) is replayed from the trajectory
        cache first: projected on a thread, run through a fresh detector in the
        process pool (~0.1 ms per point), then kept current by the live feed. The
        chapters are cut from the selection by
        :meth:`driftd.engine.AsyncDriftDB.split_chapters` (``attractor_id`` empty).

        Args:
            series: the series; "" is allowed when the collection has one series.
            start, end, min_size, representatives: as in ``split_chapters``.

        Raises:
            NotFound: unknown collection.
            InvalidArgument: no series named while the collection has several;
                min_size (2-10,000) or representatives (0-100) out of range.
            FailedPrecondition(NOT_ENOUGH_POINTS): fewer than 2 min_size points
                selected.
        """
        meta, cache = await self._cached(name)
        if not series:
            snap = cache.snapshot()
            present = np.unique(snap.series)
            if len(present) > 1:
                raise InvalidArgument(
                    f"online chapters follow one series and collection {name!r} has "
                    f"{len(present)}: name one in series",
                    field_violations=[
                        FieldViolation("series", "required with method ONLINE (several series)")
                    ],
                )
            series = snap.series_names[present[0]] if len(present) else ""
        await self._caught_up(name, cache.version)
        starts: list[float] = []
        if cache.series_size(series):
            async with self._state(name).detector_lock:
                state = await self._series_state(name, series, meta, cache)
                starts = [t for _, t in state.starts]
        return await self._db.split_chapters(
            name,
            starts,
            series=series,
            start=start,
            end=end,
            min_size=min_size,
            representatives=representatives,
        )

    async def _caught_up(self, name: str, version: int) -> None:
        """Waits until the live worker has finished the upserts queued up to ``version``."""
        state = self._state(name)
        target = min(version, state.queued)
        while state.finished < target:
            if state.worker is None or state.worker.done():
                return
            if state.progress is None:
                state.progress = asyncio.Event()
            await state.progress.wait()

    async def _series_state(self, name: str, series: str, meta, cache) -> _SeriesState:
        """The series' detector, replayed from the cache unless it covers the whole
        series (call with the collection's detector lock held)."""
        watched = self._state(name)
        state = watched.detectors.get(series)
        if (
            state is not None
            and state.cache() is cache
            and state.complete
            and state.base_version >= watched.deleted
        ):
            return state
        t0 = time.perf_counter()
        snap = cache.snapshot()
        pos = snap.select(None, None, series)
        rows, times = snap.rows[pos], snap.times[pos]
        keys = list(zip(snap.ids[pos].tolist(), times.tolist(), strict=True))
        detector = bocpd.OnlineChangeDetector(
            self._projection(meta.dimension), normalize=meta.distance == "cosine"
        )
        Y = await asyncio.to_thread(_project_rows, detector, cache.vectors, rows)
        detector, changes = await self._db.pool.submit(bocpd.replay, detector, Y, keys)
        state = watched.detectors[series] = _SeriesState(
            detector,
            weakref.ref(cache),
            complete=True,
            base_version=snap.version,
            fed_version=snap.version,
            last_time=float(times[-1]) if len(times) else -math.inf,
            starts=[c.start_key for c in changes],
        )
        log.info(
            "replayed %d points of %s series %r through the online chapter detector in %.2f s",
            len(rows),
            name,
            series,
            time.perf_counter() - t0,
        )
        return state

    async def _check_rules(self, event: Event, data: PointsUpserted) -> None:
        await self._cached(event.collection)  # reads the rules
        for rule in list(self._rules_of(event.collection).values()):
            times = [
                t
                for t, s in zip(data.times, data.point_series, strict=True)
                if not rule.series or s == rule.series
            ]
            if not times:
                continue
            k = math.floor(max(times) / rule.window_seconds)
            if rule.last_index is not None and k <= rule.last_index:
                continue
            rule = replace(rule, last_index=k)
            L = rule.window_seconds
            a, b = ((k - 2) * L, (k - 1) * L), ((k - 1) * L, k * L)
            _, cache = await self._cached(event.collection)
            snap = cache.snapshot()
            counts = [len(snap.select(_utc(lo), _utc(hi), rule.series)) for lo, hi in (a, b)]
            if min(counts) >= rule.min_points:
                comparison = await self.compare_windows(
                    event.collection,
                    Window(_utc(a[0]), _utc(a[1]), rule.series),
                    Window(_utc(b[0]), _utc(b[1]), rule.series),
                    permutations=RULE_PERMUTATIONS,
                    alpha=rule.p_value_threshold,
                    max_points=RULE_MAX_POINTS,
                )
                result = comparison.result
                now = round(time.time() * 1_000_000) / 1_000_000
                evaluation = RuleEvaluation(a, b, result.p_value, result.verdict, now)
                rule = replace(rule, last_evaluation=evaluation)
                if result.p_value <= rule.p_value_threshold:
                    rule = replace(rule, alarm_count=rule.alarm_count + 1)
                    self._db.events.publish(
                        event.collection,
                        comparison.version,
                        DriftAlarm(
                            drift_rule=f"collections/{rule.collection}/driftRules/{rule.rule_id}",
                            window_a=a,
                            window_b=b,
                            report=result,
                            counts=(comparison.count_a, comparison.count_b),
                        ),
                    )
            rules = self._rules_of(event.collection)
            if rule.rule_id in rules:  # not deleted meanwhile
                rules[rule.rule_id] = rule
                await self._save(rule)


def _project_rows(
    detector: bocpd.OnlineChangeDetector, vectors: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """``detector.project(vectors[rows])`` (n, k), a chunk at a time (run on a
    thread): a long series is never copied whole."""
    chunk = 8192
    return np.concatenate(
        [
            detector.project(np.take(vectors, rows[lo : lo + chunk], axis=0))
            for lo in range(0, max(len(rows), 1), chunk)
        ]
    )


def _too_few(field: str, required: int, available: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"{field} has {available} points; at least {required} are needed",
        reason="NOT_ENOUGH_POINTS",
        field_violations=[FieldViolation(field, f"at least {required} points")],
        metadata={"window": field, "required": required, "available": available},
    )


def _rule_to_metadata(rule: DriftRule) -> dict:
    md = {
        "collection": rule.collection,
        "rule_id": rule.rule_id,
        "window_seconds": rule.window_seconds,
        "p_value_threshold": rule.p_value_threshold,
        "series": rule.series,
        "min_points": rule.min_points,
        # Integer microseconds: Chroma may round a float's last digit.
        "create_time_us": round(rule.create_time * 1_000_000),
        "alarm_count": rule.alarm_count,
        "collection_uid": rule.collection_uid,
    }
    if rule.last_index is not None:
        md["last_index"] = rule.last_index
    e = rule.last_evaluation
    if e is not None:
        md.update(
            {
                "eval_a_start": e.window_a[0],
                "eval_a_end": e.window_a[1],
                "eval_b_start": e.window_b[0],
                "eval_b_end": e.window_b[1],
                "eval_p_value": e.p_value,
                "eval_verdict": e.verdict,
                "eval_time_us": round(e.evaluate_time * 1_000_000),
            }
        )
    return md


def _rule_from_metadata(md: dict) -> DriftRule:
    evaluation = None
    if "eval_time_us" in md:
        evaluation = RuleEvaluation(
            (float(md["eval_a_start"]), float(md["eval_a_end"])),
            (float(md["eval_b_start"]), float(md["eval_b_end"])),
            float(md["eval_p_value"]),
            str(md["eval_verdict"]),
            md["eval_time_us"] / 1_000_000,
        )
    return DriftRule(
        collection=str(md["collection"]),
        rule_id=str(md["rule_id"]),
        window_seconds=float(md["window_seconds"]),
        p_value_threshold=float(md["p_value_threshold"]),
        series=str(md.get("series", "")),
        min_points=int(md["min_points"]),
        create_time=md["create_time_us"] / 1_000_000,
        last_index=int(md["last_index"]) if "last_index" in md else None,
        last_evaluation=evaluation,
        alarm_count=int(md.get("alarm_count", 0)),
        collection_uid=str(md.get("collection_uid", "")),
    )
