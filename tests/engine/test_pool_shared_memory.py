"""The math pool's transport of big arrays (driftd.flow.shared) with real forkserver
workers: tasks see the same arrays as through a pickle, gathered rows included, and
no shared-memory block outlives its task."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from driftd.engine.pool import SHARE_BYTES, MathPool, Rows


def _blocks() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


def _assert_no_new_block(before: set[str], wait: float = 10.0) -> None:
    """No block beyond ``before`` stays. /dev/shm is the machine's: another process's
    block of a running task may appear meanwhile, but it goes with its task, while a
    block this test leaked stays."""
    deadline = time.monotonic() + wait
    while (extra := _blocks() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not extra


def test_big_arrays_and_rows_reach_the_worker_through_shared_memory():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 384)).astype(np.float32)  # 7.7 MB
    index = rng.permutation(5000)[:3000]
    small = rng.standard_normal(10)
    assert X.nbytes >= SHARE_BYTES > small.nbytes
    before = _blocks()

    async def run():
        pool = MathPool(1)
        try:
            whole = await pool.submit(np.sum, X, axis=0)
            rows = await pool.submit(np.sum, Rows(X, index), axis=0)
            mixed = await pool.submit(np.dot, small, small)
            # Several at once, one worker: blocks wait for their task, then go.
            many = await asyncio.gather(
                *(pool.submit(np.max, Rows(X, index[k::4])) for k in range(4))
            )
        finally:
            pool.shutdown()
        return whole, rows, mixed, many

    whole, rows, mixed, many = asyncio.run(run())
    np.testing.assert_array_equal(whole, X.sum(axis=0))
    np.testing.assert_array_equal(rows, X[index].sum(axis=0))
    assert mixed == small @ small
    assert many == [X[index[k::4]].max() for k in range(4)]
    _assert_no_new_block(before)


def test_big_results_come_back_through_shared_memory_and_leave_no_block():
    A = np.random.default_rng(1).standard_normal((1500, 1500)) + 40 * np.eye(1500)
    before = _blocks()

    async def run():
        pool = MathPool(1)
        try:
            big = await pool.submit(np.linalg.inv, A)  # 18 MB back
            # A result whose caller went away is freed when it arrives.
            orphan = asyncio.ensure_future(pool.submit(np.linalg.inv, A))
            await asyncio.sleep(0.2)  # the worker is computing it
            orphan.cancel()
            after = await pool.submit(np.dot, A[0], A[0])  # queued behind the orphan
        finally:
            pool.shutdown()
        return big, orphan.cancelled(), after

    big, cancelled, after = asyncio.run(run())
    np.testing.assert_allclose(big, np.linalg.inv(A), rtol=1e-9, atol=1e-12)  # BLAS threads differ
    assert big.flags.writeable and big.flags.c_contiguous
    assert cancelled and after == A[0] @ A[0]
    _assert_no_new_block(before)
