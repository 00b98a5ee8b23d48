"""Prometheus metrics of the driftd process (served on the metrics sidecar port).

The gRPC ones follow go-grpc-prometheus exactly (names, labels and label
values: ``grpc_type`` ``unary``/``client_stream``/``server_stream``/``bidi_stream``,
``grpc_code`` ``OK``/``NotFound``/...), so community dashboards for it work;
driftd's own are prefixed ``driftd_``. Series labelled with a collection are
dropped when the collection is deleted (:func:`forget_collection`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform

from prometheus_client import Counter, Gauge, Histogram, Info

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
#: The values of FLOW_FITS's ``kind`` label.
FIT_KINDS = ("full", "incremental")
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
POOL_TASK_SECONDS = Histogram(
    "driftd_pool_task_seconds",
    "Math-pool tasks by task name: phase queue (submission to a worker's start) or run "
    "(in the worker), seconds.",
    ["task", "phase"],
    buckets=_LATENCY_BUCKETS,
)
CACHED_MODELS = Gauge("driftd_cached_flow_models", "Fitted flow models held in memory.")
CACHED_EMBED_MODELS = Gauge("driftd_cached_embed_models", "Text embedding models loaded.")
CACHED_POINTS = Gauge(
    "driftd_cached_points", "Points held in the in-memory trajectory caches.", ["collection"]
)
CLUSTER_MEMBERS = Gauge(
    "driftd_cluster_members", "Live replicas on this replica's ring, itself included."
)
OWNERSHIP_CHANGES = Counter(
    "driftd_ownership_changes_total",
    "Changes of the live replica set, each of which moves some keys to new owners.",
)
FORWARDED_RPCS = Counter(
    "driftd_forwarded_rpcs_total",
    "RPCs for keys another replica owns, forwarded to that owner, by outcome code.",
    ["grpc_service", "grpc_method", "owner", "grpc_code"],
)

BUILD_INFO = Info(
    "driftd_build",
    "Versions of driftd and of the libraries it serves with (one series, value 1).",
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


BUILD_INFO.info(
    {
        "version": _version("driftd"),
        "python_version": platform.python_version(),
        "grpcio_version": _version("grpcio"),
        "chromadb_version": _version("chromadb"),
        "fastembed_version": _version("fastembed"),
    }
)


def forget_collection(name: str) -> None:
    """Drops every series labelled ``collection=name`` (the collection was deleted),
    so a deleted collection's counters do not linger and series do not pile up."""
    for metric, others in ((POINTS_INGESTED, ()), (CACHED_POINTS, ())) + tuple(
        (FLOW_FITS, (kind,)) for kind in FIT_KINDS
    ):
        with contextlib.suppress(KeyError):
            metric.remove(name, *others)
