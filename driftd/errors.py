"""driftd's domain errors: a small hierarchy, each class carrying its status code.

The engine raises these; the server maps them to gRPC statuses in one place
(``driftd.server.status``) and the client maps statuses back
(``driftd.client._common.errors.from_rpc_error``), in the manner of googleapis'
``api_core.exceptions``.
Nothing here imports grpc, so the math workers and the engine stay transport-free.

``reason`` is a ``driftd.v1.ErrorReason`` name and travels as the
``google.rpc.ErrorInfo`` reason (domain ``"driftd"``); ``field_violations`` travel
as a ``google.rpc.BadRequest``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DOMAIN = "driftd"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: ``field`` is a proto field path such as
    ``points[3].vector``; ``description`` says what is wrong with it."""

    field: str
    description: str


class DriftdError(Exception):
    """Base of all driftd errors.

    Attributes:
        code: the canonical ``google.rpc.Code`` name, e.g. ``"INVALID_ARGUMENT"``.
        reason: the ``driftd.v1.ErrorReason`` name, e.g. ``"DIMENSION_MISMATCH"``.
        message: human-readable explanation.
        field_violations: the bad fields, if any.
        metadata: string key/values for the ErrorInfo (e.g. ``required``).
    """

    code: str = "INTERNAL"
    default_reason: str = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field_violations: Iterable[FieldViolation] = (),
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field_violations = tuple(field_violations)
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(DriftdError):
    """The request is malformed regardless of the server's state."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_FIELD"


class NotFound(DriftdError):
    """A named collection or point does not exist."""

    code = "NOT_FOUND"
    default_reason = "COLLECTION_NOT_FOUND"


class AlreadyExists(DriftdError):
    """The resource to create exists already."""

    code = "ALREADY_EXISTS"
    default_reason = "COLLECTION_ALREADY_EXISTS"


class FailedPrecondition(DriftdError):
    """The request is valid but the collection's state does not allow it
    (e.g. too few points to fit a flow, texts without an embed model)."""

    code = "FAILED_PRECONDITION"
    default_reason = "NOT_ENOUGH_POINTS"


class ResourceExhausted(DriftdError):
    """A server limit was hit; retry later or with less."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "LIMIT_EXCEEDED"


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota, as a ``google.rpc.QuotaFailure.Violation``: ``subject``
    names who hit it (``"key:ingest-bot"``, ``"collection:sotu"``, ``"disk"``);
    ``description`` names the limit."""

    subject: str
    description: str


class QuotaExceeded(ResourceExhausted):
    """A quota or rate limit of the security layer was hit. Travels with a
    ``google.rpc.RetryInfo`` (``retry_delay`` seconds) and a ``google.rpc.QuotaFailure``
    (``quota_violations``)."""

    default_reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        retry_delay: float,
        quota_violations: Iterable[QuotaViolation],
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_delay = retry_delay
        self.quota_violations = tuple(quota_violations)


class Unauthenticated(DriftdError):
    """The request carries no API key (API_KEY_MISSING) or an unknown one
    (API_KEY_INVALID)."""

    code = "UNAUTHENTICATED"
    default_reason = "API_KEY_MISSING"


class PermissionDenied(DriftdError):
    """The API key's role or collection scope does not allow the request;
    metadata has ``required_role`` or ``resource``."""

    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unavailable(DriftdError):
    """The server is starting or shutting down; retry elsewhere or later."""

    code = "UNAVAILABLE"
    default_reason = "NOT_SERVING"


class DeadlineExceeded(DriftdError):
    """The work did not finish before the caller's deadline."""

    code = "DEADLINE_EXCEEDED"
    default_reason = "INTERNAL_ERROR"


class Internal(DriftdError):
    """An unexpected failure inside driftd."""


#: code name -> class, for mapping statuses back to exceptions (client side).
ERRORS_BY_CODE: dict[str, type[DriftdError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        Internal,
    )
}
