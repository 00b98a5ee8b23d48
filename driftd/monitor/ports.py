"""What the monitor needs from storage and from the points engine: the typed
interfaces that :class:`driftd.store.monitor.ChromaRuleRepository` and
:class:`driftd.engine.AsyncDriftDB` implement."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from driftd.config import Settings
from driftd.engine.cache import TrajectoryCache
from driftd.engine.pool import MathPool
from driftd.monitor.events import EventHub
from driftd.store.chroma import StoredCollection
from driftd.store.system import Metadata, StoredRecord
from driftd.types import ChapterSet, Point


class RuleRepository(Protocol):
    """Drift rules by ``{collection}/{rule_id}``; a record's metadata is the rule."""

    async def load(self, collection: str) -> list[StoredRecord]:
        """The stored rules of one collection (any incarnation)."""
        ...

    async def save(self, rule_id: str, metadata: Metadata) -> None:
        """Writes (replaces) one rule."""
        ...

    async def delete(self, rule_ids: Sequence[str]) -> None:
        """Deletes rules by id."""
        ...

    def delete_of_collection(self, name: str, uid: str) -> asyncio.Future[None]:
        """Deletes one collection incarnation's rules; submitted at once."""
        ...


class PointsEngine(Protocol):
    """The part of :class:`driftd.engine.AsyncDriftDB` the monitor reads."""

    settings: Settings
    events: EventHub

    @property
    def pool(self) -> MathPool:
        """The math process pool."""
        ...

    async def trajectory_cache(self, name: str) -> tuple[StoredCollection, TrajectoryCache]:
        """A collection's settings and live in-memory trajectory."""
        ...

    async def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[Point], list[str]]:
        """Points by id, and the ids not found."""
        ...

    async def split_chapters(
        self,
        name: str,
        starts: Sequence[float],
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        representatives: int = 3,
    ) -> ChapterSet:
        """Chapters cut at the given start times."""
        ...
