"""FlowService: probe the flow, simulate paths, find attractors and chapters."""

from __future__ import annotations

from collections.abc import AsyncIterator

from driftd import convert
from driftd.engine import AsyncDriftDB, parse_collection_name
from driftd.errors import FieldViolation, InvalidArgument
from driftd.monitor.monitor import Monitor
from driftd.server.status import maps_errors
from driftd.v1 import flow_pb2, flow_pb2_grpc

# What the proto's "0 means default" fields mean.
DEFAULT_STEPS = 100
DEFAULT_PATHS = 1
DEFAULT_SEEDS = 64
DEFAULT_REPRESENTATIVES = 3
DEFAULT_MIN_SIZE = 5
DEFAULT_BAND_COVERAGE = 0.9


class FlowServiceServicer(flow_pb2_grpc.FlowServiceServicer):
    """Translates FlowService RPCs to engine calls (online chapters to the
    monitor, which runs the live detectors); errors map via
    :func:`driftd.server.status.maps_errors`."""

    def __init__(self, engine: AsyncDriftDB, monitor: Monitor) -> None:
        self._engine = engine
        self._monitor = monitor

    @maps_errors
    async def ProbeFlow(self, request, context) -> flow_pb2.ProbeFlowResponse:
        name = parse_collection_name(request.parent)
        probe = await self._engine.flow_vector(name, **convert.flow_start_from_proto(request.start))
        return convert.probe_to_proto(probe)

    @maps_errors
    async def SimulatePaths(
        self, request, context
    ) -> AsyncIterator[flow_pb2.SimulatePathsResponse]:
        """Streams steps as the pool computes them; closing the engine's generator
        on the way out stops the simulation when the client cancels or the
        deadline passes."""
        name = parse_collection_name(request.parent)
        steps = self._engine.flow_simulate(
            name,
            **convert.flow_start_from_proto(request.start),
            steps=request.steps or DEFAULT_STEPS,
            dt_seconds=(
                request.step_duration.ToTimedelta().total_seconds()
                if request.HasField("step_duration")
                else None
            ),
            paths=request.paths or DEFAULT_PATHS,
            stop_outside_support=request.stop_outside_support,
            seed=request.seed,
            band_coverage=request.band_coverage or DEFAULT_BAND_COVERAGE,
        )
        try:
            async for step in steps:
                yield convert.step_to_proto(step, include_vectors=request.include_vectors)
        finally:
            await steps.aclose()

    @maps_errors
    async def FindAttractors(self, request, context) -> flow_pb2.FindAttractorsResponse:
        name = parse_collection_name(request.parent)
        found = await self._engine.flow_attractors(
            name,
            seeds=request.seeds or DEFAULT_SEEDS,
            representatives=request.representatives or DEFAULT_REPRESENTATIVES,
            seed=request.seed,
            bootstrap=request.bootstrap or None,
        )
        return flow_pb2.FindAttractorsResponse(
            attractors=[
                convert.attractor_to_proto(a, include_vectors=request.include_vectors)
                for a in found.attractors
            ],
            collection_version=found.version,
            bootstrap=found.bootstrap,
        )

    @maps_errors
    async def DetectChapters(self, request, context) -> flow_pb2.DetectChaptersResponse:
        name = parse_collection_name(request.parent)
        start, end = convert.time_range_to_bounds(request.time_range)
        selection = {
            "series": request.series,
            "start": start,
            "end": end,
            "min_size": request.min_size or DEFAULT_MIN_SIZE,
            "representatives": request.representatives or DEFAULT_REPRESENTATIVES,
        }
        if request.method == flow_pb2.CHANGE_POINT_METHOD_ONLINE:
            if request.penalty:
                raise InvalidArgument(
                    "penalty applies to the OFFLINE method only",
                    field_violations=[FieldViolation("penalty", "must be unset with ONLINE")],
                )
            found = await self._monitor.online_chapters(name, **selection)
        elif request.method in (
            flow_pb2.CHANGE_POINT_METHOD_UNSPECIFIED,
            flow_pb2.CHANGE_POINT_METHOD_OFFLINE,
        ):
            found = await self._engine.flow_chapters(
                name, penalty=request.penalty or None, **selection
            )
        else:
            raise InvalidArgument(
                f"unknown method {request.method}",
                field_violations=[FieldViolation("method", "must be OFFLINE or ONLINE")],
            )
        return flow_pb2.DetectChaptersResponse(
            chapters=[convert.chapter_to_proto(c) for c in found.chapters],
            collection_version=found.version,
        )
