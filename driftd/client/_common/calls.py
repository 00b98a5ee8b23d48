"""Unary RPCs of collections, points and flow, each described once as a
:class:`Call`: the stub method, the request and a function that reads the
response."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic

import numpy as np
from google.protobuf.message import Message

from driftd import convert, types
from driftd.client._common.options import PointLike, Stubs, T, Time
from driftd.client._common.parse import (
    _check_batch_size,
    _choice,
    _exactly_one,
    _time_range,
    parse_points,
)
from driftd.errors import (
    FieldViolation,
    InvalidArgument,
)
from driftd.v1 import (
    collection_pb2,
    flow_pb2,
    point_pb2,
)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC ready to send.

    ``method`` is a dotted path into :class:`Stubs` (``"points.GetPoints"``);
    ``parse`` turns the response into the client's return value;
    ``index_offset`` is set for one batch of a larger input (see
    :func:`from_rpc_error`).
    """

    method: str
    request: Message
    parse: Callable[[Any], T]
    index_offset: int | None = None

    def bind(self, stubs: Stubs) -> Callable:
        return attrgetter(self.method)(stubs)


def create_collection(
    name: str, dim: int | None, distance: str, embed_model: str | None
) -> Call[types.CollectionInfo]:
    if distance not in convert.DISTANCE_TO_PROTO:
        raise InvalidArgument(
            f"distance {distance!r} is not one of {', '.join(convert.DISTANCE_TO_PROTO)}",
            field_violations=[FieldViolation("collection.distance", "cosine, l2 or ip")],
        )
    spec = collection_pb2.Collection(
        dimension=dim or 0,
        distance=convert.DISTANCE_TO_PROTO[distance],
        embed_model=embed_model or "",
    )
    request = collection_pb2.CreateCollectionRequest(
        collection_id=name.removeprefix(convert.COLLECTION_PREFIX), collection=spec
    )
    return Call("collections.CreateCollection", request, convert.collection_from_proto)


def get_collection(name: str) -> Call[types.CollectionInfo]:
    request = collection_pb2.GetCollectionRequest(name=convert.collection_name(name))
    return Call("collections.GetCollection", request, convert.collection_from_proto)


def export_request(name: str, chunk_size: int) -> collection_pb2.ExportCollectionRequest:
    return collection_pb2.ExportCollectionRequest(
        name=convert.collection_name(name), chunk_size=chunk_size
    )


def list_collections_page(
    page_size: int, page_token: str
) -> Call[tuple[list[types.CollectionInfo], str]]:
    request = collection_pb2.ListCollectionsRequest(page_size=page_size, page_token=page_token)
    return Call(
        "collections.ListCollections",
        request,
        lambda r: ([convert.collection_from_proto(c) for c in r.collections], r.next_page_token),
    )


def delete_collection(name: str) -> Call[None]:
    request = collection_pb2.DeleteCollectionRequest(name=convert.collection_name(name))
    return Call("collections.DeleteCollection", request, lambda _: None)


def attach_collection(
    chroma_collection: str, time_key: str, series_key: str, embed_model: str
) -> Call[types.CollectionInfo]:
    request = collection_pb2.AttachCollectionRequest(
        chroma_collection=chroma_collection,
        time_key=time_key,
        series_key=series_key,
        embed_model=embed_model,
    )
    return Call("collections.AttachCollection", request, convert.collection_from_proto)


def upsert_batches(
    name: str, points: Iterable[PointLike], batch_size: int
) -> Iterator[Call[types.UpsertResult]]:
    """One UpsertPoints call per ``batch_size`` points. All points are parsed
    before the first call, so a malformed row sends nothing. An empty input gives
    one empty call, whose answer carries the collection's version.

    Raises:
        InvalidArgument: a malformed row (see :func:`parse_points`) or batch_size < 1.
    """
    _check_batch_size(batch_size)
    parsed = parse_points(points)
    parent = convert.collection_name(name)
    for start in range(0, max(len(parsed), 1), batch_size):
        request = point_pb2.UpsertPointsRequest(
            parent=parent,
            points=[convert.point_to_proto(p) for p in parsed[start : start + batch_size]],
        )
        yield Call("points.UpsertPoints", request, _upsert_result, index_offset=start)


def _upsert_result(r: point_pb2.UpsertPointsResponse) -> types.UpsertResult:
    return types.UpsertResult(
        upserted=r.upserted_count, embedded=r.embedded_count, version=r.collection_version
    )


def add_results(a: types.UpsertResult | None, b: types.UpsertResult) -> types.UpsertResult:
    """Two consecutive batches' results as one (the later version)."""
    if a is None:
        return b
    return types.UpsertResult(
        upserted=a.upserted + b.upserted,
        embedded=a.embedded + b.embedded,
        version=max(a.version, b.version),
    )


def get_points(
    name: str, ids: Sequence[str], include_vectors: bool
) -> Call[tuple[list[types.Point], list[str]]]:
    request = point_pb2.GetPointsRequest(
        parent=convert.collection_name(name), ids=list(ids), include_vectors=include_vectors
    )
    return Call(
        "points.GetPoints",
        request,
        lambda r: ([convert.point_from_proto(p) for p in r.points], list(r.missing_ids)),
    )


def delete_points(name: str, ids: Sequence[str]) -> Call[int]:
    request = point_pb2.DeletePointsRequest(parent=convert.collection_name(name), ids=list(ids))
    return Call("points.DeletePoints", request, lambda r: r.deleted_count)


def search(
    name: str,
    *,
    vector,
    text: str | None,
    top_k: int,
    start: Time,
    end: Time,
    series: str,
    payload_filter: Mapping | None,
    include_vectors: bool,
    payload_conditions: Sequence[types.PayloadCondition] = (),
) -> Call[list[types.ScoredPoint]]:
    _exactly_one("query", vector=vector, text=text)
    request = point_pb2.SearchPointsRequest(
        parent=convert.collection_name(name),
        top_k=top_k,
        time_range=_time_range(start, end),
        series=series,
        include_vectors=include_vectors,
    )
    if vector is not None:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    else:
        request.text = text or ""
    if payload_filter:
        request.payload_filter.CopyFrom(convert.dict_to_struct(payload_filter))
    request.payload_conditions.extend(convert.conditions_to_proto(payload_conditions))
    return Call(
        "points.SearchPoints",
        request,
        lambda r: [
            types.ScoredPoint(convert.point_from_proto(h.point), h.distance) for h in r.results
        ],
    )


def probe_flow(name: str, *, vector, text, point_id) -> Call[types.FlowProbe]:
    request = flow_pb2.ProbeFlowRequest(
        parent=convert.collection_name(name), start=_flow_start(vector, text, point_id)
    )
    return Call("flow.ProbeFlow", request, convert.probe_from_proto)


def _flow_start(vector, text, point_id) -> flow_pb2.FlowStart:
    _exactly_one("start", vector=vector, text=text, point_id=point_id)
    return convert.flow_start_to_proto(vector=vector, text=text, point_id=point_id)


def find_attractors(
    name: str,
    *,
    seeds: int,
    representatives: int,
    include_vectors: bool,
    seed: int,
    bootstrap: int | None,
) -> Call[types.AttractorSet]:
    request = flow_pb2.FindAttractorsRequest(
        parent=convert.collection_name(name),
        seeds=seeds,
        representatives=representatives,
        include_vectors=include_vectors,
        seed=seed,
        # 0 asks the server for its own ensemble.
        bootstrap=bootstrap or 0,
    )
    return Call(
        "flow.FindAttractors",
        request,
        lambda r: types.AttractorSet(
            tuple(convert.attractor_from_proto(a) for a in r.attractors),
            r.collection_version,
            r.bootstrap,
        ),
    )


#: ``flow_chapters(method=...)`` -> DetectChaptersRequest.method.
CHANGE_POINT_METHODS: dict[str, flow_pb2.ChangePointMethod.ValueType] = {
    "offline": flow_pb2.CHANGE_POINT_METHOD_OFFLINE,
    "online": flow_pb2.CHANGE_POINT_METHOD_ONLINE,
}


def detect_chapters(
    name: str,
    *,
    series: str,
    start: Time,
    end: Time,
    min_size: int,
    penalty: float | None,
    representatives: int,
    method: str,
) -> Call[types.ChapterSet]:
    """DetectChapters. Raises InvalidArgument for an unknown ``method``."""
    request = flow_pb2.DetectChaptersRequest(
        parent=convert.collection_name(name),
        series=series,
        time_range=_time_range(start, end),
        min_size=min_size,
        # 0 asks the server for its robust-noise penalty.
        penalty=penalty or 0.0,
        representatives=representatives,
        method=_choice(method, CHANGE_POINT_METHODS, "method"),
    )
    return Call(
        "flow.DetectChapters",
        request,
        lambda r: types.ChapterSet(
            tuple(convert.chapter_from_proto(c) for c in r.chapters), r.collection_version
        ),
    )
