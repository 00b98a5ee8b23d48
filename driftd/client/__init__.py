"""The Python client of driftd: ``DriftClient`` (blocking) and ``AsyncDriftClient``
(asyncio), with the same methods.

Needs only grpcio, grpcio-status, protobuf, googleapis-common-protos and numpy;
``health()`` additionally needs grpcio-health-checking. Results are the value
types of :mod:`driftd.types`; failures raise the classes of :mod:`driftd.errors`.

    from driftd.client import DriftClient

    with DriftClient("127.0.0.1:50051") as db:
        db.create_collection("notes", embed_model="all-MiniLM-L6-v2")
        db.upsert("notes", [{"id": "a", "timestamp": "2024-05-01T09:00:00Z", "text": "hello"}])
        hits = db.search("notes", text="greeting", top_k=5)
"""

from driftd.client._aio import AsyncDriftClient
from driftd.client._common import UpsertAck, parse_point, parse_points
from driftd.client._sync import DriftClient

__all__ = ["AsyncDriftClient", "DriftClient", "UpsertAck", "parse_point", "parse_points"]
