"""OpenTelemetry tracing of the server: spans for RPCs, Chroma calls, embedding,
math-pool tasks and calls forwarded to other replicas.

Off by default: the spans below go to the OpenTelemetry API's no-op provider
(a few microseconds each) until :func:`configure` installs the SDK, which it
does only when the standard variables ask for OTLP export (``OTEL_TRACES_EXPORTER=otlp``
or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and
``OTEL_SDK_DISABLED`` is not ``true``. Everything else (endpoint, headers, TLS,
sampler, batch sizes, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) is read
by the SDK and its OTLP/gRPC exporter from the same standard variables.

Span names and attributes follow the OpenTelemetry semantic conventions for RPC
(``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``); the
W3C ``traceparent`` of an incoming call becomes the parent of its server span.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

tracer = trace.get_tracer("driftd")

#: Status codes that mark a server span as failed (the semantic conventions: the
#: others are the caller's business, not the server's error).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _wanted(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter == "otlp"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(environ: Mapping[str, str] | None = None) -> Callable[[], None] | None:
    """Installs the OpenTelemetry SDK with a batching OTLP/gRPC exporter when the
    ``OTEL_*`` variables ask for it (see the module docstring).

    Returns:
        A blocking function that flushes and stops the exporter (call it on
        shutdown, off the event loop), or None when tracing stays off.
    """
    environ = os.environ if environ is None else environ
    if not _wanted(environ):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override this default.
    provider = TracerProvider(resource=Resource.create({"service.name": "driftd"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


@contextlib.contextmanager
def server_span(
    service: str, method: str, context: grpc.aio.ServicerContext
) -> Iterator[trace.Span]:
    """The SERVER span of one RPC, current while the handler runs, child of the
    caller's W3C trace context (``traceparent`` metadata) when it sent one. Set its
    outcome with :func:`end_rpc`."""
    carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    with tracer.start_as_current_span(
        f"{service}/{method}",
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "network.peer.address": context.peer(),
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_rpc(span: trace.Span, code: grpc.StatusCode, details: str | None) -> None:
    """Records an RPC's status code on its span (ERROR for server-side failures)."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, details or code.name))


def trace_id() -> str:
    """The current trace id (32 hex digits), or "" outside a sampled trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def start_span(name: str, attributes: Mapping[str, Any] | None = None) -> trace.Span:
    """A child of the current span, not made current: for work that another
    thread or process does on the caller's behalf; the caller ends it."""
    return tracer.start_span(name, attributes=attributes)


def record_error(span: trace.Span, exc: BaseException) -> None:
    """Marks ``span`` failed by ``exc`` (its type and message, no traceback)."""
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def interval(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any]) -> None:
    """A finished child span of the current one from ``start_ns`` to ``end_ns``
    (``time.time_ns()`` clock), e.g. a pool task's queue wait measured elsewhere."""
    tracer.start_span(name, start_time=start_ns, attributes=attributes).end(end_time=end_ns)


@contextlib.contextmanager
def forwarded_call(replica: str, full_method: str) -> Iterator[list[tuple[str, str]]]:
    """A CLIENT span around a call forwarded to replica ``replica`` (``host:port``)
    for RPC ``full_method`` (``/driftd.v1.PointService/UpsertPoints``). Yields the
    metadata to send with the forwarded call (W3C ``traceparent``/``tracestate``),
    so the owner's server span joins the caller's trace::

        with tracing.forwarded_call(owner, "/driftd.v1.PointService/UpsertPoints") as md:
            await stub.UpsertPoints(request, metadata=[*md, *other_metadata])

    Raising out of the block marks the span failed.
    """
    service, _, method = full_method.lstrip("/").rpartition("/")
    with tracer.start_as_current_span(
        f"forward {service}/{method}",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "server.address": replica,
        },
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield list(carrier.items())
