"""What the routing engine needs from storage: the typed interface that
:class:`driftd.store.routing.ChromaRoutingRepository` implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from driftd.store.system import StoredRecord


class RoutingRepository(Protocol):
    """Messages and branch facts of conversations (see :mod:`driftd.store.routing`).

    Message record ids are ``{conversation_id}/{key}``; every message record's
    metadata has ``conversation``. Facts records' metadata too.
    """

    async def open(self, default_model: str) -> str:
        """Creates the storage if needed; returns the embed model it was made for."""
        ...

    async def add_messages(self, records: Sequence[StoredRecord]) -> None:
        """Writes message records (idempotent by id); durable when it returns."""
        ...

    async def conversation_ids(self) -> set[str]:
        """Ids of the conversations with stored messages."""
        ...

    async def messages(self, cid: str, *, embeddings: bool) -> list[StoredRecord]:
        """A conversation's message records, unordered."""
        ...

    async def message(self, record_id: str) -> StoredRecord | None:
        """One message record (metadata only); None when absent."""
        ...

    async def facts(self, cid: str) -> list[StoredRecord]:
        """A conversation's facts records (no embeddings)."""
        ...

    async def save_facts(self, record: StoredRecord) -> None:
        """Writes (replaces) one branch's facts record."""
        ...
