"""The store thread: the one thread that owns the Chroma client.

Chroma's local client is synchronous and not safe across processes, so every
Chroma call of every capability (points, routing, monitor, behaviours) runs on
this single thread, in the order the calls are made. The repository adapters of
:mod:`driftd.store` are the only code that submits work here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from driftd.errors import Unavailable
from driftd.store.chroma import ChromaStore

T = TypeVar("T")


class StoreRunner:
    """Owns the Chroma client (:class:`ChromaStore`) and the thread it runs on.

    Create with :meth:`open`; close with :meth:`aclose` (idempotent).
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-chroma")
        self._store: ChromaStore | None = None

    @classmethod
    async def open(cls, *, path: str, url: str = "", token: str = "") -> StoreRunner:
        """Opens Chroma on the store thread: the embedded directory ``path``, or
        the Chroma server at ``url`` (``http://host:port``) when given, sending
        ``token`` with Chroma's token auth.

        Raises:
            Exception: Chroma cannot open the directory or reach the server.
        """
        runner = cls()
        runner._store = await runner.call(lambda: ChromaStore(path=path, url=url, token=token))
        return runner

    @property
    def store(self) -> ChromaStore:
        """The Chroma adapter; use it only inside :meth:`call`.

        Raises Unavailable when the runner is closed.
        """
        if self._store is None:
            raise Unavailable("driftd is not serving: storage is not open (starting or stopping)")
        return self._store

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`aclose`."""
        return self._store is not None

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Runs ``fn()`` on the store thread; await the result. Submitted at once,
        so calls run in the order they are made, even one started from a
        synchronous callback.

        Raises (when awaited) Unavailable once the runner is closed.
        """
        loop = asyncio.get_running_loop()
        try:
            return loop.run_in_executor(self._thread, fn)
        except RuntimeError:  # the executor is shut down
            failed: asyncio.Future[T] = loop.create_future()
            failed.set_exception(Unavailable("driftd is stopping: storage is closed"))
            return failed

    async def aclose(self) -> None:
        """Waits for the submitted calls and releases the thread. Idempotent."""
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._thread.shutdown(wait=True)
        )
        self._store = None
