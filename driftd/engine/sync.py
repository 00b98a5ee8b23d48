"""DriftDB: the synchronous, in-process face of the engine.

It runs an AsyncDriftDB on a private event loop in a background thread, so the
same code serves the gRPC server and plain scripts:

    db = DriftDB("./driftd_data")
    db.create_collection("notes", embed_model="all-MiniLM-L6-v2")
    db.upsert("notes", [{"id": "1", "timestamp": "2024-01-01T00:00:00Z", "text": "hi"}])

Streaming methods (``trajectory``, ``flow_simulate``) return flat lists here.
"""

from __future__ import annotations

import asyncio
import functools
import threading

from driftd.config import Settings
from driftd.engine.db import AsyncDriftDB

# Coroutine methods forwarded as they are; async generators are collected into lists.
_UNARY = (
    "create_collection",
    "get_collection",
    "list_collections",
    "delete_collection",
    "attach_collection",
    "upsert",
    "get_points",
    "delete_points",
    "search",
    "flow_vector",
    "flow_attractors",
    "flow_chapters",
)
_STREAMING = ("trajectory", "flow_simulate")


class DriftDB:
    """In-process driftd over an embedded Chroma directory (or ``chroma_url``).

    Args:
        path: Chroma directory; default from DRIFTD_CHROMA_PATH or ./driftd_data.
        **settings: any :class:`driftd.config.Settings` field (e.g. ``workers=2``).
    """

    def __init__(self, path: str | None = None, **settings: object) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="driftd-engine", daemon=True
        )
        self._thread.start()
        cfg = Settings.from_env(None, chroma_path=path, **settings)
        self._db: AsyncDriftDB = self._run(AsyncDriftDB.open(cfg))

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Closes the engine and stops its thread. Idempotent."""
        if self._loop.is_running():
            self._run(self._db.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> DriftDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def settings(self) -> Settings:
        return self._db.settings


def _forward(name: str):
    method = getattr(AsyncDriftDB, name)

    @functools.wraps(method)
    def call(self: DriftDB, *args, **kwargs):
        return self._run(method(self._db, *args, **kwargs))

    return call


def _collect(name: str):
    method = getattr(AsyncDriftDB, name)

    async def drain(gen):
        items = []
        async for item in gen:
            # trajectory yields chunks (lists of points): flatten them.
            if isinstance(item, list):
                items.extend(item)
            else:
                items.append(item)
        return items

    @functools.wraps(method)
    def call(self: DriftDB, *args, **kwargs):
        return self._run(drain(method(self._db, *args, **kwargs)))

    return call


for _name in _UNARY:
    setattr(DriftDB, _name, _forward(_name))
for _name in _STREAMING:
    setattr(DriftDB, _name, _collect(_name))
