"""Server interceptor: Prometheus metrics, an OpenTelemetry server span and an
access log line for every RPC.

Metric names, labels and label values follow go-grpc-prometheus (see
``driftd.metrics``): ``grpc_type`` ``unary``/``server_stream``/...,
``grpc_code`` the Go name of the status (``OK``, ``NotFound``, ``Canceled``...).
py-grpc-prometheus (the Python port) has no grpc.aio interceptor
(lchenn/py-grpc-prometheus#13), and grpcio's OpenTelemetry plugin records OTel
metrics under other names, so this one is ours. So is the span: the
OpenTelemetry contrib aio interceptor misses statuses set by
``abort_with_status`` (every driftd error) and leaves response generators to
the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from driftd import metrics, tracing
from driftd.server.logs import ACCESS
from driftd.server.security.keys import current_key_name

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
HEALTH_SERVICE = "grpc.health.v1.Health"

_GRPC_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}
#: grpc-go's ``codes.Code.String()``: CamelCase, but "OK", and CANCELLED spelt "Canceled".
GRPC_CODE_NAMES = {
    code: "".join(word.capitalize() for word in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
_BEHAVIOURS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records started/handled counts, latency and message counts of every RPC,
    runs it inside a SERVER span (:mod:`driftd.tracing`) and logs one access line
    when it ends (on ``driftd.access`` at ``access_level``, health checks at DEBUG;
    None: no line).

    Works by wrapping the behaviour of the RpcMethodHandler (async handlers
    only, unary or streaming). A streaming response from an async generator is
    re-emitted with ``context.write`` inside the RPC's task, so the generator is
    closed (its ``finally`` runs) as soon as the RPC ends or is cancelled:
    grpc.aio itself leaves that to garbage collection (grpc/grpc#42295).

    A request rejected before its handler runs (e.g. over the message-size
    limit: RESOURCE_EXHAUSTED from grpc itself) is not counted.
    """

    def __init__(self, access_level: int | None = logging.INFO) -> None:
        self._access_level = access_level

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return handler
        return _instrument(handler, handler_call_details.method, self._access_level)


class _Rpc:
    """Bookkeeping of one RPC: its labels, start time and message counts."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = time.perf_counter()
        metrics.GRPC_STARTED.labels(*labels).inc()

    def received(self) -> None:
        metrics.GRPC_MSG_RECEIVED.labels(*self.labels).inc()

    def sent(self) -> None:
        metrics.GRPC_MSG_SENT.labels(*self.labels).inc()

    def finish(
        self, code: grpc.StatusCode, context: grpc.aio.ServicerContext, access_level: int | None
    ) -> None:
        elapsed = time.perf_counter() - self.started
        metrics.GRPC_HANDLED.labels(*self.labels, GRPC_CODE_NAMES[code]).inc()
        metrics.GRPC_HANDLING_SECONDS.labels(*self.labels).observe(elapsed)
        if access_level is None or not ACCESS.isEnabledFor(access_level):
            return
        fields = {
            "method": f"/{self.labels[1]}/{self.labels[2]}",
            "peer": context.peer(),
            "code": code.name,
            "duration_ms": round(elapsed * 1e3, 3),
        }
        if key_name := current_key_name():
            fields["key_name"] = key_name
        if code is not grpc.StatusCode.OK:
            fields.update(_error_info(context))
        ACCESS.log(
            access_level,
            "%s",
            " ".join(
                [fields["method"], code.name, f"{elapsed * 1e3:.1f} ms"]
                + [
                    f"{k}={v}"
                    for k, v in fields.items()
                    if k not in ("method", "code", "duration_ms")
                ]
            ),
            extra=fields,
        )


def _error_info(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """``reason`` and ``error_id`` of the ErrorInfo the RPC failed with, if any."""
    for key, value in context.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                out = {"reason": info.reason}
                if "error_id" in info.metadata:
                    out["error_id"] = info.metadata["error_id"]
                return out
    return {}


class _CountingContext:
    """A servicer context that counts the messages a write-style handler sends;
    everything else goes to the real context."""

    def __init__(self, context: grpc.aio.ServicerContext, rpc: _Rpc) -> None:
        self._context = context
        self._rpc = rpc

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._rpc.sent()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def _counted(requests: AsyncIterator[Any], rpc: _Rpc) -> AsyncIterator[Any]:
    async for request in requests:
        rpc.received()
        yield request


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    # grpc.aio cancels the handler task both on client cancellation and on an
    # expired deadline; only the remaining time tells them apart.
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _instrument(
    handler: grpc.RpcMethodHandler, full_method: str, access_level: int | None
) -> grpc.RpcMethodHandler:
    service, _, method = full_method.lstrip("/").rpartition("/")
    kind = (handler.request_streaming, handler.response_streaming)
    rpc_labels = (_GRPC_TYPES[kind], service, method)
    field = _BEHAVIOURS[kind]
    behaviour = getattr(handler, field)
    if service == HEALTH_SERVICE and access_level is not None:
        # Probes call every few seconds: their lines would drown the rest.
        access_level = min(access_level, logging.DEBUG)

    async def call(request: Any, context: grpc.aio.ServicerContext, rpc: _Rpc) -> Any:
        if not handler.response_streaming:
            response = await behaviour(request, context)
            rpc.sent()
            return response
        if inspect.isasyncgenfunction(behaviour):
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    await context.write(response)
                    rpc.sent()
        else:
            await behaviour(request, _CountingContext(context, rpc))
        return None

    async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        rpc = _Rpc(rpc_labels)
        if handler.request_streaming:
            request = _counted(request, rpc)
        else:
            rpc.received()
        # Anything else escaping the handler is reported by grpc as UNKNOWN.
        code = grpc.StatusCode.UNKNOWN
        with tracing.server_span(service, method, context) as span:
            try:
                response = await call(request, context, rpc)
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except grpc.aio.AbortError:
                code = context.code()
                raise
            else:
                code = context.code() or grpc.StatusCode.OK
            finally:
                tracing.end_rpc(span, code, context.details())
                rpc.finish(code, context, access_level)
        return response

    return handler._replace(**{field: observed})
