"""Points: upsert, get, delete, trajectory, search (part of :class:`AsyncDriftDB`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np

from driftd import metrics
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine._core import EngineCore, _Collection, _utc
from driftd.errors import (
    DriftdError,
    FailedPrecondition,
)
from driftd.store.chroma import (
    Columns,
    Record,
    SeenWrites,
    StoredCollection,
    payload_where,
)
from driftd.types import (
    PayloadCondition,
    Point,
    PointError,
    ScoredPoint,
    UpsertResult,
)

log = logging.getLogger(__name__)

# Bytes of vectors upserted between two returns of freed heap memory to the OS
# (driftd.engine.memory): the batches' temporary copies otherwise stay resident.
TRIM_BYTES = 16 << 20
# Batches of an upsert stream read and prepared ahead of the one being written.
STREAM_AHEAD = 4
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
        batch = await self._prepare(coll.meta, points, lenient=lenient)
        version = await self._write(name, coll, [batch])
        return UpsertResult(len(batch.points), batch.embedded, version, batch.errors)

    async def upsert_stream(
        self, name: str, batches: AsyncIterable[Sequence[Point | Mapping]]
    ) -> AsyncGenerator[UpsertResult, None]:
        """Lenient upserts of a stream of batches, in order: yields each batch's
        result once it is durable (StreamUpsertPoints).

        Pipelined: while the store writes, the next batches (up to STREAM_AHEAD)
        are read, validated and embedded; the batches ready when the store is free
        are written together, one Chroma upsert and one commit (up to
        ``max_batch_points`` points, none sharing an id), each still getting its
        own result. An exception from ``batches`` is raised after the results of
        the batches before it; closing the generator stops the reading.

        Raises:
            NotFound: unknown collection.
            InvalidArgument: BATCH_TOO_LARGE; whatever ``batches`` raises.
        """
        ready: asyncio.Queue[_Prepared | _StreamEnd] = asyncio.Queue(STREAM_AHEAD)

        async def read() -> None:
            try:
                async for points in batches:
                    coll = await self._collection(name)
                    await ready.put(await self._prepare(coll.meta, points, lenient=True))
            except Exception as exc:  # raised in order, after the earlier results
                await ready.put(_StreamEnd(exc))
            else:
                await ready.put(_StreamEnd(None))

        reader = asyncio.create_task(read())
        try:
            pending: _Prepared | _StreamEnd = await ready.get()
            while isinstance(pending, _Prepared):
                group, ids, total = [pending], set(pending.ids), len(pending.points)
                after: _Prepared | _StreamEnd | None = None  # the first one not joined
                while not ready.empty():
                    nxt = ready.get_nowait()
                    if (
                        isinstance(nxt, _StreamEnd)
                        or total + len(nxt.points) > self.settings.max_batch_points
                        or not ids.isdisjoint(nxt.ids)
                    ):
                        after = nxt
                        break
                    group.append(nxt)
                    ids.update(nxt.ids)
                    total += len(nxt.points)
                version = await self._write(name, await self._collection(name), group)
                for b in group:
                    yield UpsertResult(len(b.points), b.embedded, version, b.errors)
                pending = after if after is not None else await ready.get()
            if pending.error is not None:
                raise pending.error
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _prepare(
        self, meta: StoredCollection, points: Sequence[Point | Mapping], *, lenient: bool
    ) -> _Prepared:
        """Validates and embeds a batch (see :meth:`upsert`); writes nothing."""
        v.check_batch_size(len(points), self.settings.max_batch_points)
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
        return _Prepared(batch.points, vectors, len(batch.to_embed), tuple(errors))

    async def _write(self, name: str, coll: _Collection, batches: list[_Prepared]) -> int:
        """Writes prepared batches (no id in two of them) as one durable write;
        returns the collection's version after it."""
        points = [p for b in batches for p in b.points]
        n = len(points)
        if n == 0:
            return coll.meta.version
        vectors = np.concatenate([b.vectors for b in batches])
        await self._loaded(coll)
        # What the write adds to the volume, roughly: vectors, texts, payloads.
        batch_bytes = vectors.nbytes + sum(
            len(p.text or "") + len(repr(p.payload)) + len(p.id) for p in points
        )
        await self._runner.check_room(batch_bytes)
        async with coll.write_lock:
            version = coll.meta.version + 1
            cols = Columns(
                ids=[p.id for p in points],
                vectors=vectors,
                # Validated: every point has a time.
                times=np.array(
                    [cast(datetime, p.time).timestamp() for p in points], dtype=np.float64
                ),
                series=[p.series for p in points],
                seqs=(version << _SEQ_SHIFT) + np.arange(n, dtype=np.int64),
                texts=[p.text for p in points],
                payloads=[p.payload for p in points],
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
        return coll.meta.version

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

        Without a time/series filter this is one Chroma HNSW query (payload filter
        as a Chroma ``where``) that returns the points too. With one, an exact scan
        of the cached trajectory's window (restricted to the ids matching the
        payload filter), then a read of the hits: at 20k points both are faster
        than Chroma's ``where`` on the time key (measured in bench.perf).

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
        meta = coll.meta
        if start is None and end is None and not series:
            hits = await self._runner.call(
                lambda: self._store.query(
                    meta, query, top_k, where, include_vectors=include_vectors
                )
            )
        else:
            snap = cache.snapshot()
            positions = snap.select(start, end, series)
            rows, ids = snap.rows[positions], snap.ids[positions]
            # The scan runs on the store thread with the read of its hits (one hop),
            # on the snapshot's ids and the rows' vectors as they are. Writes
            # meanwhile append rows, overwrite rows in place or, for a delete, move
            # the last row's vector into the deleted id's row: that id is no longer
            # found by the read, so every hit returned is a stored point.
            vectors = cache.vectors

            def scan() -> list[tuple[Record, float]]:
                r, i = rows, ids
                if where is not None:
                    allowed = set(self._store.ids_where(meta, where))
                    mask = np.fromiter((x in allowed for x in ids), bool, len(ids))
                    r, i = rows[mask], ids[mask]
                nearest = _exact_knn(vectors, r, query, top_k, meta.distance)
                found = self._store.fetch(
                    meta, [i[j] for j, _ in nearest], include_vectors=include_vectors
                )
                return [(found[i[j]], d) for j, d in nearest if i[j] in found]

            hits = await self._runner.call(scan)
        return [ScoredPoint(self._point(r), d) for r, d in hits]


@dataclass(frozen=True)
class _Prepared:
    """A validated, embedded batch: its valid points, their (n, d) float32 vectors,
    how many were embedded and the errors of the points left out."""

    points: list[Point]
    vectors: np.ndarray
    embedded: int
    errors: tuple[PointError, ...]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.points]


@dataclass(frozen=True)
class _StreamEnd:
    """The end of an upsert stream's batches: ``error`` is what reading them raised."""

    error: Exception | None


#: Rows per block of the exact scan: bounds its copy of the vectors (24 MiB at d = 384).
_SCAN_BLOCK = 16_384


def _reserved_keys(meta: StoredCollection) -> frozenset[str]:
    """The collection's own metadata keys: neither a payload nor a filter may use them."""
    return frozenset(k for k in (meta.time_key, meta.series_key) if k)


def _exact_knn(
    vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int, distance: str
) -> list[tuple[int, float]]:
    """Exact k nearest of ``vectors[rows]`` (rows (n,) int64 into vectors (N, d)
    float32) to ``query`` (d,), in the collection's distance (Chroma's: cosine and
    ip as 1 - similarity, l2 squared), as ``(index into rows, distance)``, nearest
    first. Scanned in blocks of _SCAN_BLOCK rows, keeping the best k so far."""
    k = min(k, len(rows))
    best = np.empty(0, dtype=np.int64)
    best_d = np.empty(0, dtype=np.float64)
    q = np.asarray(query, dtype=np.float32)
    q_norm = float(np.linalg.norm(q)) or 1.0
    for lo in range(0, len(rows), _SCAN_BLOCK):
        X = vectors[rows[lo : lo + _SCAN_BLOCK]]
        if distance == "cosine":
            norms = np.linalg.norm(X, axis=1) * q_norm
            d = 1.0 - (X @ q) / np.where(norms > 0, norms, 1.0)
        elif distance == "ip":
            d = 1.0 - X @ q
        else:
            d = ((X - q) ** 2).sum(1)
        cand = np.concatenate([best, np.arange(lo, lo + len(X))])
        cand_d = np.concatenate([best_d, d])
        top = np.argpartition(cand_d, k - 1)[:k] if len(cand) > k else np.arange(len(cand))
        best, best_d = cand[top], cand_d[top]
    order = np.argsort(best_d, kind="stable")
    return [(int(best[j]), float(best_d[j])) for j in order]
