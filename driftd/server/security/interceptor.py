"""The security interceptor: authentication, role and scope checks, quotas and
the audit log, around every RPC but health.

Checks run in the RPC's own task before the handler, in this order: API key
(UNAUTHENTICATED), role, collection scope (PERMISSION_DENIED), rate limit,
concurrency, disk pressure for writes, collection and point quotas
(RESOURCE_EXHAUSTED). Every message of a streaming request is scope-, disk- and
quota-checked as it arrives. ``ListCollections`` answers list only the
collections the key may see (a page may then hold fewer than ``page_size``).

The audit log (logger ``driftd.audit``) gets one JSON line per denied request
and per admin RPC, with the key's name (never the key), method, resource, peer
and outcome.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from driftd.errors import DriftdError, NotFound, PermissionDenied
from driftd.server import status
from driftd.server.security.keys import ANONYMOUS, CURRENT_PRINCIPAL, KeyRing, Principal
from driftd.server.security.policy import (
    COLLECTION_CREATES,
    COLLECTION_LISTS,
    POINT_WRITES,
    RULES,
    Role,
    Rule,
    in_scope,
    is_open,
    resource_name,
)
from driftd.server.security.quotas import Quotas

audit_logger = logging.getLogger("driftd.audit")

_BEHAVIOURS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}
#: RPCs missing from the policy table (a bug the policy test catches) need admin.
_FAIL_CLOSED = Rule(Role.ADMIN)


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("latin-1")
    return None


class _Call:
    """One RPC under the security layer: who, what, where, for the audit line."""

    def __init__(self, method: str, rule: Rule, context: grpc.aio.ServicerContext) -> None:
        self.method, self.rule, self.context = method, rule, context
        self.principal: Principal | None = None
        self.resource = ""

    def audit(self, event: str, code: str, reason: str = "") -> None:
        record = {
            "audit": event,
            "key": self.principal.name if self.principal else None,
            "role": self.principal.role.label if self.principal else None,
            "method": self.method,
            "resource": self.resource,
            "peer": self.context.peer(),
            "code": code,
        }
        if reason:
            record["reason"] = reason
        client_cn = self.context.auth_context().get("x509_common_name")
        if client_cn:
            record["client_cn"] = client_cn[0].decode("utf-8", "replace")
        audit_logger.info(json.dumps(record, separators=(",", ":")))


class SecurityInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring.

    Args:
        keys: the API keys; None: every caller is the anonymous admin (quotas
            still apply, globally).
        quotas: admission control.
        engine: the engine (or its gate) for the collection and point quotas:
            ``collection_count()`` and ``get_collection(name).point_count``.
    """

    def __init__(self, keys: KeyRing | None, quotas: Quotas, engine: Any) -> None:
        self.keys, self.quotas, self.engine = keys, quotas, engine

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        return self._guard(handler, method, RULES.get(method, _FAIL_CLOSED))

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller of an RPC from its ``authorization`` metadata (anonymous
        when the server has no keys). Forwarding replicas pass that metadata on.

        Raises:
            Unauthenticated: API_KEY_MISSING or API_KEY_INVALID.
        """
        if self.keys is None:
            return ANONYMOUS
        return self.keys.authenticate(_metadata_value(context, "authorization"))

    # --- checks ----------------------------------------------------------------

    @staticmethod
    def _check_scope(call: _Call, request: Any) -> None:
        principal = call.principal
        assert principal is not None  # set by _admit
        name = resource_name(call.rule, request)
        if name:
            call.resource = name
        if call.rule.resource and not in_scope(principal.scopes, name):
            raise PermissionDenied(
                f"key {principal.name!r} may not reach {name or 'an unnamed resource'!r}",
                metadata={"resource": name},
            )

    async def _check_write(self, call: _Call, request: Any) -> None:
        if not call.rule.writes:
            return
        self.quotas.check_disk()
        limits = self.quotas.limits
        if call.method in COLLECTION_CREATES and limits.max_collections > 0:
            self.quotas.check_collections(await self.engine.collection_count())
        if call.method in POINT_WRITES and limits.max_points_per_collection > 0 and call.resource:
            collection = call.resource.partition("/")[2]
            try:
                info = await self.engine.get_collection(collection)
            except NotFound:
                return  # the handler answers NOT_FOUND
            self.quotas.check_points(collection, info.point_count, len(request.points))

    async def _admit(self, call: _Call, request: Any) -> None:
        """Authentication, role, scope (of a unary request) and rate."""
        if request is not None:
            call.resource = resource_name(call.rule, request)
        call.principal = self.authenticate(call.context)
        CURRENT_PRINCIPAL.set(call.principal)
        if call.principal.role < call.rule.role:
            raise PermissionDenied(
                f"{call.method} needs the {call.rule.role.label} role; "
                f"key {call.principal.name!r} is a {call.principal.role.label}",
                metadata={
                    "required_role": call.rule.role.label,
                    "role": call.principal.role.label,
                },
            )
        if request is not None:
            self._check_scope(call, request)
        self.quotas.rate(call.principal.name)

    async def _deny(self, call: _Call, exc: DriftdError) -> None:
        call.audit("denied", exc.code, exc.reason)
        await status.abort(call.context, exc, call.method)

    # --- wrapping ------------------------------------------------------------------

    def _guard(
        self, handler: grpc.RpcMethodHandler, method: str, rule: Rule
    ) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        field = _BEHAVIOURS[kind]
        behaviour = getattr(handler, field)
        streaming = handler.request_streaming or handler.response_streaming
        security = self

        @contextlib.asynccontextmanager
        async def admitted(request: Any, context: grpc.aio.ServicerContext):
            call = _Call(method, rule, context)
            with contextlib.ExitStack() as slot:
                try:
                    await security._admit(call, None if handler.request_streaming else request)
                    slot.enter_context(
                        security.quotas.concurrent(call.principal.name, streaming)  # type: ignore[union-attr]
                    )
                    if handler.request_streaming:
                        request = security._checked_stream(call, request)
                    else:
                        await security._check_write(call, request)
                except DriftdError as exc:
                    await security._deny(call, exc)
                code = "OK"
                try:
                    yield call, request
                except grpc.aio.AbortError:
                    code = context.code().name if context.code() else "UNKNOWN"
                    raise
                except BaseException as exc:
                    code = type(exc).__name__
                    raise
                finally:
                    if rule.role is Role.ADMIN:
                        call.audit("admin", code)

        if handler.response_streaming and inspect.isasyncgenfunction(behaviour):

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext):
                async with admitted(request, context) as (_, request):
                    async with contextlib.aclosing(behaviour(request, context)) as responses:
                        async for response in responses:
                            yield response

            return handler._replace(**{field: guarded_stream})

        async def guarded(request: Any, context: grpc.aio.ServicerContext):
            async with admitted(request, context) as (call, request):
                response = await behaviour(request, context)
                if method in COLLECTION_LISTS and call.principal.scopes is not None:
                    keep = [
                        c for c in response.collections if in_scope(call.principal.scopes, c.name)
                    ]
                    del response.collections[:]
                    response.collections.extend(keep)
                return response

        return handler._replace(**{field: guarded})

    async def _checked_stream(
        self, call: _Call, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """Scope, disk and quota checks of each message of a streaming request;
        a refusal ends the RPC (batches acknowledged before it stay written).

        A refusal is raised, not aborted here: the servicer may read its requests
        in a task of its own (StreamUpsertPoints reads ahead while it writes), and
        aborting from there would race the handler's own sends. The servicer's one
        error mapping (:func:`driftd.server.status.maps_errors`) ends the RPC."""
        async for request in requests:
            try:
                # Later messages may leave the name empty (it stays the first's).
                if getattr(request, call.rule.resource, "") or not call.resource:
                    self._check_scope(call, request)
                await self._check_write(call, request)
            except DriftdError as exc:
                call.audit("denied", exc.code, exc.reason)
                raise
            yield request
