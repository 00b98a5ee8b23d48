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

from driftd import tracing
from driftd.errors import Unavailable
from driftd.store import faults
from driftd.store.chroma import ChromaStore

T = TypeVar("T")


class StoreRunner:
    """Owns the Chroma client (:class:`ChromaStore`) and the thread it runs on.

    Every call's storage failures come out as driftd errors
    (:mod:`driftd.store.faults`): Unavailable(STORAGE_UNAVAILABLE) when the Chroma
    server cannot be reached, ResourceExhausted(STORAGE_FULL) when the embedded
    directory's volume is full.

    Create with :meth:`open`; close with :meth:`aclose` (idempotent).
    """

    def __init__(self, embedded_path: str | None = None, reserve_bytes: int = 0) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-chroma")
        self._store: ChromaStore | None = None
        self._embedded_path = embedded_path
        self._reserve = reserve_bytes

    @classmethod
    async def open(
        cls, *, path: str, url: str = "", reserve_bytes: int = 0, token: str = ""
    ) -> StoreRunner:
        """Opens Chroma on the store thread: the embedded directory ``path``, or
        the Chroma server at ``url`` (``http://host:port``) when given, sending
        ``token`` with Chroma's token auth.
        ``reserve_bytes``: free bytes each write must leave on the embedded
        directory's volume (:meth:`check_room`).

        Raises:
            Exception: Chroma cannot open the directory or reach the server.
        """
        runner = cls(None if url else path, reserve_bytes)
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

        Traced as a ``chroma <caller>`` span (the function that made the call),
        from submission to result, with a ``run`` event when the thread takes it.

        Raises (when awaited) Unavailable once the runner is closed.
        """
        loop = asyncio.get_running_loop()
        span = tracing.start_span(f"chroma {_caller(fn)}", {"db.system.name": "chroma"})

        def run() -> T:
            span.add_event("run")
            return fn()

        try:
            future = loop.run_in_executor(
                self._thread, faults.translated(run, self._embedded_path, self._reserve)
            )
        except RuntimeError:  # the executor is shut down
            future = loop.create_future()
            future.set_exception(Unavailable("driftd is stopping: storage is closed"))
        future.add_done_callback(lambda f: _end_span(span, f))
        return future

    def check_room(self, batch_bytes: int) -> asyncio.Future[None]:
        """Checks, on the store thread, that a write of about ``batch_bytes``
        bytes of data leaves the reserve free on the embedded directory's volume
        (a no-op with a Chroma server, whose disk driftd cannot see).

        Raises (when awaited) ResourceExhausted(STORAGE_FULL).
        """
        return self.call(lambda: faults.check_room(self._embedded_path, batch_bytes, self._reserve))

    async def ready(self, timeout: float) -> bool:
        """True while storage is open and answers a heartbeat within ``timeout``
        seconds (the readiness probe, :mod:`driftd.server.readiness`)."""
        if self._store is None:
            return False
        store = self._store
        try:
            await asyncio.wait_for(self.call(store.heartbeat), timeout)
        except Exception:  # unreachable, timed out, or failing: not ready either way
            return False
        return True

    async def aclose(self) -> None:
        """Waits for the submitted calls and releases the thread. Idempotent."""
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._thread.shutdown(wait=True)
        )
        self._store = None


def _caller(fn: Callable[[], object]) -> str:
    """Who submitted ``fn``: ``PointsMixin.upsert`` for a lambda or local function
    defined there, else ``fn``'s own qualified name."""
    name = getattr(fn, "__qualname__", type(fn).__name__)
    return name.split(".<locals>", 1)[0]


def _end_span(span, future: asyncio.Future) -> None:
    error = None if future.cancelled() else future.exception()
    if error is not None:
        tracing.record_error(span, error)
    span.end()
