"""The Python client's monitoring methods (sync and asyncio) against the real server."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftd.client import AsyncDriftClient
from driftd.errors import FailedPrecondition, InvalidArgument, NotFound
from driftd.v1 import monitor_pb2

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def coll(client):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 8))
    X[100:, 0] += 2.0
    client.create_collection("mon-client", dim=8, distance="l2")
    client.upsert(
        "mon-client",
        [
            {"id": f"c{i}", "timestamp": T0 + timedelta(hours=i), "vector": x}
            for i, x in enumerate(X)
        ],
    )
    return "mon-client"


def test_compare_and_health(client, coll):
    mid = T0 + timedelta(hours=100)
    out = client.compare_windows(coll, (None, mid), (mid, None), seed=3)
    assert out.report.verdict != monitor_pb2.DRIFT_VERDICT_NO_DRIFT
    assert out.report.window_a_count == out.report.window_b_count == 100
    same = client.compare_windows(
        coll, (T0, T0 + timedelta(hours=50)), (T0 + timedelta(hours=50), mid)
    )
    assert same.report.verdict == monitor_pb2.DRIFT_VERDICT_NO_DRIFT
    h = client.embedding_health(coll, end=mid)
    assert h.point_count == 100
    with pytest.raises(FailedPrecondition) as err:
        client.compare_windows(coll, (None, T0), (mid, None))
    assert err.value.reason == "NOT_ENOUGH_POINTS" and err.value.metadata["window"] == "window_a"
    with pytest.raises(InvalidArgument) as err:
        client.compare_windows(coll, ("yesterday", None), (mid, None))
    assert err.value.field_violations[0].field == "window_a.time_range.start_time"


def test_rules_and_watch(client, coll):
    rule = client.create_drift_rule(coll, window_seconds=3600, rule_id="hourly")
    assert [r.name for r in client.list_drift_rules(coll)] == [rule.name]
    assert client.get_drift_rule(coll, "hourly").window.seconds == 3600
    client.delete_drift_rule(coll, "hourly")
    with pytest.raises(NotFound) as err:
        client.get_drift_rule(coll, "hourly")
    assert err.value.reason == "DRIFT_RULE_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        next(client.watch(coll, event_types=["nonsense"]))

    events = []
    stream = client.watch(coll, event_types=["points_deleted"])
    reader = threading.Thread(target=lambda: events.append(next(stream)))
    reader.start()
    for _ in range(100):  # until the watch is registered and sees the delete
        client.delete_points(coll, ["c0"])
        client.upsert(coll, [{"id": "c0", "timestamp": T0, "vector": [0.0] * 8}])
        reader.join(0.1)
        if events:
            break
    stream.close()
    assert list(events[0].points_deleted.point_ids) == ["c0"]


async def test_async_client(server, coll):
    async with AsyncDriftClient(server.target, timeout=120) as db:
        mid = T0 + timedelta(hours=100)
        out = await db.compare_windows(coll, (None, mid), (mid, None), permutations=100)
        assert out.report.mmd.permutations == 100
        rule = await db.create_drift_rule(coll, window_seconds=60)
        assert [r.name async for r in db.list_drift_rules(coll)] == [rule.name]
        await db.delete_drift_rule(coll, rule.name.rsplit("/", 1)[1])
        stream = db.watch(coll, event_types=["points_deleted"])
        first = asyncio.ensure_future(anext(stream))
        for _ in range(100):  # until the watch is registered and sees the delete
            await db.delete_points(coll, ["c1"])
            await db.upsert(coll, [{"id": "c1", "timestamp": T0, "vector": [0.0] * 8}])
            done, _ = await asyncio.wait({first}, timeout=0.1)
            if done:
                break
        assert list(first.result().points_deleted.point_ids) == ["c1"]
        await stream.aclose()
