"""The math process pool: forkserver workers that import only numpy/scipy/driftd.flow.

grpc.aio and Chroma's Rust core are not fork-safe (grpc/grpc#19793), so workers
come from a forkserver that preloads the flow package and nothing else. Big
arrays reach them through shared memory (:mod:`driftd.flow.shared`), so that
submitting a task never stalls the event loop.

Abandoned work stops: a task whose awaiting coroutine is cancelled (client
cancel, deadline, shutdown) gets its cancel flag set and stops at the math's
next :func:`driftd.flow.worker.checkpoint`; :meth:`MathPool.shutdown` kills a
worker that still runs after SHUTDOWN_SECONDS.

Workers never run the user's ``__main__``. multiprocessing prepares every child
by re-running the parent's main script (``spawn.prepare`` ->
``_fixup_main_from_path``) so that functions defined there unpickle; for a
plain script that calls ``DriftDB(...)`` at top level that re-ran the script in
each worker, which tried to start a pool of its own and died
(BrokenProcessPool). Our tasks are all module-level functions of driftd, so the
pool's processes (named WORKER_NAME-*) are launched without the main-module
entries of their preparation data (:func:`_without_main`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import context, spawn
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from driftd import tracing
from driftd.flow import shared, tasks, worker
from driftd.metrics import POOL_QUEUE_DEPTH, POOL_TASK_SECONDS

log = logging.getLogger(__name__)

#: Array arguments of at least this many bytes travel through shared memory.
SHARE_BYTES = 1 << 20
#: Added to the workers' nice value (os.nice): they run below the server's threads.
WORKER_NICENESS = worker.NICENESS
#: Name prefix of the pool's worker processes (ps, and :func:`_without_main`).
WORKER_NAME = "driftd-math"
#: Tasks in flight with a cancel flag each; more run without one (never seen: the
#: pool has at most a few workers and a queue of awaited tasks).
CANCEL_SLOTS = 4096
#: Seconds a shutdown waits for workers to finish (cancelled tasks stop at their next
#: checkpoint) before it kills them.
SHUTDOWN_SECONDS = 2.0


@dataclass(frozen=True)
class Rows:
    """A task argument standing for ``source[index]``: the rows ``index`` (m,) int of
    ``source`` (n, ...), gathered by :meth:`MathPool.submit` on a thread straight
    into shared memory, so the event loop never copies them. ``source`` may take
    writes meanwhile (the engine's trajectory cache): a row rewritten during the
    gather may be read half old, half new."""

    source: np.ndarray
    index: np.ndarray


def _without_main(get_preparation_data):
    """``spawn.get_preparation_data`` that leaves out, for the pool's own processes
    only, the entries telling the child to re-run the parent's main module."""

    @functools.wraps(get_preparation_data)
    def prepare(name):
        data = get_preparation_data(name)
        if str(name).startswith(WORKER_NAME):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    prepare.driftd = True  # type: ignore[attr-defined]
    return prepare


# popen_forkserver looks the function up on the module at each launch.
if not getattr(spawn.get_preparation_data, "driftd", False):
    spawn.get_preparation_data = _without_main(spawn.get_preparation_data)


class _Context(context.ForkServerContext):
    """The forkserver context, with processes named WORKER_NAME-n and remembered, so
    that shutdown can kill those that outlive it."""

    def __init__(self) -> None:
        super().__init__()
        self.started: weakref.WeakSet = weakref.WeakSet()
        self._count = 0

    # A method where typeshed declares a class attribute: the executor only calls it.
    def Process(self, *args, **kwargs):  # type: ignore[override]  # noqa: N802
        self._count += 1
        kwargs["name"] = f"{WORKER_NAME}-{self._count}"
        process = context.ForkServerProcess(*args, **kwargs)
        self.started.add(process)
        return process


class MathPool:
    """Runs flow tasks in worker processes, awaitable from the event loop."""

    def __init__(self, workers: int) -> None:
        self._ctx = _Context()
        self._ctx.set_forkserver_preload(["driftd.flow.tasks"])
        # Shared with the workers by inheritance (pickled at their start-up).
        self._flags = self._ctx.RawArray("B", CANCEL_SLOTS)
        self._free = list(range(CANCEL_SLOTS))
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=self._ctx,
            initializer=worker.init,
            initargs=(self._flags,),
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
        name = args[0] if fn is tasks.run else fn.__name__
        self._pending += 1
        POOL_QUEUE_DEPTH.set(self._pending)
        blocks: list[SharedMemory] = []
        try:
            with tracing.tracer.start_as_current_span(
                f"pool {name}", attributes={"driftd.task": name}
            ):
                submitted = time.time_ns()
                if any(_shareable(a) for a in (*args, *kwargs.values())):
                    args, kwargs = await asyncio.to_thread(_share_all, fn, args, kwargs, blocks)
                slot = self._free.pop() if self._free else -1
                if slot >= 0:
                    self._flags[slot] = 0
                try:
                    future = self._executor.submit(worker.run, slot, fn, args, kwargs)
                    ran = await asyncio.wrap_future(future, loop=loop)
                except asyncio.CancelledError:
                    if slot >= 0:
                        self._flags[slot] = 1  # stops it at its next checkpoint
                    # The slot is reused, and the result freed, once the worker lets go.
                    future.add_done_callback(functools.partial(self._abandoned, slot))
                    raise
                except BaseException:
                    self._free_slot(slot)
                    raise
                self._free_slot(slot)
                _observe(name, submitted, ran)
                if isinstance(ran.result, shared.SharedResult):
                    with tracing.tracer.start_as_current_span("pool unpack"):
                        return await asyncio.to_thread(shared.unpack, ran.result)
                return ran.result
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

    def _free_slot(self, slot: int) -> None:
        if slot >= 0:
            self._free.append(slot)

    def _abandoned(self, slot: int, future) -> None:
        """Done callback (executor thread) of a task nobody awaits any more."""
        if not future.cancelled() and future.exception() is None:
            shared.release(future.result().result)
        self._free_slot(slot)  # list.append is atomic under the GIL

    def shutdown(self) -> None:
        """Cancels every task, waits up to SHUTDOWN_SECONDS for the workers to exit
        and kills those still running (math stuck outside a checkpoint), so that the
        process can always exit. Blocks: call it on a thread."""
        self._flags[:] = bytes([1]) * CANCEL_SLOTS
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for process in list(self._ctx.started):
            process.join(max(0.0, deadline - time.monotonic()))
        for process in list(self._ctx.started):
            if process.is_alive():
                log.warning("killing math worker %s: still busy at shutdown", process.pid)
                process.kill()
                process.join()


def _observe(task: str, submitted_ns: int, ran: shared.Ran) -> None:
    """Records a finished task's queue wait (submission, including the copy to
    shared memory, to a worker's start) and run time as child spans and metrics."""
    attributes = {"driftd.task": task}
    tracing.interval("pool queue", submitted_ns, ran.started_ns, attributes)
    tracing.interval("pool run", ran.started_ns, ran.ended_ns, attributes)
    queued = max(0, ran.started_ns - submitted_ns) / 1e9
    POOL_TASK_SECONDS.labels(task=task, phase="queue").observe(queued)
    POOL_TASK_SECONDS.labels(task=task, phase="run").observe((ran.ended_ns - ran.started_ns) / 1e9)


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
