"""Conversions between driftd.v1 protobuf messages and driftd's value types.

One place for both directions, used by the server's servicers and by the Python
client. Imports only protobuf, numpy and the generated modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2

from driftd import types
from driftd.v1 import collection_pb2, flow_pb2, point_pb2

COLLECTION_PREFIX = "collections/"

DISTANCE_TO_PROTO: dict[types.Distance, collection_pb2.Distance.ValueType] = {
    "cosine": collection_pb2.DISTANCE_COSINE,
    "l2": collection_pb2.DISTANCE_L2,
    "ip": collection_pb2.DISTANCE_INNER_PRODUCT,
}
DISTANCE_FROM_PROTO: dict[collection_pb2.Distance.ValueType, types.Distance] = {
    v: k for k, v in DISTANCE_TO_PROTO.items()
}
DISTANCE_FROM_PROTO[collection_pb2.DISTANCE_UNSPECIFIED] = "cosine"

STABILITY_TO_PROTO: dict[types.Stability, flow_pb2.Stability.ValueType] = {
    "stable": flow_pb2.STABILITY_STABLE,
    "saddle": flow_pb2.STABILITY_SADDLE,
    "unstable": flow_pb2.STABILITY_UNSTABLE,
}
STABILITY_FROM_PROTO: dict[flow_pb2.Stability.ValueType, types.Stability] = {
    v: k for k, v in STABILITY_TO_PROTO.items()
}


# --- times -----------------------------------------------------------------


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime (microsecond precision)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=ts.seconds, microseconds=ts.nanos // 1000
    )


def datetime_to_timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime (naive is taken as UTC) as a Timestamp."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def optional_time(msg, field: str) -> datetime | None:
    """``msg.field`` as a datetime, or None when the Timestamp field is unset."""
    return timestamp_to_datetime(getattr(msg, field)) if msg.HasField(field) else None


def time_range_to_bounds(tr: point_pb2.TimeRange) -> tuple[datetime | None, datetime | None]:
    """A TimeRange as ``(start, end)``; unset bounds are None."""
    return optional_time(tr, "start_time"), optional_time(tr, "end_time")


def bounds_to_time_range(start: datetime | None, end: datetime | None) -> point_pb2.TimeRange:
    """``(start, end)`` as a TimeRange; None bounds stay unset."""
    tr = point_pb2.TimeRange()
    if start is not None:
        tr.start_time.CopyFrom(datetime_to_timestamp(start))
    if end is not None:
        tr.end_time.CopyFrom(datetime_to_timestamp(end))
    return tr


# --- names -----------------------------------------------------------------


def collection_name(collection_id: str) -> str:
    """``"sotu"`` -> ``"collections/sotu"`` (already-prefixed names pass through)."""
    return (
        collection_id
        if collection_id.startswith(COLLECTION_PREFIX)
        else COLLECTION_PREFIX + collection_id
    )


# --- points ----------------------------------------------------------------


def payload_to_dict(payload: struct_pb2.Struct) -> dict:
    """A Struct as a plain dict. Nested values are kept as-is for the engine to reject."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(payload)


def dict_to_struct(payload: Mapping | None) -> struct_pb2.Struct:
    """A flat dict as a Struct (numbers become doubles)."""
    s = struct_pb2.Struct()
    if payload:
        s.update(dict(payload))
    return s


def _scalar(value: struct_pb2.Value) -> object:
    """A google.protobuf.Value's scalar (None for null, lists and structs)."""
    which = value.WhichOneof("kind")
    return (
        getattr(value, which) if which in ("string_value", "number_value", "bool_value") else None
    )


def conditions_from_proto(
    conditions: Iterable[point_pb2.PayloadCondition],
) -> list[types.PayloadCondition]:
    """PayloadCondition messages as values; the engine validates them (an unset
    condition comes through with no kind set, a non-scalar set value as None)."""
    out = []
    for c in conditions:
        which = c.WhichOneof("condition")
        if which == "range":
            r = c.range
            out.append(
                types.PayloadCondition(
                    c.key,
                    **{b: getattr(r, b) for b in ("gt", "gte", "lt", "lte") if r.HasField(b)},
                )
            )
        elif which in ("any_of", "none_of"):
            # A non-scalar comes through as None, for the engine to refuse.
            values = cast(
                tuple[types.Scalar, ...], tuple(_scalar(x) for x in getattr(c, which).values)
            )
            if which == "any_of":
                out.append(types.PayloadCondition(c.key, any_of=values))
            else:
                out.append(types.PayloadCondition(c.key, none_of=values))
        else:
            out.append(types.PayloadCondition(c.key))
    return out


def conditions_to_proto(
    conditions: Iterable[types.PayloadCondition],
) -> list[point_pb2.PayloadCondition]:
    """Values as PayloadCondition messages (the server validates them)."""
    out = []
    for c in conditions:
        msg = point_pb2.PayloadCondition(key=c.key)
        bounds = {b: getattr(c, b) for b in ("gt", "gte", "lt", "lte")}
        if any(x is not None for x in bounds.values()):
            msg.range.CopyFrom(
                point_pb2.NumberRange(**{b: x for b, x in bounds.items() if x is not None})
            )
        for which in ("any_of", "none_of"):
            values = getattr(c, which)
            if values is not None:
                getattr(msg, which).values.extend(
                    struct_pb2.Value(bool_value=x)
                    if isinstance(x, bool)
                    else struct_pb2.Value(number_value=x)
                    if isinstance(x, int | float)
                    else struct_pb2.Value(string_value=x)
                    for x in values
                )
        out.append(msg)
    return out


def point_from_proto(p: point_pb2.Point) -> types.Point:
    """A Point message as a value; an unset or out-of-range time becomes None
    (the engine rejects it as INVALID_TIMESTAMP)."""
    try:
        time = optional_time(p, "time")
    except (OverflowError, ValueError):
        time = None
    return types.Point(
        id=p.id,
        time=time,
        series=p.series,
        vector=np.asarray(p.vector, dtype=np.float32) if len(p.vector) else None,
        text=p.text or None,
        payload=payload_to_dict(p.payload) if p.HasField("payload") else {},
    )


def point_to_proto(p: types.Point) -> point_pb2.Point:
    """A value Point as a message; the vector is included when present."""
    msg = point_pb2.Point(id=p.id, series=p.series, text=p.text or "")
    if p.time is not None:
        msg.time.CopyFrom(datetime_to_timestamp(p.time))
    if p.vector is not None:
        msg.vector.extend(np.asarray(p.vector, dtype=np.float32).tolist())
    if p.payload:
        msg.payload.CopyFrom(dict_to_struct(p.payload))
    return msg


def point_error_to_proto(e: types.PointError) -> point_pb2.PointError:
    return point_pb2.PointError(index=e.index, id=e.id, reason=e.reason, message=e.message)


def point_error_from_proto(e: point_pb2.PointError) -> types.PointError:
    return types.PointError(index=e.index, id=e.id, reason=e.reason, message=e.message)


# --- collections -----------------------------------------------------------


def collection_to_proto(c: types.CollectionInfo) -> collection_pb2.Collection:
    """A CollectionInfo as a Collection resource."""
    msg = collection_pb2.Collection(
        name=collection_name(c.name),
        dimension=c.dimension,
        distance=DISTANCE_TO_PROTO[c.distance],
        embed_model=c.embed_model,
        point_count=c.point_count,
        series_count=c.series_count,
        version=c.version,
        time_key=c.time_key,
        series_key=c.series_key,
        attached=c.attached,
        owner=c.owner,
    )
    msg.create_time.CopyFrom(datetime_to_timestamp(c.create_time))
    if c.start_time is not None:
        msg.start_time.CopyFrom(datetime_to_timestamp(c.start_time))
    if c.end_time is not None:
        msg.end_time.CopyFrom(datetime_to_timestamp(c.end_time))
    return msg


def collection_from_proto(msg: collection_pb2.Collection) -> types.CollectionInfo:
    """A Collection resource as a CollectionInfo (name without the prefix)."""
    return types.CollectionInfo(
        name=msg.name.removeprefix(COLLECTION_PREFIX),
        dimension=msg.dimension,
        distance=DISTANCE_FROM_PROTO[msg.distance],
        embed_model=msg.embed_model,
        point_count=msg.point_count,
        series_count=msg.series_count,
        start_time=optional_time(msg, "start_time"),
        end_time=optional_time(msg, "end_time"),
        create_time=timestamp_to_datetime(msg.create_time),
        version=msg.version,
        time_key=msg.time_key,
        series_key=msg.series_key,
        attached=msg.attached,
        owner=msg.owner,
    )


# --- flow ------------------------------------------------------------------


def flow_start_to_proto(
    *, vector=None, text: str | None = None, point_id: str | None = None
) -> flow_pb2.FlowStart:
    """Exactly one of vector/text/point_id as a FlowStart (the server validates the count)."""
    start = flow_pb2.FlowStart()
    if vector is not None:
        start.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    if text is not None:
        start.text = text
    if point_id is not None:
        start.point_id = point_id
    return start


def flow_start_from_proto(start: flow_pb2.FlowStart) -> dict:
    """A FlowStart as engine keywords ``{vector|text|point_id: ...}``; empty if unset."""
    which = start.WhichOneof("start")
    if which == "vector":
        return {"vector": np.asarray(start.vector.values, dtype=np.float32)}
    if which is None:
        return {}
    return {which: getattr(start, which)}


def probe_to_proto(p: types.FlowProbe) -> flow_pb2.ProbeFlowResponse:
    return flow_pb2.ProbeFlowResponse(
        velocity=np.asarray(p.velocity, dtype=np.float32).tolist(),
        speed=p.speed,
        speed_per_step=p.speed_per_step,
        confidence=p.confidence,
        support=p.support,
        in_support=p.in_support,
        nearest_point_id=p.nearest_point_id,
    )


def probe_from_proto(msg: flow_pb2.ProbeFlowResponse) -> types.FlowProbe:
    return types.FlowProbe(
        velocity=np.asarray(msg.velocity, dtype=np.float32),
        speed=msg.speed,
        speed_per_step=msg.speed_per_step,
        confidence=msg.confidence,
        support=msg.support,
        in_support=msg.in_support,
        nearest_point_id=msg.nearest_point_id,
    )


def step_to_proto(
    s: types.SimulationStep, *, include_vectors: bool
) -> flow_pb2.SimulatePathsResponse:
    msg = flow_pb2.SimulatePathsResponse(
        path=s.path,
        step=s.step,
        speed=s.speed,
        nearest_point_id=s.nearest_point_id,
        nearest_similarity=s.nearest_similarity,
        support=s.support,
        in_support=s.in_support,
        stop_reason=s.stop_reason,
        band_radius=s.band_radius,
    )
    msg.time.CopyFrom(datetime_to_timestamp(s.time))
    if include_vectors:
        msg.position.extend(np.asarray(s.position, dtype=np.float32).tolist())
        if s.ensemble_position is not None:
            msg.ensemble_position.extend(np.asarray(s.ensemble_position, dtype=np.float32).tolist())
    return msg


def step_from_proto(msg: flow_pb2.SimulatePathsResponse) -> types.SimulationStep:
    return types.SimulationStep(
        path=msg.path,
        step=msg.step,
        time=timestamp_to_datetime(msg.time),
        position=np.asarray(msg.position, dtype=np.float32),
        speed=msg.speed,
        nearest_point_id=msg.nearest_point_id,
        nearest_similarity=msg.nearest_similarity,
        support=msg.support,
        in_support=msg.in_support,
        stop_reason=msg.stop_reason,
        ensemble_position=np.asarray(msg.ensemble_position, dtype=np.float32),
        band_radius=msg.band_radius,
    )


def representative_to_proto(r: types.Representative) -> flow_pb2.RepresentativePoint:
    msg = flow_pb2.RepresentativePoint(id=r.id, text=r.text, similarity=r.similarity)
    msg.time.CopyFrom(datetime_to_timestamp(r.time))
    return msg


def representative_from_proto(msg: flow_pb2.RepresentativePoint) -> types.Representative:
    return types.Representative(
        id=msg.id, time=timestamp_to_datetime(msg.time), text=msg.text, similarity=msg.similarity
    )


def attractor_to_proto(a: types.AttractorInfo, *, include_vectors: bool) -> flow_pb2.Attractor:
    msg = flow_pb2.Attractor(
        id=a.id,
        stability=STABILITY_TO_PROTO[a.stability],
        basin_fraction=a.basin_fraction,
        eigenvalues=list(a.eigenvalues),
        speed=a.speed,
        reproducibility=a.reproducibility,
        representative_points=[representative_to_proto(r) for r in a.representatives],
    )
    if include_vectors:
        msg.center.extend(np.asarray(a.center, dtype=np.float32).tolist())
    return msg


def attractor_from_proto(msg: flow_pb2.Attractor) -> types.AttractorInfo:
    return types.AttractorInfo(
        id=msg.id,
        stability=STABILITY_FROM_PROTO[msg.stability],
        center=np.asarray(msg.center, dtype=np.float32),
        basin_fraction=msg.basin_fraction,
        eigenvalues=tuple(msg.eigenvalues),
        speed=msg.speed,
        reproducibility=msg.reproducibility,
        representatives=tuple(representative_from_proto(r) for r in msg.representative_points),
    )


def chapter_to_proto(c: types.ChapterInfo) -> flow_pb2.Chapter:
    msg = flow_pb2.Chapter(
        index=c.index,
        point_count=c.point_count,
        start_point_id=c.start_point_id,
        end_point_id=c.end_point_id,
        representative_points=[representative_to_proto(r) for r in c.representatives],
        attractor_id=c.attractor_id,
    )
    msg.start_time.CopyFrom(datetime_to_timestamp(c.start_time))
    msg.end_time.CopyFrom(datetime_to_timestamp(c.end_time))
    return msg


def chapter_from_proto(msg: flow_pb2.Chapter) -> types.ChapterInfo:
    return types.ChapterInfo(
        index=msg.index,
        start_time=timestamp_to_datetime(msg.start_time),
        end_time=timestamp_to_datetime(msg.end_time),
        point_count=msg.point_count,
        start_point_id=msg.start_point_id,
        end_point_id=msg.end_point_id,
        representatives=tuple(representative_from_proto(r) for r in msg.representative_points),
        attractor_id=msg.attractor_id,
    )
