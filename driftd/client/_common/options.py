"""Client settings: the default target, the retry policy (gRPC service config),
channel options, TLS and the API key (:func:`channel_security`), and the stubs
of every service."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

from driftd import types
from driftd.errors import (
    FieldViolation,
    InvalidArgument,
)
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


def parse_target(
    target: str, credentials: grpc.ChannelCredentials | None
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The gRPC target and credentials for what users write as a server address.

    ``http://host:port`` is plaintext ``host:port``; ``https://host:port`` is TLS
    with the system's root certificates unless ``credentials`` are given (port
    80/443 when absent); a trailing ``/`` is dropped. Anything else is a gRPC
    target as is (``host:port``, ``dns:///host:port``, ``unix:path``).
    """
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return target, credentials
    tls = scheme.lower() == "https"
    host = rest.rstrip("/")
    if not host.rpartition(":")[2].isdigit() or host.endswith("]"):
        host = f"{host}:{443 if tls else 80}"
    if tls and credentials is None:
        credentials = grpc.ssl_channel_credentials()
    return host, credentials


#: Channel options applied unless the caller overrides them. gRPC's 4 MiB default
#: receive limit is too small for vectors (grpc/grpc#15738); 64 MiB matches the
#: server's default ``max_message_bytes``.
DEFAULT_OPTIONS: dict[str, Any] = {
    "grpc.max_send_message_length": 64 * 1024 * 1024,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}

Time = datetime | str | int | float | None
PointLike = types.Point | Mapping[str, Any]


def _retried_by_transport(method: MethodDescriptor) -> bool:
    """Whether gRPC may send ``method`` again after UNAVAILABLE: the proto marks
    its ``idempotency_level`` NO_SIDE_EFFECTS or IDEMPOTENT (each RPC's decision
    and its reason are in proto/driftd/v1/*.proto), and the client sends one
    request message. Calls that stream requests are never re-sent by gRPC: the
    stream writers resume StreamUpsertPoints after the last acknowledged batch
    themselves, and ImportCollection is not idempotent."""
    level = method.GetOptions().idempotency_level
    return level != MethodOptions.IDEMPOTENCY_UNKNOWN and not method.client_streaming


#: The driftd.v1 methods that gRPC may send again after UNAVAILABLE, read from
#: the generated descriptors at import (:func:`_retried_by_transport`): the reads,
#: and the writes whose repetition changes nothing (UpsertPoints, DeletePoints,
#: ExtractFacts). Every other RPC is sent once, as is grpc.health.v1.Health/Check
#: (a probe must see the outage).
_RETRIED: tuple[MethodDescriptor, ...] = tuple(
    method
    for module in (collection_pb2, point_pb2, flow_pb2, monitor_pb2, behavior_pb2, routing_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if _retried_by_transport(method)
)
#: Their full names, "/driftd.v1.PointService/GetPoints" (as the Go client's
#: RetryableMethods and the TypeScript client's RETRYABLE_METHODS name them).
RETRYABLE_METHODS = frozenset(f"/{m.containing_service.full_name}/{m.name}" for m in _RETRIED)


@dataclass(frozen=True)
class RetryPolicy:
    """How a client rides out a server that restarts, drains or is not up yet.

    It becomes the channel's gRPC service config for :data:`RETRYABLE_METHODS`
    (the RPCs the proto marks idempotent):
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

        def names(server_streaming: bool) -> list[dict[str, str]]:
            return [
                {"service": m.containing_service.full_name, "method": m.name}
                for m in _RETRIED
                if m.server_streaming == server_streaming
            ]

        # Server streams have no deadline, so they do not wait for a connection
        # (that could be forever); gRPC re-sends them only until the response
        # starts, a later failure reaches the caller.
        method_config = [
            {"name": names(False), "waitForReady": True, "retryPolicy": retry_policy},
            {"name": names(True), "retryPolicy": retry_policy},
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
) -> tuple[str, grpc.ChannelCredentials | None, dict[str, Any], tuple[tuple[str, str], ...]]:
    """The gRPC target, channel credentials, extra channel options and per-call
    metadata of a client: the one place where both the blocking and the asyncio
    client get TLS and API keys. ``target`` may be an ``http://`` / ``https://``
    address (:func:`parse_target`); ``https://`` means TLS with the system's roots
    unless ``tls`` or ``credentials`` say otherwise.

    The API key travels as ``authorization: Bearer <key>`` metadata on every
    call (:class:`Stubs` adds it), only over TLS or to a loopback target: a key
    sent in plaintext across a network is as good as published.

    Raises:
        InvalidArgument: both ``tls`` and ``credentials``; an API key for a
            non-loopback target without TLS.
    """
    target, scheme_credentials = parse_target(target, credentials)
    if tls is None or tls is False:
        credentials = scheme_credentials
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
    return target, credentials, options, metadata


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
