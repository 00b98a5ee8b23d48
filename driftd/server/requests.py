"""Server interceptor: every request message is checked as it is parsed.

grpc.aio parses a request with the handler's deserializer before any servicer
code runs, and reports a parse failure (e.g. invalid UTF-8 in a string field:
protobuf's DecodeError) as UNKNOWN "Unexpected DecodeError" with no details.
This interceptor wraps the deserializer so that such a request, and one holding
a ``google.protobuf.Timestamp`` or ``Duration`` outside the range those types
define (years 0001-9999; +-10,000 years), is answered INVALID_ARGUMENT with an
ErrorInfo, by :func:`driftd.server.status.abort` like every other error. It
covers every RPC, unary or streaming, and any field added later.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message

from driftd.errors import DriftdError, FieldViolation, InvalidArgument
from driftd.server.status import abort

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
# Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z
# (google/protobuf/timestamp.proto); Duration: +-315,576,000,000 s
# (google/protobuf/duration.proto), nanos of the same sign as seconds.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
_MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000


class _Rejected:
    """Stands in for a request message that failed its checks."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def _contains_time(desc: descriptor.Descriptor, outer: frozenset[str]) -> bool:
    """Whether ``desc`` holds a Timestamp or Duration at any depth; ``outer``
    are the types being visited (recursive types such as Struct end there)."""
    for f in desc.fields:
        sub = f.message_type
        if sub is None or sub.full_name in outer:
            continue
        if sub.full_name in (_TIMESTAMP, _DURATION) or _contains_time(
            sub, outer | {desc.full_name}
        ):
            return True
    return False


@functools.cache
def _time_fields(desc: descriptor.Descriptor) -> tuple[tuple[descriptor.FieldDescriptor, str], ...]:
    """The fields of ``desc`` to visit: ``(field, kind)`` with kind "timestamp",
    "duration" or "message" (a message type that contains either, at any depth)."""
    out = []
    for f in desc.fields:
        if f.message_type is None:
            continue
        name = f.message_type.full_name
        if name == _TIMESTAMP:
            out.append((f, "timestamp"))
        elif name == _DURATION:
            out.append((f, "duration"))
        elif _contains_time(f.message_type, frozenset({desc.full_name})):
            out.append((f, "message"))
    return tuple(out)


def _time_problem(msg: Message, kind: str) -> tuple[str, str] | None:
    """``(reason, description)`` when a Timestamp/Duration is out of its range.
    An unset one reads as zero, which is in range (required times are checked
    where they are used)."""
    seconds, nanos = msg.seconds, msg.nanos  # type: ignore[attr-defined]
    if kind == "timestamp":
        if _MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < _NANOS:
            return None
        return "INVALID_TIMESTAMP", "must be between 0001-01-01 and 9999-12-31 (UTC)"
    if -_MAX_DURATION_SECONDS <= seconds <= _MAX_DURATION_SECONDS and (
        (seconds >= 0 and 0 <= nanos < _NANOS) or (seconds <= 0 and -_NANOS < nanos <= 0)
    ):
        return None
    return "LIMIT_EXCEEDED", "must be within +-315576000000 seconds (10,000 years)"


#: A checker's finding: (path from the checked message, reason, description).
_Finding = tuple[str, str, str]


@functools.cache
def _checker(desc: descriptor.Descriptor) -> Callable[[Message], _Finding | None]:
    """A function finding the first out-of-range Timestamp/Duration of a
    ``desc`` message. It reads only the fields that can hold one and builds a
    field path only for a finding: 10,000 points are checked in a few ms."""
    parts = []
    for f, kind in _time_fields(desc):
        sub = _checker(f.message_type) if kind == "message" else None
        parts.append((f.name, f.is_repeated, sub, kind))

    def check(message: Message) -> _Finding | None:
        for name, repeated, sub, kind in parts:
            value = getattr(message, name)
            for i, item in enumerate(value) if repeated else ((None, value),):
                if sub is not None:
                    found = sub(item)
                    if found is None:
                        continue
                    path, reason, description = found
                else:
                    problem = _time_problem(item, kind)
                    if problem is None:
                        continue
                    path, (reason, description) = "", problem
                here = name if i is None else f"{name}[{i}]"
                return (f"{here}.{path}" if path else here), reason, description
        return None

    return check


def check_times(message: Message) -> InvalidArgument | None:
    """The error for the first Timestamp/Duration of ``message`` (at any depth)
    outside its type's range, or None."""
    found = _checker(message.DESCRIPTOR)(message)
    if found is None:
        return None
    path, reason, description = found
    return InvalidArgument(
        f"{path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(path, description)],
    )


def _checked_deserializer(parse: Callable[[bytes], Message]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            message = parse(raw)
        except Exception as exc:  # protobuf's DecodeError, whatever its implementation
            return _Rejected(
                # Which field is at fault protobuf does not say.
                InvalidArgument(
                    f"the request message does not parse (e.g. invalid UTF-8 in a string): {exc}",
                    reason="MALFORMED_REQUEST",
                )
            )
        error = check_times(message)
        return message if error is None else _Rejected(error)

    return deserialize


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The stream's messages; a rejected one is raised, for the servicer's error
    mapping (:func:`driftd.server.status.maps_errors`, or :func:`_wrap`'s for a
    servicer without it) to end the RPC with its status. Not aborted here: the
    servicer may read its requests in a task of its own (StreamUpsertPoints reads
    ahead while it writes), and an abort from there races the handler's own sends
    (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS)."""
    async for request in requests:
        if isinstance(request, _Rejected):
            raise request.error
        yield request


def _wrap(handler: grpc.RpcMethodHandler, where: str) -> grpc.RpcMethodHandler:
    """``handler`` with the checking deserializer and a behaviour that answers
    a rejected request; a generator behaviour stays a generator (the metrics
    interceptor tells the two kinds apart)."""
    field = {
        (False, False): "unary_unary",
        (False, True): "unary_stream",
        (True, False): "stream_unary",
        (True, True): "stream_stream",
    }[(handler.request_streaming, handler.response_streaming)]
    behaviour = getattr(handler, field)

    async def admit(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if handler.request_streaming:
            return _checked_requests(request)
        if isinstance(request, _Rejected):
            await abort(context, request.error, where)
        return request

    if inspect.isasyncgenfunction(behaviour):

        async def generator(request, context) -> AsyncIterator[Any]:
            request = await admit(request, context)
            try:
                async with contextlib.aclosing(behaviour(request, context)) as responses:
                    async for response in responses:
                        yield response
            except DriftdError as exc:  # a rejected stream message, unmapped (reflection)
                await abort(context, exc, where)

        wrapped: Callable[..., Any] = generator
    else:

        async def call(request, context) -> Any:
            try:
                return await behaviour(await admit(request, context), context)
            except DriftdError as exc:  # a rejected stream message, unmapped
                await abort(context, exc, where)

        wrapped = call
    return handler._replace(
        request_deserializer=_checked_deserializer(handler.request_deserializer),
        **{field: wrapped},
    )


class RequestCheckInterceptor(grpc.aio.ServerInterceptor):
    """Answers unparsable requests (MALFORMED_REQUEST) and out-of-range
    Timestamps (INVALID_TIMESTAMP) and Durations (LIMIT_EXCEEDED) with
    INVALID_ARGUMENT before the servicer runs. Handlers without a request
    deserializer (raw bytes) pass unchanged."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _wrap(handler, handler_call_details.method)
