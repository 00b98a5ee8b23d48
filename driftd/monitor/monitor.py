"""The engine side of monitoring: drift tests and health on collections, drift
rules, and the live work behind WatchCollection.

:class:`Monitor` reads windows from the engine's in-memory trajectory cache
(never from Chroma), runs the statistics of :mod:`driftd.monitor.drift` and
:mod:`driftd.monitor.health` in the engine's process pool, keeps drift rules in
the Chroma collection ``driftd.sys.monitor.drift_rules``, and listens to the
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from driftd.engine.validate import SYSTEM_PREFIX, check_range
from driftd.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driftd.monitor import bocpd, drift, health
from driftd.monitor.events import POINTS_UPSERTED, ChapterDetected, DriftAlarm, Event, Watcher

log = logging.getLogger(__name__)

RULES_COLLECTION = SYSTEM_PREFIX + "monitor.drift_rules"
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
    """Monitoring over an engine (``AsyncDriftDB``, or the server's gate to it).

    Call :meth:`start` once the engine is open (it loads the drift rules and
    subscribes to the engine's events) and :meth:`stop` before closing it.
    """

    def __init__(self, db) -> None:
        self._db = db
        self._rules: dict[str, dict[str, DriftRule]] | None = None
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        # (collection, series) -> (detector, time of the last point fed)
        self._detectors: dict[tuple[str, str], tuple[bocpd.OnlineChangeDetector, float]] = {}
        self._projections: dict[int, np.ndarray] = {}
        self._stale: set[str] = set()  # collections whose detectors missed a batch

    async def start(self) -> None:
        """Loads the drift rules and starts listening to the engine's events."""
        self._rules = {}
        for rule in await self._db.on_store(self._load_rules):
            self._rules.setdefault(rule.collection, {})[rule.rule_id] = rule
        self._db.events.add_listener(self._on_event)

    async def stop(self) -> None:
        """Ends the watches (UNAVAILABLE, so a draining server is not held up by
        them) and stops the background work (pending batches are dropped)."""
        self._db.events.close()
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    def _rules_of(self, collection: str) -> dict[str, DriftRule]:
        if self._rules is None:
            raise Unavailable("driftd is not serving: the monitor has not started")
        return self._rules.setdefault(collection, {})

    # --- windows -------------------------------------------------------------

    async def _cached(self, name: str):
        """(stored collection settings, trajectory cache) of a collection.

        Uses the engine's in-memory cache directly: reading windows back from
        Chroma would cost seconds per 20k points.
        """
        coll = await self._db._collection(name)
        return coll.meta, await self._db._loaded(coll)

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
        for field, w in (("window_a", window_a), ("window_b", window_b)):
            pos = snap.select(w.start, w.end, w.series)
            if len(pos) < drift.MIN_POINTS:
                raise _too_few(field, drift.MIN_POINTS, len(pos))
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
        await self._db._collection(name)
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
        await self._db._collection(name)
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
        await self._db._collection(name)
        after = sorted(r for r in self._rules_of(name) if r > page_token)
        page = after[:page_size]
        token = page[-1] if len(after) > page_size else ""
        return [self._rules_of(name)[r] for r in page], token

    async def delete_rule(self, name: str, rule_id: str) -> None:
        """Raises NotFound (COLLECTION_NOT_FOUND, DRIFT_RULE_NOT_FOUND)."""
        await self._db._collection(name)
        self._rule(name, rule_id)
        await self._db.on_store(lambda: self._rules_store().delete(ids=[f"{name}/{rule_id}"]))
        self._rules_of(name).pop(rule_id, None)

    # --- rule storage (store thread) -----------------------------------------

    def _rules_store(self):
        return self._db.chroma.get_or_create_collection(RULES_COLLECTION, embedding_function=None)

    def _load_rules(self) -> list[DriftRule]:
        got = self._rules_store().get(include=["metadatas"])
        return [_rule_from_metadata(md) for md in got["metadatas"]]

    async def _save(self, rule: DriftRule) -> None:
        md = _rule_to_metadata(rule)
        await self._db.on_store(
            lambda: self._rules_store().upsert(
                ids=[f"{rule.collection}/{rule.rule_id}"], embeddings=[[0.0]], metadatas=[md]
            )
        )

    # --- live work -----------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Hub listener: queues upserts for the collection's background task."""
        if event.type != POINTS_UPSERTED:
            return
        name = event.collection
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = asyncio.Queue(LIVE_QUEUE)
        task = self._workers.get(name)
        if task is None or task.done():
            self._workers[name] = asyncio.get_running_loop().create_task(
                self._work(name, queue), name=f"driftd-monitor-{name}"
            )
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning(
                "monitor of %s is %d batches behind: skipping one; its chapter detectors restart",
                name,
                LIVE_QUEUE,
            )
            # The detectors missed points; the worker drops them before its next batch.
            self._stale.add(name)

    async def _work(self, name: str, queue: asyncio.Queue[Event]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._detect_chapters(event)
                await self._check_rules(event)
            except Exception:
                # A failure on one batch (e.g. the collection was deleted) must
                # not stop the monitoring of the next ones.
                log.exception("monitor of %s failed on event %d", name, event.sequence)

    async def _detect_chapters(self, event: Event) -> None:
        if event.collection in self._stale:
            self._stale.discard(event.collection)
            for key in [k for k in self._detectors if k[0] == event.collection]:
                del self._detectors[key]
        meta, cache = await self._cached(event.collection)
        data = event.data
        items = []
        for pid, t, series in sorted(
            zip(data.point_ids, data.times, data.point_series, strict=True),
            key=lambda x: (x[2], x[1]),
        ):
            row = cache.row_of(pid)
            if row is not None:
                # Copied now, on the loop: the cache may change while the thread runs.
                items.append((pid, t, series, cache.vectors[row].copy()))
        if not items:
            return
        proj = self._projections.get(meta.dimension)
        if proj is None:
            proj = self._projections[meta.dimension] = bocpd.projection(meta.dimension)
        changes = await asyncio.to_thread(
            self._feed, event.collection, items, proj, meta.distance == "cosine"
        )
        for series, change in changes:
            (start_id, start_time), (detected_id, _) = change.start_key, change.detected_key
            self._db.events.publish(
                event.collection,
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

    def _feed(self, name: str, items, proj: np.ndarray, cosine: bool):
        """Runs the detectors over time-ordered points (worker thread); points
        older than their series' latest are skipped (the detector is online)."""
        changes = []
        for pid, t, series, vector in items:
            det, last = self._detectors.get((name, series), (None, -math.inf))
            if det is None:
                det = bocpd.OnlineChangeDetector(proj, normalize=cosine)
            if t < last:
                continue
            change = det.update(vector, (pid, t))
            self._detectors[(name, series)] = (det, t)
            if change is not None:
                changes.append((series, change))
        return changes

    async def _check_rules(self, event: Event) -> None:
        for rule in list(self._rules_of(event.collection).values()):
            times = [
                t
                for t, s in zip(event.data.times, event.data.point_series, strict=True)
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
    )
