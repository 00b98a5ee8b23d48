"""The composition root: one object that opens and closes everything driftd
runs on — the store thread (Chroma), the points engine (with its math pool and
embedder), and the capabilities — and wires each capability to its repository
adapter in :mod:`driftd.store`.

Capabilities and their storage adapters (all in :mod:`driftd.store`):

- points + flow: :class:`~driftd.engine.AsyncDriftDB` over
  :class:`~driftd.store.chroma.ChromaStore`;
- monitor: :class:`~driftd.monitor.monitor.Monitor` over
  :class:`~driftd.store.monitor.ChromaRuleRepository`;
- behaviours: :class:`~driftd.behaviors.store.BehaviorStore` over
  :class:`~driftd.store.behaviors.ChromaBehaviorRepository`;
- routing: :class:`~driftd.routing.engine.RoutingEngine` over
  :class:`~driftd.store.routing.ChromaRoutingRepository`.

Nothing outside :mod:`driftd.store` touches Chroma; every store call runs on
the one store thread of :class:`~driftd.store.runner.StoreRunner`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from driftd.behaviors.store import BehaviorStore
from driftd.config import Settings
from driftd.engine.db import AsyncDriftDB
from driftd.monitor.monitor import Monitor
from driftd.routing.engine import RoutingEngine, default_engine
from driftd.store.behaviors import ChromaBehaviorRepository
from driftd.store.monitor import ChromaRuleRepository
from driftd.store.routing import ChromaRoutingRepository
from driftd.store.runner import StoreRunner

log = logging.getLogger(__name__)


class Driftd:
    """Everything driftd runs, opened by :meth:`open` and closed by :meth:`aclose`.

    Attributes:
        settings: what it was opened with.
        db: collections, points and flow (also the event hub, pool and embedder).
        monitor: drift tests, health, drift rules, watches, online chapters.
        behaviors: ProcessBehaviors / ListBehaviors.
        routing: conversation routing (sets itself up on first use).
    """

    def __init__(
        self,
        settings: Settings,
        store: StoreRunner,
        db: AsyncDriftDB,
        monitor: Monitor,
        behaviors: BehaviorStore,
        routing: RoutingEngine,
    ) -> None:
        self.settings = settings
        self._store = store
        self.db = db
        self.monitor = monitor
        self.behaviors = behaviors
        self.routing = routing

    @classmethod
    async def open(cls, settings: Settings | None = None) -> Driftd:
        """Opens Chroma (``settings.chroma_url`` or ``chroma_path``), the points
        engine and the monitor (which loads the drift rules).

        Raises:
            Exception: Chroma cannot open the directory or reach the server (what
                was opened is closed again).
        """
        settings = settings or Settings.from_env()
        store = await StoreRunner.open(
            path=settings.chroma_path,
            url=settings.chroma_url,
            reserve_bytes=settings.storage_reserve_bytes,
            token=settings.chroma_token,
        )
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(store.aclose)
            db = await AsyncDriftDB.open(settings, store=store)
            undo.push_async_callback(db.close)
            monitor = Monitor(db, ChromaRuleRepository(store))
            await monitor.open()
            behaviors = BehaviorStore(
                ChromaBehaviorRepository(store), db.embed, settings.embed_model
            )
            routing = default_engine(settings, ChromaRoutingRepository(store))
            undo.pop_all()
        return cls(settings, store, db, monitor, behaviors, routing)

    async def ready(self, timeout: float) -> bool:
        """True while storage answers a heartbeat within ``timeout`` seconds."""
        return await self._store.ready(timeout)

    def retain(
        self, *, collections: Callable[[str], bool], conversations: Callable[[str], bool]
    ) -> None:
        """Drops the in-memory state of the collections and conversations this
        replica no longer owns (server mode with peers); each capability reads a
        key's state from Chroma again when it gets the key back."""
        self.db.retain(collections)
        self.monitor.retain(collections)
        self.routing.retain(conversations)

    async def stop_watches(self) -> None:
        """Ends the watch streams (UNAVAILABLE) and the monitor's background work:
        a draining server calls this first, since watches never end by themselves."""
        await self.monitor.aclose()

    async def aclose(self) -> None:
        """Closes the capabilities, then the points engine, then the store thread
        (after the calls queued on it). Idempotent."""
        await self.monitor.aclose()
        await self.routing.aclose()
        await self.db.close()
        await self._store.aclose()
