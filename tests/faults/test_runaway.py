"""Runaway pool work: bounded up front, stopped when nobody waits, never blocking a
shutdown (issue 13, defects 2 and 3).

One real server with a single math worker, over a planted limit cycle (a flow that
never stalls far from its orbit). A "heavy" step is 200,000 time scales:
200,000 RK4 sub-steps, about 15 s of work on a quiet core, allowed here by a raised
per-step limit; a path's first pool task is one such step.
Whether the worker is free again is judged by a follow-up ProbeFlow that must
answer within a generous deadline, never by timing the fast path.
"""

from __future__ import annotations

import contextlib
import signal
import time
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from support import ServerProcess, error_details

from driftd.flow.planted import limit_cycle
from driftd.v1 import (
    flow_pb2,
    flow_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

HEAVY = 200_000  # time scales per step
GRACE = 2.0
SERVER_ENV = {
    "DRIFTD_WORKERS": "1",
    "DRIFTD_MAX_SUBSTEPS_PER_STEP": str(2 * HEAVY),
    "DRIFTD_MAX_SIMULATION_SUBSTEPS": str(1_000 * HEAVY),
    "DRIFTD_GRACE_SECONDS": str(GRACE),
}
YEAR = 365.25 * 86400
# The last second a Timestamp holds.
YEAR_9999_END = 253_402_300_799


def _rows(system, shift: float = 0.0, prefix: str = "p"):
    return [
        {
            "id": f"{prefix}{i}",
            "timestamp": datetime.fromtimestamp(float(system.t[i] + shift), UTC),
            "vector": system.X[i],
            "series": f"s{int(system.series[i])}",
        }
        for i in range(len(system.X))
    ]


def _start(tmp_path_factory, name: str):
    from driftd.client import DriftClient

    root = tmp_path_factory.mktemp(name)
    srv = ServerProcess(root / "chroma", root / "server.log", **SERVER_ENV).start()
    system = limit_cycle(1500, dim=32, random_state=1)
    with DriftClient(srv.target, timeout=120.0) as c:
        c.create_collection(name="cycle", dim=32, distance="l2")
        c.upsert("cycle", _rows(system))
        probe = c.flow_vector("cycle", point_id="p0")
    return srv, system, probe.speed_per_step / probe.speed  # the flow's time scale


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    srv, system, time_scale = _start(tmp_path_factory, "runaway")
    channel = grpc.insecure_channel(srv.target)
    yield srv, flow_pb2_grpc.FlowServiceStub(channel), system, time_scale
    channel.close()
    srv.stop()


def _simulate(stub, seconds: float, steps: int = 1000, timeout: float | None = None, **kw):
    return stub.SimulatePaths(
        flow_pb2.SimulatePathsRequest(
            parent="collections/cycle",
            start=flow_pb2.FlowStart(point_id="p0"),
            steps=steps,
            step_duration=duration_pb2.Duration(seconds=int(seconds), nanos=0),
            **kw,
        ),
        timeout=timeout,
    )


def _worker_is_free(stub) -> None:
    """A ProbeFlow answers while a freed worker would: 10 s is far more than a probe
    needs (milliseconds) and far less than the abandoned work (minutes)."""
    stub.ProbeFlow(
        flow_pb2.ProbeFlowRequest(
            parent="collections/cycle", start=flow_pb2.FlowStart(point_id="p1")
        ),
        timeout=10.0,
    )


def test_a_step_of_a_thousand_years_is_refused_before_any_work(cycle):
    _, stub, _, _ = cycle
    with pytest.raises(grpc.RpcError) as err:
        list(_simulate(stub, 1_000 * YEAR, steps=5, timeout=30.0))
    code, reason, meta, fields = error_details(err.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == "LIMIT_EXCEEDED"
    assert fields == ["step_duration"] and int(meta["substeps_per_step"]) > 2 * HEAVY
    _worker_is_free(stub)


def test_a_step_of_ten_thousand_years_ends_the_path_at_once(cycle):
    """From 1970, no step of 10,000 years stays within year 9999 (the seed's wedge)."""
    _, stub, _, _ = cycle
    steps = list(_simulate(stub, 10_000 * YEAR, steps=10, timeout=30.0))
    assert [(s.step, s.stop_reason) for s in steps] == [(0, "time_limit")]
    _worker_is_free(stub)


def test_steps_times_paths_times_substeps_is_bounded(cycle):
    _, stub, _, time_scale = cycle
    with pytest.raises(grpc.RpcError) as err:
        # 1,000 steps x 2 paths x HEAVY sub-steps: twice the server's limit.
        list(_simulate(stub, HEAVY * time_scale, steps=1000, paths=2, timeout=30.0))
    code, reason, _, fields = error_details(err.value)
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", ["steps"])


def test_a_cancelled_simulation_frees_its_worker(cycle):
    _, stub, _, time_scale = cycle
    call = _simulate(stub, HEAVY * time_scale)
    time.sleep(1.0)  # the worker is on the path's first step
    call.cancel()
    _worker_is_free(stub)


def test_an_expired_simulation_frees_its_worker(cycle):
    _, stub, _, time_scale = cycle
    call = _simulate(stub, HEAVY * time_scale, timeout=1.0)
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _worker_is_free(stub)


def test_a_path_past_year_9999_stops_at_the_limit(cycle):
    srv, stub, system, time_scale = cycle
    from driftd.client import DriftClient

    # The same cycle, its last point 40 time scales before the end of year 9999.
    shift = YEAR_9999_END - 40 * time_scale - float(system.t.max())
    with DriftClient(srv.target, timeout=120.0) as c:
        c.create_collection(name="late", dim=32, distance="l2")
        c.upsert("late", _rows(system, shift, prefix="q"))
        last = max(range(len(system.t)), key=lambda i: system.t[i])
        steps = c.flow_simulate("late", point_id=f"q{last}", steps=1000)
    assert steps[-1].stop_reason == "time_limit"
    assert [s.stop_reason for s in steps[:-1]] == [""] * (len(steps) - 1)
    assert 30 <= len(steps) <= 42  # about 40 steps of one time scale fit
    assert steps[-1].time <= datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def test_sigterm_exits_within_grace_plus_five_seconds_with_a_runaway_task(tmp_path_factory):
    srv, _, time_scale = _start(tmp_path_factory, "sigterm")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            call = _simulate(flow_pb2_grpc.FlowServiceStub(channel), HEAVY * time_scale)
            time.sleep(1.0)  # the worker is on the path's first step
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(timeout=60)
            took = time.monotonic() - t0
            call.cancel()
        assert took <= GRACE + 5.0, took
    finally:
        srv.stop()


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromSeconds(int(seconds))
    return out


def _calls(channel, system, time_scale: float) -> dict:
    """For every streaming and pool RPC, a function (timeout) -> a started call."""
    flow = flow_pb2_grpc.FlowServiceStub(channel)
    points = point_pb2_grpc.PointServiceStub(channel)
    monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
    parent = "collections/cycle"
    mid = float(np.median(system.t))
    first = point_pb2.TimeRange(start_time=_ts(system.t.min()), end_time=_ts(mid))
    second = point_pb2.TimeRange(start_time=_ts(mid), end_time=_ts(system.t.max() + 1))

    def upserts():
        vector = [0.1] * 32
        for sequence in range(1, 1_000_000):
            yield point_pb2.StreamUpsertPointsRequest(
                parent="collections/sink",
                sequence=sequence,
                points=[point_pb2.Point(id=f"s{sequence}", time=_ts(sequence), vector=vector)],
            )
            time.sleep(0.05)

    return {
        "ProbeFlow": lambda t: flow.ProbeFlow.future(
            flow_pb2.ProbeFlowRequest(parent=parent, start=flow_pb2.FlowStart(point_id="p2")),
            timeout=t,
        ),
        "SimulatePaths": lambda t: _simulate(flow, HEAVY * time_scale, timeout=t),
        "FindAttractors": lambda t: flow.FindAttractors.future(
            flow_pb2.FindAttractorsRequest(parent=parent, seeds=1024, bootstrap=16), timeout=t
        ),
        "DetectChapters": lambda t: flow.DetectChapters.future(
            flow_pb2.DetectChaptersRequest(parent=parent, min_size=5), timeout=t
        ),
        "DetectChapters(ONLINE)": lambda t: flow.DetectChapters.future(
            flow_pb2.DetectChaptersRequest(
                parent=parent, min_size=5, method=flow_pb2.CHANGE_POINT_METHOD_ONLINE
            ),
            timeout=t,
        ),
        "CompareWindows": lambda t: monitor.CompareWindows.future(
            monitor_pb2.CompareWindowsRequest(
                parent=parent,
                window_a=monitor_pb2.Window(time_range=first),
                window_b=monitor_pb2.Window(time_range=second),
                permutations=10_000,
            ),
            timeout=t,
        ),
        "EmbeddingHealth": lambda t: monitor.EmbeddingHealth.future(
            monitor_pb2.EmbeddingHealthRequest(parent=parent), timeout=t
        ),
        "GetTrajectory": lambda t: points.GetTrajectory(
            point_pb2.GetTrajectoryRequest(parent=parent, include_vectors=True, chunk_size=1),
            timeout=t,
        ),
        "StreamUpsertPoints": lambda t: points.StreamUpsertPoints(upserts(), timeout=t),
        "WatchCollection": lambda t: monitor.WatchCollection(
            monitor_pb2.WatchCollectionRequest(parent=parent), timeout=t
        ),
    }


RPCS = [
    "ProbeFlow",
    "SimulatePaths",
    "FindAttractors",
    "DetectChapters",
    "DetectChapters(ONLINE)",
    "CompareWindows",
    "EmbeddingHealth",
    "GetTrajectory",
    "StreamUpsertPoints",
    "WatchCollection",
]


STREAMING = {"SimulatePaths", "GetTrajectory", "StreamUpsertPoints", "WatchCollection"}


def _finish(call, streaming: bool) -> None:
    """Waits for a call's end, whatever its outcome."""
    with contextlib.suppress(grpc.RpcError, grpc.FutureCancelledError):
        if streaming:
            for _ in call:
                pass
        else:
            call.result()


@pytest.mark.parametrize("how", ["cancelled", "expired"])
@pytest.mark.parametrize("rpc", RPCS)
def test_an_abandoned_call_frees_the_server(cycle, rpc, how):
    """Every streaming and pool RPC, cancelled 0.3 s after it starts or given a
    0.3 s deadline: a follow-up call is answered promptly and readiness holds."""
    srv, stub, system, time_scale = cycle
    from driftd.client import DriftClient

    with DriftClient(srv.target, timeout=60.0) as c:
        if "sink" not in {i.name for i in c.list_collections()}:
            c.create_collection(name="sink", dim=32, distance="l2")
    with grpc.insecure_channel(srv.target) as channel:
        start = _calls(channel, system, time_scale)[rpc]
        if how == "cancelled":
            call = start(None)
            time.sleep(0.3)
            call.cancel()
        else:
            call = start(0.3)
        _finish(call, rpc in STREAMING)
    _worker_is_free(stub)
    assert srv.health("driftd.v1.FlowService") == "SERVING"
