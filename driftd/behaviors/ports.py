"""What the behaviour store needs from storage: the typed interface that
:class:`driftd.store.behaviors.ChromaBehaviorRepository` implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from driftd.store.system import StoredRecord


class BehaviorRepository(Protocol):
    """Behaviour records by user; a record's id is the behaviour id (a random
    uuid4, never derived from a counter), its embedding the unit vector, its
    metadata has ``user_id`` and ``state``."""

    async def active(self, user_id: str, dim: int) -> list[StoredRecord]:
        """The user's active records of dimension ``dim``, with embeddings."""
        ...

    async def of_user(self, user_id: str, state: str = "") -> list[StoredRecord]:
        """The user's records of every dimension (``state`` "" = any), no embeddings."""
        ...

    async def write(self, records: Sequence[StoredRecord]) -> None:
        """Upserts records by id; durable when it returns."""
        ...
