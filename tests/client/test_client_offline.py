"""The Python client without a driftd server: error mapping from real gRPC statuses
(served by a stub gRPC server on loopback), request building, batching and
streaming, point dict parsing, and importing without the server's dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent import futures
from datetime import UTC, datetime, timedelta, timezone

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from driftd import convert, types
from driftd.client import AsyncDriftClient, DriftClient, UpsertAck, parse_point, parse_points
from driftd.client import _common as common
from driftd.errors import (
    DriftdError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def rich_status(code: int, message: str, reason: str = "", metadata=None, violations=()):
    """A grpc.Status carrying a google.rpc.Status with ErrorInfo and BadRequest."""
    status = status_pb2.Status(code=code, message=message)
    if reason:
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(reason=reason, domain="driftd", metadata=metadata or {})
        )
        status.details.append(info)
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
        status.details.append(bad)
    return rpc_status.to_status(status)


# --- a stub server that records requests and answers from a script -----------


class Stub(
    collection_pb2_grpc.CollectionServiceServicer,
    point_pb2_grpc.PointServiceServicer,
    flow_pb2_grpc.FlowServiceServicer,
):
    """Records every request; ``fail[method]`` is a grpc.Status to abort with,
    ``fail_batch`` the (1-based) UpsertPoints call to fail."""

    def __init__(self) -> None:
        self.requests: dict[str, list] = {}
        self.fail: dict[str, grpc.Status] = {}
        self.fail_batch: tuple[int, grpc.Status] | None = None

    def _record(self, method, request, context):
        self.requests.setdefault(method, []).append(request)
        if method in self.fail:
            context.abort_with_status(self.fail[method])

    def CreateCollection(self, request, context):
        self._record("CreateCollection", request, context)
        info = types.CollectionInfo(
            name=request.collection_id,
            dimension=request.collection.dimension or 384,
            distance="cosine",
            embed_model=request.collection.embed_model,
            point_count=0,
            series_count=0,
            start_time=None,
            end_time=None,
            create_time=T0,
            version=0,
        )
        return convert.collection_to_proto(info)

    def ListCollections(self, request, context):
        self._record("ListCollections", request, context)
        page = int(request.page_token or 0)
        names = [f"c{page}a", f"c{page}b"]
        info = [
            collection_pb2.Collection(name=f"collections/{n}", dimension=3, create_time={})
            for n in names
        ]
        token = str(page + 1) if page < 2 else ""
        return collection_pb2.ListCollectionsResponse(collections=info, next_page_token=token)

    def DeleteCollection(self, request, context):
        self._record("DeleteCollection", request, context)
        return empty_pb2.Empty()

    def UpsertPoints(self, request, context):
        self._record("UpsertPoints", request, context)
        n = len(self.requests["UpsertPoints"])
        if self.fail_batch and self.fail_batch[0] == n:
            context.abort_with_status(self.fail_batch[1])
        texts = sum(1 for p in request.points if not p.vector)
        return point_pb2.UpsertPointsResponse(
            upserted_count=len(request.points), embedded_count=texts, collection_version=n
        )

    def StreamUpsertPoints(self, request_iterator, context):
        for batch in request_iterator:
            self._record("StreamUpsertPoints", batch, context)
            errors = [
                point_pb2.PointError(index=i, id=p.id, reason="DIMENSION_MISMATCH", message="x")
                for i, p in enumerate(batch.points)
                if len(p.vector) not in (0, 3)
            ]
            yield point_pb2.StreamUpsertPointsResponse(
                sequence=batch.sequence,
                accepted_count=len(batch.points) - len(errors),
                rejected_count=len(errors),
                errors=errors,
                collection_version=batch.sequence + 1,
            )

    def GetPoints(self, request, context):
        self._record("GetPoints", request, context)
        found = [i for i in request.ids if i != "nope"]
        return point_pb2.GetPointsResponse(
            points=[convert.point_to_proto(types.Point(id=i, time=T0, text="t")) for i in found],
            missing_ids=[i for i in request.ids if i == "nope"],
        )

    def GetTrajectory(self, request, context):
        self._record("GetTrajectory", request, context)
        for chunk in range(3):
            yield point_pb2.GetTrajectoryResponse(
                points=[
                    convert.point_to_proto(
                        types.Point(id=f"p{chunk}{j}", time=T0 + timedelta(hours=chunk * 2 + j))
                    )
                    for j in range(2)
                ]
            )

    def SearchPoints(self, request, context):
        self._record("SearchPoints", request, context)
        hit = point_pb2.ScoredPoint(
            point=convert.point_to_proto(types.Point(id="a", time=T0, text="hi")), distance=0.25
        )
        return point_pb2.SearchPointsResponse(results=[hit])

    def SimulatePaths(self, request, context):
        self._record("SimulatePaths", request, context)
        for step in range(request.steps):
            msg = flow_pb2.SimulatePathsResponse(step=step, speed=1.0, nearest_point_id="a")
            msg.time.CopyFrom(convert.datetime_to_timestamp(T0))
            yield msg

    def DetectChapters(self, request, context):
        self._record("DetectChapters", request, context)
        return flow_pb2.DetectChaptersResponse(collection_version=7)


@pytest.fixture(scope="module")
def stub():
    servicer = Stub()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    collection_pb2_grpc.add_CollectionServiceServicer_to_server(servicer, server)
    point_pb2_grpc.add_PointServiceServicer_to_server(servicer, server)
    flow_pb2_grpc.add_FlowServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.target = f"127.0.0.1:{port}"
    yield servicer
    server.stop(None)


@pytest.fixture
def fresh(stub):
    stub.requests.clear()
    stub.fail.clear()
    stub.fail_batch = None
    return stub


@pytest.fixture
def client(fresh):
    with DriftClient(fresh.target, timeout=10) as c:
        yield c


def rows(n, start=0, **extra):
    return [
        {"id": f"p{i}", "timestamp": T0 + timedelta(minutes=i), "vector": [1.0, 0.0, 0.0], **extra}
        for i in range(start, start + n)
    ]


# --- error mapping -----------------------------------------------------------


def test_not_found_carries_reason_metadata_and_cause(client, fresh):
    fresh.fail["GetPoints"] = rich_status(
        code_pb2.NOT_FOUND, "no collection 'x'", "COLLECTION_NOT_FOUND", {"collection": "x"}
    )
    with pytest.raises(NotFound) as info:
        client.get_points("x", ["a"])
    err = info.value
    assert (err.code, err.reason, err.message) == (
        "NOT_FOUND",
        "COLLECTION_NOT_FOUND",
        "no collection 'x'",
    )
    assert err.metadata == {"collection": "x"}
    assert isinstance(err.__cause__, grpc.RpcError)
    assert err.__cause__.code() is grpc.StatusCode.NOT_FOUND


def test_bad_request_becomes_field_violations(client, fresh):
    fresh.fail["GetPoints"] = rich_status(
        code_pb2.INVALID_ARGUMENT,
        "2 invalid",
        "BATCH_TOO_LARGE",
        violations=[("ids", "at most 10 items"), ("parent", "bad")],
    )
    with pytest.raises(InvalidArgument) as info:
        client.get_points("x", ["a"])
    assert info.value.reason == "BATCH_TOO_LARGE"
    assert info.value.field_violations == (
        FieldViolation("ids", "at most 10 items"),
        FieldViolation("parent", "bad"),
    )


def test_code_outside_the_map_gives_base_error_with_code(client, fresh):
    fresh.fail["GetPoints"] = rich_status(code_pb2.ABORTED, "try again")
    with pytest.raises(DriftdError) as info:
        client.get_points("x", ["a"])
    assert type(info.value) is DriftdError
    assert info.value.code == "ABORTED"
    assert info.value.message == "try again"


def test_status_without_details_keeps_class_default_reason(client, fresh):
    status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="plain")
    fresh.fail["DeleteCollection"] = rpc_status.to_status(status)
    with pytest.raises(FailedPrecondition) as info:
        client.delete_collection("x")
    assert info.value.reason == FailedPrecondition.default_reason
    assert info.value.field_violations == ()


def test_unreachable_server_is_unavailable_without_retries():
    from driftd.errors import Unavailable

    with DriftClient("127.0.0.1:1", timeout=5, retries=None) as c, pytest.raises(Unavailable):
        c.get_collection("x")


def test_reads_wait_for_an_unreachable_server_until_their_deadline():
    from driftd.errors import DeadlineExceeded, Unavailable

    with DriftClient("127.0.0.1:1", timeout=1) as c:
        with pytest.raises(DeadlineExceeded):
            c.get_collection("x")
        with pytest.raises(Unavailable):  # not idempotent: fails at once
            c.create_collection("xyz", dim=3)


def test_foreign_error_domain_keeps_default_reason():
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="m")
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="SOMETHING", domain="example.com"))
    status.details.append(info)

    class FakeCall(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.NOT_FOUND

        def details(self):
            return "m"

        def trailing_metadata(self):
            return rpc_status.to_status(status).trailing_metadata

    err = common.from_rpc_error(FakeCall())
    assert isinstance(err, NotFound) and err.reason == NotFound.default_reason


async def test_async_client_maps_errors_too(fresh):
    fresh.fail["GetPoints"] = rich_status(
        code_pb2.INVALID_ARGUMENT, "bad", "INVALID_NAME", violations=[("parent", "must be ...")]
    )
    async with AsyncDriftClient(fresh.target, timeout=10) as c:
        with pytest.raises(InvalidArgument) as info:
            await c.get_points("x", ["a"])
    assert info.value.reason == "INVALID_NAME"
    assert info.value.field_violations == (FieldViolation("parent", "must be ..."),)
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)


# --- request building ------------------------------------------------------------


def test_create_collection_accepts_resource_names(client, fresh):
    info = client.create_collection("collections/sotu", embed_model="all-MiniLM-L6-v2")
    req = fresh.requests["CreateCollection"][0]
    assert req.collection_id == "sotu"
    assert req.collection.embed_model == "all-MiniLM-L6-v2"
    assert req.collection.dimension == 0
    assert req.collection.distance == collection_pb2.DISTANCE_COSINE
    assert info.name == "sotu" and info.dimension == 384


def test_bad_distance_is_refused_before_sending(client, fresh):
    with pytest.raises(InvalidArgument):
        client.create_collection("x", dim=3, distance="manhattan")
    assert "CreateCollection" not in fresh.requests


def test_list_collections_walks_every_page(client, fresh):
    names = [c.name for c in client.list_collections(page_size=2)]
    assert names == ["c0a", "c0b", "c1a", "c1b", "c2a", "c2b"]
    assert [r.page_token for r in fresh.requests["ListCollections"]] == ["", "1", "2"]
    assert {r.page_size for r in fresh.requests["ListCollections"]} == {2}


def test_search_request(client, fresh):
    hits = client.search(
        "sotu",
        text="defence",
        top_k=5,
        start="1950-01-01T00:00:00Z",
        end=datetime(1960, 1, 1),
        payload_filter={"speech": "1953-Eisenhower"},
    )
    req = fresh.requests["SearchPoints"][0]
    assert req.parent == "collections/sotu"
    assert req.WhichOneof("query") == "text" and req.text == "defence"
    assert convert.time_range_to_bounds(req.time_range) == (
        datetime(1950, 1, 1, tzinfo=UTC),
        datetime(1960, 1, 1, tzinfo=UTC),
    )
    assert convert.payload_to_dict(req.payload_filter) == {"speech": "1953-Eisenhower"}
    assert hits[0].point.id == "a" and hits[0].distance == 0.25


@pytest.mark.parametrize("query", [{}, {"vector": [1, 0, 0], "text": "x"}])
def test_search_needs_exactly_one_query(client, query):
    with pytest.raises(InvalidArgument) as info:
        client.search("sotu", **query)
    assert info.value.field_violations[0].field == "query"


def test_bad_time_bound_is_invalid_argument(client):
    with pytest.raises(InvalidArgument) as info:
        list(client.trajectory("sotu", start="last tuesday"))
    assert info.value.field_violations[0].field == "time_range.start_time"


def test_simulate_request_and_steps(client, fresh):
    steps = client.flow_simulate("sotu", text="peace", steps=4, dt_seconds=86400.5, paths=2)
    req = fresh.requests["SimulatePaths"][0]
    assert req.start.WhichOneof("start") == "text"
    assert req.step_duration.ToTimedelta() == timedelta(days=1, milliseconds=500)
    assert (req.steps, req.paths, req.include_vectors) == (4, 2, True)
    assert [s.step for s in steps] == [0, 1, 2, 3]
    assert all(isinstance(s, types.SimulationStep) for s in steps)


def test_flow_start_needs_exactly_one(client):
    with pytest.raises(InvalidArgument):
        client.flow_vector("sotu", text="a", point_id="b")


def test_chapters_penalty_none_asks_server_default(client, fresh):
    result = client.flow_chapters("sotu", min_size=30)
    req = fresh.requests["DetectChapters"][0]
    assert (req.min_size, req.penalty, req.representatives) == (30, 0.0, 3)
    assert result == types.ChapterSet(chapters=(), version=7)


def test_trajectory_flattens_chunks(client):
    ids = [p.id for p in client.trajectory("sotu")]
    assert ids == ["p00", "p01", "p10", "p11", "p20", "p21"]


def test_get_points_returns_found_and_missing(client):
    found, missing = client.get_points("sotu", ["a", "nope", "b"])
    assert [p.id for p in found] == ["a", "b"] and missing == ["nope"]


# --- upsert batching -----------------------------------------------------------


def test_upsert_splits_into_batches_and_sums(client, fresh):
    result = client.upsert("sotu", rows(7), batch_size=3)
    sizes = [len(r.points) for r in fresh.requests["UpsertPoints"]]
    assert sizes == [3, 3, 1]
    assert result == types.UpsertResult(upserted=7, embedded=0, version=3)
    first = fresh.requests["UpsertPoints"][0].points[0]
    assert list(first.vector) == [1.0, 0.0, 0.0]
    assert convert.timestamp_to_datetime(first.time) == T0


def test_upsert_parses_every_row_before_sending(client, fresh):
    bad = rows(5)
    bad[1]["timestamp"] = "yesterday"
    bad[4]["vector"] = "oops"
    with pytest.raises(InvalidArgument) as info:
        client.upsert("sotu", bad, batch_size=2)
    assert "UpsertPoints" not in fresh.requests
    assert [v.field for v in info.value.field_violations] == ["points[1].time", "points[4].vector"]
    assert info.value.reason == "INVALID_TIMESTAMP"
    assert info.value.metadata == {"invalid_count": "2"}


def test_server_rejection_names_positions_in_the_whole_input(client, fresh):
    fresh.fail_batch = (
        2,
        rich_status(
            code_pb2.INVALID_ARGUMENT,
            "1 invalid point(s)",
            "DIMENSION_MISMATCH",
            violations=[("points[1].vector", "has 2 values")],
        ),
    )
    with pytest.raises(InvalidArgument) as info:
        client.upsert("sotu", rows(7), batch_size=3)
    assert info.value.field_violations == (FieldViolation("points[4].vector", "has 2 values"),)
    assert info.value.metadata["batch_start"] == "3"


def test_empty_upsert_sends_one_empty_batch(client, fresh):
    assert client.upsert("sotu", []).upserted == 0
    assert len(fresh.requests["UpsertPoints"]) == 1


# --- streaming upsert ------------------------------------------------------------


def test_stream_upsert_numbers_batches_and_yields_acks(client, fresh):
    points = rows(5)
    points[3]["vector"] = [1.0, 2.0]  # the stub rejects it, as a server would
    acks = list(client.stream_upsert("sotu", iter(points), batch_size=2, start_sequence=10))
    assert [a.sequence for a in acks] == [10, 11, 12]
    assert [(a.accepted, a.rejected) for a in acks] == [(2, 0), (1, 1), (1, 0)]
    assert acks[1].errors == (types.PointError(1, "p3", "DIMENSION_MISMATCH", "x"),)
    assert isinstance(acks[0], UpsertAck)
    assert {r.parent for r in fresh.requests["StreamUpsertPoints"]} == {"collections/sotu"}


def test_stream_upsert_bad_row_raises_after_earlier_acks(client):
    points = rows(5)
    points[3]["id"] = ""
    acks = []
    with pytest.raises(InvalidArgument) as info:
        for ack in client.stream_upsert("sotu", points, batch_size=2):
            acks.append(ack)
    assert [a.sequence for a in acks] == [0]
    assert info.value.field_violations[0].field == "points[3].id"


def test_stream_upsert_reraises_the_callers_iterator_failure(client):
    def broken():
        yield from rows(3)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(client.stream_upsert("sotu", broken(), batch_size=2))


async def test_async_stream_upsert_takes_async_iterables(fresh):
    async def gen():
        for r in rows(5):
            yield r

    async with AsyncDriftClient(fresh.target, timeout=10) as c:
        acks = [a async for a in c.stream_upsert("sotu", gen(), batch_size=2, start_sequence=1)]
        sync_acks = [a async for a in c.stream_upsert("sotu", rows(3), batch_size=2)]
        names = [info.name async for info in c.list_collections()]
        steps = await c.flow_simulate("sotu", point_id="p0", steps=3)
    assert [a.sequence for a in acks] == [1, 2, 3]
    assert sum(a.accepted for a in acks) == 5
    assert [a.sequence for a in sync_acks] == [0, 1]
    assert len(names) == 6
    assert [s.step for s in steps] == [0, 1, 2]


def test_batch_size_must_be_positive(client):
    with pytest.raises(InvalidArgument):
        client.upsert("sotu", rows(1), batch_size=0)


# --- point dict parsing ----------------------------------------------------------


def test_parse_point_full_row():
    p = parse_point(
        {
            "id": "a",
            "timestamp": "2024-05-01T11:00:00+02:00",
            "vector": np.arange(3, dtype=np.float64),
            "series": "s",
            "payload": {"k": "v", "n": 2, "f": 0.5, "b": True},
            "extra": "ignored",
        }
    )
    assert p.time == T0 and p.time.tzinfo is not None
    assert p.vector.dtype == np.float32 and p.vector.tolist() == [0.0, 1.0, 2.0]
    assert (p.series, p.text, p.payload) == ("s", None, {"k": "v", "n": 2, "f": 0.5, "b": True})


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-05-01T09:00:00Z",
        "2024-05-01T09:00:00",
        datetime(2024, 5, 1, 9),
        datetime(2024, 5, 1, 11, tzinfo=timezone(timedelta(hours=2))),
        1714554000,  # epoch seconds
        1714554000.0,
    ],
)
def test_parse_point_times_become_aware_utc(stamp):
    p = parse_point({"id": "a", "timestamp": stamp, "text": "hello"})
    assert p.time == T0 and p.time.utcoffset() == timedelta(0)
    assert p.vector is None and p.text == "hello"


@given(st.floats(min_value=-1e10, max_value=2.5e11, allow_nan=False))
def test_epoch_seconds_round_trip_to_the_microsecond(seconds):
    p = parse_point({"id": "a", "timestamp": seconds, "text": "x"})
    assert p.time.utcoffset() == timedelta(0)
    assert abs(p.time.timestamp() - seconds) <= 1e-6 * max(1.0, abs(seconds) / 1e9)


def test_python_m_driftd_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "driftd", "ingest", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "exit status:" in out.stdout and "130" in out.stdout


def test_parse_point_passes_points_through():
    point = types.Point(id="a", time=T0, text="x")
    assert parse_point(point) is point


@pytest.mark.parametrize(
    ("row", "reason", "fields"),
    [
        ({"id": "a", "text": "x"}, "INVALID_TIMESTAMP", ["points[7].time"]),
        ({"id": "a", "timestamp": True, "text": "x"}, "INVALID_TIMESTAMP", ["points[7].time"]),
        (
            {"id": "a", "timestamp": float("nan"), "text": "x"},
            "INVALID_TIMESTAMP",
            ["points[7].time"],
        ),
        ({"id": "a", "timestamp": 1e20, "text": "x"}, "INVALID_TIMESTAMP", ["points[7].time"]),
        ({"id": "a", "timestamp": "2024x"}, "INVALID_TIMESTAMP", ["points[7].time", "points[7]"]),
        ({"timestamp": "2024-05-01T09:00:00Z", "text": "x"}, "INVALID_FIELD", ["points[7].id"]),
        ({"id": "a", "timestamp": "2024-05-01T09:00:00Z"}, "MISSING_CONTENT", ["points[7]"]),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "vector": [[1, 2]]},
            "INVALID_FIELD",
            ["points[7].vector"],
        ),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "vector": ["x"]},
            "INVALID_FIELD",
            ["points[7].vector"],
        ),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "vector": []},
            "INVALID_FIELD",
            ["points[7].vector"],
        ),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "text": 5},
            "INVALID_FIELD",
            ["points[7].text"],
        ),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "text": "x", "series": 3},
            "INVALID_FIELD",
            ["points[7].series"],
        ),
        (
            {
                "id": "a",
                "timestamp": "2024-05-01T09:00:00Z",
                "text": "x",
                "payload": {"k": {"n": 1}},
            },
            "INVALID_PAYLOAD",
            ["points[7].payload"],
        ),
        (
            {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "text": "x", "payload": [1]},
            "INVALID_PAYLOAD",
            ["points[7].payload"],
        ),
        (["a", "b"], "INVALID_FIELD", ["points[7]"]),
    ],
)
def test_parse_point_rejects_bad_rows_with_field_paths(row, reason, fields):
    with pytest.raises(InvalidArgument) as info:
        parse_point(row, 7)
    assert info.value.reason == reason
    assert [v.field for v in info.value.field_violations] == fields
    assert info.value.metadata == {"index": "7"}


def test_parse_points_numbers_from_first_index():
    good = {"id": "a", "timestamp": T0, "text": "x"}
    assert len(parse_points([good, good])) == 2
    with pytest.raises(InvalidArgument) as info:
        parse_points([good, {"id": "b"}, good, {"id": 3, "timestamp": T0, "text": "x"}], 100)
    assert [v.field for v in info.value.field_violations] == [
        "points[101].time",
        "points[101]",
        "points[103].id",
    ]


def test_channel_options_override_defaults():
    opts = dict(common.channel_options({"grpc.max_receive_message_length": 1, "grpc.x": 2}))
    assert opts["grpc.max_receive_message_length"] == 1
    assert opts["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert opts["grpc.x"] == 2


# --- imports -----------------------------------------------------------------------

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"chromadb", "scipy", "fastembed", "prometheus_client", "grpc_health", "sklearn",
               "ruptures", "tqdm"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or name in ("driftd.engine", "driftd.metrics"):
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
    """
)


def test_client_imports_without_server_dependencies():
    code = BLOCKER + textwrap.dedent(
        """
        from driftd.client import AsyncDriftClient, DriftClient
        c = DriftClient("127.0.0.1:1")
        try:
            c.health()
        except ImportError as exc:
            assert "grpcio-health-checking" in str(exc), exc
        else:
            raise AssertionError("health() worked without grpc_health")
        c.close()
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- driftd ingest -------------------------------------------------------------------


def test_ingest_counts_accepted_and_rejected_rows(fresh, tmp_path, capsys):
    import gzip
    import json

    from driftd import cli

    good = {"id": "a", "timestamp": "2024-05-01T09:00:00Z", "vector": [1, 0, 0]}
    lines = [
        json.dumps(good),
        "{not json",
        "",
        json.dumps({**good, "id": "b", "timestamp": "soon"}),
        json.dumps({**good, "id": "c", "vector": [1, 0]}),  # the stub rejects: dimension
        json.dumps({**good, "id": "d", "series": "s", "payload": {"k": 1}}),
        json.dumps({**good, "id": "e"}),
    ]
    path = tmp_path / "points.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")

    status = cli.main(
        ["ingest", str(path), "--collection", "x", "--target", fresh.target, "--batch-size", "2"]
    )
    out = capsys.readouterr().out
    assert status == 1
    sent = [p.id for r in fresh.requests["StreamUpsertPoints"] for p in r.points]
    assert sent == ["a", "c", "d", "e"]
    assert "accepted   3 points" in out and "rejected   3 points" in out
    assert "line 2: INVALID_JSON" in out
    assert "line 4: INVALID_TIMESTAMP: time: timestamp 'soon'" in out
    assert "line 5: DIMENSION_MISMATCH" in out


def test_ingest_reports_driftd_errors_in_one_line(fresh, tmp_path, capsys):
    from driftd import cli

    fresh.fail["CreateCollection"] = rich_status(
        code_pb2.INVALID_ARGUMENT, "unknown model", "UNKNOWN_EMBED_MODEL"
    )
    path = tmp_path / "p.jsonl"
    path.write_text("")
    argv = ["ingest", str(path), "--collection", "x", "--target", fresh.target, "--create"]
    assert cli.main(argv) == 1
    assert "INVALID_ARGUMENT UNKNOWN_EMBED_MODEL: unknown model" in capsys.readouterr().err
    assert fresh.requests["CreateCollection"][0].collection.embed_model == "all-MiniLM-L6-v2"


# --- the demo's data and scoring -----------------------------------------------------


def test_demo_data_and_boundary_alignment():
    from driftd import demo

    rows = demo.load_paragraphs()
    truth = demo.load_truth()
    assert len(rows) == 6348
    by_id = {r["id"]: r for r in rows}
    first_para = {}
    for r in rows:
        first_para.setdefault(r["meta"]["speech"], r["id"])
    changes = [first_para[a["first_speech"]] for a in truth["administrations"][1:]]
    aligned, n_changes, found, chance = demo.boundary_alignment(changes, by_id, truth)
    assert (aligned, n_changes, found) == (10, 10, 10) and 0.2 < chance < 0.6
    # A boundary in the speech just before a change counts; one years away does not.
    speeches = [s["speech"] for s in truth["speeches"]]
    before_kennedy = first_para[speeches[speeches.index("1961-Kennedy") - 1]]
    far = first_para["1948-Truman"]
    assert demo.boundary_alignment([before_kennedy, far], by_id, truth)[:3] == (1, 10, 1)
    point = demo.as_point(rows[0])
    assert parse_point(point).payload == {
        "speech": "1945-Truman",
        "para": 0,
        "title": rows[0]["meta"]["title"],
    }


def test_auth_codes_map_to_their_classes(client, fresh):
    fresh.fail["GetPoints"] = rich_status(code_pb2.PERMISSION_DENIED, "who are you")
    with pytest.raises(PermissionDenied):
        client.get_points("x", ["a"])
    fresh.fail["GetPoints"] = rich_status(code_pb2.UNAUTHENTICATED, "no key")
    with pytest.raises(Unauthenticated):
        client.get_points("x", ["a"])
