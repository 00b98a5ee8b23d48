"""PointService: write and read the timestamped points of a collection."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from driftd import convert
from driftd.engine import AsyncDriftDB, parse_collection_name
from driftd.errors import FieldViolation, InvalidArgument
from driftd.server.status import maps_errors
from driftd.v1 import point_pb2, point_pb2_grpc

#: GetTrajectory's points per message when the request says 0.
DEFAULT_CHUNK_SIZE = 500
#: SearchPoints' results when the request says 0.
DEFAULT_TOP_K = 10


class PointServiceServicer(point_pb2_grpc.PointServiceServicer):
    """Translates PointService RPCs to engine calls; errors map via
    :func:`driftd.server.status.maps_errors`."""

    def __init__(self, engine: AsyncDriftDB) -> None:
        self._engine = engine

    @maps_errors
    async def UpsertPoints(self, request, context) -> point_pb2.UpsertPointsResponse:
        name = parse_collection_name(request.parent)
        result = await self._engine.upsert(
            name, [convert.point_from_proto(p) for p in request.points]
        )
        return point_pb2.UpsertPointsResponse(
            upserted_count=result.upserted,
            embedded_count=result.embedded,
            collection_version=result.version,
        )

    @maps_errors
    async def StreamUpsertPoints(
        self, request_iterator, context
    ) -> AsyncIterator[point_pb2.StreamUpsertPointsResponse]:
        """Acks each batch once durable. The next batch is read only after the ack
        is sent, so a writer faster than the store waits on gRPC flow control.

        Raises:
            InvalidArgument: no parent on the first batch, another parent later
                (INVALID_FIELD), or a sequence not above the previous one
                (SEQUENCE_OUT_OF_ORDER). Bad points are reported in the ack instead.
        """
        parent = name = ""
        last_sequence: int | None = None
        async for batch in request_iterator:
            if not name:
                parent, name = batch.parent, parse_collection_name(batch.parent)
            elif batch.parent and batch.parent != parent:
                raise InvalidArgument(
                    f"parent {batch.parent!r} differs from the stream's {parent!r}",
                    field_violations=[
                        FieldViolation("parent", "must be empty or the first batch's")
                    ],
                )
            if last_sequence is not None and batch.sequence <= last_sequence:
                raise InvalidArgument(
                    f"sequence {batch.sequence} is not above the previous {last_sequence}",
                    reason="SEQUENCE_OUT_OF_ORDER",
                    field_violations=[FieldViolation("sequence", "must strictly increase")],
                    metadata={"sequence": batch.sequence, "previous": last_sequence},
                )
            last_sequence = batch.sequence
            result = await self._engine.upsert(
                name, [convert.point_from_proto(p) for p in batch.points], lenient=True
            )
            yield point_pb2.StreamUpsertPointsResponse(
                sequence=batch.sequence,
                accepted_count=result.upserted,
                rejected_count=len(result.errors),
                errors=[convert.point_error_to_proto(e) for e in result.errors],
                collection_version=result.version,
            )

    @maps_errors
    async def GetPoints(self, request, context) -> point_pb2.GetPointsResponse:
        name = parse_collection_name(request.parent)
        found, missing = await self._engine.get_points(
            name, list(request.ids), include_vectors=request.include_vectors
        )
        return point_pb2.GetPointsResponse(
            points=[convert.point_to_proto(p) for p in found], missing_ids=missing
        )

    @maps_errors
    async def DeletePoints(self, request, context) -> point_pb2.DeletePointsResponse:
        name = parse_collection_name(request.parent)
        deleted, version = await self._engine.delete_points(name, list(request.ids))
        return point_pb2.DeletePointsResponse(deleted_count=deleted, collection_version=version)

    @maps_errors
    async def GetTrajectory(
        self, request, context
    ) -> AsyncIterator[point_pb2.GetTrajectoryResponse]:
        """Streams chunks as the engine reads them; closing the engine's generator
        on the way out stops its reads when the client cancels or the deadline passes."""
        name = parse_collection_name(request.parent)
        start, end = convert.time_range_to_bounds(request.time_range)
        chunks = self._engine.trajectory(
            name,
            start=start,
            end=end,
            series=request.series,
            include_vectors=request.include_vectors,
            chunk_size=request.chunk_size or DEFAULT_CHUNK_SIZE,
            payload_filter=_payload_filter(request),
            payload_conditions=convert.conditions_from_proto(request.payload_conditions),
        )
        try:
            async for chunk in chunks:
                yield point_pb2.GetTrajectoryResponse(
                    points=[convert.point_to_proto(p) for p in chunk]
                )
        finally:
            await chunks.aclose()

    @maps_errors
    async def SearchPoints(self, request, context) -> point_pb2.SearchPointsResponse:
        name = parse_collection_name(request.parent)
        start, end = convert.time_range_to_bounds(request.time_range)
        which = request.WhichOneof("query")
        vector = request.vector.values if which == "vector" else None
        hits = await self._engine.search(
            name,
            vector=None if vector is None else np.asarray(vector, dtype=np.float32),
            text=request.text if which == "text" else None,
            top_k=request.top_k or DEFAULT_TOP_K,
            start=start,
            end=end,
            series=request.series,
            payload_filter=_payload_filter(request),
            payload_conditions=convert.conditions_from_proto(request.payload_conditions),
            include_vectors=request.include_vectors,
        )
        return point_pb2.SearchPointsResponse(
            results=[
                point_pb2.ScoredPoint(point=convert.point_to_proto(h.point), distance=h.distance)
                for h in hits
            ]
        )


def _payload_filter(request) -> dict | None:
    """The request's ``payload_filter`` Struct as a dict; None when unset."""
    if not request.HasField("payload_filter"):
        return None
    return convert.payload_to_dict(request.payload_filter)
