"""What runs in a math worker around each task: the process's set-up and
cooperative cancellation.

A task whose caller went away (client cancel, expired deadline, shutdown) must
free its worker at once, not when its math ends: one SimulatePaths with a huge
step ran for hours and took every later flow call with it. The pool
(:mod:`driftd.engine.pool`) gives each task a slot in a byte array shared with
every worker (a ``multiprocessing`` RawArray, inherited at start-up) and sets
the slot's byte when the caller stops waiting. The math's loops call
:func:`checkpoint`, which reads that byte (tens of nanoseconds) and raises
:class:`Cancelled`. Chosen over terminating the worker because it keeps the
worker's cached models (:mod:`driftd.flow.tasks`) and the executor intact.

Outside a worker (tests, notebooks calling the math directly) ``checkpoint``
does nothing. This module imports only threadpoolctl and driftd.flow.shared.
"""

from __future__ import annotations

import os

import threadpoolctl

from driftd.flow import shared

#: Added to the workers' nice value (os.nice): they run below the server's threads.
NICENESS = 10

_flags = None  # the pool's cancel flags: one byte per task slot, set by init
_slot = -1  # the running task's slot; -1: none (or no flag to watch)


class Cancelled(Exception):
    """The task's caller no longer waits for it (cancelled, deadline, shutdown)."""


def init(flags) -> None:
    """Worker initialiser: ``flags`` is the pool's shared cancel-flag array."""
    global _flags
    # One BLAS thread per worker: with several workers on few cores, OpenBLAS's
    # spinning threads made a 20k-point fit 10x slower (48 s instead of 4.5 s).
    threadpoolctl.threadpool_limits(1)
    # Math is batch work; the server's event loop is latency work. With every core
    # busy, equal-priority workers made the loop wait for time slices: health-check
    # p99 19.7 ms instead of 6.2 ms (bench/flow/serving.py, 20k points, 2 cores).
    os.nice(NICENESS)
    _flags = flags


def run(slot: int, fn, args: tuple, kwargs: dict):
    """Runs one task (:func:`driftd.flow.shared.call`) watching cancel flag ``slot``
    (-1: none). Raises Cancelled if the flag is set before or while it runs."""
    global _slot
    _slot = slot
    try:
        checkpoint()
        return shared.call(fn, args, kwargs)
    finally:
        _slot = -1


def checkpoint() -> None:
    """Raises :class:`Cancelled` when the running task's caller has gone; call it in
    every loop of the math whose iterations can add up to more than ~0.1 s."""
    if _slot >= 0 and _flags is not None and _flags[_slot]:
        raise Cancelled
