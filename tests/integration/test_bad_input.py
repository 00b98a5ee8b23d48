"""Every bad input of the API gets a precise status, an ErrorInfo reason and,
where a field is at fault, a BadRequest naming it; and nothing is written.

Asserted on the wire (generated stubs against a real server process), with the
Python client for set-up and for checking what was stored.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from support import error_details

from driftd import convert
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

DIM = 4
T0 = datetime(2024, 1, 1, tzinfo=UTC)
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def stubs(server):
    with grpc.insecure_channel(server.target) as channel:
        yield (
            collection_pb2_grpc.CollectionServiceStub(channel),
            point_pb2_grpc.PointServiceStub(channel),
            flow_pb2_grpc.FlowServiceStub(channel),
        )


@pytest.fixture(scope="module")
def vec_coll(client):
    """A vectors-only collection holding one known point."""
    client.create_collection(name="bad-vec", dim=DIM, distance="l2")
    client.upsert("bad-vec", points=[{"id": "keep", "timestamp": T0, "vector": [1, 0, 0, 0]}])
    return "collections/bad-vec"


def point(pid="p", vector=(0.1, 0.2, 0.3, 0.4), *, time=T0, text=""):
    msg = point_pb2.Point(id=pid, vector=list(vector), text=text)
    if time is not None:
        msg.time.CopyFrom(convert.datetime_to_timestamp(time))
    return msg


def assert_rejected(call, code, reason, fields=None, **metadata):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    got_code, got_reason, got_meta, got_fields = error_details(exc.value)
    assert (got_code, got_reason) == (code, reason), exc.value.details()
    if fields is not None:
        assert got_fields == fields
    for key, value in metadata.items():
        assert got_meta[key] == str(value)


def assert_nothing_written(client, name, ids):
    info = client.get_collection(name)
    assert info.point_count == 1, "a rejected batch must write nothing"
    found, missing = client.get_points(name, ids)
    assert found == [] and sorted(missing) == sorted(ids)


BAD_POINTS = [
    ("wrong dimension", point("b", (1.0, 2.0)), "DIMENSION_MISMATCH", "points[1].vector"),
    ("NaN", point("b", (1.0, math.nan, 0.0, 0.0)), "NON_FINITE_VECTOR", "points[1].vector"),
    ("infinity", point("b", (1.0, math.inf, 0.0, 0.0)), "NON_FINITE_VECTOR", "points[1].vector"),
    ("no vector nor text", point("b", ()), "MISSING_CONTENT", "points[1]"),
    ("missing timestamp", point("b", time=None), "INVALID_TIMESTAMP", "points[1].time"),
    ("duplicate id", point("a"), "DUPLICATE_ID", "points[1].id"),
    ("empty id", point(""), "INVALID_FIELD", "points[1].id"),
]


@pytest.mark.parametrize(
    ("case", "bad", "reason", "field"), BAD_POINTS, ids=[c[0] for c in BAD_POINTS]
)
def test_bad_point_rejects_whole_batch(client, stubs, vec_coll, case, bad, reason, field):
    _, points, _ = stubs
    good = point("a")
    assert_rejected(
        lambda: points.UpsertPoints(
            point_pb2.UpsertPointsRequest(parent=vec_coll, points=[good, bad])
        ),
        INVALID,
        reason,
        [field],
    )
    assert_nothing_written(client, "bad-vec", ["a", "b"] if bad.id == "b" else ["a"])


def test_unparsable_timestamp_is_refused(client, stubs, vec_coll):
    """A Timestamp past year 9999 cannot be a time: refused, not an INTERNAL error."""
    _, points, _ = stubs
    bad = point("b")
    bad.time.seconds = 10**12
    assert_rejected(
        lambda: points.UpsertPoints(point_pb2.UpsertPointsRequest(parent=vec_coll, points=[bad])),
        INVALID,
        "INVALID_TIMESTAMP",
        ["points[0].time"],
    )
    assert_nothing_written(client, "bad-vec", ["b"])


def test_text_without_embed_model(client, stubs, vec_coll):
    _, points, _ = stubs
    req = point_pb2.UpsertPointsRequest(parent=vec_coll, points=[point("a", (), text="hello")])
    assert_rejected(
        lambda: points.UpsertPoints(req), PRECONDITION, "NO_EMBED_MODEL", ["points[0].text"]
    )
    assert_nothing_written(client, "bad-vec", ["a"])


def test_batch_over_limit(client, stubs, vec_coll):
    _, points, _ = stubs
    many = [point(f"m{i}", time=T0 + timedelta(seconds=i)) for i in range(10_001)]
    assert_rejected(
        lambda: points.UpsertPoints(point_pb2.UpsertPointsRequest(parent=vec_coll, points=many)),
        INVALID,
        "BATCH_TOO_LARGE",
        ["points"],
        limit=10_000,
    )
    assert_nothing_written(client, "bad-vec", ["m0", "m10000"])


def test_message_over_size_limit(client, stubs, vec_coll):
    """gRPC itself refuses a message over the server's 64 MiB receive limit."""
    _, points, _ = stubs
    huge = point_pb2.Point(id="huge", vector=np.zeros(17_000_000, dtype=np.float32).tolist())
    huge.time.CopyFrom(convert.datetime_to_timestamp(T0))
    with pytest.raises(grpc.RpcError) as exc:
        points.UpsertPoints(point_pb2.UpsertPointsRequest(parent=vec_coll, points=[huge]))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_nothing_written(client, "bad-vec", ["huge"])


def test_unknown_collection(stubs):
    collections, points, flows = stubs
    missing = "collections/no-such-thing"
    for call in (
        lambda: collections.GetCollection(collection_pb2.GetCollectionRequest(name=missing)),
        lambda: collections.DeleteCollection(collection_pb2.DeleteCollectionRequest(name=missing)),
        lambda: points.UpsertPoints(
            point_pb2.UpsertPointsRequest(parent=missing, points=[point()])
        ),
        lambda: flows.FindAttractors(flow_pb2.FindAttractorsRequest(parent=missing)),
    ):
        assert_rejected(call, NOT_FOUND, "COLLECTION_NOT_FOUND")


def test_create_existing_and_invalid_names(client, stubs, vec_coll):
    collections, points, _ = stubs
    create = collection_pb2.CreateCollectionRequest(
        collection_id="bad-vec", collection=collection_pb2.Collection(dimension=DIM)
    )
    assert_rejected(
        lambda: collections.CreateCollection(create),
        grpc.StatusCode.ALREADY_EXISTS,
        "COLLECTION_ALREADY_EXISTS",
    )
    assert client.get_collection("bad-vec").dimension == DIM
    for bad in ("x", "-leading", "has space", "a" * 513, "dots..twice", "ünïcode"):
        create = collection_pb2.CreateCollectionRequest(
            collection_id=bad, collection=collection_pb2.Collection(dimension=DIM)
        )
        assert_rejected(
            lambda create=create: collections.CreateCollection(create),
            INVALID,
            "INVALID_NAME",
            ["collection_id"],
        )
    assert_rejected(
        lambda: points.UpsertPoints(
            point_pb2.UpsertPointsRequest(parent="bad-vec", points=[point()])
        ),
        INVALID,
        "INVALID_NAME",
        ["parent"],
    )
    assert [c.name for c in client.list_collections()].count("bad-vec") == 1


def test_limits_on_steps_paths_seeds(client, stubs, vec_coll):
    _, _, flows = stubs
    start = flow_pb2.FlowStart(point_id="keep")
    cases = [
        (
            lambda: list(
                flows.SimulatePaths(
                    flow_pb2.SimulatePathsRequest(parent=vec_coll, start=start, steps=10_001)
                )
            ),
            "steps",
        ),
        (
            lambda: list(
                flows.SimulatePaths(
                    flow_pb2.SimulatePathsRequest(parent=vec_coll, start=start, paths=65)
                )
            ),
            "paths",
        ),
        (
            lambda: flows.FindAttractors(
                flow_pb2.FindAttractorsRequest(parent=vec_coll, seeds=1025)
            ),
            "seeds",
        ),
    ]
    for call, field in cases:
        assert_rejected(call, INVALID, "LIMIT_EXCEEDED", [field])


def test_too_few_points_for_a_flow(stubs, vec_coll):
    _, _, flows = stubs
    assert_rejected(
        lambda: flows.ProbeFlow(
            flow_pb2.ProbeFlowRequest(parent=vec_coll, start=flow_pb2.FlowStart(point_id="keep"))
        ),
        PRECONDITION,
        "NOT_ENOUGH_POINTS",
        required=10,
        available=1,
    )
