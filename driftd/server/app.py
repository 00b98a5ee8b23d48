"""The driftd gRPC server: wiring, health, reflection, metrics and lifecycle.

Startup: bind, start serving (health answers NOT_SERVING), open the engine,
then mark every service SERVING. SIGTERM/SIGINT: NOT_SERVING, drain in-flight
RPCs for ``grace_seconds``, close the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any, cast

import grpc
import prometheus_client
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from driftd import metrics, tracing
from driftd.config import Settings
from driftd.engine.root import Driftd
from driftd.errors import Unavailable
from driftd.server import logs, readiness
from driftd.server import reflection as commented_reflection
from driftd.server.behavior_service import BehaviorServiceServicer
from driftd.server.cluster import Cluster
from driftd.server.collection_service import CollectionServiceServicer
from driftd.server.flow_service import FlowServiceServicer
from driftd.server.forwarding import ForwardingInterceptor
from driftd.server.interceptors import MetricsInterceptor
from driftd.server.monitor_service import MonitorServiceServicer
from driftd.server.point_service import PointServiceServicer
from driftd.server.requests import RequestCheckInterceptor
from driftd.server.routing_service import RoutingServiceServicer
from driftd.server.security import ConfigError
from driftd.server.security import build as build_security
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

logger = logging.getLogger(__name__)

#: The driftd services, as health checks and reflection name them.
SERVICE_NAMES = (
    collection_pb2.DESCRIPTOR.services_by_name["CollectionService"].full_name,
    point_pb2.DESCRIPTOR.services_by_name["PointService"].full_name,
    flow_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name,
    routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name,
    monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
    behavior_pb2.DESCRIPTOR.services_by_name["BehaviorService"].full_name,
)


class BindError(OSError):
    """The gRPC address or the metrics port cannot be listened on."""


class _Gate:
    """Holds the composition root while it is open (None before and after)."""

    def __init__(self) -> None:
        self.root: Driftd | None = None


class _Late:
    """Stands in for one part of the root (``root.{part}``) in a servicer:
    forwards to it while the root is open and raises Unavailable (NOT_SERVING)
    before and after, so the servicers can be registered before the server starts
    and storage opens."""

    def __init__(self, gate: _Gate, part: str) -> None:
        self._gate = gate
        self._part = part

    def __getattr__(self, name: str) -> Any:
        root = self._gate.root
        if root is None:
            raise Unavailable("driftd is not serving: storage is not open (starting or stopping)")
        return getattr(getattr(root, self._part), name)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server: explicit message limits (grpc answers
    RESOURCE_EXHAUSTED above them), keepalive that tolerates idle client pings,
    and no SO_REUSEPORT so a second server on the same port fails to bind."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


def _host(address: str) -> str:
    """The host part of ``host:port`` (``[::]:50051`` -> ``::``); "" when absent."""
    return address.rpartition(":")[0].strip("[]")


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Runs the gRPC server until SIGTERM/SIGINT (or cancellation), then drains it.

    Health (service "" and each driftd service) is NOT_SERVING until the engine
    is open, then SERVING; driftd RPCs meanwhile fail with UNAVAILABLE. ``ready``
    is set once SERVING. The metrics endpoint listens on ``metrics_address``,
    by default the gRPC address's host. The security layer
    (``driftd.server.security``) checks every RPC but health.

    Raises:
        BindError: the address or the metrics port cannot be listened on.
        ConfigError: unsafe or invalid security settings (e.g. a non-loopback
            address with neither API keys nor TLS, without ``insecure``).
        Exception: whatever ``Driftd.open`` raises (storage cannot open).
    """
    gate = _Gate()
    # Typed as the parts they stand in for: the servicers only call their methods.
    db, monitor, behaviors, routing = (
        cast(Any, _Late(gate, part)) for part in ("db", "monitor", "behaviors", "routing")
    )
    security = build_security(settings, db, _host(settings.address))
    metrics.configure(collection_labels=settings.metrics_collection_labels)
    health_servicer = health.aio.HealthServicer()
    # Keys owned by other replicas are forwarded after metrics (counted here too),
    # the security checks (the owner checks the forwarded credentials again) and the
    # request checks (a malformed request is refused where it lands).
    # Under TLS, peers are dialled by address and checked against
    # peer_tls_server_name (their certificates name the Service, not the pod).
    peer_name = settings.peer_tls_server_name
    cluster = Cluster(
        settings.own_address,
        settings.peer_list,
        channel_options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            *([("grpc.ssl_target_name_override", peer_name)] if peer_name else []),
        ],
        credentials=security.peers,
    )
    server = grpc.aio.server(
        interceptors=[
            MetricsInterceptor(logs.access_level(settings.access_log)),
            security.interceptor,
            RequestCheckInterceptor(),
            ForwardingInterceptor(cluster),
        ],
        options=server_options(settings),
    )
    collection_pb2_grpc.add_CollectionServiceServicer_to_server(
        CollectionServiceServicer(db, monitor, cluster), server
    )
    point_pb2_grpc.add_PointServiceServicer_to_server(PointServiceServicer(db), server)
    # The monitor runs the online chapter detectors that DetectChapters(ONLINE) reads.
    flow_pb2_grpc.add_FlowServiceServicer_to_server(FlowServiceServicer(db, monitor), server)
    routing_pb2_grpc.add_RoutingServiceServicer_to_server(RoutingServiceServicer(routing), server)
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorServiceServicer(monitor), server)
    behavior_pb2_grpc.add_BehaviorServiceServicer_to_server(
        BehaviorServiceServicer(behaviors), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    commented_reflection.enable(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    for service in ("", *SERVICE_NAMES):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    # Health alone on a plaintext port: kubelet's gRPC probes cannot do TLS.
    health_only = None
    if settings.health_address:
        health_only = grpc.aio.server(options=server_options(settings))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_only)
    try:
        security.add_port(server, settings.address)
        if health_only is not None:
            health_only.add_insecure_port(settings.health_address)
    except RuntimeError as exc:
        raise BindError(
            f"cannot listen on {settings.address!r} or {settings.health_address!r}: "
            "the port is in use or the address is invalid"
        ) from exc
    metrics_http = None
    if settings.metrics_port > 0:
        try:
            metrics_http, _ = prometheus_client.start_http_server(
                settings.metrics_port,
                addr=settings.metrics_address or _host(settings.address) or "0.0.0.0",
            )
        except OSError as exc:
            raise BindError(f"cannot serve metrics on port {settings.metrics_port}: {exc}") from exc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread.
    signals = (
        (signal.SIGTERM, signal.SIGINT)
        if threading.current_thread() is threading.main_thread()
        else ()
    )
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)

    root = probe = None
    try:
        await server.start()
        if health_only is not None:
            await health_only.start()
        logger.info(
            "driftd listening on %s (%s; storage: %s; metrics: %s)",
            settings.address,
            "TLS" if security.tls else "plaintext",
            settings.chroma_url or os.path.abspath(settings.chroma_path),
            f"port {settings.metrics_port}" if metrics_http else "off",
        )
        root = gate.root = await Driftd.open(settings)
        if cluster.enabled:
            opened = root
            cluster.add_listener(  # each capability drops the keys it no longer owns
                lambda: opened.retain(
                    collections=lambda c: cluster.owns("collections/" + c),
                    conversations=lambda c: cluster.owns("conversations/" + c),
                )
            )
            await cluster.start()
        for service in ("", *SERVICE_NAMES):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        probe = asyncio.create_task(
            readiness.follow_storage(
                root, health_servicer, SERVICE_NAMES, settings.readiness_interval_seconds
            )
        )
        logger.info("driftd ready")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        logger.info("driftd stopping: draining RPCs for up to %gs", settings.grace_seconds)
        if probe is not None:
            probe.cancel()
        await health_servicer.enter_graceful_shutdown()
        if root is not None:
            await root.stop_watches()  # watch streams would never drain
        await server.stop(settings.grace_seconds)
        if health_only is not None:
            await health_only.stop(None)
        await cluster.stop()
        gate.root = None
        if root is not None:
            await root.aclose()
        if metrics_http is not None:
            # shutdown() blocks until the serving thread's poll loop notices.
            await asyncio.to_thread(metrics_http.shutdown)
            metrics_http.server_close()
        for sig in signals:
            loop.remove_signal_handler(sig)
        logger.info("driftd stopped")


def run(settings: Settings) -> None:
    """Configures logging and tracing (:mod:`driftd.server.logs`,
    :func:`driftd.tracing.configure`) and runs :func:`serve` until SIGTERM/SIGINT;
    returns normally (exit status 0) after a graceful stop, with the spans and
    log lines flushed.

    Raises:
        SystemExit: with a one-line message when the address or port is taken or
            the security settings are refused.
    """
    stop_logging = logs.configure(settings.log_level, settings.log_format)
    stop_tracing = tracing.configure()
    try:
        asyncio.run(serve(settings))
    except (BindError, ConfigError) as exc:
        raise SystemExit(f"driftd: {exc}") from None
    finally:
        if stop_tracing is not None:
            stop_tracing()
        stop_logging()
