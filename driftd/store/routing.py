"""The routing capability's repository: conversation messages and branch facts
in two system collections (cosine space), read and written on the store thread.

- ``driftd.sys.routing.messages``: one record per routed message (its embedding,
  its text as the document, the decision in its metadata), with a ``conversation``
  metadata key to select a conversation's messages.
- ``driftd.sys.routing.branches``: one record per branch whose facts were
  extracted (the branch centroid, the facts as JSON in the document).

The messages collection records the embed model it was created with
(``driftd:embed_model`` in its metadata), so a changed server default never mixes
models within the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from driftd.store import system
from driftd.store.chroma import hnsw_config
from driftd.store.runner import StoreRunner
from driftd.store.system import StoredRecord

MESSAGES = "driftd.sys.routing.messages"
BRANCHES = "driftd.sys.routing.branches"
_MODEL_KEY = "driftd:embed_model"


class ChromaRoutingRepository:
    """Implements :class:`driftd.routing.ports.RoutingRepository` over Chroma.

    Call :meth:`open` first; every other method needs it.
    """

    def __init__(self, runner: StoreRunner) -> None:
        self._runner = runner
        self._messages: Any = None  # Chroma collection handles, store thread only
        self._branches: Any = None

    async def open(self, default_model: str) -> str:
        """Opens (or creates) the collections; returns the embed model the
        messages collection was created with (``default_model`` when new)."""

        def run() -> str:
            client = self._runner.store.client
            self._messages = client.get_or_create_collection(
                MESSAGES,
                metadata={_MODEL_KEY: default_model},
                configuration=hnsw_config("cosine"),
                embedding_function=None,
            )
            self._branches = client.get_or_create_collection(
                BRANCHES, configuration=hnsw_config("cosine"), embedding_function=None
            )
            return str((self._messages.metadata or {}).get(_MODEL_KEY, default_model))

        return await self._runner.call(run)

    async def add_messages(self, records: Sequence[StoredRecord]) -> None:
        """Writes message records (idempotent by id); durable when it returns."""
        batch = self._runner.store.max_batch_size
        await self._runner.call(lambda: system.upsert(self._messages, records, batch))

    async def conversation_ids(self) -> set[str]:
        """The ids of the conversations with stored messages (message record ids
        are ``{conversation_id}/{key}``: read the ids alone, not the metadata)."""
        got = await self._runner.call(lambda: self._messages.get(include=[]))
        return {rid.rpartition("/")[0] for rid in got["ids"]}

    async def messages(self, cid: str, *, embeddings: bool) -> list[StoredRecord]:
        """The conversation's message records, in no particular order (with their
        embeddings if asked)."""
        include = ["metadatas", "documents"] + (["embeddings"] if embeddings else [])
        got = await self._runner.call(
            lambda: self._messages.get(where={"conversation": cid}, include=include)
        )
        return system.records(got)

    async def message(self, record_id: str) -> StoredRecord | None:
        """One message record's metadata by record id; None when absent."""
        got = await self._runner.call(
            lambda: self._messages.get(ids=[record_id], include=["metadatas"])
        )
        found = system.records(got)
        return found[0] if found else None

    async def facts(self, cid: str) -> list[StoredRecord]:
        """The conversation's stored facts records (no embeddings)."""
        got = await self._runner.call(
            lambda: self._branches.get(
                where={"conversation": cid}, include=["metadatas", "documents"]
            )
        )
        return system.records(got)

    async def save_facts(self, record: StoredRecord) -> None:
        """Writes (replaces) one branch's facts record."""
        batch = self._runner.store.max_batch_size
        await self._runner.call(lambda: system.upsert(self._branches, [record], batch))
