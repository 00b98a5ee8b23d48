"""The one mapping from exceptions to gRPC statuses (google.rpc rich error model).

A ``DriftdError`` becomes its own status code with an ``ErrorInfo{reason, domain
"driftd", metadata}``, a ``BadRequest`` when it names bad fields, and a
``RetryInfo`` with a ``QuotaFailure`` when it is a ``QuotaExceeded``. Anything
else is a bug: it is logged once with its traceback under a fresh error id, and
becomes INTERNAL with reason INTERNAL_ERROR and that id in the ErrorInfo metadata
(``error_id``), so a client's report leads to the log line. Servicer methods
are wrapped with :func:`maps_errors`, so they contain no try/except of their own.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from driftd.errors import DOMAIN, DriftdError, QuotaExceeded

logger = logging.getLogger(__name__)

Method = TypeVar("Method", bound=Callable[..., Any])


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


#: What one error may put in its trailers (the percent-encoded grpc-message
#: plus the base64 grpc-status-details-bin): gRPC refuses received metadata
#: over 8 KB by default (16 KB hard), and then the client sees RESOURCE_EXHAUSTED
#: instead of the error.
MAX_DETAILS_BYTES = 6 * 1024
#: Field violations listed per error; the rest are counted in ErrorInfo
#: metadata ``field_violation_count`` (the total).
MAX_FIELD_VIOLATIONS = 20
#: UTF-8 bytes kept of the message, of a violation's field and description,
#: and of an ErrorInfo metadata value (echoed ids and names can be any length).
_MAX_MESSAGE_BYTES = 512
_MAX_FIELD_BYTES = 128
_MAX_DESCRIPTION_BYTES = 256
_MAX_METADATA_BYTES = 128
_MAX_METADATA_ITEMS = 16


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary),
    marked with an ellipsis when cut."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def _trailer_bytes(status: status_pb2.Status) -> int:
    """The size of ``status`` on the wire as trailers: grpc-message is
    percent-encoded (RFC 3986 style, every byte outside printable ASCII and '%'
    takes 3), grpc-status-details-bin is base64."""
    message = status.message.encode("utf-8")
    pct = sum(3 if b < 0x20 or b > 0x7E or b == 0x25 else 1 for b in message)
    return pct + 4 * ((status.ByteSize() + 2) // 3)


def to_rpc_status(exc: Exception, error_id: str = "") -> status_pb2.Status:
    """The google.rpc.Status for ``exc``: a DriftdError keeps its code, reason,
    metadata and field violations; any other exception is INTERNAL_ERROR with
    only its message (no traceback or type leaks to the client). ``error_id``,
    if given, goes into the ErrorInfo metadata as ``error_id`` (never clipped away).

    The result always fits in :data:`MAX_DETAILS_BYTES`: the message, metadata
    and violation texts are clipped, at most :data:`MAX_FIELD_VIOLATIONS`
    violations are kept (fewer if they are long), and when any is left out
    ErrorInfo metadata ``field_violation_count`` has the total.
    """
    if isinstance(exc, DriftdError):
        code, reason, message, metadata = exc.code, exc.reason, exc.message, exc.metadata
    else:
        code, reason, metadata = "INTERNAL", "INTERNAL_ERROR", {}
        message = f"internal error: {exc}" if str(exc) else "internal error"
    if error_id:
        metadata = {"error_id": error_id, **metadata}
    metadata = {
        _clip(k, _MAX_FIELD_BYTES): _clip(v, _MAX_METADATA_BYTES)
        for k, v in list(metadata.items())[:_MAX_METADATA_ITEMS]
    }
    violations = [
        error_details_pb2.BadRequest.FieldViolation(
            field=_clip(v.field, _MAX_FIELD_BYTES),
            description=_clip(v.description, _MAX_DESCRIPTION_BYTES),
        )
        for v in getattr(exc, "field_violations", ())[:MAX_FIELD_VIOLATIONS]
    ]
    total = len(getattr(exc, "field_violations", ()))
    while True:
        if len(violations) < total:
            metadata["field_violation_count"] = str(total)
        status = status_pb2.Status(
            code=grpc.StatusCode[code].value[0], message=_clip(message, _MAX_MESSAGE_BYTES)
        )
        status.details.append(
            _pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
        )
        if violations:
            status.details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
        if isinstance(exc, QuotaExceeded):
            status.details.extend(_quota_details(exc))
        if not violations or _trailer_bytes(status) <= MAX_DETAILS_BYTES:
            return status
        violations.pop()


def _quota_details(exc: QuotaExceeded) -> list[any_pb2.Any]:
    """RetryInfo (when to retry) and QuotaFailure (which limit) of a quota error."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(exc.retry_delay * 1e9)))
    failure = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
            for v in exc.quota_violations
        ]
    )
    return [_pack(error_details_pb2.RetryInfo(retry_delay=delay)), _pack(failure)]


async def abort(context: grpc.aio.ServicerContext, exc: Exception, where: str) -> NoReturn:
    """Ends the RPC with the status for ``exc`` (``where`` names the RPC in logs).

    Raises:
        grpc.aio.AbortError: always; grpc turns it into the status. An AbortError
            passed in (the handler aborted by itself) is re-raised unchanged, since
            a context can be aborted only once.
    """
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    bug = not isinstance(exc, DriftdError) or exc.code == "INTERNAL"
    error_id = uuid.uuid4().hex[:16] if bug else ""
    status = to_rpc_status(exc, error_id)
    if bug:
        logger.error("%s failed (error id %s): %s", where, error_id, status.message, exc_info=exc)
    else:
        logger.debug("%s: %s %r", where, code_pb2.Code.Name(status.code), exc)
    await context.abort_with_status(rpc_status.to_status(status))
    raise RuntimeError("abort_with_status returned")  # it raises AbortError


def maps_errors(method: Method) -> Method:
    """Decorates a servicer method (coroutine or async generator) so that its
    exceptions become rich gRPC statuses via :func:`abort`.

    ``asyncio.CancelledError`` (client cancel, deadline, shutdown) is a
    BaseException and passes through untouched. For async generators the inner
    generator is closed deterministically when the wrapper is, so the method's
    own ``finally`` runs in the RPC's task rather than at garbage collection.
    """
    where = method.__qualname__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(method(self, request, context)) as responses:
                    async for response in responses:
                        yield response
            except Exception as exc:
                await abort(context, exc, where)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self, request, context) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await abort(context, exc, where)

    return unary  # type: ignore[return-value]
