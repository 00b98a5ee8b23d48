"""The driftd engine: collections, points and flow over Chroma, without a server.

``AsyncDriftDB`` is the asyncio engine the server runs; ``DriftDB`` is its
synchronous in-process face.
"""

from driftd.engine.db import AsyncDriftDB
from driftd.engine.sync import DriftDB
from driftd.engine.validate import parse_collection_name

__all__ = ["AsyncDriftDB", "DriftDB", "parse_collection_name"]
