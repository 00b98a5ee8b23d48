"""The monitor capability's repository: drift rules in the system collection
``driftd.sys.monitor.drift_rules``, one record per rule (id
``{collection}/{rule_id}``, the rule in its metadata, a placeholder 1-d embedding
because Chroma requires one)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from driftd.store import system
from driftd.store.chroma import SYSTEM_PREFIX
from driftd.store.runner import StoreRunner
from driftd.store.system import Metadata, StoredRecord

RULES_COLLECTION = SYSTEM_PREFIX + "monitor.drift_rules"
_NO_VECTOR = np.zeros(1, dtype=np.float32)


class ChromaRuleRepository:
    """Implements :class:`driftd.monitor.ports.RuleRepository` over Chroma."""

    def __init__(self, runner: StoreRunner) -> None:
        self._runner = runner

    def _rules(self) -> Any:
        return self._runner.store.client.get_or_create_collection(
            RULES_COLLECTION, embedding_function=None
        )

    async def load(self, collection: str) -> list[StoredRecord]:
        """The stored rules of one collection, any incarnation (metadata only)."""
        got = await self._runner.call(
            lambda: self._rules().get(where={"collection": collection}, include=["metadatas"])
        )
        return system.records(got)

    async def save(self, rule_id: str, metadata: Metadata) -> None:
        """Writes (replaces) one rule record."""
        record = StoredRecord(rule_id, metadata, "", _NO_VECTOR)
        batch = self._runner.store.max_batch_size
        await self._runner.call(lambda: system.upsert(self._rules(), [record], batch))

    async def delete(self, rule_ids: Sequence[str]) -> None:
        """Deletes rule records by id (absent ids are ignored)."""
        ids = list(rule_ids)
        await self._runner.call(lambda: self._rules().delete(ids=ids))

    def delete_of_collection(self, name: str, uid: str) -> asyncio.Future[None]:
        """Deletes the rules of collection ``name`` incarnation ``uid``. Submitted
        at once (so before any later store call, even from a synchronous
        callback); await the result or add a done callback."""
        return self._runner.call(
            lambda: self._rules().delete(
                where={"$and": [{"collection": name}, {"collection_uid": uid}]}
            )
        )
