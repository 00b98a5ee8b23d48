"""The Python client of driftd: ``DriftClient`` (blocking) and ``AsyncDriftClient``
(asyncio), with the same methods.

Needs only grpcio, grpcio-status, protobuf, googleapis-common-protos and numpy;
``health()`` additionally needs grpcio-health-checking. Results are the value
types of :mod:`driftd.types`; failures raise the classes of :mod:`driftd.errors`.
Reads and idempotent writes ride out server restarts (:class:`RetryPolicy`), and
``writer()`` streams points in batches, resuming after the last acknowledged one.

    from driftd.client import DriftClient

    with DriftClient("127.0.0.1:50051") as db:
        db.create_collection("notes", embed_model="all-MiniLM-L6-v2")
        db.upsert("notes", [{"id": "a", "timestamp": "2024-05-01T09:00:00Z", "text": "hello"}])
        hits = db.search("notes", text="greeting", top_k=5)

A server with API keys and TLS::

    DriftClient("driftd.example:50051", api_key=key, tls=TLS(ca_file="ca.pem"))
"""

from driftd.client._aio import AsyncDriftClient, AsyncUpsertWriter
from driftd.client._common import (
    TLS,
    RetryPolicy,
    UpsertAck,
    WriteProgress,
    parse_point,
    parse_points,
)
from driftd.client._sync import DriftClient, UpsertWriter
from driftd.types import PayloadCondition

__all__ = [
    "AsyncDriftClient",
    "AsyncUpsertWriter",
    "DriftClient",
    "PayloadCondition",
    "RetryPolicy",
    "TLS",
    "UpsertAck",
    "UpsertWriter",
    "WriteProgress",
    "parse_point",
    "parse_points",
]
