"""The event ring buffer and its watchers (no server)."""

from __future__ import annotations

import asyncio

import pytest

from driftd.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from driftd.monitor.events import CHAPTER_DETECTED, ChapterDetected, EventHub


def upsert(hub, i, n=1, coll="c"):
    ids = [f"p{i}-{j}" for j in range(n)]
    return hub.publish_upsert(coll, i, ids, [float(i)] * n, [""] * n)


async def test_watchers_see_every_event_in_order_and_can_resume():
    hub = EventHub()
    a, b = hub.watch("c"), hub.watch("c")
    first = upsert(hub, 1)
    upsert(hub, 2)
    hub.publish_delete("c", 3, ["p1-0"])
    for w in (a, b):
        got = [await w.next() for _ in range(3)]
        assert [e.sequence for e in got] == [first.sequence + k for k in range(3)]
        assert [e.type for e in got] == ["points_upserted", "points_upserted", "points_deleted"]
    resumed = hub.watch("c", after_sequence=first.sequence)
    assert (await resumed.next()).sequence == first.sequence + 1
    assert upsert(hub, 1, coll="other").sequence == first.sequence  # per collection


async def test_type_filter_and_waiting_for_new_events():
    hub = EventHub()
    w = hub.watch("c", types=[CHAPTER_DETECTED])
    task = asyncio.ensure_future(w.next())
    upsert(hub, 1)
    await asyncio.sleep(0)
    assert not task.done()
    hub.publish("c", 1, ChapterDetected("s", "p", 0.0, "q", 2, 0.9))
    assert (await asyncio.wait_for(task, 1)).data.series == "s"


async def test_bad_resume_points():
    hub = EventHub(max_events=4)
    first = upsert(hub, 0)
    for i in range(1, 10):
        upsert(hub, i)
    with pytest.raises(FailedPrecondition) as err:
        hub.watch("c", after_sequence=first.sequence)
    assert err.value.reason == "EVENTS_EXPIRED"
    with pytest.raises(InvalidArgument):
        hub.watch("c", after_sequence=first.sequence + 100)
    with pytest.raises(InvalidArgument):
        hub.watch("c", types=["nope"])
    # A restarted server numbers from its own clock: old sequences are expired.
    with pytest.raises(FailedPrecondition):
        EventHub(clock=lambda: 2e9).watch("c", after_sequence=first.sequence)


async def test_a_watcher_that_falls_behind_is_disconnected_even_mid_send():
    hub = EventHub(max_events=8, max_points=100)
    slow = hub.watch("c")
    fast = hub.watch("c")
    upsert(hub, 0)
    await slow.next()
    blocked = asyncio.Event()  # a send to a client that never reads
    send = asyncio.ensure_future(slow.deliver(blocked.wait()))
    for i in range(1, 10):
        upsert(hub, i)
        assert (await fast.next()).version == i - 1
    with pytest.raises(ResourceExhausted) as err:
        await asyncio.wait_for(send, 1)
    assert err.value.reason == "WATCHER_TOO_SLOW"
    # Point ids count too: one big batch pushes the rest out.
    w = hub.watch("c")
    upsert(hub, 20, n=5)
    upsert(hub, 21, n=200)
    with pytest.raises(ResourceExhausted):
        await w.next()


async def test_close_ends_watches():
    hub = EventHub()
    w = hub.watch("c")
    task = asyncio.ensure_future(w.next())
    await asyncio.sleep(0)
    hub.close()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(task, 1)
