"""The resuming stream writer against real driftd servers: batching and progress on
the session server, and a server SIGKILLed mid-stream and restarted on the same
port and data directory while the writer carries on by itself."""

from __future__ import annotations

import asyncio
from concurrent import futures
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from support import ServerProcess

from driftd.client import AsyncDriftClient, DriftClient
from driftd.errors import InvalidArgument, NotFound

DIM = 8
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_points(n: int, prefix: str = "w"):
    rng = np.random.default_rng(7)
    return [
        {"id": f"{prefix}{i}", "timestamp": T0 + timedelta(minutes=i), "vector": rng.random(DIM)}
        for i in range(n)
    ]


def stored_ids(client: DriftClient, name: str) -> list[str]:
    return [p.id for p in client.trajectory(name)]


def test_writer_batches_acks_and_counts(client):
    client.create_collection("writer-basic", dim=DIM, distance="l2")
    points = make_points(1050)
    acks = []
    with client.writer("writer-basic", batch_size=100, on_ack=acks.append) as w:
        w.extend(points[:1000])
        assert w.progress.acked <= 1000  # some batches may still be in flight
        w.add(points[1000])
        assert w.flush().acked == 1001  # flush waits for every ack
        w.extend(points[1001:])
    # ten full batches, the flushed one of one point, the last one of 49
    assert [len(a.errors) + a.accepted for a in acks] == [100] * 10 + [1, 49]
    assert [a.sequence for a in acks] == list(range(12))
    progress = w.progress
    assert (progress.added, progress.acked, progress.accepted) == (1050, 1050, 1050)
    assert (progress.rejected, progress.errors, progress.batches) == (0, [], 12)
    assert progress.reconnects == 0 and progress.version == acks[-1].version
    assert stored_ids(client, "writer-basic") == [p["id"] for p in points]


def test_writer_reports_refused_points_by_their_position(client):
    client.create_collection("writer-refused", dim=DIM, distance="l2")
    points = make_points(30)
    points[17]["vector"] = np.ones(DIM + 1)  # wrong dimension: refused by the server
    with client.writer("writer-refused", batch_size=10) as w:
        w.extend(points[:5])
        with pytest.raises(InvalidArgument) as info:  # malformed: refused at once
            w.add({"id": "bad", "timestamp": "yesterday", "vector": [1.0] * DIM})
        assert [v.field for v in info.value.field_violations] == ["points[5].time"]
        w.extend(points[5:])
    assert w.progress.added == 30 and w.progress.accepted == 29 and w.progress.rejected == 1
    (error,) = w.progress.errors
    assert (error.index, error.id, error.reason) == (17, "w17", "DIMENSION_MISMATCH")


def test_writer_to_a_missing_collection_raises_not_found(client):
    with pytest.raises(NotFound), client.writer("writer-missing") as w:
        w.extend(make_points(3))


def test_writer_left_by_an_exception_does_not_flush(client):
    client.create_collection("writer-abort", dim=DIM, distance="l2")
    with pytest.raises(RuntimeError), client.writer("writer-abort", batch_size=10) as w:
        w.extend(make_points(5))
        raise RuntimeError("caller gave up")
    assert w.progress.acked == 0
    assert client.get_collection("writer-abort").point_count == 0


async def test_async_writer_takes_async_iterables(server):
    async def rows():
        for point in make_points(250, "a"):
            yield point

    async with AsyncDriftClient(server.target, timeout=120) as db:
        await db.create_collection("writer-async", dim=DIM, distance="l2")
        async with db.writer("writer-async", batch_size=100) as w:
            await w.extend(rows())
        assert (w.progress.accepted, w.progress.batches) == (250, 3)
        assert (await db.get_collection("writer-async")).point_count == 250


# --- SIGKILL mid-stream -----------------------------------------------------------

BATCH, TOTAL, KILL_AFTER = 200, 4000, 5


@pytest.fixture
def crashable(tmp_path):
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log").start()
    yield srv
    srv.stop()


def check_all_written_once(srv: ServerProcess, points, progress) -> None:
    assert progress.reconnects >= 1
    assert (progress.added, progress.acked, progress.accepted) == (TOTAL, TOTAL, TOTAL)
    assert progress.rejected == 0 and progress.batches == TOTAL // BATCH
    with DriftClient(srv.target, timeout=120) as client:
        assert client.get_collection("resume").point_count == TOTAL
        assert stored_ids(client, "resume") == [p["id"] for p in points]


def test_writer_resumes_after_sigkill_and_restart(crashable):
    points = make_points(TOTAL)
    restart = None
    with (
        futures.ThreadPoolExecutor(max_workers=1) as pool,
        DriftClient(crashable.target, timeout=120) as client,
    ):
        client.create_collection("resume", dim=DIM, distance="l2")
        with client.writer("resume", batch_size=BATCH) as w:
            for point in points:
                w.add(point)
                if restart is None and w.progress.batches >= KILL_AFTER:
                    crashable.kill()  # SIGKILL with batches in flight
                    restart = pool.submit(crashable.start)
        restart.result()
    check_all_written_once(crashable, points, w.progress)


async def test_async_writer_resumes_after_sigkill_and_restart(crashable):
    points = make_points(TOTAL)
    restart = None
    async with AsyncDriftClient(crashable.target, timeout=120) as client:
        await client.create_collection("resume", dim=DIM, distance="l2")
        async with client.writer("resume", batch_size=BATCH) as w:
            for point in points:
                await w.add(point)
                if restart is None and w.progress.batches >= KILL_AFTER:
                    await asyncio.to_thread(crashable.kill)
                    restart = asyncio.create_task(asyncio.to_thread(crashable.start))
        await restart
    await asyncio.to_thread(check_all_written_once, crashable, points, w.progress)
