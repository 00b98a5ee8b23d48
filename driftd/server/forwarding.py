"""Forwarding of RPCs to the replica that owns their key (server mode with peers).

A server interceptor: for each driftd RPC it takes the key from the request
(:data:`ROUTES`, derived from the proto descriptors), and when another live
replica owns it (:class:`~driftd.server.cluster.Cluster`) relays the call there
over gRPC: the caller's metadata (``authorization`` included, unchanged), its
remaining deadline, and the messages of client-, server- and bidi streams as
they come (a client or bidi stream goes where its first message's key is
owned). The owner's status, message and rich error details come back
unchanged; the relayed call is a CLIENT span of the caller's trace
(:func:`driftd.tracing.forwarded_call`). A relayed call carries
:data:`FORWARDED_BY`; a replica receiving one serves it itself, so a call is
relayed at most once even while replicas disagree on membership.

An owner that cannot be reached gives UNAVAILABLE (OWNER_UNAVAILABLE), which
the clients retry; the replica probes it at once, so retries reach the next
owner within a few seconds.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from driftd import metrics, tracing
from driftd.errors import Unavailable
from driftd.server.cluster import Cluster
from driftd.server.interceptors import GRPC_CODE_NAMES
from driftd.server.status import abort
from driftd.v1 import (
    behavior_pb2,
    collection_pb2,
    flow_pb2,
    monitor_pb2,
    point_pb2,
    routing_pb2,
)

log = logging.getLogger(__name__)

#: Metadata key on a relayed call: the address of the replica that relayed it.
FORWARDED_BY = "x-driftd-forwarded-by"

#: The kinds of keys: a key is ``{kind}/{id}``.
KINDS = ("collections", "conversations", "users")

#: Request fields that carry the key, in order of preference: a resource name
#: whose first two segments are the key, or (with a kind) a bare id.
KEY_FIELDS: dict[str, str] = {
    "parent": "",
    "name": "",
    "conversation": "",
    "collection_id": "collections",
    "chroma_collection": "collections",
}

#: RPCs without a key, served by the replica that receives them.
LOCAL_METHODS = frozenset({"/driftd.v1.CollectionService/ListCollections"})

_FILES = (collection_pb2, point_pb2, flow_pb2, monitor_pb2, routing_pb2, behavior_pb2)

#: Metadata a relay must not copy: the transport's own and HTTP/2 pseudo-headers.
_HOP_HEADERS = frozenset({"user-agent", FORWARDED_BY})
#: The caller's trace context: the relayed call carries this replica's span instead.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class Route(NamedTuple):
    """How to find an RPC's key and relay it."""

    field: str  # the request field with the key
    kind: str  # "" when the field is a resource name, else the kind of its bare id
    response: type[Message]  # the response message class (relayed responses are parsed)


def _routes() -> dict[str, Route]:
    """Every driftd RPC with a key field, from the descriptors.

    Raises:
        RuntimeError: an RPC whose request has none of :data:`KEY_FIELDS` and is
            not in :data:`LOCAL_METHODS` (a new RPC must say how it is owned).
    """
    routes: dict[str, Route] = {}
    for file in _FILES:
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if path in LOCAL_METHODS:
                    continue
                fields = method.input_type.fields_by_name
                field = next((f for f in KEY_FIELDS if f in fields), None)
                if field is None:
                    raise RuntimeError(
                        f"{path}: no key field; add it to LOCAL_METHODS or KEY_FIELDS"
                    )
                routes[path] = Route(
                    field, KEY_FIELDS[field], message_factory.GetMessageClass(method.output_type)
                )
    return routes


#: RPC path (``/driftd.v1.PointService/UpsertPoints``) -> its route.
ROUTES = _routes()


def request_key(route: Route, request: Any) -> str | None:
    """The key of a request, or None when it names none (the receiving replica
    serves it and reports the bad name)."""
    value = getattr(request, route.field)
    if route.kind:
        return f"{route.kind}/{value}" if value else None
    kind, _, rest = value.partition("/")
    ident = rest.partition("/")[0]
    return f"{kind}/{ident}" if kind in KINDS and ident else None


async def owned_collection(
    cluster: Cluster, collection_id: str, context: grpc.aio.ServicerContext
) -> collection_pb2.Collection | None:
    """GetCollection of ``collection_id`` from its owner (another replica), with
    the caller's metadata and deadline: what ListCollections reports for a
    collection it does not own. None when the owner no longer has it (deleted
    meanwhile); another failure ends the caller's RPC with the owner's status."""
    path = "/driftd.v1.CollectionService/GetCollection"
    relay = _Relay(cluster, path, ROUTES[path])
    owner = cluster.owner("collections/" + collection_id)
    request = collection_pb2.GetCollectionRequest(name="collections/" + collection_id)
    with tracing.forwarded_call(owner, path) as trace:
        try:
            response = await relay._stub(owner, "unary_unary")(
                request, **relay._call_args(context, trace)
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            await relay._failed(owner, err, context)
    relay._ok(owner)
    return response


class ForwardingInterceptor(grpc.aio.ServerInterceptor):
    """Relays RPCs for keys owned by another replica to that replica."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        route = ROUTES.get(handler_call_details.method)
        if handler is None or route is None or not self._cluster.enabled:
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        if any(k == FORWARDED_BY for k, _ in metadata):
            return handler
        return _Relay(self._cluster, handler_call_details.method, route).wrap(handler)


async def _serve(
    behaviour: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext
) -> None:
    """Runs a local streaming behaviour, writing its responses to ``context``."""
    if inspect.isasyncgenfunction(behaviour):
        async with contextlib.aclosing(behaviour(request, context)) as responses:
            async for response in responses:
                await context.write(response)
    else:
        await behaviour(request, context)


class _Relay:
    """The forwarding behaviours of one RPC."""

    def __init__(self, cluster: Cluster, path: str, route: Route) -> None:
        self._cluster = cluster
        self._path = path
        self._route = route
        self._labels = tuple(path.lstrip("/").split("/"))

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        if kind == (False, False):
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if kind == (False, True):
            return handler._replace(unary_stream=self._server_stream(handler.unary_stream))
        if kind == (True, True):
            return handler._replace(stream_stream=self._bidi(handler.stream_stream))
        return handler._replace(stream_unary=self._client_stream(handler.stream_unary))

    def _owner(self, request: Any) -> str | None:
        """The owner's address when another replica owns the request's key."""
        key = request_key(self._route, request)
        if key is None:
            return None
        owner = self._cluster.owner(key)
        return None if owner == self._cluster.address else owner

    def _call_args(
        self, context: grpc.aio.ServicerContext, trace: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """The relayed call's deadline and metadata: the caller's, with this
        replica's span as the trace parent (``trace``) and the relay marker."""
        metadata = [
            (k, v)
            for k, v in context.invocation_metadata() or ()
            if not k.startswith((":", "grpc-")) and k not in _HOP_HEADERS | _TRACE_HEADERS
        ]
        metadata += trace
        metadata.append((FORWARDED_BY, self._cluster.address))
        return {"timeout": context.time_remaining(), "metadata": metadata}

    def _stub(self, owner: str, factory: str) -> Any:
        return getattr(self._cluster.channel(owner), factory)(
            self._path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._route.response.FromString,
        )

    async def _failed(
        self, owner: str, err: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext
    ) -> None:
        """Ends the RPC with the owner's status; a transport failure (no rich
        details) becomes UNAVAILABLE(OWNER_UNAVAILABLE) and a probe of the owner."""
        metrics.FORWARDED_RPCS.labels(*self._labels, owner, GRPC_CODE_NAMES[err.code()]).inc()
        trailing = tuple(err.trailing_metadata() or ())
        if err.code() == grpc.StatusCode.UNAVAILABLE and not any(
            k == "grpc-status-details-bin" for k, _ in trailing
        ):
            self._cluster.suspect(owner)
            await abort(
                context,
                Unavailable(
                    f"replica {owner}, the owner of this request's key, cannot be reached "
                    f"({err.details()}); retry",
                    reason="OWNER_UNAVAILABLE",
                    metadata={"owner": owner},
                ),
                self._path,
            )
        await context.abort(err.code(), err.details() or "", trailing)

    def _ok(self, owner: str) -> None:
        metrics.FORWARDED_RPCS.labels(*self._labels, owner, "OK").inc()

    def _unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def relay(request: Any, context: grpc.aio.ServicerContext) -> Any:
            owner = self._owner(request)
            if owner is None:
                return await behaviour(request, context)
            with tracing.forwarded_call(owner, self._path) as trace:
                try:
                    response = await self._stub(owner, "unary_unary")(
                        request, **self._call_args(context, trace)
                    )
                except grpc.aio.AioRpcError as err:
                    await self._failed(owner, err, context)
            self._ok(owner)
            return response

        return relay

    async def _pipe(self, owner: str, call: Any, context: grpc.aio.ServicerContext) -> None:
        """Writes a relayed stream's responses to the caller; cancels the relayed
        call when the caller goes away."""
        try:
            async for response in call:
                await context.write(response)
        except grpc.aio.AioRpcError as err:
            await self._failed(owner, err, context)
        finally:
            call.cancel()
        self._ok(owner)

    def _server_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def relay(request: Any, context: grpc.aio.ServicerContext) -> None:
            owner = self._owner(request)
            if owner is None:
                await _serve(behaviour, request, context)
                return
            with tracing.forwarded_call(owner, self._path) as trace:
                call = self._stub(owner, "unary_stream")(request, **self._call_args(context, trace))
                await self._pipe(owner, call, context)

        return relay

    async def _stream_owner(
        self, requests: AsyncIterator[Any]
    ) -> tuple[str | None, Callable[[], AsyncIterator[Any]]]:
        """The owner named by a request stream's first message (None: this replica,
        or an empty stream) and a function replaying the whole stream from it."""
        it = aiter(requests)
        first = await anext(it, None)

        async def replay() -> AsyncIterator[Any]:
            if first is not None:
                yield first
                async for request in it:
                    yield request

        return (None if first is None else self._owner(first)), replay

    def _bidi(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def relay(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            owner, replay = await self._stream_owner(requests)
            if owner is None:
                await _serve(behaviour, replay(), context)
                return
            with tracing.forwarded_call(owner, self._path) as trace:
                call = self._stub(owner, "stream_stream")(
                    replay(), **self._call_args(context, trace)
                )
                await self._pipe(owner, call, context)

        return relay

    def _client_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def relay(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            owner, replay = await self._stream_owner(requests)
            if owner is None:
                return await behaviour(replay(), context)
            with tracing.forwarded_call(owner, self._path) as trace:
                try:
                    response = await self._stub(owner, "stream_unary")(
                        replay(), **self._call_args(context, trace)
                    )
                except grpc.aio.AioRpcError as err:
                    await self._failed(owner, err, context)
            self._ok(owner)
            return response

        return relay
