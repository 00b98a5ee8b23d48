"""The math process pool: forkserver workers that import only numpy/scipy/driftd.flow.

grpc.aio and Chroma's Rust core are not fork-safe (grpc/grpc#19793), so workers
come from a forkserver that preloads the flow package and nothing else. Big
arrays reach them through shared memory (:mod:`driftd.flow.shared`), so that
submitting a task never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import threadpoolctl

from driftd.flow import shared, tasks
from driftd.metrics import POOL_QUEUE_DEPTH

log = logging.getLogger(__name__)

#: Array arguments of at least this many bytes travel through shared memory.
SHARE_BYTES = 1 << 20
#: Added to the workers' nice value (os.nice): they run below the server's threads.
WORKER_NICENESS = 10


@dataclass(frozen=True)
class Rows:
    """A task argument standing for ``source[index]``: the rows ``index`` (m,) int of
    ``source`` (n, ...), gathered by :meth:`MathPool.submit` on a thread straight
    into shared memory, so the event loop never copies them. ``source`` may take
    writes meanwhile (the engine's trajectory cache): a row rewritten during the
    gather may be read half old, half new."""

    source: np.ndarray
    index: np.ndarray


def _init_worker() -> None:
    # One BLAS thread per worker: with several workers on few cores, OpenBLAS's
    # spinning threads made a 20k-point fit 10x slower (48 s instead of 4.5 s).
    threadpoolctl.threadpool_limits(1)
    # Math is batch work; the server's event loop is latency work. With every core
    # busy, equal-priority workers made the loop wait for time slices: health-check
    # p99 19.7 ms instead of 6.2 ms (bench/flow/serving.py, 20k points, 2 cores).
    os.nice(WORKER_NICENESS)


class MathPool:
    """Runs flow tasks in worker processes, awaitable from the event loop."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["driftd.flow.tasks"])
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker
        )
        self._pending = 0

    async def submit(self, fn, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` in a worker; ``fn`` must be a module-level function.

        :class:`Rows` arguments, and arrays of SHARE_BYTES or more, are copied into
        shared memory on a thread and the task gets private copies in the worker; a
        result with big arrays (a fitted model) comes back through shared memory too
        (:func:`driftd.flow.shared.call`), copied out on a thread.
        """
        loop = asyncio.get_running_loop()
        self._pending += 1
        POOL_QUEUE_DEPTH.set(self._pending)
        blocks: list[SharedMemory] = []
        try:
            if any(_shareable(a) for a in (*args, *kwargs.values())):
                args, kwargs = await asyncio.to_thread(_share_all, fn, args, kwargs, blocks)
            future = self._executor.submit(shared.call, fn, args, kwargs)
            try:
                result = await asyncio.wrap_future(future, loop=loop)
            except asyncio.CancelledError:
                future.add_done_callback(_release)  # a result nobody will take
                raise
            if isinstance(result, shared.SharedResult):
                return await asyncio.to_thread(shared.unpack, result)
            return result
        finally:
            for block in blocks:
                block.close()
                block.unlink()
            self._pending -= 1
            POOL_QUEUE_DEPTH.set(self._pending)

    async def on_model(self, task: str, model, *args, **kwargs):
        """Runs ``tasks.TASKS[task]`` on a fitted model, sending the model only to a
        worker that does not hold it yet. ``model`` is the engine's record of it:
        ``key``, ``field`` (FlowField) and ``ensemble`` (its FlowEnsemble or None),
        sent along with the field so the worker need not build it."""
        try:
            return await self.submit(tasks.run, task, model.key, None, None, *args, **kwargs)
        except tasks.ModelMissing:
            return await self.submit(
                tasks.run, task, model.key, model.field, model.ensemble, *args, **kwargs
            )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _release(future) -> None:
    if not future.cancelled() and future.exception() is None:
        shared.release(future.result())


def _shareable(value) -> bool:
    return isinstance(value, Rows) or (
        isinstance(value, np.ndarray) and value.ndim > 0 and value.nbytes >= SHARE_BYTES
    )


def _share_all(fn, args: tuple, kwargs: dict, blocks: list[SharedMemory]) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` of task ``fn`` with shareable values moved to shared
    memory (run on a thread); the blocks made are appended to ``blocks`` as they are
    made, for the caller to unlink even if a later one fails. A value that finds no
    room in shared memory stays as it is (gathered, for :class:`Rows`) and is pickled."""

    def move(value):
        if not _shareable(value):
            return value
        rows = isinstance(value, Rows)
        try:
            ref, block = shared.share(*((value.source, value.index) if rows else (value,)))
        except OSError as exc:
            log.warning("no shared memory for a %s task argument (%s): pickling it", fn, exc)
            return np.take(value.source, value.index, axis=0) if rows else value
        blocks.append(block)
        return ref

    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}
