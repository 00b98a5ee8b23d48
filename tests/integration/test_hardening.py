"""Hardening of the request side (issue 13): payloads, filters, times, zero
vectors, bounded error details, unparsable messages, text sizes, addresses.

Each test reproduces a defect found against 8e9c8df over the wire (a real
server process over real Chroma) and asserts the precise status instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from support import error_details

from driftd import convert
from driftd.client import DriftClient, PayloadCondition
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

DIM = 4
T0 = datetime(2024, 1, 1, tzinfo=UTC)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# gRPC's default limit on received metadata is 8 KB (soft).
TRAILER_LIMIT = 8 * 1024


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def points(channel):
    return point_pb2_grpc.PointServiceStub(channel)


@pytest.fixture(scope="module")
def cosine(client):
    """A cosine collection of 40 points in two series with numeric and string payloads."""
    client.create_collection(name="hard-cos", dim=DIM, distance="cosine")
    rng = np.random.default_rng(7)
    client.upsert(
        "hard-cos",
        points=[
            {
                "id": f"p{i}",
                "timestamp": T0 + timedelta(minutes=i),
                "vector": rng.normal(size=DIM) + 3,
                "series": f"s{i % 2}",
                "payload": {"n": float(i), "tag": "abc"[i % 3], "even": i % 2 == 0},
            }
            for i in range(40)
        ],
    )
    return "collections/hard-cos"


def rejected(call) -> tuple[grpc.StatusCode, str, dict, list[str]]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return error_details(exc.value)


def trailer_bytes(err: grpc.RpcError) -> int:
    return sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())


def point(pid, vector=(0.1, 0.2, 0.3, 0.4), payload=None, text=""):
    msg = point_pb2.Point(id=pid, vector=list(vector), text=text)
    msg.time.CopyFrom(convert.datetime_to_timestamp(T0))
    if payload is not None:
        msg.payload.update(payload)
    return msg


# --- defect 1: payloads --------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({f"k{i}": i for i in range(6000)}, "LIMIT_EXCEEDED"),
        ({"big": "x" * 5_000_000}, "LIMIT_EXCEEDED"),
        ({f"k{i}": "y" * 10_000 for i in range(10)}, "LIMIT_EXCEEDED"),
        ({"": 1}, "INVALID_PAYLOAD"),
        ({"#document": "x"}, "INVALID_PAYLOAD"),
        ({"chroma:document": "x"}, "INVALID_PAYLOAD"),
        ({"$and": "x"}, "INVALID_PAYLOAD"),
        ({"driftd:seq": 1}, "INVALID_PAYLOAD"),
        ({"k" * 300: 1}, "INVALID_PAYLOAD"),
        ({"tab\there": 1}, "INVALID_PAYLOAD"),
    ],
    ids=[
        "6000-keys",
        "5MB-value",
        "100KB-total",
        "empty-key",
        "#document",
        "chroma:",
        "$and",
        "driftd:",
        "long-key",
        "control",
    ],
)
def test_payload_refused_and_collection_stays_healthy(client, points, payload, reason):
    name = "hard-payload"
    if name not in {c.name for c in client.list_collections()}:
        client.create_collection(name=name, dim=DIM, distance="l2")
    req = point_pb2.UpsertPointsRequest(
        parent=f"collections/{name}", points=[point("ok"), point("bad", payload=payload)]
    )
    code, got, _, fields = rejected(lambda: points.UpsertPoints(req))
    assert (code, got) == (INVALID, reason)
    assert fields == ["points[1].payload"]
    # Nothing written; the collection (and the listing) still read and write.
    assert client.get_points(name, ["ok", "bad"]) == ([], ["ok", "bad"])
    client.upsert(name, [{"id": "after", "timestamp": T0, "vector": [1, 2, 3, 4]}])
    assert client.get_collection(name).point_count == 1
    assert name in {c.name for c in client.list_collections()}


# --- defect 3: times out of range ------------------------------------------


def _year(y: int) -> timestamp_pb2.Timestamp:
    """A Timestamp just inside year ``y`` (10000) or at its end (0): both outside
    the type's range 0001-9999."""
    if y == 10_000:
        return timestamp_pb2.Timestamp(seconds=253_402_300_800)
    return timestamp_pb2.Timestamp(seconds=-62_135_596_801)


@pytest.mark.parametrize("bound", ["start_time", "end_time"])
@pytest.mark.parametrize("year", [10_000, 0])
def test_time_range_out_of_range_is_invalid_timestamp(channel, cosine, bound, year):
    tr = point_pb2.TimeRange(**{bound: _year(year)})
    flows = flow_pb2_grpc.FlowServiceStub(channel)
    pts = point_pb2_grpc.PointServiceStub(channel)
    monitor = monitor_pb2_grpc.MonitorServiceStub(channel)
    calls = {
        "time_range": lambda: list(
            pts.GetTrajectory(point_pb2.GetTrajectoryRequest(parent=cosine, time_range=tr))
        ),
        "time_range ": lambda: pts.SearchPoints(
            point_pb2.SearchPointsRequest(
                parent=cosine, vector=point_pb2.FloatVector(values=[1, 1, 1, 1]), time_range=tr
            )
        ),
        "time_range  ": lambda: flows.DetectChapters(
            flow_pb2.DetectChaptersRequest(parent=cosine, time_range=tr)
        ),
        "window_b.time_range": lambda: monitor.CompareWindows(
            monitor_pb2.CompareWindowsRequest(
                parent=cosine, window_b=monitor_pb2.Window(time_range=tr)
            )
        ),
    }
    for field, call in calls.items():
        code, reason, _, fields = rejected(call)
        assert (code, reason) == (INVALID, "INVALID_TIMESTAMP")
        assert fields == [f"{field.strip()}.{bound}"]


def test_step_duration_out_of_range_is_limit_exceeded(channel, cosine):
    flows = flow_pb2_grpc.FlowServiceStub(channel)
    req = flow_pb2.SimulatePathsRequest(
        parent=cosine,
        start=flow_pb2.FlowStart(point_id="p0"),
        step_duration=duration_pb2.Duration(seconds=10**14),
    )
    code, reason, _, fields = rejected(lambda: list(flows.SimulatePaths(req)))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["step_duration"])


# --- defect 4: payload filters ---------------------------------------------


@pytest.mark.parametrize("key", ["$or", "$and", "$contains", "driftd:time", "#document", ""])
def test_filter_on_reserved_key_is_refused(points, cosine, key):
    flt = struct_pb2.Struct()
    flt.update({key: "x"})
    for req in (
        point_pb2.SearchPointsRequest(
            parent=cosine, vector=point_pb2.FloatVector(values=[1, 1, 1, 1]), payload_filter=flt
        ),
        point_pb2.SearchPointsRequest(
            parent=cosine,
            vector=point_pb2.FloatVector(values=[1, 1, 1, 1]),
            payload_conditions=[
                point_pb2.PayloadCondition(key=key, range=point_pb2.NumberRange(gt=1))
            ],
        ),
    ):
        code, reason, _, _ = rejected(lambda req=req: points.SearchPoints(req))
        assert (code, reason) == (INVALID, "INVALID_FILTER")
    code, reason, _, fields = rejected(
        lambda: list(
            points.GetTrajectory(point_pb2.GetTrajectoryRequest(parent=cosine, payload_filter=flt))
        )
    )
    assert (code, reason) == (INVALID, "INVALID_FILTER")


@pytest.mark.parametrize(
    "condition",
    [
        point_pb2.PayloadCondition(key="n"),
        point_pb2.PayloadCondition(key="n", range=point_pb2.NumberRange()),
        point_pb2.PayloadCondition(key="n", any_of=point_pb2.ValueSet()),
        point_pb2.PayloadCondition(
            key="n",
            any_of=point_pb2.ValueSet(
                values=[struct_pb2.Value(number_value=1), struct_pb2.Value(string_value="a")]
            ),
        ),
        point_pb2.PayloadCondition(
            key="n", none_of=point_pb2.ValueSet(values=[struct_pb2.Value(null_value=0)])
        ),
    ],
    ids=["no-kind", "empty-range", "empty-set", "mixed-set", "null-value"],
)
def test_malformed_condition_is_refused(points, cosine, condition):
    req = point_pb2.SearchPointsRequest(
        parent=cosine,
        vector=point_pb2.FloatVector(values=[1, 1, 1, 1]),
        payload_conditions=[condition],
    )
    code, reason, _, fields = rejected(lambda: points.SearchPoints(req))
    assert (code, reason) == (INVALID, "INVALID_FILTER")
    assert fields and fields[0].startswith("payload_conditions[0]")


def _expected(client, name, keep) -> set[str]:
    return {p.id for p in client.trajectory(name) if keep(p.payload)}


@pytest.mark.parametrize(
    ("condition", "keep"),
    [
        (PayloadCondition("n", gte=10, lt=20), lambda p: 10 <= p["n"] < 20),
        (PayloadCondition("n", gt=35), lambda p: p["n"] > 35),
        (PayloadCondition("n", lte=3), lambda p: p["n"] <= 3),
        (PayloadCondition("tag", any_of=("a", "c")), lambda p: p["tag"] in ("a", "c")),
        (PayloadCondition("tag", none_of=("a",)), lambda p: p["tag"] != "a"),
        (PayloadCondition("n", any_of=(1, 2, 39)), lambda p: p["n"] in (1, 2, 39)),
        (PayloadCondition("even", any_of=(True,)), lambda p: p["even"]),
    ],
    ids=["range", "gt", "lte", "any_of", "none_of", "numbers", "bools"],
)
def test_typed_conditions_select_what_they_say(client, cosine, condition, keep):
    expected = _expected(client, "hard-cos", keep)
    assert 0 < len(expected) < 40
    got = {p.id for p in client.trajectory("hard-cos", payload_conditions=[condition])}
    assert got == expected
    # Search: HNSW with a where (no time filter) and the exact scan (time filter).
    hits = client.search("hard-cos", vector=[1, 1, 1, 1], top_k=40, payload_conditions=[condition])
    assert {h.point.id for h in hits} == expected
    hits = client.search(
        "hard-cos",
        vector=[1, 1, 1, 1],
        top_k=40,
        start=T0,
        end=T0 + timedelta(minutes=20),
        payload_conditions=[condition],
    )
    assert {h.point.id for h in hits} == {i for i in expected if int(i[1:]) < 20}


def test_equality_filter_and_conditions_combine(client, cosine):
    expected = _expected(client, "hard-cos", lambda p: p["tag"] == "b" and p["n"] < 20)
    got = {
        p.id
        for p in client.trajectory(
            "hard-cos",
            payload_filter={"tag": "b"},
            payload_conditions=[PayloadCondition("n", lt=20)],
        )
    }
    assert got == expected and expected


# --- defect 5: zero vectors ------------------------------------------------


def test_zero_vector_refused_in_cosine_collection(client, channel, points, cosine):
    code, reason, _, fields = rejected(
        lambda: points.UpsertPoints(
            point_pb2.UpsertPointsRequest(parent=cosine, points=[point("zero", (0, 0, 0, 0))])
        )
    )
    assert (code, reason, fields) == (INVALID, "ZERO_VECTOR", ["points[0].vector"])
    flows = flow_pb2_grpc.FlowServiceStub(channel)
    start = flow_pb2.FlowStart(vector=point_pb2.FloatVector(values=[0, 0, 0, 0]))
    code, reason, _, fields = rejected(
        lambda: flows.ProbeFlow(flow_pb2.ProbeFlowRequest(parent=cosine, start=start))
    )
    assert (code, reason, fields) == (INVALID, "ZERO_VECTOR", ["start.vector"])
    # The flow of the collection stays defined.
    assert np.isfinite(client.flow_vector("hard-cos", point_id="p3").velocity).all()


def test_zero_vector_allowed_in_l2_collection(client):
    client.create_collection(name="hard-l2", dim=DIM, distance="l2")
    client.upsert("hard-l2", [{"id": "z", "timestamp": T0, "vector": [0, 0, 0, 0]}])
    assert client.get_collection("hard-l2").point_count == 1


# --- defect 6: bounded error details ---------------------------------------


def test_many_violations_are_capped_and_counted(client, points):
    client.create_collection(name="hard-noembed", dim=DIM, distance="l2")
    req = point_pb2.UpsertPointsRequest(
        parent="collections/hard-noembed",
        points=[point(f"t{i}", (), text="some text " * 5) for i in range(256)],
    )
    with pytest.raises(grpc.RpcError) as exc:
        points.UpsertPoints(req)
    code, reason, meta, fields = error_details(exc.value)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_EMBED_MODEL")
    assert fields == [f"points[{i}].text" for i in range(20)]
    assert meta["field_violation_count"] == "256"
    assert trailer_bytes(exc.value) < TRAILER_LIMIT


@pytest.mark.parametrize("length", [10_000, 600])
def test_long_names_are_clipped_in_errors(channel, length):
    collections = collection_pb2_grpc.CollectionServiceStub(channel)
    name = "n" * length
    for call in (
        lambda: collections.GetCollection(
            collection_pb2.GetCollectionRequest(name=f"collections/{name}")
        ),
        lambda: collections.CreateCollection(
            collection_pb2.CreateCollectionRequest(
                collection_id=name, collection=collection_pb2.Collection(dimension=DIM)
            )
        ),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        code, reason, _, _ = error_details(exc.value)
        assert (code, reason) == (INVALID, "INVALID_NAME")
        assert trailer_bytes(exc.value) < TRAILER_LIMIT


def test_ids_of_512_characters_are_valid_collection_ids(client):
    name = "c" * 512
    info = client.create_collection(name=name, dim=DIM, distance="l2")
    assert info.name == name
    client.delete_collection(name)


# --- defect 7: invalid UTF-8 ------------------------------------------------


def _raw(channel, method: str, kind: str):
    path = "/driftd.v1." + method
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


# Field 1 (a string in each request below) holding the bytes ff fe: not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("CollectionService/CreateCollection", "unary_unary"),
        ("CollectionService/GetCollection", "unary_unary"),
        ("PointService/GetTrajectory", "unary_stream"),
        ("FlowService/SimulatePaths", "unary_stream"),
        ("PointService/StreamUpsertPoints", "stream_stream"),
        ("RoutingService/RouteMessage", "unary_unary"),
    ],
)
def test_invalid_utf8_is_invalid_argument(channel, server, method, kind):
    call = _raw(channel, method, kind)
    if kind == "stream_stream":
        run = lambda: list(call(iter([BAD_UTF8]), timeout=30))  # noqa: E731
    elif kind == "unary_stream":
        run = lambda: list(call(BAD_UTF8, timeout=30))  # noqa: E731
    else:
        run = lambda: call(BAD_UTF8, timeout=30)  # noqa: E731
    code, reason, _, _ = rejected(run)
    assert (code, reason) == (INVALID, "MALFORMED_REQUEST")
    assert server.health() == "SERVING"


def test_invalid_utf8_in_a_point_text(channel, cosine):
    ok = point_pb2.UpsertPointsRequest(parent=cosine, points=[point("u", text="AB")])
    raw = ok.SerializeToString()
    assert raw.count(b"AB") == 1
    call = _raw(channel, "PointService/UpsertPoints", "unary_unary")
    code, reason, _, _ = rejected(lambda: call(raw.replace(b"AB", b"\xc3\x28"), timeout=30))
    assert (code, reason) == (INVALID, "MALFORMED_REQUEST")


# --- defect 8: text and dimension limits -----------------------------------


def test_text_over_max_text_bytes(client, points):
    client.create_collection(name="hard-text", embed_model="all-MiniLM-L6-v2")
    req = point_pb2.UpsertPointsRequest(
        parent="collections/hard-text", points=[point("big", (), text="word " * 10_000)]
    )
    code, reason, _, fields = rejected(lambda: points.UpsertPoints(req))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["points[0].text"])
    q = point_pb2.SearchPointsRequest(parent="collections/hard-text", text="word " * 10_000)
    code, reason, _, fields = rejected(lambda: points.SearchPoints(q))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["query.text"])


def test_texts_over_max_request_text_bytes(client, points):
    if "hard-text" not in {c.name for c in client.list_collections()}:
        client.create_collection(name="hard-text", embed_model="all-MiniLM-L6-v2")
    # 200 texts of 30 KB: each under max_text_bytes, 6 MB in all (limit 4 MiB).
    req = point_pb2.UpsertPointsRequest(
        parent="collections/hard-text",
        points=[point(f"m{i}", (), text="w" * 30_000) for i in range(200)],
    )
    code, reason, meta, fields = rejected(lambda: points.UpsertPoints(req))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["points"])
    assert meta["setting"] == "max_request_text_bytes"


def test_dimension_over_max_dimension(channel):
    collections = collection_pb2_grpc.CollectionServiceStub(channel)
    req = collection_pb2.CreateCollectionRequest(
        collection_id="hard-wide", collection=collection_pb2.Collection(dimension=65_536)
    )
    code, reason, _, fields = rejected(lambda: collections.CreateCollection(req))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["collection.dimension"])


# --- defect 12: addresses ----------------------------------------------------


def test_http_target_is_plaintext(server):
    with DriftClient(f"http://{server.target}", timeout=30) as c:
        assert isinstance(list(c.list_collections()), list)
    with DriftClient(f"http://{server.target}/", timeout=30) as c:
        assert isinstance(list(c.list_collections()), list)


def test_get_points_with_a_repeated_id(client, cosine):
    """Found by the fuzz suite: Chroma refused the repeated id (INTERNAL)."""
    found, missing = client.get_points("hard-cos", ["p1", "p1", "nope", "nope"])
    assert [p.id for p in found] == ["p1", "p1"] and missing == ["nope", "nope"]


def test_none_of_matches_points_without_the_key(client):
    client.create_collection(name="hard-missing", dim=DIM, distance="l2")
    client.upsert(
        "hard-missing",
        [
            {"id": "x", "timestamp": T0, "vector": [1, 0, 0, 0], "payload": {"k": "x"}},
            {"id": "y", "timestamp": T0, "vector": [0, 1, 0, 0], "payload": {"k": "y"}},
            {"id": "none", "timestamp": T0, "vector": [0, 0, 1, 0]},
        ],
    )
    ids = lambda c: {p.id for p in client.trajectory("hard-missing", payload_conditions=[c])}  # noqa: E731
    assert ids(PayloadCondition("k", none_of=("x",))) == {"y", "none"}
    assert ids(PayloadCondition("k", any_of=("x", "y"))) == {"x", "y"}
    assert ids(PayloadCondition("k2", gte=0)) == set()


def test_routing_content_over_max_text_bytes(channel):
    from driftd.v1 import routing_pb2, routing_pb2_grpc

    routing = routing_pb2_grpc.RoutingServiceStub(channel)
    req = routing_pb2.RouteMessageRequest(
        conversation="conversations/hard", role=routing_pb2.MESSAGE_ROLE_USER, content="é" * 20_000
    )
    code, reason, _, fields = rejected(lambda: routing.RouteMessage(req))
    assert (code, reason, fields) == (INVALID, "LIMIT_EXCEEDED", ["content"])
