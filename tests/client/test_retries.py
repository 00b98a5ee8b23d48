"""Retries on UNAVAILABLE: which calls gRPC re-sends (attempts counted by a scripted
gRPC server on loopback), and a real driftd server that is not up yet or restarts
while a read waits for it."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from concurrent import futures
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest
from support import ServerProcess

from driftd import types
from driftd.client import AsyncDriftClient, DriftClient, RetryPolicy
from driftd.client import _common as common
from driftd.errors import InvalidArgument, Unavailable
from driftd.v1 import collection_pb2, collection_pb2_grpc, point_pb2, point_pb2_grpc

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
T0 = datetime(2024, 5, 1, tzinfo=UTC)


class Flaky(collection_pb2_grpc.CollectionServiceServicer, point_pb2_grpc.PointServiceServicer):
    """Counts attempts per method and fails each with the codes of ``script[method]``,
    one per attempt, before answering."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.script: dict[str, list[grpc.StatusCode]] = {}

    def _attempt(self, method: str, context) -> None:
        self.attempts[method] += 1
        codes = self.script.get(method)
        if codes:
            context.abort(codes.pop(0), f"scripted {method} failure")

    def GetCollection(self, request, context):
        self._attempt("GetCollection", context)
        return collection_pb2.Collection(name=request.name, dimension=3, create_time={})

    def CreateCollection(self, request, context):
        self._attempt("CreateCollection", context)
        return collection_pb2.Collection(name=f"collections/{request.collection_id}")

    def UpsertPoints(self, request, context):
        self._attempt("UpsertPoints", context)
        return point_pb2.UpsertPointsResponse(upserted_count=len(request.points))


@pytest.fixture(scope="module")
def flaky_server():
    servicer = Flaky()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    collection_pb2_grpc.add_CollectionServiceServicer_to_server(servicer, server)
    point_pb2_grpc.add_PointServiceServicer_to_server(servicer, server)
    servicer.target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(None)


@pytest.fixture
def flaky(flaky_server):
    flaky_server.attempts.clear()
    flaky_server.script.clear()
    return flaky_server


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_reads_are_retried_after_unavailable(flaky):
    flaky.script["GetCollection"] = [UNAVAILABLE, UNAVAILABLE]
    with DriftClient(flaky.target, timeout=30, retries=FAST) as client:
        assert client.get_collection("notes").name == "notes"
    assert flaky.attempts["GetCollection"] == 3


def test_retries_stop_after_max_attempts(flaky):
    flaky.script["GetCollection"] = [UNAVAILABLE] * 5
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    with DriftClient(flaky.target, timeout=30, retries=policy) as client:
        with pytest.raises(Unavailable, match="scripted"):
            client.get_collection("notes")
    assert flaky.attempts["GetCollection"] == 3


def test_other_codes_are_not_retried(flaky):
    flaky.script["GetCollection"] = [grpc.StatusCode.INVALID_ARGUMENT]
    with DriftClient(flaky.target, timeout=30, retries=FAST) as client:
        with pytest.raises(InvalidArgument):
            client.get_collection("notes")
    assert flaky.attempts["GetCollection"] == 1


def test_non_idempotent_calls_are_not_retried(flaky):
    flaky.script["CreateCollection"] = [UNAVAILABLE]
    with DriftClient(flaky.target, timeout=30, retries=FAST) as client:
        with pytest.raises(Unavailable):
            client.create_collection("notes", dim=3)
    assert flaky.attempts["CreateCollection"] == 1


def test_no_retries_when_disabled(flaky):
    flaky.script["GetCollection"] = [UNAVAILABLE]
    with DriftClient(flaky.target, timeout=30, retries=None) as client:
        with pytest.raises(Unavailable):
            client.get_collection("notes")
    assert flaky.attempts["GetCollection"] == 1


def test_large_upserts_are_retried_too(flaky):
    # 1000 384-d vectors are ~1.5 MB, far above gRPC's default 256 KiB retry buffer.
    flaky.script["UpsertPoints"] = [UNAVAILABLE]
    points = [
        types.Point(id=f"p{i}", time=T0, vector=np.ones(384, np.float32)) for i in range(1000)
    ]
    with DriftClient(flaky.target, timeout=30, retries=FAST) as client:
        assert client.upsert("notes", points).upserted == 1000
    assert flaky.attempts["UpsertPoints"] == 2


async def test_async_client_retries_too(flaky):
    flaky.script["GetCollection"] = [UNAVAILABLE]
    flaky.script["CreateCollection"] = [UNAVAILABLE]
    async with AsyncDriftClient(flaky.target, timeout=30, retries=FAST) as client:
        assert (await client.get_collection("notes")).name == "notes"
        with pytest.raises(Unavailable):
            await client.create_collection("notes", dim=3)
    assert flaky.attempts == Counter(GetCollection=2, CreateCollection=1)


def test_service_config_names_only_retryable_methods():
    config = json.loads(FAST.channel_options()["grpc.service_config"])
    named = {(n["service"], n["method"]) for mc in config["methodConfig"] for n in mc["name"]}
    assert ("driftd.v1.PointService", "GetPoints") in named
    assert ("driftd.v1.PointService", "UpsertPoints") in named
    for unsafe in ("CreateCollection", "ProcessBehaviors", "RouteMessage", "StreamUpsertPoints"):
        assert unsafe not in {m for _, m in named}
    assert all(
        mc["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        for mc in config["methodConfig"]
    )


def test_every_rpc_is_classified():
    """A new RPC must be added to RETRYABLE_METHODS or, if a repeat could change
    something, here."""
    from driftd.v1 import behavior_pb2, flow_pb2, monitor_pb2, routing_pb2

    not_retried = {
        "AttachCollection",
        "CreateCollection",
        "CreateDriftRule",
        "DeleteCollection",
        "DeleteDriftRule",
        "ImportCollection",
        "ProcessBehaviors",
        "RouteMessage",
        "StreamUpsertPoints",
    }
    modules = (collection_pb2, point_pb2, flow_pb2, monitor_pb2, behavior_pb2, routing_pb2)
    known = set()
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            retried = set(common.RETRYABLE_METHODS.get(service.full_name, ()))
            for method in service.methods:
                assert (method.name in retried) != (method.name in not_retried), method.name
                known.add((service.full_name, method.name))
    assert {(s, m) for s, ms in common.RETRYABLE_METHODS.items() for m in ms} <= known


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"max_attempts": 1}, "retries.max_attempts"),
        ({"max_attempts": 6}, "retries.max_attempts"),
        ({"initial_backoff": 0}, "retries.initial_backoff"),
        ({"backoff_multiplier": -1}, "retries.backoff_multiplier"),
    ],
)
def test_retry_policy_is_validated(args, field):
    with pytest.raises(InvalidArgument) as info:
        RetryPolicy(**args)
    assert [v.field for v in info.value.field_violations] == [field]


def test_backoff_is_jittered_below_the_capped_exponential():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=3.0, backoff_multiplier=2.0)
    for retry, ceiling in ((1, 1.0), (2, 2.0), (3, 3.0), (9, 3.0)):
        assert all(0 <= policy.backoff(retry) <= ceiling for _ in range(50))


def test_user_options_override_the_retry_config():
    opts = dict(common.channel_options({"grpc.service_config": "{}"}, FAST))
    assert opts["grpc.service_config"] == "{}"
    assert opts["grpc.per_rpc_retry_buffer_size"] == 64 * 1024 * 1024


# --- a real driftd server -------------------------------------------------------


def started_rpcs(server: ServerProcess, method: str) -> float:
    """The server's grpc_server_started_total for ``method``."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    found = re.search(
        rf'grpc_server_started_total{{[^}}]*grpc_method="{method}"[^}}]*}} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


def test_reads_ride_out_a_server_that_starts_late_or_restarts(tmp_path):
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log")
    pool = futures.ThreadPoolExecutor(max_workers=1)
    # Patient: retries must outlast NOT_SERVING (storage opening) on a loaded machine.
    patient = RetryPolicy(initial_backoff=2.0, max_backoff=10.0)
    try:
        with (
            DriftClient(srv.target, timeout=120, retries=patient) as client,
            DriftClient(srv.target, timeout=120, retries=None) as impatient,
        ):
            with pytest.raises(Unavailable):
                impatient.get_collection("late")

            # The read is sent before the server exists and answered once it is up.
            listed = pool.submit(lambda: list(client.list_collections()))
            srv.start()
            assert listed.result(timeout=120) == []

            client.create_collection("kept", dim=3)
            srv.kill()
            fetched = pool.submit(client.get_collection, "kept")
            srv.start()
            assert fetched.result(timeout=120).name == "kept"

            # A refused request is answered once, not retried.
            before = started_rpcs(srv, "GetCollection")
            with pytest.raises(InvalidArgument):
                client.get_collection("x")  # ids have 3-63 characters
            assert started_rpcs(srv, "GetCollection") == before + 1
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        srv.stop()
