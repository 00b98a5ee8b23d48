"""What DriftClient and AsyncDriftClient share: point parsing, request building,
response reading and the mapping of gRPC statuses back to driftd errors.

The two clients differ only in how they send a request (a blocking call or an
awaited one), so every RPC is described here once, as a :class:`Call` (the stub
method, the request and a function that reads the response) or, for streams, as a
request plus a reader. Imports only grpc, grpcio-status, protobuf and numpy.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from operator import attrgetter
from typing import Any, Generic, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from driftd import convert, types
from driftd.errors import (
    DOMAIN,
    ERRORS_BY_CODE,
    DriftdError,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unavailable,
)
from driftd.routing import convert as routing_convert
from driftd.routing import types as routing_types
from driftd.v1 import (
    behavior_pb2,
    behavior_pb2_grpc,
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
)

T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:50051"

#: Channel options applied unless the caller overrides them. gRPC's 4 MiB default
#: receive limit is too small for vectors (grpc/grpc#15738); 64 MiB matches the
#: server's default ``max_message_bytes``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}

Time = datetime | str | None
PointLike = types.Point | Mapping[str, Any]


#: The RPCs that gRPC may send again after UNAVAILABLE: the reads, and the writes
#: whose repetition changes nothing (UpsertPoints replaces points by id;
#: DeletePoints ignores ids already gone, so a repeat may count fewer deletions;
#: ExtractFacts recomputes a branch's facts from its messages). Left out:
#: CreateCollection, AttachCollection, CreateDriftRule (a repeat fails with
#: ALREADY_EXISTS or creates a second rule), DeleteCollection, DeleteDriftRule (a
#: repeat fails with NOT_FOUND), ProcessBehaviors (a repeat applies the candidates
#: twice), RouteMessage (safe only with a message_id, which a per-method policy
#: cannot see), StreamUpsertPoints (the writer resumes it instead) and Health.Check
#: (a probe must see the outage).
RETRYABLE_METHODS: dict[str, tuple[str, ...]] = {
    "driftd.v1.CollectionService": ("GetCollection", "ListCollections"),
    "driftd.v1.PointService": (
        "UpsertPoints",
        "GetPoints",
        "DeletePoints",
        "GetTrajectory",
        "SearchPoints",
    ),
    "driftd.v1.FlowService": ("ProbeFlow", "SimulatePaths", "FindAttractors", "DetectChapters"),
    "driftd.v1.MonitorService": (
        "CompareWindows",
        "EmbeddingHealth",
        "WatchCollection",
        "GetDriftRule",
        "ListDriftRules",
    ),
    "driftd.v1.BehaviorService": ("ListBehaviors",),
    "driftd.v1.RoutingService": ("ListBranches", "GetBranchContext", "ExtractFacts"),
}
#: The server-streaming ones: they have no deadline, so they do not wait for a
#: connection (that could be forever).
_STREAMING_METHODS = frozenset({"GetTrajectory", "SimulatePaths", "WatchCollection"})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client rides out a server that restarts, drains or is not up yet.

    It becomes the channel's gRPC service config for :data:`RETRYABLE_METHODS`:
    gRPC sends those calls again after UNAVAILABLE, up to ``max_attempts``
    attempts in all, waiting a random time in ``[0, min(initial_backoff *
    backoff_multiplier**(n - 1), max_backoff)]`` seconds before retry n; the unary
    ones also wait for a connection (``waitForReady``) instead of failing while
    the server is down, so their deadline (the client's ``timeout``) is the budget
    for a restart, waits included. Other status codes and other RPCs are never
    retried. The channel also redials a lost server at least every
    ``max_backoff`` seconds (gRPC's own reconnect backoff grows to two minutes).
    The stream writers (:meth:`DriftClient.writer`) reconnect with the same
    backoff, for up to the client's timeout (``max_attempts`` does not apply).

    Raises:
        InvalidArgument: ``max_attempts`` outside 2-5 (gRPC caps it at 5), or a
            backoff or multiplier that is not positive.
    """

    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 10.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        bad = [
            FieldViolation(f"retries.{name}", problem)
            for name, problem, ok in (
                ("max_attempts", "must be 2 to 5", 2 <= self.max_attempts <= 5),
                ("initial_backoff", "must be positive", self.initial_backoff > 0),
                ("max_backoff", "must be positive", self.max_backoff > 0),
                ("backoff_multiplier", "must be positive", self.backoff_multiplier > 0),
            )
            if not ok
        ]
        if bad:
            raise InvalidArgument(f"{bad[0].field} {bad[0].description}", field_violations=bad)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), jittered as gRPC does."""
        ceiling = self.initial_backoff * self.backoff_multiplier ** (retry - 1)
        return random.uniform(0.0, min(ceiling, self.max_backoff))

    def channel_options(self) -> dict[str, Any]:
        """The channel options that make gRPC retry as described above."""
        retry_policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff:.9f}s",
            "maxBackoff": f"{self.max_backoff:.9f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [
            {"service": service, "method": method}
            for service, methods in RETRYABLE_METHODS.items()
            for method in methods
        ]
        method_config = [
            {
                "name": [n for n in names if n["method"] not in _STREAMING_METHODS],
                "waitForReady": True,
                "retryPolicy": retry_policy,
            },
            {
                "name": [n for n in names if n["method"] in _STREAMING_METHODS],
                "retryPolicy": retry_policy,
            },
        ]
        return {
            "grpc.service_config": json.dumps({"methodConfig": method_config}),
            # gRPC can only re-send what it buffered, 256 KiB per call by default:
            # larger requests (an upsert of a few hundred vectors) would never be
            # retried.
            "grpc.per_rpc_retry_buffer_size": DEFAULT_OPTIONS["grpc.max_send_message_length"],
            "grpc.max_reconnect_backoff_ms": int(self.max_backoff * 1000),
        }


DEFAULT_RETRIES = RetryPolicy()


@dataclass(frozen=True)
class TLS:
    """TLS (and mutual TLS) to a driftd server.

    Attributes:
        ca_file: PEM bundle the server's certificate must chain to; "" uses
            the system's roots.
        cert_file: PEM client certificate chain, for servers that require one (mTLS).
        key_file: PEM private key of ``cert_file``.
        server_name: the name to check the server's certificate against when
            it differs from the target's host (gRPC's ``ssl_target_name_override``).
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The credentials for ``grpc.secure_channel``.

        Raises:
            OSError: a file cannot be read.
            InvalidArgument: cert_file without key_file or the reverse.
        """
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidArgument(
                "tls.cert_file and tls.key_file go together",
                field_violations=[FieldViolation("tls", "cert_file and key_file go together")],
            )

        def read(path: str) -> bytes | None:
            with open(path, "rb") if path else contextlib.nullcontext() as f:
                return f.read() if f else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def _loopback(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]") if ":" in target else target
    host = host.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    return host in ("localhost", "::1") or host.startswith("127.")


def channel_security(
    target: str,
    *,
    api_key: str | None,
    tls: TLS | bool | None,
    credentials: grpc.ChannelCredentials | None,
) -> tuple[grpc.ChannelCredentials | None, dict[str, Any], tuple[tuple[str, str], ...]]:
    """The channel credentials, extra channel options and per-call metadata of a
    client: the one place where both the blocking and the asyncio client get TLS
    and API keys.

    The API key travels as ``authorization: Bearer <key>`` metadata on every
    call (:class:`Stubs` adds it), only over TLS or to a loopback target: a key
    sent in plaintext across a network is as good as published.

    Raises:
        InvalidArgument: both ``tls`` and ``credentials``; an API key for a
            non-loopback target without TLS.
    """
    options: dict[str, Any] = {}
    if tls is not None and tls is not False:
        if credentials is not None:
            raise InvalidArgument(
                "give tls or credentials, not both",
                field_violations=[FieldViolation("tls", "conflicts with credentials")],
            )
        config = TLS() if tls is True else tls
        credentials = config.channel_credentials()
        if config.server_name:
            options["grpc.ssl_target_name_override"] = config.server_name
    metadata: tuple[tuple[str, str], ...] = ()
    if api_key:
        if credentials is None and not _loopback(target):
            raise InvalidArgument(
                f"an API key needs TLS to reach {target!r}: pass tls=TLS(ca_file=...) "
                "(without TLS, keys are sent only to loopback targets)",
                field_violations=[FieldViolation("api_key", "needs tls for this target")],
            )
        metadata = (("authorization", f"Bearer {api_key}"),)
    return credentials, options, metadata


def channel_options(
    options: Iterable[tuple[str, Any]] | Mapping[str, Any] | None,
    retries: RetryPolicy | None = None,
) -> list:
    """:data:`DEFAULT_OPTIONS` and the options of ``retries``, overridden by
    ``options`` (pairs or a mapping)."""
    merged = dict(DEFAULT_OPTIONS)
    if retries is not None:
        merged.update(retries.channel_options())
    if options:
        merged.update(options.items() if isinstance(options, Mapping) else options)
    return list(merged.items())


class _WithMetadata:
    """A multi-callable (sync or ``grpc.aio``) that adds fixed metadata to each call."""

    def __init__(self, call, metadata: tuple[tuple[str, str], ...]) -> None:
        self._call, self._metadata = call, metadata

    def __call__(self, request, *args, metadata=None, **kwargs):
        return self._call(request, *args, metadata=(*self._metadata, *(metadata or ())), **kwargs)


class _MetadataChannel:
    """A channel whose multi-callables carry ``metadata`` on every call. Cheaper
    than gRPC call credentials, which run a Python plugin on another thread per
    call (0.5 ms of a 2.5 ms ProbeFlow, bench/security)."""

    def __init__(self, channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._channel, self._metadata = channel, metadata

    def unary_unary(self, *args, **kwargs):
        return _WithMetadata(self._channel.unary_unary(*args, **kwargs), self._metadata)

    def unary_stream(self, *args, **kwargs):
        return _WithMetadata(self._channel.unary_stream(*args, **kwargs), self._metadata)

    def stream_unary(self, *args, **kwargs):
        return _WithMetadata(self._channel.stream_unary(*args, **kwargs), self._metadata)

    def stream_stream(self, *args, **kwargs):
        return _WithMetadata(self._channel.stream_stream(*args, **kwargs), self._metadata)


class Stubs:
    """The generated stubs over one channel (sync or ``grpc.aio``); every call
    carries ``metadata`` (the API key, see :func:`channel_security`)."""

    def __init__(self, channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = channel
        self._calls = _MetadataChannel(channel, metadata) if metadata else channel
        self.collections = collection_pb2_grpc.CollectionServiceStub(self._calls)
        self.points = point_pb2_grpc.PointServiceStub(self._calls)
        self.flow = flow_pb2_grpc.FlowServiceStub(self._calls)
        self.monitor = monitor_pb2_grpc.MonitorServiceStub(self._calls)
        self.behaviors = behavior_pb2_grpc.BehaviorServiceStub(self._calls)
        self.routing = routing_pb2_grpc.RoutingServiceStub(self._calls)

    @cached_property
    def health(self):
        return health_modules()[1].HealthStub(self._calls)


def health_modules():
    """``(health_pb2, health_pb2_grpc)`` from grpcio-health-checking, imported on
    first use because the client does not depend on that package.

    Raises:
        ImportError: grpcio-health-checking is not installed.
    """
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:
        raise ImportError(
            "health() needs the grpcio-health-checking package: "
            "pip install grpcio-health-checking (or driftd[server])"
        ) from exc
    return health_pb2, health_pb2_grpc


# --- errors ------------------------------------------------------------------

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
    reason, metadata, violations = None, {}, []
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


# --- parsing user input ----------------------------------------------------


def parse_time(value: object) -> datetime | None:
    """A datetime or an RFC 3339 string as an aware UTC datetime (naive means
    UTC); None when ``value`` is neither or does not parse."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def parse_point(raw: PointLike, index: int = 0) -> types.Point:
    """One input point as a :class:`driftd.types.Point`.

    ``raw`` is a Point (passed through) or a dict ``{"id": str, "timestamp":
    RFC 3339 str | datetime, "text": str | "vector": list | ndarray, "series"?: str,
    "payload"?: {str: str | float | int | bool}}`` (``"time"`` is accepted for
    ``"timestamp"``; other keys are ignored). Only the row's shape is checked here;
    the server checks it against the collection (dimension, embed model,
    finiteness, duplicate ids).

    Raises:
        InvalidArgument: one field violation per bad field, with proto paths
            ``points[{index}].{id,time,vector,text,series,payload}``; the reason is
            the first problem's ErrorReason name.
    """
    if isinstance(raw, types.Point):
        return raw
    at = f"points[{index}]"
    if not isinstance(raw, Mapping):
        _raise_bad(
            index, [("INVALID_FIELD", at, f"must be a dict or a Point, not {type(raw).__name__}")]
        )
    problems: list[tuple[str, str, str]] = []

    pid = raw.get("id")
    if not isinstance(pid, str) or not pid:
        problems.append(("INVALID_FIELD", f"{at}.id", "must be a non-empty string"))

    raw_time = raw.get("timestamp", raw.get("time"))
    time = parse_time(raw_time)
    if time is None:
        problems.append(
            (
                "INVALID_TIMESTAMP",
                f"{at}.time",
                f"timestamp {raw_time!r} is missing or not RFC 3339",
            )
        )

    raw_vector, vector = raw.get("vector"), None
    if raw_vector is not None:
        vector = _as_vector(raw_vector)
        if vector is None:
            problems.append(("INVALID_FIELD", f"{at}.vector", "must be a flat list of numbers"))
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(("INVALID_FIELD", f"{at}.text", "must be a string"))
    elif raw_vector is None and not text:
        problems.append(("MISSING_CONTENT", at, "needs a vector or a text"))

    series = raw.get("series") or ""
    if not isinstance(series, str):
        problems.append(("INVALID_FIELD", f"{at}.series", "must be a string"))

    payload = raw.get("payload") or {}
    if not isinstance(payload, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | bool | int | float) for k, v in payload.items()
    ):
        problems.append(
            ("INVALID_PAYLOAD", f"{at}.payload", "must map strings to strings, numbers or bools")
        )

    if problems:
        _raise_bad(index, problems)
    return types.Point(
        id=pid, time=time, series=series, vector=vector, text=text or None, payload=dict(payload)
    )


def parse_points(raws: Iterable[PointLike], first_index: int = 0) -> list[types.Point]:
    """Every point of ``raws`` parsed with :func:`parse_point`, numbered from
    ``first_index``.

    Raises:
        InvalidArgument: listing the violations of every bad point (reason of the
            first; metadata ``invalid_count``).
    """
    points: list[types.Point] = []
    errors: list[InvalidArgument] = []
    for i, raw in enumerate(raws, first_index):
        try:
            points.append(parse_point(raw, i))
        except InvalidArgument as exc:
            errors.append(exc)
    if errors:
        raise InvalidArgument(
            f"{len(errors)} invalid point(s); first: {errors[0].message}",
            reason=errors[0].reason,
            field_violations=[v for e in errors for v in e.field_violations],
            metadata={"invalid_count": len(errors)},
        )
    return points


def _as_vector(value: object) -> np.ndarray | None:
    """``value`` as a float32 (d,) array; None unless it is a non-empty flat list
    (or array) of numbers."""
    if isinstance(value, str | bytes | Mapping):
        return None
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return vector if vector.ndim == 1 and vector.size else None


def _raise_bad(index: int, problems: list[tuple[str, str, str]]) -> NoReturn:
    reason, path, description = problems[0]
    raise InvalidArgument(
        f"{path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(p, d) for _, p, d in problems],
        metadata={"index": index},
    )


def _time_arg(value: Time, field: str) -> datetime | None:
    if value is None:
        return None
    parsed = parse_time(value)
    if parsed is None:
        raise InvalidArgument(
            f"{field}: {value!r} is not a datetime or an RFC 3339 string",
            reason="INVALID_TIMESTAMP",
            field_violations=[FieldViolation(field, "must be a datetime or an RFC 3339 string")],
        )
    return parsed


def _time_range(start: Time, end: Time) -> point_pb2.TimeRange:
    return convert.bounds_to_time_range(
        _time_arg(start, "time_range.start_time"), _time_arg(end, "time_range.end_time")
    )


def _exactly_one(field: str, **options: object) -> None:
    given = [k for k, v in options.items() if v is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise InvalidArgument(
            f"{field}: give exactly one of {names} (got {', '.join(given) or 'none'})",
            field_violations=[FieldViolation(field, f"exactly one of {names}")],
        )


# --- unary RPCs ----------------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC ready to send.

    ``method`` is a dotted path into :class:`Stubs` (``"points.GetPoints"``);
    ``parse`` turns the response into the client's return value;
    ``index_offset`` is set for one batch of a larger input (see
    :func:`from_rpc_error`).
    """

    method: str
    request: Message
    parse: Callable[[Any], T]
    index_offset: int | None = None

    def bind(self, stubs: Stubs) -> Callable:
        return attrgetter(self.method)(stubs)


def create_collection(
    name: str, dim: int | None, distance: str, embed_model: str | None
) -> Call[types.CollectionInfo]:
    if distance not in convert.DISTANCE_TO_PROTO:
        raise InvalidArgument(
            f"distance {distance!r} is not one of {', '.join(convert.DISTANCE_TO_PROTO)}",
            field_violations=[FieldViolation("collection.distance", "cosine, l2 or ip")],
        )
    spec = collection_pb2.Collection(
        dimension=dim or 0,
        distance=convert.DISTANCE_TO_PROTO[distance],
        embed_model=embed_model or "",
    )
    request = collection_pb2.CreateCollectionRequest(
        collection_id=name.removeprefix(convert.COLLECTION_PREFIX), collection=spec
    )
    return Call("collections.CreateCollection", request, convert.collection_from_proto)


def get_collection(name: str) -> Call[types.CollectionInfo]:
    request = collection_pb2.GetCollectionRequest(name=convert.collection_name(name))
    return Call("collections.GetCollection", request, convert.collection_from_proto)


def list_collections_page(
    page_size: int, page_token: str
) -> Call[tuple[list[types.CollectionInfo], str]]:
    request = collection_pb2.ListCollectionsRequest(page_size=page_size, page_token=page_token)
    return Call(
        "collections.ListCollections",
        request,
        lambda r: ([convert.collection_from_proto(c) for c in r.collections], r.next_page_token),
    )


def delete_collection(name: str) -> Call[None]:
    request = collection_pb2.DeleteCollectionRequest(name=convert.collection_name(name))
    return Call("collections.DeleteCollection", request, lambda _: None)


def attach_collection(
    chroma_collection: str, time_key: str, series_key: str, embed_model: str
) -> Call[types.CollectionInfo]:
    request = collection_pb2.AttachCollectionRequest(
        chroma_collection=chroma_collection,
        time_key=time_key,
        series_key=series_key,
        embed_model=embed_model,
    )
    return Call("collections.AttachCollection", request, convert.collection_from_proto)


def upsert_batches(
    name: str, points: Iterable[PointLike], batch_size: int
) -> Iterator[Call[types.UpsertResult]]:
    """One UpsertPoints call per ``batch_size`` points. All points are parsed
    before the first call, so a malformed row sends nothing. An empty input gives
    one empty call, whose answer carries the collection's version.

    Raises:
        InvalidArgument: a malformed row (see :func:`parse_points`) or batch_size < 1.
    """
    _check_batch_size(batch_size)
    parsed = parse_points(points)
    parent = convert.collection_name(name)
    for start in range(0, max(len(parsed), 1), batch_size):
        request = point_pb2.UpsertPointsRequest(
            parent=parent,
            points=[convert.point_to_proto(p) for p in parsed[start : start + batch_size]],
        )
        yield Call("points.UpsertPoints", request, _upsert_result, index_offset=start)


def _upsert_result(r: point_pb2.UpsertPointsResponse) -> types.UpsertResult:
    return types.UpsertResult(
        upserted=r.upserted_count, embedded=r.embedded_count, version=r.collection_version
    )


def add_results(a: types.UpsertResult | None, b: types.UpsertResult) -> types.UpsertResult:
    """Two consecutive batches' results as one (the later version)."""
    if a is None:
        return b
    return types.UpsertResult(
        upserted=a.upserted + b.upserted,
        embedded=a.embedded + b.embedded,
        version=max(a.version, b.version),
    )


def get_points(
    name: str, ids: Sequence[str], include_vectors: bool
) -> Call[tuple[list[types.Point], list[str]]]:
    request = point_pb2.GetPointsRequest(
        parent=convert.collection_name(name), ids=list(ids), include_vectors=include_vectors
    )
    return Call(
        "points.GetPoints",
        request,
        lambda r: ([convert.point_from_proto(p) for p in r.points], list(r.missing_ids)),
    )


def delete_points(name: str, ids: Sequence[str]) -> Call[int]:
    request = point_pb2.DeletePointsRequest(parent=convert.collection_name(name), ids=list(ids))
    return Call("points.DeletePoints", request, lambda r: r.deleted_count)


def search(
    name: str,
    *,
    vector,
    text: str | None,
    top_k: int,
    start: Time,
    end: Time,
    series: str,
    payload_filter: Mapping | None,
    include_vectors: bool,
) -> Call[list[types.ScoredPoint]]:
    _exactly_one("query", vector=vector, text=text)
    request = point_pb2.SearchPointsRequest(
        parent=convert.collection_name(name),
        top_k=top_k,
        time_range=_time_range(start, end),
        series=series,
        include_vectors=include_vectors,
    )
    if vector is not None:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    else:
        request.text = text
    if payload_filter:
        request.payload_filter.CopyFrom(convert.dict_to_struct(payload_filter))
    return Call(
        "points.SearchPoints",
        request,
        lambda r: [
            types.ScoredPoint(convert.point_from_proto(h.point), h.distance) for h in r.results
        ],
    )


def probe_flow(name: str, *, vector, text, point_id) -> Call[types.FlowProbe]:
    request = flow_pb2.ProbeFlowRequest(
        parent=convert.collection_name(name), start=_flow_start(vector, text, point_id)
    )
    return Call("flow.ProbeFlow", request, convert.probe_from_proto)


def _flow_start(vector, text, point_id) -> flow_pb2.FlowStart:
    _exactly_one("start", vector=vector, text=text, point_id=point_id)
    return convert.flow_start_to_proto(vector=vector, text=text, point_id=point_id)


def find_attractors(
    name: str,
    *,
    seeds: int,
    representatives: int,
    include_vectors: bool,
    seed: int,
    bootstrap: int | None,
) -> Call[types.AttractorSet]:
    request = flow_pb2.FindAttractorsRequest(
        parent=convert.collection_name(name),
        seeds=seeds,
        representatives=representatives,
        include_vectors=include_vectors,
        seed=seed,
        # 0 asks the server for its own ensemble.
        bootstrap=bootstrap or 0,
    )
    return Call(
        "flow.FindAttractors",
        request,
        lambda r: types.AttractorSet(
            tuple(convert.attractor_from_proto(a) for a in r.attractors),
            r.collection_version,
            r.bootstrap,
        ),
    )


#: ``flow_chapters(method=...)`` -> DetectChaptersRequest.method.
CHANGE_POINT_METHODS = {
    "offline": flow_pb2.CHANGE_POINT_METHOD_OFFLINE,
    "online": flow_pb2.CHANGE_POINT_METHOD_ONLINE,
}


def detect_chapters(
    name: str,
    *,
    series: str,
    start: Time,
    end: Time,
    min_size: int,
    penalty: float | None,
    representatives: int,
    method: str,
) -> Call[types.ChapterSet]:
    """DetectChapters. Raises InvalidArgument for an unknown ``method``."""
    request = flow_pb2.DetectChaptersRequest(
        parent=convert.collection_name(name),
        series=series,
        time_range=_time_range(start, end),
        min_size=min_size,
        # 0 asks the server for its robust-noise penalty.
        penalty=penalty or 0.0,
        representatives=representatives,
        method=_choice(method, CHANGE_POINT_METHODS, "method"),
    )
    return Call(
        "flow.DetectChapters",
        request,
        lambda r: types.ChapterSet(
            tuple(convert.chapter_from_proto(c) for c in r.chapters), r.collection_version
        ),
    )


# --- monitoring and behaviours (results are the driftd.v1 response messages) ----

EVENT_TYPES = {
    "points_upserted": monitor_pb2.EVENT_TYPE_POINTS_UPSERTED,
    "points_deleted": monitor_pb2.EVENT_TYPE_POINTS_DELETED,
    "chapter_detected": monitor_pb2.EVENT_TYPE_CHAPTER_DETECTED,
    "drift_alarm": monitor_pb2.EVENT_TYPE_DRIFT_ALARM,
}
INTENTS = {
    name.removeprefix("BEHAVIOR_INTENT_").lower(): value
    for name, value in behavior_pb2.BehaviorIntent.items()
    if value
}
POLARITIES = {
    "positive": behavior_pb2.BEHAVIOR_POLARITY_POSITIVE,
    "negative": behavior_pb2.BEHAVIOR_POLARITY_NEGATIVE,
}
BEHAVIOR_STATES = {
    "": behavior_pb2.BEHAVIOR_STATE_UNSPECIFIED,
    "active": behavior_pb2.BEHAVIOR_STATE_ACTIVE,
    "superseded": behavior_pb2.BEHAVIOR_STATE_SUPERSEDED,
}


def _window(bounds: tuple[Time, Time], series: str, field: str) -> monitor_pb2.Window:
    start, end = bounds
    return monitor_pb2.Window(
        time_range=convert.bounds_to_time_range(
            _time_arg(start, f"{field}.time_range.start_time"),
            _time_arg(end, f"{field}.time_range.end_time"),
        ),
        series=series,
    )


def _choice(value: str, options: Mapping[str, int], field: str) -> int:
    if value not in options:
        raise InvalidArgument(
            f"{field} must be one of {', '.join(o for o in options if o)}, got {value!r}",
            field_violations=[FieldViolation(field, "unknown value")],
        )
    return options[value]


def compare_windows(
    name: str,
    window_a: tuple[Time, Time],
    window_b: tuple[Time, Time],
    *,
    series: str,
    series_b: str | None,
    permutations: int,
    alpha: float,
    max_points_per_window: int,
    seed: int,
) -> Call[monitor_pb2.CompareWindowsResponse]:
    request = monitor_pb2.CompareWindowsRequest(
        parent=convert.collection_name(name),
        window_a=_window(window_a, series, "window_a"),
        window_b=_window(window_b, series if series_b is None else series_b, "window_b"),
        permutations=permutations,
        alpha=alpha,
        max_points_per_window=max_points_per_window,
        seed=seed,
    )
    return Call("monitor.CompareWindows", request, lambda r: r)


def embedding_health(
    name: str,
    *,
    start: Time,
    end: Time,
    series: str,
    max_outliers: int,
    duplicate_similarity: float,
    max_points: int,
    seed: int,
) -> Call[monitor_pb2.EmbeddingHealthResponse]:
    request = monitor_pb2.EmbeddingHealthRequest(
        parent=convert.collection_name(name),
        window=_window((start, end), series, "window"),
        max_outliers=max_outliers,
        duplicate_similarity=duplicate_similarity,
        max_points=max_points,
        seed=seed,
    )
    return Call("monitor.EmbeddingHealth", request, lambda r: r)


def _rule_name(name: str, rule_id: str) -> str:
    return f"{convert.collection_name(name)}/driftRules/{rule_id}"


def create_drift_rule(
    name: str,
    *,
    window_seconds: float,
    rule_id: str,
    p_value_threshold: float,
    series: str,
    min_points: int,
) -> Call[monitor_pb2.DriftRule]:
    rule = monitor_pb2.DriftRule(
        p_value_threshold=p_value_threshold, series=series, min_points=min_points
    )
    rule.window.FromTimedelta(timedelta(seconds=window_seconds))
    request = monitor_pb2.CreateDriftRuleRequest(
        parent=convert.collection_name(name), drift_rule_id=rule_id, drift_rule=rule
    )
    return Call("monitor.CreateDriftRule", request, lambda r: r)


def get_drift_rule(name: str, rule_id: str) -> Call[monitor_pb2.DriftRule]:
    request = monitor_pb2.GetDriftRuleRequest(name=_rule_name(name, rule_id))
    return Call("monitor.GetDriftRule", request, lambda r: r)


def list_drift_rules_page(
    name: str, page_size: int, page_token: str
) -> Call[tuple[list[monitor_pb2.DriftRule], str]]:
    request = monitor_pb2.ListDriftRulesRequest(
        parent=convert.collection_name(name), page_size=page_size, page_token=page_token
    )
    return Call(
        "monitor.ListDriftRules", request, lambda r: (list(r.drift_rules), r.next_page_token)
    )


def delete_drift_rule(name: str, rule_id: str) -> Call[None]:
    request = monitor_pb2.DeleteDriftRuleRequest(name=_rule_name(name, rule_id))
    return Call("monitor.DeleteDriftRule", request, lambda _: None)


def watch_request(
    name: str, *, after_sequence: int, event_types: Sequence[str]
) -> monitor_pb2.WatchCollectionRequest:
    return monitor_pb2.WatchCollectionRequest(
        parent=convert.collection_name(name),
        after_sequence=after_sequence,
        event_types=[
            _choice(t, EVENT_TYPES, f"event_types[{i}]") for i, t in enumerate(event_types)
        ],
    )


def read_event(
    r: monitor_pb2.WatchCollectionResponse,
) -> tuple[monitor_pb2.WatchCollectionResponse]:
    return (r,)


def _policy(policy: Mapping[str, float] | None) -> behavior_pb2.BehaviorPolicy:
    try:
        return behavior_pb2.BehaviorPolicy(**(policy or {}))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"policy: {exc}", field_violations=[FieldViolation("policy", str(exc))]
        ) from exc


def _candidate(i: int, c: Mapping[str, Any]) -> behavior_pb2.BehaviorCandidate:
    at = f"candidates[{i}]"
    msg = behavior_pb2.BehaviorCandidate(
        intent=_choice(c.get("intent", ""), INTENTS, f"{at}.intent"),
        target=c.get("target", ""),
        context=c.get("context", ""),
        polarity=_choice(c.get("polarity", "positive"), POLARITIES, f"{at}.polarity"),
        credibility=c.get("credibility", 0.0),
    )
    if c.get("vector") is not None:
        vector = _as_vector(c["vector"])
        if vector is None:
            raise InvalidArgument(
                f"{at}.vector must be a flat list of numbers",
                field_violations=[FieldViolation(f"{at}.vector", "a flat list of numbers")],
            )
        msg.vector.values.extend(vector.tolist())
    elif c.get("text"):
        msg.text = c["text"]
    return msg


def process_behaviors(
    user_id: str,
    candidates: Sequence[Mapping[str, Any]],
    *,
    time: Time,
    policy: Mapping[str, float] | None,
) -> Call[behavior_pb2.ProcessBehaviorsResponse]:
    request = behavior_pb2.ProcessBehaviorsRequest(
        parent=f"users/{user_id}",
        candidates=[_candidate(i, c) for i, c in enumerate(candidates)],
        policy=_policy(policy),
    )
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    return Call("behaviors.ProcessBehaviors", request, lambda r: r)


def list_behaviors_page(
    user_id: str,
    *,
    state: str,
    time: Time,
    policy: Mapping[str, float] | None,
    page_size: int,
    page_token: str,
) -> Call[tuple[list[behavior_pb2.Behavior], str]]:
    request = behavior_pb2.ListBehaviorsRequest(
        parent=f"users/{user_id}",
        state=_choice(state, BEHAVIOR_STATES, "state"),
        policy=_policy(policy),
        page_size=page_size,
        page_token=page_token,
    )
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    return Call(
        "behaviors.ListBehaviors", request, lambda r: (list(r.behaviors), r.next_page_token)
    )


# --- conversation routing --------------------------------------------------------


def _conversation_name(conversation: str) -> str:
    """A conversation id or resource name as the resource name."""
    if conversation.startswith("conversations/"):
        return conversation
    return routing_convert.conversation_name(conversation)


def _branch_name(conversation: str, branch: str) -> str:
    """A branch id ("b2") of ``conversation``, or a branch resource name, as the
    resource name."""
    if branch.startswith("conversations/"):
        return branch
    return f"{_conversation_name(conversation)}/branches/{branch}"


def route_message(
    conversation: str,
    content: str,
    *,
    role: str,
    vector,
    time: Time,
    message_id: str,
    config: Mapping[str, float | int | bool] | None,
) -> Call[routing_types.RouteResult]:
    """RouteMessage. Raises InvalidArgument for an unknown role (INVALID_ROLE), a
    vector that is not a flat list of numbers, or an unknown config field."""
    if role not in routing_convert.ROLE_TO_PROTO:
        raise InvalidArgument(
            f"role must be one of {', '.join(routing_convert.ROLE_TO_PROTO)}, got {role!r}",
            reason="INVALID_ROLE",
            field_violations=[FieldViolation("role", "user or assistant")],
        )
    request = routing_pb2.RouteMessageRequest(
        conversation=_conversation_name(conversation),
        role=routing_convert.ROLE_TO_PROTO[role],
        content=content,
        message_id=message_id,
    )
    if vector is not None:
        values = _as_vector(vector)
        if values is None:
            raise InvalidArgument(
                "vector must be a flat list of numbers",
                field_violations=[FieldViolation("vector", "a flat list of numbers")],
            )
        request.vector.extend(values.tolist())
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    if config:
        request.config.CopyFrom(routing_convert.config_to_proto(config))
    return Call("routing.RouteMessage", request, routing_convert.route_from_proto)


def list_branches_page(
    conversation: str, page_size: int, page_token: str
) -> Call[routing_types.BranchList]:
    request = routing_pb2.ListBranchesRequest(
        parent=_conversation_name(conversation), page_size=page_size, page_token=page_token
    )
    return Call("routing.ListBranches", request, routing_convert.branch_list_from_proto)


def branch_context(
    conversation: str, branch: str, max_messages: int
) -> Call[routing_types.BranchContext]:
    request = routing_pb2.GetBranchContextRequest(
        name=_branch_name(conversation, branch), max_messages=max_messages
    )
    return Call("routing.GetBranchContext", request, routing_convert.context_from_proto)


def extract_facts(conversation: str, branch: str) -> Call[routing_types.FactsResult]:
    request = routing_pb2.ExtractFactsRequest(name=_branch_name(conversation, branch))
    return Call("routing.ExtractFacts", request, routing_convert.facts_from_proto)


def health_check(service: str) -> Call[str]:
    health_pb2, _ = health_modules()
    return Call(
        "health.Check",
        health_pb2.HealthCheckRequest(service=service),
        lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
    )


# --- streaming RPCs ------------------------------------------------------------


@dataclass(frozen=True)
class UpsertAck:
    """The server's acknowledgement of one streamed batch, sent once it is durable.

    ``errors`` index the batch's points (0-based) and name an ErrorReason;
    ``version`` is the collection's version after the batch.
    """

    sequence: int
    accepted: int
    rejected: int
    errors: tuple[types.PointError, ...]
    version: int


def read_ack(r: point_pb2.StreamUpsertPointsResponse) -> tuple[UpsertAck]:
    return (
        UpsertAck(
            sequence=r.sequence,
            accepted=r.accepted_count,
            rejected=r.rejected_count,
            errors=tuple(convert.point_error_from_proto(e) for e in r.errors),
            version=r.collection_version,
        ),
    )


def read_trajectory(r: point_pb2.GetTrajectoryResponse) -> list[types.Point]:
    return [convert.point_from_proto(p) for p in r.points]


def read_step(r: flow_pb2.SimulatePathsResponse) -> tuple[types.SimulationStep]:
    return (convert.step_from_proto(r),)


def trajectory_request(
    name: str, *, start: Time, end: Time, series: str, include_vectors: bool
) -> point_pb2.GetTrajectoryRequest:
    return point_pb2.GetTrajectoryRequest(
        parent=convert.collection_name(name),
        time_range=_time_range(start, end),
        series=series,
        include_vectors=include_vectors,
    )


def simulate_request(
    name: str,
    *,
    vector,
    text: str | None,
    point_id: str | None,
    steps: int,
    dt_seconds: float | None,
    paths: int,
    stop_outside_support: bool,
    include_vectors: bool,
    seed: int,
    band_coverage: float,
) -> flow_pb2.SimulatePathsRequest:
    request = flow_pb2.SimulatePathsRequest(
        parent=convert.collection_name(name),
        start=_flow_start(vector, text, point_id),
        steps=steps,
        paths=paths,
        stop_outside_support=stop_outside_support,
        include_vectors=include_vectors,
        seed=seed,
        band_coverage=band_coverage,
    )
    if dt_seconds is not None:
        request.step_duration.FromTimedelta(timedelta(seconds=dt_seconds))
    return request


@dataclass
class StreamUpsertRequests:
    """The requests of one StreamUpsertPoints stream: ``points`` parsed and cut
    into batches of ``batch_size``, numbered from ``start_sequence``.

    gRPC consumes request iterators on its own thread (or task) and turns an
    exception there into a bare CANCELLED, so a bad row or a failing ``points``
    iterator instead ends the stream cleanly (batches already sent are still
    acknowledged) and is kept in ``error`` for the reader to raise afterwards.
    Field paths of a bad row count points from the start of the stream.
    """

    name: str
    points: Iterable[PointLike] | AsyncIterable[PointLike]
    batch_size: int
    start_sequence: int = 0
    error: Exception | None = field(default=None, init=False)
    _sent: int = field(default=0, init=False)
    _sequence: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        _check_batch_size(self.batch_size)
        self._sequence = self.start_sequence

    def __iter__(self) -> Iterator[point_pb2.StreamUpsertPointsRequest]:
        batch: list[PointLike] = []
        try:
            for raw in self.points:  # type: ignore[union-attr]
                batch.append(raw)
                if len(batch) == self.batch_size:
                    yield self._request(batch)
                    batch = []
            if batch:
                yield self._request(batch)
        except Exception as exc:
            self.error = exc

    async def __aiter__(self):
        """As ``__iter__``; ``points`` may be a sync or an async iterable."""
        if not isinstance(self.points, AsyncIterable):
            for request in self:
                yield request
            return
        batch: list[PointLike] = []
        try:
            async for raw in self.points:
                batch.append(raw)
                if len(batch) == self.batch_size:
                    yield self._request(batch)
                    batch = []
            if batch:
                yield self._request(batch)
        except Exception as exc:
            self.error = exc

    def _request(self, batch: list[PointLike]) -> point_pb2.StreamUpsertPointsRequest:
        parsed = parse_points(batch, first_index=self._sent)
        request = point_pb2.StreamUpsertPointsRequest(
            parent=convert.collection_name(self.name),
            sequence=self._sequence,
            points=[convert.point_to_proto(p) for p in parsed],
        )
        self._sent += len(batch)
        self._sequence += 1
        return request

    def raise_error(self) -> None:
        """Raises what ended the requests early, if anything did."""
        if self.error is not None:
            raise self.error


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidArgument(
            f"batch_size must be at least 1, got {batch_size}",
            reason="LIMIT_EXCEEDED",
            field_violations=[FieldViolation("batch_size", "must be at least 1")],
        )


# --- the resuming stream writer ------------------------------------------------

#: Batches a writer sends ahead of its acks: the server reads a batch only after
#: acknowledging the previous one, so two keep it busy; more would only hold more
#: points in memory.
UNACKED_BATCHES = 2


@dataclass
class WriteProgress:
    """What a stream writer has done so far, updated as acks arrive.

    Point indexes count the points the writer took, in order (a malformed row
    that ``add`` refused is not one of them). Batches are acknowledged in order,
    so the first ``acked`` points are durable or rejected: after a writer failed,
    resume with the points from index ``acked`` on.

    Attributes:
        added: points taken by ``add``/``extend``.
        acked: points of acknowledged batches (accepted + rejected).
        accepted: points written.
        rejected: points refused by the server; why in ``errors``.
        errors: the refused points, ``index`` counted as above.
        batches: acknowledged batches.
        reconnects: times the stream was re-opened after UNAVAILABLE.
        version: the collection's version after the last acknowledged batch.
    """

    added: int = 0
    acked: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[types.PointError] = field(default_factory=list)
    batches: int = 0
    reconnects: int = 0
    version: int = 0


class WriterState:
    """The I/O-free part of the stream writers (sync and asyncio): batching, the
    batches not yet acknowledged, ack bookkeeping and reconnect decisions.

    A re-sent batch keeps its sequence number, so a re-opened stream starts at the
    first unacknowledged batch and its sequence still strictly increases. The
    writer reconnects, with the backoff of ``retries``, for up to ``timeout``
    seconds after the stream first broke without an ack since (None: no limit);
    as for unary calls, that is the budget for a server restart.
    """

    def __init__(
        self,
        name: str,
        batch_size: int,
        retries: RetryPolicy | None,
        timeout: float | None,
        on_ack: Callable[[UpsertAck], object] | None,
    ) -> None:
        _check_batch_size(batch_size)
        self.parent = convert.collection_name(name)
        self.batch_size = batch_size
        self.retries = retries
        self.timeout = timeout
        self.on_ack = on_ack
        self.progress = WriteProgress()
        #: (index of the batch's first point, the batch), oldest first.
        self.unacked: deque[tuple[int, point_pb2.StreamUpsertPointsRequest]] = deque()
        self._points: list[point_pb2.Point] = []
        self._sequence = 0
        self._failures = 0  # since the last ack
        self._failing_since: float | None = None

    def add(self, raw: PointLike) -> point_pb2.StreamUpsertPointsRequest | None:
        """Parses one point; returns the batch it completes, to be sent.

        Raises:
            InvalidArgument: a malformed point (``points[i]``, i the index it would
                have had); it is not taken.
        """
        point = parse_point(raw, self.progress.added)
        self._points.append(convert.point_to_proto(point))
        self.progress.added += 1
        return self.cut() if len(self._points) == self.batch_size else None

    def cut(self) -> point_pb2.StreamUpsertPointsRequest | None:
        """The points not yet in a batch as the next batch, kept until it is
        acknowledged; None when there are none."""
        if not self._points:
            return None
        batch = point_pb2.StreamUpsertPointsRequest(
            parent=self.parent, sequence=self._sequence, points=self._points
        )
        self.unacked.append((self.progress.added - len(self._points), batch))
        self._points = []
        self._sequence += 1
        return batch

    @property
    def full(self) -> bool:
        """Whether the writer must wait for an ack before it goes on."""
        return len(self.unacked) > UNACKED_BATCHES

    def ack(self, response: point_pb2.StreamUpsertPointsResponse) -> None:
        """Records the ack of the oldest unacknowledged batch, then calls ``on_ack``.

        Raises:
            Internal: the ack is not for that batch.
        """
        (ack,) = read_ack(response)
        expected = self.unacked[0][1].sequence if self.unacked else None
        if ack.sequence != expected:
            raise Internal(
                f"the server acknowledged batch {ack.sequence}, expected {expected}",
                metadata={"sequence": ack.sequence},
            )
        first, batch = self.unacked.popleft()
        progress = self.progress
        progress.acked += len(batch.points)
        progress.accepted += ack.accepted
        progress.rejected += ack.rejected
        progress.errors.extend(replace(e, index=first + e.index) for e in ack.errors)
        progress.batches += 1
        progress.version = ack.version
        self._failures, self._failing_since = 0, None
        if self.on_ack is not None:
            self.on_ack(ack)

    def ended_early(self) -> Internal:
        """The error for a stream the server ended before acknowledging every batch."""
        return Internal(
            f"the server ended the stream with {len(self.unacked)} batch(es) unacknowledged"
        )

    def retry_delay(self, err: grpc.RpcError, *, send_failed: bool = False) -> float:
        """Seconds to wait before re-opening a stream that failed with ``err``.

        ``send_failed``: a write on this stream failed in the transport. grpc.aio
        then ends the call with a client-side INTERNAL ("Internal error from Core")
        rather than UNAVAILABLE, although the connection is what broke.

        Raises:
            DriftdError: the driftd error of ``err`` (:func:`from_rpc_error`) unless
                it is UNAVAILABLE, retries are on and the reconnect budget is left.
        """
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failures += 1
        left = self.time_left()
        code = err.code() if callable(getattr(err, "code", None)) else None
        unavailable = code == grpc.StatusCode.UNAVAILABLE or (
            send_failed and code == grpc.StatusCode.INTERNAL
        )
        if not unavailable or self.retries is None or (left is not None and left <= 0):
            raise from_rpc_error(err) from err
        self.progress.reconnects += 1
        delay = self.retries.backoff(self._failures)
        return delay if left is None else min(delay, left)

    def time_left(self) -> float | None:
        """Seconds left of the reconnect budget; None when unlimited."""
        if self.timeout is None or self._failing_since is None:
            return self.timeout
        return self.timeout - (time.monotonic() - self._failing_since)

    def not_back(self) -> Unavailable:
        """The error for a server that did not accept connections within the budget."""
        return Unavailable(
            f"the server did not come back within {self.timeout} s; "
            f"{len(self.unacked)} batch(es) unacknowledged",
            metadata={"acked": self.progress.acked},
        )
