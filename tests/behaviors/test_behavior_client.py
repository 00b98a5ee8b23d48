"""The Python client's behaviour methods (sync and asyncio) against the real server."""

from __future__ import annotations

import pytest

from driftd.client import AsyncDriftClient
from driftd.errors import InvalidArgument
from driftd.v1 import behavior_pb2

COFFEE = [1.0, 0.0, 0.0]


def test_process_and_list(client):
    first = client.process_behaviors(
        "client-ana",
        [
            {"intent": "preference", "target": "coffee", "credibility": 0.9, "vector": COFFEE},
            {"intent": "skill", "target": "chess", "credibility": 0.4, "vector": [0, 1.0, 0]},
        ],
        time="2024-01-01T00:00:00Z",
    ).decisions
    assert [d.action for d in first] == [behavior_pb2.BEHAVIOR_ACTION_INSERT] * 2
    (d,) = client.process_behaviors(
        "client-ana",
        [
            {
                "intent": "preference",
                "target": "coffee",
                "polarity": "negative",
                "credibility": 0.5,
                "vector": COFFEE,
            }
        ],
        time="2024-07-01T00:00:00Z",
        policy={"half_life_days": 30},
    ).decisions
    assert d.action == behavior_pb2.BEHAVIOR_ACTION_SUPERSEDE and d.effective_credibility < 0.1
    everything = list(client.list_behaviors("client-ana", page_size=1))
    assert len(everything) == 3
    active = list(client.list_behaviors("client-ana", state="active", time="2024-07-01T00:00:00Z"))
    assert sorted(b.target for b in active) == ["chess", "coffee"]


def test_client_side_validation_sends_nothing(client):
    with pytest.raises(InvalidArgument) as err:
        client.process_behaviors("client-bob", [{"intent": "hobby", "credibility": 0.5}])
    assert err.value.field_violations[0].field == "candidates[0].intent"
    with pytest.raises(InvalidArgument) as err:
        list(client.list_behaviors("client-bob", state="asleep"))
    assert err.value.field_violations[0].field == "state"
    with pytest.raises(InvalidArgument) as err:  # the server's check
        client.process_behaviors(
            "client-bob", [{"intent": "habit", "credibility": 2.0, "vector": COFFEE}]
        )
    assert err.value.reason == "LIMIT_EXCEEDED"
    assert list(client.list_behaviors("client-bob")) == []


async def test_async_client(server):
    async with AsyncDriftClient(server.target, timeout=120) as db:
        out = await db.process_behaviors(
            "client-cy", [{"intent": "goal", "credibility": 0.7, "text": "run a marathon"}]
        )
        assert out.decisions[0].action == behavior_pb2.BEHAVIOR_ACTION_INSERT
        names = [b.name async for b in db.list_behaviors("client-cy")]
        assert names == [out.decisions[0].new_behavior]
