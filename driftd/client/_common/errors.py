"""gRPC statuses back to driftd errors (:mod:`driftd.errors`), from the
google.rpc rich error details."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from driftd.errors import (
    DOMAIN,
    ERRORS_BY_CODE,
    DriftdError,
    FieldViolation,
)

_POINT_INDEX = re.compile(r"^points\[(\d+)\]")


def from_rpc_error(err: grpc.RpcError, index_offset: int | None = None) -> DriftdError:
    """The driftd error for a failed RPC.

    The class comes from the status code (:data:`driftd.errors.ERRORS_BY_CODE`);
    codes outside that map give a plain :class:`DriftdError` whose ``code`` is the
    code's name. ``reason`` and ``metadata`` come from the status's
    ``google.rpc.ErrorInfo`` (domain ``"driftd"``), ``field_violations`` from its
    ``google.rpc.BadRequest``. For one batch of a larger input, ``index_offset``
    is the batch's first position: ``points[i]`` field paths are shifted by it,
    so they name positions in the whole input, and ``metadata["batch_start"]``
    records it.
    """
    # Failed sync calls are grpc.Call objects; grpc.aio.AioRpcError is not, but has
    # the same code()/details()/trailing_metadata() methods.
    has_status = callable(getattr(err, "code", None))
    code = err.code() if has_status else grpc.StatusCode.UNKNOWN
    message = (err.details() if has_status else "") or code.name
    reason, metadata = None, {}
    violations: list[FieldViolation] = []
    for detail in _status_details(err) if has_status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(
                FieldViolation(_shift_index(v.field, index_offset), v.description)
                for v in bad.field_violations
            )
    if index_offset is not None:
        metadata["batch_start"] = str(index_offset)
    cls = ERRORS_BY_CODE.get(code.name, DriftdError)
    exc = cls(message, reason=reason, field_violations=violations, metadata=metadata)
    if cls is DriftdError:
        exc.code = code.name
    return exc


def _status_details(err: grpc.RpcError) -> Sequence:
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        # The rich status disagrees with the status line (a proxy rewrote it):
        # trust the status line and drop the details.
        return ()
    return status.details if status is not None else ()


def _shift_index(path: str, offset: int | None) -> str:
    if not offset:
        return path
    return _POINT_INDEX.sub(lambda m: f"points[{int(m.group(1)) + offset}]", path)


@contextlib.contextmanager
def translate_errors(index_offset: int | None = None) -> Iterator[None]:
    """Re-raises any ``grpc.RpcError`` inside the block as its driftd error
    (:func:`from_rpc_error`), with the RpcError as ``__cause__``."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err, index_offset) from err
