"""The math process pool: forkserver workers that import only numpy/scipy/driftd.flow.

grpc.aio and Chroma's Rust core are not fork-safe (grpc/grpc#19793), so workers
come from a forkserver that preloads the flow package and nothing else.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import threadpoolctl

from driftd.flow import tasks
from driftd.flow.field import FlowField
from driftd.metrics import POOL_QUEUE_DEPTH


def _init_worker() -> None:
    # One BLAS thread per worker: with several workers on few cores, OpenBLAS's
    # spinning threads made a 20k-point fit 10x slower (48 s instead of 4.5 s).
    threadpoolctl.threadpool_limits(1)


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
        """Runs ``fn(*args, **kwargs)`` in a worker; ``fn`` must be a module-level function."""
        loop = asyncio.get_running_loop()
        self._pending += 1
        POOL_QUEUE_DEPTH.set(self._pending)
        try:
            future = self._executor.submit(fn, *args, **kwargs)
            return await asyncio.wrap_future(future, loop=loop)
        finally:
            self._pending -= 1
            POOL_QUEUE_DEPTH.set(self._pending)

    async def on_model(self, task: str, key: str, field: FlowField, *args, **kwargs):
        """Runs ``tasks.TASKS[task]`` on a fitted model, sending the model only to a
        worker that does not hold it yet."""
        try:
            return await self.submit(tasks.run, task, key, None, *args, **kwargs)
        except tasks.ModelMissing:
            return await self.submit(tasks.run, task, key, field, *args, **kwargs)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
