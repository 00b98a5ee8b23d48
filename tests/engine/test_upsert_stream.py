"""AsyncDriftDB.upsert_stream (StreamUpsertPoints' engine side): batches read
ahead while the store writes and written together must still give one result per
batch, in order, with later batches winning on repeated ids; an error from the
batches comes after the results of the batches before it. Real embedded Chroma."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftd.config import Settings
from driftd.engine._points import STREAM_AHEAD
from driftd.engine.db import AsyncDriftDB
from driftd.errors import InvalidArgument

T0 = datetime(2024, 1, 1, tzinfo=UTC)
D = 8


def _batch(b: int, size: int, ids=None) -> list[dict]:
    rng = np.random.default_rng(b)
    return [
        {
            "id": ids[i] if ids else f"b{b}-{i}",
            "timestamp": T0 + timedelta(minutes=b, seconds=i),
            "vector": rng.standard_normal(D).astype(np.float32),
            "payload": {"batch": b},
        }
        for i in range(size)
    ]


@pytest.fixture
async def db(tmp_path):
    engine = await AsyncDriftDB.open(Settings.from_env(chroma_path=str(tmp_path), workers=1))
    await engine.create_collection("stream", dim=D)
    yield engine
    await engine.close()


async def test_results_in_order_and_later_batches_win(db):
    batches = [_batch(b, 50) for b in range(3 * STREAM_AHEAD)]
    # Repeated ids: batch 5 rewrites batch 4's points, batch 7 some of batch 2's.
    batches[5] = _batch(5, 50, ids=[p["id"] for p in batches[4]])
    batches[7] = _batch(7, 10, ids=[p["id"] for p in batches[2][:10]])
    batches[6][3]["vector"] = np.ones(D + 1, dtype=np.float32)  # a bad point

    async def source():
        for b in batches:
            yield b

    results = [r async for r in db.upsert_stream("stream", source())]
    assert [r.upserted for r in results] == [len(b) - (i == 6) for i, b in enumerate(batches)]
    assert [len(r.errors) for r in results] == [int(i == 6) for i in range(len(batches))]
    versions = [r.version for r in results]
    assert versions == sorted(versions)
    expected: dict[str, dict] = {}
    for i, b in enumerate(batches):
        for j, p in enumerate(b):
            if not (i == 6 and j == 3):
                expected[p["id"]] = p
    found, missing = await db.get_points("stream", list(expected), include_vectors=True)
    assert not missing
    for p in found:
        want = expected[p.id]
        np.testing.assert_allclose(p.vector, want["vector"], rtol=1e-6)
        assert p.payload == want["payload"] and p.time == want["timestamp"]
    info = await db.get_collection("stream")
    assert info.point_count == len(expected) and info.version == versions[-1]


async def test_an_error_in_the_batches_comes_after_the_earlier_results(db):
    async def source():
        for b in range(3):
            yield _batch(b, 20)
        raise InvalidArgument("sequence out of order", reason="SEQUENCE_OUT_OF_ORDER")

    results = []
    with pytest.raises(InvalidArgument):
        async for r in db.upsert_stream("stream", source()):
            results.append(r)
    assert [r.upserted for r in results] == [20, 20, 20]
    assert (await db.get_collection("stream")).point_count == 60


async def test_closing_the_stream_stops_reading(db):
    read = 0

    async def source():
        nonlocal read
        for b in range(100):
            read += 1
            yield _batch(b, 5)
            await asyncio.sleep(0)

    results = db.upsert_stream("stream", source())
    first = await anext(results)
    await results.aclose()
    assert first.upserted == 5
    # The reader was at most STREAM_AHEAD (+ the one being handed over) ahead.
    assert read <= 2 + STREAM_AHEAD + 1
