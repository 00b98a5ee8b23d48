"""Points: upsert, get, delete, trajectory, search (part of :class:`AsyncDriftDB`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import cast

import numpy as np

from driftd import metrics
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine._core import EngineCore, _utc
from driftd.engine.cache import TrajectoryCache
from driftd.errors import (
    DriftdError,
    FailedPrecondition,
)
from driftd.store.chroma import (
    Columns,
    SeenWrites,
    StoredCollection,
    payload_where,
)
from driftd.types import (
    PayloadCondition,
    Point,
    ScoredPoint,
    UpsertResult,
)

log = logging.getLogger(__name__)

# Bytes of vectors upserted between two returns of freed heap memory to the OS
# (driftd.engine.memory): the batches' temporary copies otherwise stay resident.
TRIM_BYTES = 16 << 20
# Sequence numbers: version << 24 | index in batch, so ties in time keep write order.
_SEQ_SHIFT = 24


class PointsMixin(EngineCore):
    """Point methods of the engine."""

    async def upsert(
        self, name: str, points: Sequence[Point | Mapping], *, lenient: bool = False
    ) -> UpsertResult:
        """Validates, embeds and writes a batch; returns once it is durable.

        Args:
            points: Points or dicts ``{id, timestamp, text|vector, series?, payload?}``.
            lenient: report bad points in the result and write the good ones
                (streams); by default any bad point rejects the whole batch.

        Raises:
            NotFound: unknown collection.
            InvalidArgument: BATCH_TOO_LARGE, or (strict) the first bad point's
                reason with every bad field as a violation; nothing is written.
            FailedPrecondition(NO_EMBED_MODEL): (strict) texts for a collection
                without an embed model.
        """
        coll = await self._collection(name)
        v.check_batch_size(len(points), self.settings.max_batch_points)
        meta = coll.meta
        batch, errors = v.validate_points(
            points,
            dimension=meta.dimension,
            distance=meta.distance,
            embed_model=meta.embed_model,
            reserved_keys=_reserved_keys(meta),
            limits=self.settings,
        )
        if not lenient:
            v.raise_for_errors(errors)
        n = len(batch.points)
        if n == 0:
            return UpsertResult(0, 0, meta.version, tuple(errors))
        v.check_texts([p.text for p in batch.points if p.text], self.settings, "points")
        vectors = np.empty((n, meta.dimension), dtype=np.float32)
        for j, p in enumerate(batch.points):
            if p.vector is not None:
                vectors[j] = p.vector
        if batch.to_embed:
            embedded = await self.embed(
                meta.embed_model,
                [batch.points[j].text or "" for j in batch.to_embed],
                field="points",
            )
            if embedded.shape[1] != meta.dimension:
                raise FailedPrecondition(
                    f"embed model {meta.embed_model!r} gives {embedded.shape[1]} dimensions, "
                    f"the collection has {meta.dimension}",
                    reason="DIMENSION_MISMATCH",
                )
            vectors[batch.to_embed] = embedded
        await self._loaded(coll)
        # What the write adds to the volume, roughly: vectors, texts, payloads.
        batch_bytes = vectors.nbytes + sum(
            len(p.text or "") + len(repr(p.payload)) + len(p.id) for p in batch.points
        )
        await self._runner.check_room(batch_bytes)
        async with coll.write_lock:
            version = coll.meta.version + 1
            cols = Columns(
                ids=[p.id for p in batch.points],
                vectors=vectors,
                # Validated: every point has a time.
                times=np.array(
                    [cast(datetime, p.time).timestamp() for p in batch.points], dtype=np.float64
                ),
                series=[p.series for p in batch.points],
                seqs=(version << _SEQ_SHIFT) + np.arange(n, dtype=np.int64),
                texts=[p.text for p in batch.points],
                payloads=[p.payload for p in batch.points],
            )

            # Ids stored already (all of them when the cache was just dropped).
            cache = coll.cache
            replacing = (
                cols.ids if cache is None else [i for i in cols.ids if cache.row_of(i) is not None]
            )

            def write() -> tuple[StoredCollection, SeenWrites | None]:
                self._store.upsert(coll.meta, cols, replacing)  # durable (verified) once it returns
                try:
                    return self._commit(coll, version)
                except Exception:
                    # The points are stored: acknowledge them; the cache reloads.
                    log.warning(
                        "%s: version not recorded after a durable write", name, exc_info=True
                    )
                    return coll.meta, None

            try:
                coll.meta, seen = await self._runner.call(write)
            except DriftdError:
                self._invalidate(coll)  # the store may hold part of what failed
                raise
            if seen is None:
                self._invalidate(coll)
            else:
                coll.seen = seen
                coll.loaded.upsert(cols, version)
                metrics.set_cached_points(name, len(coll.loaded))
            self.events.publish_upsert(name, coll.meta.version, cols.ids, cols.times, cols.series)
        metrics.POINTS_INGESTED.labels(collection=metrics.collection_label(name)).inc(n)
        self._untrimmed_bytes += vectors.nbytes
        if self._untrimmed_bytes >= TRIM_BYTES:
            self._untrimmed_bytes = 0
            self._runner.call(memory.trim)  # after the writes queued there
        return UpsertResult(n, len(batch.to_embed), coll.meta.version, tuple(errors))

    async def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[Point], list[str]]:
        """Points by id (in request order) and the ids that do not exist.

        Raises NotFound (unknown collection), InvalidArgument (BATCH_TOO_LARGE).
        """
        coll = await self._collection(name)
        v.check_batch_size(len(ids), self.settings.max_batch_points, "ids")
        # Chroma refuses a get with an id twice (a caller's repeat is not an error).
        unique = list(dict.fromkeys(ids))
        records = await self._runner.call(
            lambda: self._store.fetch(coll.meta, unique, include_vectors=include_vectors)
        )
        found = [self._point(records[i]) for i in ids if i in records]
        return found, [i for i in ids if i not in records]

    @staticmethod
    def _point(r) -> Point:
        return Point(r.id, _utc(r.time), r.series, r.vector, r.text, r.payload)

    async def delete_points(self, name: str, ids: Sequence[str]) -> tuple[int, int]:
        """Deletes points by id; returns (deleted count, new version).

        Raises NotFound (unknown collection), InvalidArgument (BATCH_TOO_LARGE).
        """
        coll = await self._collection(name)
        v.check_batch_size(len(ids), self.settings.max_batch_points, "ids")
        cache = await self._loaded(coll)
        async with coll.write_lock:
            present = [i for i in dict.fromkeys(ids) if cache.row_of(i) is not None]
            if not present:
                return 0, coll.meta.version
            version = coll.meta.version + 1

            def write() -> tuple[StoredCollection, SeenWrites | None]:
                self._store.delete_points(coll.meta, present)
                return self._commit(coll, version)

            coll.meta, seen = await self._runner.call(write)
            if seen is None:
                self._invalidate(coll)
            else:
                coll.seen = seen
                cache.delete(present, version)
                metrics.set_cached_points(name, len(cache))
            self.events.publish_delete(name, coll.meta.version, present)
        return len(present), coll.meta.version

    async def trajectory(
        self,
        name: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        series: str = "",
        include_vectors: bool = False,
        chunk_size: int = 500,
        payload_filter: Mapping | None = None,
        payload_conditions: Sequence[PayloadCondition] = (),
    ) -> AsyncGenerator[list[Point], None]:
        """Points of a time window in time order, in chunks of ``chunk_size``;
        only those matching ``payload_filter`` (equality) and every one of
        ``payload_conditions`` when given.

        An async generator: stop iterating (or ``aclose()``) to stop the reads.
        Raises NotFound, InvalidArgument (chunk_size outside 1-10000;
        INVALID_FILTER, see :func:`driftd.engine.validate.check_filter`).
        """
        v.check_range(chunk_size, 1, 10_000, "chunk_size")
        coll = await self._collection(name)
        where = payload_where(
            v.check_filter(payload_filter, payload_conditions, _reserved_keys(coll.meta))
        )
        cache = await self._loaded(coll)
        snap = cache.snapshot()
        positions = snap.select(start, end, series)
        if where is not None:
            allowed = await self._runner.call(
                functools.partial(self._store.ids_where, coll.meta, where)
            )
            keep = np.fromiter((str(i) in allowed for i in snap.ids[positions]), dtype=bool)
            positions = positions[keep]
        for lo in range(0, len(positions), chunk_size):
            pos = positions[lo : lo + chunk_size]
            ids = [str(i) for i in snap.ids[pos]]
            records = await self._runner.call(
                functools.partial(self._store.fetch, coll.meta, ids, include_vectors=False)
            )
            chunk = []
            for p, pid in zip(pos, ids, strict=True):
                r = records.get(pid)
                if r is None:  # deleted while streaming
                    continue
                vec = cache.vectors[snap.rows[p]].copy() if include_vectors else None
                chunk.append(Point(pid, _utc(snap.times[p]), r.series, vec, r.text, r.payload))
            yield chunk

    async def search(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        top_k: int = 10,
        start: datetime | None = None,
        end: datetime | None = None,
        series: str = "",
        payload_filter: Mapping | None = None,
        include_vectors: bool = False,
        payload_conditions: Sequence[PayloadCondition] = (),
    ) -> list[ScoredPoint]:
        """The top_k nearest points to a vector or text.

        Without a time/series filter this is Chroma's HNSW search (payload filter
        as a Chroma ``where``); with one, an exact scan of the cached trajectory.

        Raises NotFound, InvalidArgument (query, top_k; INVALID_FILTER, see
        :func:`driftd.engine.validate.check_filter`), FailedPrecondition (text
        without an embed model).
        """
        coll = await self._collection(name)
        v.check_range(top_k, 1, self.settings.max_top_k, "top_k")
        query = await self._start_vector(
            coll, vector=vector, text=text, point_id=None, field="query"
        )
        where = payload_where(
            v.check_filter(payload_filter, payload_conditions, _reserved_keys(coll.meta))
        )
        cache = await self._loaded(coll)
        if start is None and end is None and not series:
            hits = await self._runner.call(
                lambda: self._store.query(coll.meta, query, top_k, where)
            )
        else:
            snap = cache.snapshot()
            rows = snap.rows[snap.select(start, end, series)]
            if where is not None:
                allowed = await self._runner.call(lambda: self._store.ids_where(coll.meta, where))
                rows = np.array([r for r in rows if cache.id_of_row(r) in allowed], dtype=np.int64)
            hits = _exact_knn(cache, rows, query, top_k, coll.meta.distance)
        if not hits:
            return []
        found, _ = await self.get_points(
            name, [h[0] for h in hits], include_vectors=include_vectors
        )
        by_id = {p.id: p for p in found}
        return [ScoredPoint(by_id[i], d) for i, d in hits if i in by_id]


def _reserved_keys(meta: StoredCollection) -> frozenset[str]:
    """The collection's own metadata keys: neither a payload nor a filter may use them."""
    return frozenset(k for k in (meta.time_key, meta.series_key) if k)


def _exact_knn(
    cache: TrajectoryCache, rows: np.ndarray, query: np.ndarray, k: int, distance: str
) -> list[tuple[str, float]]:
    """Exact k nearest among cache rows, in the collection's distance."""
    if len(rows) == 0:
        return []
    X = cache.vectors[rows]
    if distance == "cosine":
        norms = np.linalg.norm(X, axis=1) * (np.linalg.norm(query) or 1.0)
        d = 1.0 - (X @ query) / np.where(norms > 0, norms, 1.0)
    elif distance == "ip":
        d = 1.0 - X @ query
    else:
        d = ((X - query) ** 2).sum(1)
    k = min(k, len(rows))
    best = np.argpartition(d, k - 1)[:k]
    best = best[np.argsort(d[best], kind="stable")]
    return [(cache.id_of_row(rows[i]), float(d[i])) for i in best]
