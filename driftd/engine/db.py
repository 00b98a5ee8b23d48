"""AsyncDriftDB: the engine behind the server, usable in-process.

Its parts: the shared core (:mod:`driftd.engine._core`: store thread, embedder,
math pool, event hub, per-collection caches), collections
(:mod:`driftd.engine._collections`), points (:mod:`driftd.engine._points`) and
flow (:mod:`driftd.engine._flow`).
"""

from __future__ import annotations

from driftd.engine._collections import CollectionsMixin
from driftd.engine._flow import FlowMixin
from driftd.engine._points import PointsMixin


class AsyncDriftDB(CollectionsMixin, PointsMixin, FlowMixin):
    """The driftd engine: collections, points and flow. Create with :meth:`open`;
    close with :meth:`close`."""
