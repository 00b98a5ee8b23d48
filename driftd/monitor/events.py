"""The live events of each collection: a bounded ring buffer and its watchers.

Every collection has one ring buffer of its most recent events. A watcher is a
cursor into that buffer, not a copy of it, so memory does not grow with the
number of watchers: at most ``max_events`` events (and ``max_points`` point ids
in them) are kept per collection. A watcher whose next unread event is evicted
has fallen too far behind and is disconnected with ResourceExhausted
(WATCHER_TOO_SLOW), even while it is blocked handing an earlier event to a slow
client (:meth:`Watcher.deliver`); it can resume from the last sequence it saw
as long as that event is still buffered.

Sequence numbers increase strictly per collection. They start from the hub's
creation time in microseconds, so numbers from before a server restart are
smaller than every number after it and a resume across a restart is reported as
expired (EVENTS_EXPIRED) instead of silently skipping events.

Pure asyncio: publish and watch from one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from driftd.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

T = TypeVar("T")

#: Defaults of the per-collection ring buffer.
MAX_EVENTS = 1024
MAX_POINTS = 50_000

POINTS_UPSERTED = "points_upserted"
POINTS_DELETED = "points_deleted"
CHAPTER_DETECTED = "chapter_detected"
DRIFT_ALARM = "drift_alarm"
EVENT_TYPES = (POINTS_UPSERTED, POINTS_DELETED, CHAPTER_DETECTED, DRIFT_ALARM)


@dataclass(frozen=True)
class PointsUpserted:
    """Points were durably upserted: ids with their times (epoch seconds) and series."""

    point_ids: tuple[str, ...]
    times: tuple[float, ...]
    point_series: tuple[str, ...]

    @property
    def start_time(self) -> float:
        return min(self.times)

    @property
    def end_time(self) -> float:
        return max(self.times)

    @property
    def series(self) -> tuple[str, ...]:
        """Distinct series, sorted."""
        return tuple(sorted(set(self.point_series)))


@dataclass(frozen=True)
class PointsDeleted:
    """Points were durably deleted."""

    point_ids: tuple[str, ...]


@dataclass(frozen=True)
class ChapterDetected:
    """A series entered a new chapter (see :mod:`driftd.monitor.bocpd`)."""

    series: str
    start_point_id: str
    start_time: float
    detected_point_id: str
    delay_points: int
    probability: float


@dataclass(frozen=True)
class DriftAlarm:
    """A drift rule's last two windows differ. Windows are (start, end) epoch
    seconds; ``report`` is a :class:`driftd.monitor.drift.DriftResult` with the
    windows' point counts as ``counts``."""

    drift_rule: str
    window_a: tuple[float, float]
    window_b: tuple[float, float]
    report: Any
    counts: tuple[int, int]


@dataclass(frozen=True)
class Event:
    """One event of a collection. ``type`` is one of :data:`EVENT_TYPES`;
    ``time`` is when it was published (epoch seconds); ``version`` the
    collection's version then."""

    sequence: int
    collection: str
    type: str
    time: float
    version: int
    data: PointsUpserted | PointsDeleted | ChapterDetected | DriftAlarm

    @property
    def weight(self) -> int:
        """Buffer cost: 1 plus the point ids carried."""
        return 1 + len(getattr(self.data, "point_ids", ()))


_TYPES = {
    PointsUpserted: POINTS_UPSERTED,
    PointsDeleted: POINTS_DELETED,
    ChapterDetected: CHAPTER_DETECTED,
    DriftAlarm: DRIFT_ALARM,
}


@dataclass
class _Channel:
    """One collection's ring buffer: events[i] has sequence ``first + i``."""

    last: int
    events: deque[Event] = field(default_factory=deque)
    weight: int = 0
    watchers: set[Watcher] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def first(self) -> int:
        """Sequence of the oldest buffered event (last + 1 when empty)."""
        return self.last - len(self.events) + 1


class Watcher:
    """A cursor over one collection's events; get them with :meth:`next`.

    Use as an async context manager (or call :meth:`close`) so the hub forgets it.
    """

    def __init__(
        self, hub: EventHub, collection: str, channel: _Channel, cursor: int, types: frozenset[str]
    ):
        self._hub = hub
        self._collection = collection
        self._channel = channel
        self.cursor = cursor  # sequence of the next event to read
        self._types = types
        self.lost = asyncio.Event()  # set when an unread event was evicted (or the watch ends)
        self.deleted = False  # the collection was deleted
        self.moved = False  # the collection moved to another replica

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.watchers.discard(self)

    def _check(self) -> None:
        if self.deleted:
            raise NotFound(f"collection {self._collection!r} was deleted; the watch has ended")
        if self.moved:
            raise Unavailable(
                f"collection {self._collection!r} moved to another replica; resume the watch",
                reason="OWNER_MOVED",
            )
        if self._hub.closed:
            raise Unavailable(
                "driftd is shutting down; resume from the last sequence seen when it is back"
            )
        if self.lost.is_set():
            raise ResourceExhausted(
                f"watcher fell more than {self._hub.max_events} events (or "
                f"{self._hub.max_points} point ids) behind and was disconnected; resume "
                f"from the last sequence seen and read faster",
                reason="WATCHER_TOO_SLOW",
                metadata={
                    "max_queued_events": self._hub.max_events,
                    "max_queued_points": self._hub.max_points,
                },
            )

    async def next(self) -> Event:
        """The next event of the watched types, waiting for one if needed.

        Raises:
            ResourceExhausted(WATCHER_TOO_SLOW): unread events were evicted.
            Unavailable(NOT_SERVING): the hub was closed (server shutting down).
        """
        while True:
            self._check()
            ch = self._channel
            if self.cursor <= ch.last:
                event = ch.events[self.cursor - ch.first]
                self.cursor += 1
                if not self._types or event.type in self._types:
                    return event
                continue
            await ch.changed.wait()

    async def deliver(self, send: Awaitable[T]) -> T:
        """Awaits ``send`` (e.g. a gRPC write to a slow client) unless the watcher
        falls too far behind first; then ``send`` is cancelled.

        Raises:
            ResourceExhausted(WATCHER_TOO_SLOW): unread events were evicted.
        """
        task = asyncio.ensure_future(send)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not task.done():
            task.cancel()
            self._check()
        return task.result()


class EventHub:
    """Per-collection ring buffers of events and their watchers.

    Args:
        max_events: events kept per collection.
        max_points: point ids kept per collection (upsert and delete events
            carry their ids); the oldest events go first when either bound is hit.
        clock: seconds since the epoch; also seeds the sequence numbers.
    """

    def __init__(
        self,
        *,
        max_events: int = MAX_EVENTS,
        max_points: int = MAX_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_events = max_events
        self.max_points = max_points
        self._clock = clock
        self._base = int(clock() * 1_000_000)
        self._channels: dict[str, _Channel] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._drop_listeners: list[Callable[[str, str], None]] = []
        self.closed = False

    def close(self) -> None:
        """Ends every watch (server shutdown): their next read raises Unavailable."""
        self.closed = True
        for ch in self._channels.values():
            for w in ch.watchers:
                w.lost.set()
            ch.changed.set()

    def _channel(self, collection: str) -> _Channel:
        ch = self._channels.get(collection)
        if ch is None:
            ch = self._channels[collection] = _Channel(last=self._base)
        return ch

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Calls ``fn(event)`` synchronously for every event published from now on.
        ``fn`` must be quick and must not raise."""
        self._listeners.append(fn)

    def add_drop_listener(self, fn: Callable[[str, str], None]) -> None:
        """Calls ``fn(collection, uid)`` synchronously whenever a collection is
        dropped. ``fn`` must be quick and must not raise."""
        self._drop_listeners.append(fn)

    def drop(self, collection: str, uid: str) -> None:
        """The collection was deleted (here or through another replica): ends its
        watches (their next read raises NotFound), forgets its buffered events and
        tells the drop listeners. ``uid`` is Chroma's id of the deleted collection,
        which a new collection of the same name does not share.

        Sequence numbers go on from the last one, so resuming a watch from before
        the deletion is reported as expired, never served from the events of a
        new collection of the same name.
        """
        self._end_watches(collection, moved=False)
        for fn in self._drop_listeners:
            fn(collection, uid)

    def release(self, collection: str) -> None:
        """Another replica owns the collection now: ends its watches (their next
        read raises Unavailable(OWNER_MOVED)) and forgets its buffered events.
        Sequence numbers go on from the last one, as after :meth:`drop`."""
        self._end_watches(collection, moved=True)

    def _end_watches(self, collection: str, *, moved: bool) -> None:
        """Ends the collection's watches (deleted, or ``moved`` to another owner)
        and forgets its buffered events; sequence numbers go on."""
        ch = self._channels.get(collection)
        if ch is None:
            return
        for w in ch.watchers:
            w.moved, w.deleted = moved, not moved
            w.lost.set()
        ch.watchers.clear()
        ch.events.clear()
        ch.weight = 0
        ch.changed.set()
        ch.changed = asyncio.Event()

    def publish(
        self,
        collection: str,
        version: int,
        data: PointsUpserted | PointsDeleted | ChapterDetected | DriftAlarm,
    ) -> Event:
        """Appends an event, wakes the watchers, and evicts the oldest events over
        the bounds (marking watchers that had not read them as lost)."""
        ch = self._channel(collection)
        ch.last += 1
        event = Event(ch.last, collection, _TYPES[type(data)], self._clock(), version, data)
        ch.events.append(event)
        ch.weight += event.weight
        while len(ch.events) > 1 and (
            len(ch.events) > self.max_events or ch.weight > self.max_points
        ):
            ch.weight -= ch.events.popleft().weight
        first = ch.first
        for w in ch.watchers:
            if w.cursor < first:
                w.lost.set()
        ch.changed.set()
        ch.changed = asyncio.Event()
        for fn in self._listeners:
            fn(event)
        return event

    def publish_upsert(
        self,
        collection: str,
        version: int,
        ids: Iterable[str],
        times: Iterable[float],
        series: Iterable[str],
    ) -> Event:
        """Publishes a PointsUpserted event for a durable write (times in epoch seconds)."""
        data = PointsUpserted(tuple(ids), tuple(float(t) for t in times), tuple(series))
        return self.publish(collection, version, data)

    def publish_delete(self, collection: str, version: int, ids: Iterable[str]) -> Event:
        """Publishes a PointsDeleted event for a durable delete."""
        return self.publish(collection, version, PointsDeleted(tuple(ids)))

    def watch(
        self, collection: str, *, after_sequence: int = 0, types: Iterable[str] = ()
    ) -> Watcher:
        """A watcher of ``collection`` from just after ``after_sequence`` (0: from now).

        Raises:
            FailedPrecondition(EVENTS_EXPIRED): events after ``after_sequence``
                are no longer buffered (or it predates this server's start).
            InvalidArgument: ``after_sequence`` is beyond the latest event, or an
                unknown type.
        """
        types = frozenset(types)
        unknown = types - set(EVENT_TYPES)
        if unknown:
            raise InvalidArgument(
                f"unknown event types {sorted(unknown)}",
                field_violations=[FieldViolation("event_types", "unknown event type")],
            )
        ch = self._channel(collection)
        if after_sequence:
            if after_sequence > ch.last:
                raise InvalidArgument(
                    f"after_sequence {after_sequence} is beyond the latest event {ch.last}",
                    field_violations=[FieldViolation("after_sequence", "beyond the latest event")],
                    metadata={"after_sequence": after_sequence, "latest_sequence": ch.last},
                )
            if after_sequence < ch.first - 1:
                raise FailedPrecondition(
                    f"events after {after_sequence} are no longer buffered (the oldest is "
                    f"{ch.first}); re-read the collection and watch from now",
                    reason="EVENTS_EXPIRED",
                    metadata={"after_sequence": after_sequence, "oldest_sequence": ch.first},
                )
            cursor = after_sequence + 1
        else:
            cursor = ch.last + 1
        watcher = Watcher(self, collection, ch, cursor, types)
        ch.watchers.add(watcher)
        return watcher
