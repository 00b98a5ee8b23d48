"""The behaviours capability's repository: one system collection per vector
dimension, ``driftd.sys.behaviors.d{dim}`` (cosine space; vectors of different
dimensions come from different models and are never compared). A record is one
behaviour, with ``user_id`` and ``state`` in its metadata."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from driftd.store import system
from driftd.store.chroma import SYSTEM_PREFIX, hnsw_config
from driftd.store.runner import StoreRunner
from driftd.store.system import StoredRecord

PREFIX = SYSTEM_PREFIX + "behaviors."


class ChromaBehaviorRepository:
    """Implements :class:`driftd.behaviors.ports.BehaviorRepository` over Chroma."""

    def __init__(self, runner: StoreRunner) -> None:
        self._runner = runner

    def _collection(self, dim: int) -> Any:
        return self._runner.store.client.get_or_create_collection(
            f"{PREFIX}d{dim}", configuration=hnsw_config("cosine"), embedding_function=None
        )

    async def active(self, user_id: str, dim: int) -> list[StoredRecord]:
        """The user's active behaviour records of dimension ``dim``, with embeddings."""
        got = await self._runner.call(
            lambda: self._collection(dim).get(
                where={"$and": [{"user_id": user_id}, {"state": "active"}]},
                include=["embeddings", "metadatas", "documents"],
            )
        )
        return system.records(got)

    async def of_user(self, user_id: str, state: str = "") -> list[StoredRecord]:
        """The user's behaviour records of every dimension (``state`` "" = any),
        without embeddings, in no particular order."""
        where: dict[str, Any] = {"user_id": user_id}
        if state:
            where = {"$and": [where, {"state": state}]}

        def read() -> list[StoredRecord]:
            client = self._runner.store.client
            names = sorted(c.name for c in client.list_collections() if c.name.startswith(PREFIX))
            out: list[StoredRecord] = []
            for name in names:
                got = client.get_collection(name, embedding_function=None).get(
                    where=where, include=["metadatas", "documents"]
                )
                out.extend(system.records(got))
            return out

        return await self._runner.call(read)

    async def write(self, records: Sequence[StoredRecord]) -> None:
        """Upserts behaviour records (each into its dimension's collection) by id;
        durable when it returns."""
        by_dim: dict[int, list[StoredRecord]] = {}
        for r in records:
            by_dim.setdefault(len(r.embedding), []).append(r)  # type: ignore[arg-type]
        batch = self._runner.store.max_batch_size

        def run() -> None:
            for dim, group in by_dim.items():
                system.upsert(self._collection(dim), group, batch)

        await self._runner.call(run)
