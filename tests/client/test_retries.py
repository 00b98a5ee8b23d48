"""Retries on UNAVAILABLE: which calls gRPC re-sends (attempts counted by a scripted
gRPC server on loopback), and a real driftd server that is not up yet or restarts
while a read waits for it."""

from __future__ import annotations

import importlib
import json
import re
import urllib.request
from collections import Counter
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pb2 import MethodOptions
from support import ServerProcess

from driftd import types, v1
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


# --- which RPCs: the proto's idempotency_level marks ------------------------------

#: The RPCs the proto deliberately leaves unmarked (IDEMPOTENCY_UNKNOWN): a repeat
#: after a lost answer could change something (why: each RPC's comment in
#: proto/driftd/v1). A new RPC must be marked in the proto or listed here.
NOT_IDEMPOTENT = {
    "/driftd.v1.CollectionService/CreateCollection",
    "/driftd.v1.CollectionService/DeleteCollection",
    "/driftd.v1.CollectionService/AttachCollection",
    "/driftd.v1.CollectionService/ImportCollection",
    "/driftd.v1.MonitorService/CreateDriftRule",
    "/driftd.v1.MonitorService/DeleteDriftRule",
    "/driftd.v1.BehaviorService/ProcessBehaviors",
    "/driftd.v1.RoutingService/RouteMessage",
}
#: Marked IDEMPOTENT but never re-sent by gRPC, because the client streams its
#: requests: the stream writers resume it after the last acknowledged batch.
RESUMED_BY_THE_WRITERS = {"/driftd.v1.PointService/StreamUpsertPoints"}

V1 = Path(v1.__file__).parent
PROTO = V1.parents[1] / "proto" / "driftd" / "v1"


def full_name(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def driftd_methods() -> list:
    """Every RPC of every generated driftd.v1 module (a new .proto file included)."""
    modules = [importlib.import_module(f"driftd.v1.{f.stem}") for f in V1.glob("*_pb2.py")]
    assert len(modules) == len(list(PROTO.glob("*.proto")))
    return [
        method
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_rpc_has_a_retry_decision():
    """Marked in the proto or deliberately unmarked, never neither nor both; the
    client retries exactly the marked RPCs that send one request."""
    methods = {full_name(m): m for m in driftd_methods()}
    unknown = MethodOptions.IDEMPOTENCY_UNKNOWN
    marked = {name for name, m in methods.items() if m.GetOptions().idempotency_level != unknown}
    for name in methods:
        assert (name in marked) != (name in NOT_IDEMPOTENT), (
            f"{name}: mark its idempotency_level in the proto, or list it in NOT_IDEMPOTENT"
        )
    assert NOT_IDEMPOTENT | RESUMED_BY_THE_WRITERS <= methods.keys()  # no stale names
    assert RESUMED_BY_THE_WRITERS <= marked
    assert common.RETRYABLE_METHODS == marked - RESUMED_BY_THE_WRITERS
    assert all(not methods[n].client_streaming for n in common.RETRYABLE_METHODS)


def test_retried_rpcs_are_those_marked_in_the_proto_sources():
    """Read from proto/ itself, so stale generated code fails too."""
    rpc = re.compile(
        r"\brpc (\w+)\((stream )?[\w.]+\) returns \((?:stream )?[\w.]+\)\s*"
        r"(?:;|\{\s*option idempotency_level = (\w+);\s*\})"
    )
    marks: dict[str, tuple[str | None, bool]] = {}
    for proto in PROTO.glob("*.proto"):
        text = re.sub(r"//.*", "", proto.read_text())
        for service in re.finditer(r"\bservice (\w+) \{(.*?)\n\}", text, re.S):
            assert service.group(2).count("rpc ") == len(rpc.findall(service.group(2)))
            for m in rpc.finditer(service.group(2)):
                name = f"/driftd.v1.{service.group(1)}/{m.group(1)}"
                marks[name] = (m.group(3), bool(m.group(2)))
    assert marks.keys() == {full_name(m) for m in driftd_methods()}
    assert {level for level, _ in marks.values()} == {None, "NO_SIDE_EFFECTS", "IDEMPOTENT"}
    retried = {name for name, (level, streams_in) in marks.items() if level and not streams_in}
    assert common.RETRYABLE_METHODS == retried


def test_unary_calls_wait_for_the_server_and_streams_do_not():
    """Server streams have no deadline: waiting for a connection could be forever."""
    config = json.loads(FAST.channel_options()["grpc.service_config"])
    methods = {full_name(m): m for m in driftd_methods()}
    waits = {}
    for mc in config["methodConfig"]:
        assert mc["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        for n in mc["name"]:
            waits[f"/{n['service']}/{n['method']}"] = mc.get("waitForReady", False)
    assert waits.keys() == common.RETRYABLE_METHODS
    assert {name for name, wait in waits.items() if not wait} == {
        "/driftd.v1.CollectionService/ExportCollection",
        "/driftd.v1.PointService/GetTrajectory",
        "/driftd.v1.FlowService/SimulatePaths",
        "/driftd.v1.MonitorService/WatchCollection",
    }
    assert all(methods[name].server_streaming != wait for name, wait in waits.items())


#: gRPC Python's method handler for each (client streams, server streams).
HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Down(grpc.GenericRpcHandler):
    """A server that answers each of ``methods`` with UNAVAILABLE, counting the
    attempts."""

    def __init__(self, methods) -> None:
        self.kinds = {full_name(m): (m.client_streaming, m.server_streaming) for m in methods}
        self.attempts: Counter[str] = Counter()

    def service(self, handler_call_details):
        name = handler_call_details.method

        def fail(_request, context):
            self.attempts[name] += 1
            context.abort(UNAVAILABLE, "down for the test")

        return HANDLERS[self.kinds[name]](fail)


def test_each_rpc_is_retried_as_the_proto_marks_it():
    """Calls each RPC of driftd.v1 (and Health.Check) on a server that is down:
    gRPC tries the retried ones max_attempts times, every other one once."""
    from grpc_health.v1 import health_pb2

    methods = [*driftd_methods(), health_pb2.DESCRIPTOR.services_by_name["Health"].methods[0]]
    down = Down(methods)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[down])
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    try:
        with grpc.insecure_channel(target, options=common.channel_options({}, policy)) as channel:
            for method in methods:
                name = full_name(method)
                streams = (method.client_streaming, method.server_streaming)
                kind = "_".join("stream" if s else "unary" for s in streams)
                call = getattr(channel, kind)(name)
                with pytest.raises(grpc.RpcError) as info:
                    answer = call(iter([b""]) if method.client_streaming else b"", timeout=30)
                    if method.server_streaming:
                        list(answer)
                assert info.value.code() == UNAVAILABLE, name
                want = policy.max_attempts if name in common.RETRYABLE_METHODS else 1
                assert down.attempts[name] == want, name
    finally:
        server.stop(None)


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
