"""RoutingService: conversation messages into topic branches, branch contexts and facts."""

from __future__ import annotations

import numpy as np

from driftd.convert import optional_time
from driftd.routing import convert
from driftd.routing.engine import DEFAULT_PAGE_SIZE, RoutingEngine
from driftd.server.status import maps_errors
from driftd.v1 import routing_pb2, routing_pb2_grpc


class RoutingServiceServicer(routing_pb2_grpc.RoutingServiceServicer):
    """Translates RoutingService RPCs to :class:`RoutingEngine` calls; errors map
    via :func:`driftd.server.status.maps_errors`.

    ``routing`` may be the server's stand-in that raises Unavailable while
    storage is not open.
    """

    def __init__(self, routing: RoutingEngine) -> None:
        self._routing = routing

    @maps_errors
    async def RouteMessage(self, request, context) -> routing_pb2.RouteMessageResponse:
        cid = convert.parse_conversation_name(request.conversation)
        result = await self._routing.route(
            cid,
            # An unknown or unset role keeps its proto name so the error can quote it.
            role=convert.ROLE_FROM_PROTO.get(
                request.role,
                routing_pb2.MessageRole.Name(request.role)
                if request.role in routing_pb2.MessageRole.values()
                else str(request.role),
            ),
            content=request.content,
            vector=np.asarray(request.vector, dtype=np.float32) if request.vector else None,
            time=optional_time(request, "time"),
            message_id=request.message_id,
            config=convert.config_from_proto(request.config)
            if request.HasField("config")
            else None,
        )
        return convert.route_to_proto(result)

    @maps_errors
    async def ListBranches(self, request, context) -> routing_pb2.ListBranchesResponse:
        cid = convert.parse_conversation_name(request.parent, "parent")
        page = await self._routing.list_branches(
            cid, page_size=request.page_size or DEFAULT_PAGE_SIZE, page_token=request.page_token
        )
        return convert.branch_list_to_proto(cid, page)

    @maps_errors
    async def GetBranchContext(self, request, context) -> routing_pb2.GetBranchContextResponse:
        cid, bid = convert.parse_branch_name(request.name)
        ctx = await self._routing.branch_context(cid, bid, max_messages=request.max_messages)
        return convert.context_to_proto(ctx)

    @maps_errors
    async def ExtractFacts(self, request, context) -> routing_pb2.ExtractFactsResponse:
        cid, bid = convert.parse_branch_name(request.name)
        return convert.facts_to_proto(await self._routing.extract_facts(cid, bid))
