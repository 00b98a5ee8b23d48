"""DetectChapters(method=ONLINE) through the Python clients and a real server
process: planted regime switches streamed in come back as the online detector's
chapters, agree with the offline ones, survive a restart (the series is replayed
from storage) and stay current as more points arrive."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from support import ServerProcess, error_details

from bench.flow.metrics import boundary_f1
from driftd.client import AsyncDriftClient, DriftClient
from driftd.errors import InvalidArgument
from driftd.flow.planted import regime_switches
from driftd.v1 import flow_pb2, flow_pb2_grpc

N, REGIMES, MARGIN = 1600, 8, 5


def _rows(X, t, *, prefix="r", series="", offset=0):
    """Points "{prefix}{offset + i}" for rows i of X (n, d) at epoch seconds t (n,)."""
    return [
        {
            "id": f"{prefix}{offset + i}",
            "timestamp": datetime.fromtimestamp(float(t[i]), UTC),
            "vector": X[i],
            "series": series,
        }
        for i in range(len(X))
    ]


def _starts(chapters) -> list[int]:
    """Index of each chapter's first point after the first chapter ("r123" -> 123)."""
    return [int(c.start_point_id[1:]) for c in chapters.chapters[1:]]


def _covers(chapters, n: int) -> None:
    """Chapters are contiguous, in time order, and cover all n points."""
    assert sum(c.point_count for c in chapters.chapters) == n
    assert [c.index for c in chapters.chapters] == list(range(len(chapters.chapters)))
    for a, b in zip(chapters.chapters, chapters.chapters[1:], strict=False):
        assert a.end_time <= b.start_time


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("online-chapters")
    server = ServerProcess(root / "chroma", root / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def planted():
    return regime_switches(N, REGIMES, random_state=3)


def test_streamed_regimes_are_the_online_chapters_and_survive_a_restart(srv, planted):
    X, t, truth = planted
    first = N - 200  # the last regimes arrive after the restart
    with DriftClient(srv.target, timeout=120.0) as db:
        db.create_collection(name="online-regimes", dim=X.shape[1])
        for lo in range(0, first, 50):  # streamed in small batches, as an agent would
            db.upsert("online-regimes", _rows(X[lo : lo + 50], t[lo : lo + 50], offset=lo))
        online = db.flow_chapters("online-regimes", method="online", representatives=2)
        offline = db.flow_chapters("online-regimes")
    true_before = [b for b in truth.tolist() if b < first - MARGIN]
    assert boundary_f1(_starts(online), true_before, margin=MARGIN) >= 0.9, (
        _starts(online),
        true_before,
    )
    assert boundary_f1(_starts(online), _starts(offline), margin=MARGIN) >= 0.9, (
        _starts(online),
        _starts(offline),
    )
    _covers(online, first)
    assert all(c.attractor_id == "" for c in online.chapters)
    assert all(len(c.representatives) == 2 for c in online.chapters)
    for c in online.chapters:  # representatives lie inside their chapter
        assert all(c.start_time <= r.time <= c.end_time for r in c.representatives)

    srv.stop()
    srv.start()
    with DriftClient(srv.target, timeout=120.0) as db:
        # A fresh process has no detector state: the series is replayed from storage.
        again = db.flow_chapters("online-regimes", method="online", representatives=2)
        assert _starts(again) == _starts(online)
        # ... and then kept current by the live feed.
        db.upsert("online-regimes", _rows(X[first:], t[first:], offset=first))
        later = db.flow_chapters("online-regimes", method="online")
    assert boundary_f1(_starts(later), truth.tolist(), margin=MARGIN) >= 0.9, (
        _starts(later),
        truth.tolist(),
    )
    _covers(later, N)


def test_online_windows_series_and_bad_requests(srv, planted):
    X, t, truth = planted
    with DriftClient(srv.target, timeout=120.0) as db:
        db.create_collection(name="online-two-series", dim=X.shape[1])
        db.upsert("online-two-series", _rows(X, t, prefix="r", series="a"))
        db.upsert("online-two-series", _rows(X[:300], t[:300], prefix="b", series="b"))
        whole = db.flow_chapters("online-two-series", series="a", method="online")
        assert boundary_f1(_starts(whole), truth.tolist(), margin=MARGIN) >= 0.9
        # A time window cuts the same chapters out of the selection.
        lo, hi = int(truth[1]) - 20, int(truth[4]) + 20
        window = db.flow_chapters(
            "online-two-series",
            series="a",
            method="online",
            start=datetime.fromtimestamp(float(t[lo]), UTC),
            end=datetime.fromtimestamp(float(t[hi]), UTC),
        )
        _covers(window, hi - lo)
        assert _starts(window) == [s for s in _starts(whole) if lo < s < hi]

        with pytest.raises(InvalidArgument) as err:  # two series: name one
            db.flow_chapters("online-two-series", method="online")
        assert [v.field for v in err.value.field_violations] == ["series"]
        with pytest.raises(InvalidArgument) as err:
            db.flow_chapters("online-two-series", series="a", method="online", penalty=5.0)
        assert [v.field for v in err.value.field_violations] == ["penalty"]
        with pytest.raises(InvalidArgument) as err:  # caught by the client
            db.flow_chapters("online-two-series", series="a", method="psychic")
        assert [v.field for v in err.value.field_violations] == ["method"]


def test_online_over_grpc_status_and_asyncio_client(srv, planted):
    X, t, _ = planted
    with DriftClient(srv.target, timeout=120.0) as db:
        db.create_collection(name="online-async", dim=X.shape[1])
        db.upsert("online-async", _rows(X[:600], t[:600]))
        sync = db.flow_chapters("online-async", method="online")

    async def from_asyncio():
        async with AsyncDriftClient(srv.target, timeout=120.0) as db:
            return await db.flow_chapters("online-async", method="online")

    assert asyncio.run(from_asyncio()) == sync
    assert len(sync.chapters) > 1

    with grpc.insecure_channel(srv.target) as channel:
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.DetectChapters(
                flow_pb2.DetectChaptersRequest(parent="collections/online-async", method=7),
                timeout=60,
            )
        code, _, _, fields = error_details(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["method"]
        with pytest.raises(grpc.RpcError) as err:
            stub.DetectChapters(
                flow_pb2.DetectChaptersRequest(
                    parent="collections/online-async",
                    series="nobody",
                    method=flow_pb2.CHANGE_POINT_METHOD_ONLINE,
                ),
                timeout=60,
            )
        code, reason, _, _ = error_details(err.value)
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENOUGH_POINTS")
