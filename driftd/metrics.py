"""Prometheus metrics of the driftd process (served on the metrics sidecar port).

The gRPC ones follow the names of go-grpc-prometheus / py-grpc-prometheus so
existing dashboards work; driftd's own are prefixed ``driftd_``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

#: Whether metrics carry collection names (``Settings.metrics_collection_labels``):
#: off, multi-tenant clusters do not show one tenant's collection names to whoever
#: reads the metrics port.
_collection_labels = True


def configure(*, collection_labels: bool) -> None:
    """Sets the process-wide metric options (the server calls it at start)."""
    global _collection_labels
    _collection_labels = collection_labels


def collection_label(name: str) -> str:
    """The ``collection`` label value for ``name``: the name, or "" when
    collection labels are off (every collection counts under one series)."""
    return name if _collection_labels else ""


def set_cached_points(collection: str, count: int) -> None:
    """Sets the collection's cached-points gauge; not reported with collection
    labels off (one gauge cannot hold every collection's count)."""
    if _collection_labels:
        CACHED_POINTS.labels(collection=collection).set(count)


def forget_collection(collection: str) -> None:
    """Drops a deleted collection's gauge series."""
    with contextlib.suppress(KeyError):
        CACHED_POINTS.remove(collection)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status (seconds).",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS,
)
GRPC_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total",
    "Stream messages received from clients.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_MSG_SENT = Counter(
    "grpc_server_msg_sent_total",
    "Stream messages sent to clients.",
    ["grpc_type", "grpc_service", "grpc_method"],
)

POINTS_INGESTED = Counter("driftd_points_ingested_total", "Points durably written.", ["collection"])
EMBEDDINGS_COMPUTED = Counter(
    "driftd_embeddings_computed_total", "Texts embedded server-side.", ["model"]
)
FLOW_FITS = Counter(
    "driftd_flow_fits_total",
    "Flow fields fitted: kind full (from scratch) or incremental (refreshed with appended points).",
    ["collection", "kind"],
)
FLOW_FIT_SECONDS = Histogram(
    "driftd_flow_fit_seconds",
    "Wall time of one flow fit, including the process-pool queue (seconds).",
    ["kind"],
    buckets=_LATENCY_BUCKETS,
)
POOL_QUEUE_DEPTH = Gauge(
    "driftd_pool_queue_depth", "Math tasks submitted to the process pool and not yet finished."
)
CACHED_MODELS = Gauge("driftd_cached_flow_models", "Fitted flow models held in memory.")
CACHED_EMBED_MODELS = Gauge("driftd_cached_embed_models", "Text embedding models loaded.")
CACHED_POINTS = Gauge(
    "driftd_cached_points", "Points held in the in-memory trajectory caches.", ["collection"]
)
