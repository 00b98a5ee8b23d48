"""AsyncDriftDB: the engine behind the server, usable in-process.

Threads and processes, so the event loop never blocks:
- Chroma: one dedicated thread owns the client (its local client is synchronous
  and not safe across processes).
- Embedding: one thread (onnxruntime parallelises inside).
- Flow math: a forkserver process pool (:mod:`driftd.engine.pool`).

Each collection keeps an in-memory trajectory (:mod:`driftd.engine.cache`) loaded
on first use, and one fitted flow model per collection version; after appends the
model is refreshed from the new points alone (:meth:`AsyncDriftDB._refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from driftd import metrics
from driftd.config import Settings
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine.cache import Snapshot, TrajectoryCache
from driftd.engine.embedding import Embedders
from driftd.engine.pool import MathPool, Rows
from driftd.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from driftd.flow import MIN_POINTS, InsufficientDataError
from driftd.flow import tasks as flow_tasks
from driftd.flow.chapters import nearest_to_means
from driftd.flow.ensemble import FlowEnsemble
from driftd.flow.field import FlowField, RefitRequired
from driftd.flow.timeline import spread_appended
from driftd.monitor.events import EventHub
from driftd.store.chroma import (
    ChromaStore,
    Columns,
    SeenWrites,
    StoredCollection,
    payload_where,
)
from driftd.types import (
    AttractorInfo,
    AttractorSet,
    ChapterInfo,
    ChapterSet,
    CollectionInfo,
    FlowProbe,
    Point,
    Representative,
    ScoredPoint,
    SimulationStep,
    UpsertResult,
)

log = logging.getLogger(__name__)

# Steps computed per pool task while streaming a simulation: small enough that a
# cancelled stream stops within one chunk, big enough to amortise the round trip.
# A path's first chunk is one step (the first step streams after ~1/50 of a chunk's
# work), and each next one doubles, up to SIM_CHUNK_STEPS.
SIM_CHUNK_STEPS = 50
# Bytes of vectors upserted between two returns of freed heap memory to the OS
# (driftd.engine.memory): the batches' temporary copies otherwise stay resident.
TRIM_BYTES = 16 << 20
# Sequence numbers: version << 24 | index in batch, so ties in time keep write order.
_SEQ_SHIFT = 24


def _utc(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(seconds))


@dataclass
class _FlowModel:
    """A fitted field for one collection version, the data order it was fitted on and
    its bootstrap ensemble (None: the pool builds it on first use)."""

    key: str
    field: FlowField
    snapshot: Snapshot
    ensemble: FlowEnsemble | None = None
    attractors: flow_tasks.AttractorsOut | None = None


@dataclass
class _Collection:
    meta: StoredCollection
    cache: TrajectoryCache | None = None
    #: Server mode: the write journal's entries that ``cache`` reflects.
    seen: SeenWrites = field(default_factory=SeenWrites)
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    model: _FlowModel | None = None


class AsyncDriftDB:
    """The driftd engine. Create with :meth:`open`; close with :meth:`close`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-chroma")
        self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-embed")
        self._store: ChromaStore | None = None
        self._embedders = Embedders()
        self._pool: MathPool | None = None
        self._collections: dict[str, _Collection] = {}
        self._untrimmed_bytes = 0  # vector bytes upserted since the last memory.trim
        #: Live events of every collection; writes publish here once durable.
        self.events = EventHub()

    @classmethod
    async def open(cls, settings: Settings | None = None) -> AsyncDriftDB:
        """Opens Chroma (on its thread) and starts the math pool.

        Raises:
            Exception: Chroma cannot open the directory or reach the server.
        """
        db = cls(settings or Settings.from_env())
        db._store = await db.on_store(
            lambda: ChromaStore(
                path=db.settings.chroma_path,
                url=db.settings.chroma_url,
                token=db.settings.chroma_token,
            )
        )
        db._pool = MathPool(db.settings.workers)
        return db

    async def close(self) -> None:
        """Stops the pool and releases Chroma's thread. Idempotent."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._store_thread.shutdown(wait=True)
        self._embed_thread.shutdown(wait=False, cancel_futures=True)

    async def ready(self) -> bool:
        """True once storage is open."""
        return self._store is not None

    # --- plumbing ------------------------------------------------------------

    def on_store(self, fn) -> asyncio.Future:
        """Runs ``fn()`` on the Chroma thread (the only thread that touches Chroma);
        await the result. Submitted at once, so calls run in the order they are
        made, even one started from a synchronous callback.

        For the engine's other capabilities (routing, monitoring), which keep
        their own Chroma collections through :attr:`chroma`.
        """
        return asyncio.get_running_loop().run_in_executor(self._store_thread, fn)

    @property
    def chroma(self):
        """The raw chromadb client; use it only inside :meth:`on_store`."""
        return self._store.client

    @property
    def pool(self) -> MathPool:
        """The math process pool."""
        return self._pool

    async def embed(self, model: str, texts: list[str]) -> np.ndarray:
        """Embeds texts on the embedding thread: (n,) str -> (n, d) float32.

        Raises InvalidArgument(UNKNOWN_EMBED_MODEL).
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._embed_thread, self._embedders.embed, model, texts
        )

    async def _collection(self, name: str) -> _Collection:
        """The collection's state. With a shared Chroma server other replicas may
        write too, so there its settings are re-read on every call (one small
        request) and a write id or incarnation other than the cached one drops the
        cached trajectory and flow model."""
        v.check_collection_id(name, "name")
        coll = self._collections.get(name)
        if coll is not None and not self.settings.chroma_url:
            return coll
        try:
            meta = await self.on_store(lambda: self._store.get(name))
        except NotFound:
            gone = self._collections.pop(name, None)
            if gone is not None:
                self.events.drop(name, gone.meta.uid)  # deleted through another replica
            raise
        return self._current(meta)

    def _current(self, meta: StoredCollection) -> _Collection:
        """The state for settings just read from Chroma: a cached state of another
        incarnation, or from before another replica's write, is replaced."""
        coll = self._collections.get(meta.name)
        if coll is None or coll.meta.state != meta.state:
            if coll is not None and coll.meta.uid != meta.uid:
                # Deleted and created again through another replica.
                self.events.drop(meta.name, coll.meta.uid)
            coll = self._collections[meta.name] = _Collection(meta)
        return coll

    def _invalidate(self, coll: _Collection) -> None:
        """Drops a cache that misses another replica's concurrent write (see
        :meth:`ChromaStore.commit`): the next call reloads it."""
        if self._collections.get(coll.meta.name) is coll:
            self._collections[coll.meta.name] = _Collection(coll.meta)

    async def _loaded(self, coll: _Collection) -> TrajectoryCache:
        """The collection's trajectory cache, read from Chroma on first use."""
        if coll.cache is not None:
            return coll.cache
        async with coll.load_lock:
            if coll.cache is None:
                meta = coll.meta
                t0 = time.perf_counter()

                def load() -> tuple[TrajectoryCache, SeenWrites]:
                    seen = self._store.seen_writes(meta)  # before the points it covers
                    cache = TrajectoryCache(meta.dimension, meta.version)
                    for cols in self._store.iter_load(meta):
                        cache.upsert(cols, meta.version)
                    memory.trim()  # Chroma's pages of embeddings, now in the cache
                    return cache, seen

                coll.cache, coll.seen = await self.on_store(load)
                metrics.set_cached_points(meta.name, len(coll.cache))
                log.info(
                    "loaded %s: %d points in %.2f s",
                    meta.name,
                    len(coll.cache),
                    time.perf_counter() - t0,
                )
        return coll.cache

    async def trajectory_cache(self, name: str) -> tuple[StoredCollection, TrajectoryCache]:
        """The collection's stored settings and its in-memory trajectory (read from
        Chroma on first use), for the engine's other capabilities (monitoring) that
        read windows of vectors without going back to Chroma.

        The cache is the live one, replaced when the collection is recreated or
        reloaded: read it on the event loop (a snapshot, then rows of ``vectors``)
        before the next await, copy what a thread or worker needs, never mutate it.

        Raises NotFound (COLLECTION_NOT_FOUND).
        """
        coll = await self._collection(name)
        return coll.meta, await self._loaded(coll)

    def _info(self, coll: _Collection) -> CollectionInfo:
        m, cache = coll.meta, coll.cache
        span = cache.span() if cache is not None else None
        return CollectionInfo(
            name=m.name,
            dimension=m.dimension,
            distance=m.distance,  # type: ignore[arg-type]
            embed_model=m.embed_model,
            point_count=len(cache) if cache is not None else 0,
            series_count=cache.series_count() if cache is not None else 0,
            start_time=_utc(span[0]) if span else None,
            end_time=_utc(span[1]) if span else None,
            create_time=_utc(m.create_time),
            version=m.version,
            time_key=m.time_key if m.attached else "",
            series_key=m.series_key if m.attached else "",
            attached=m.attached,
        )

    # --- collections ---------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        *,
        dim: int | None = None,
        distance: str = "cosine",
        embed_model: str | None = None,
    ) -> CollectionInfo:
        """Creates a collection.

        Args:
            name: 3-63 chars of [A-Za-z0-9._-], alphanumeric at both ends.
            dim: vector dimension; defaults to the embed model's.
            distance: "cosine", "l2" or "ip".
            embed_model: fastembed model that embeds texts; None/"" refuses texts.

        Raises:
            InvalidArgument: bad name, distance or dimension (INVALID_NAME,
                INVALID_FIELD, DIMENSION_MISMATCH), unknown model (UNKNOWN_EMBED_MODEL).
            AlreadyExists: the name is taken.
        """
        v.check_collection_id(name)
        if distance not in v.DISTANCES:
            raise InvalidArgument(
                f"distance must be one of {', '.join(v.DISTANCES)}, got {distance!r}",
                field_violations=[FieldViolation("collection.distance", "unknown distance")],
            )
        embed_model = embed_model or ""
        if embed_model:
            model_dim = await asyncio.get_running_loop().run_in_executor(
                self._embed_thread, self._embedders.dimension, embed_model
            )
            if dim and dim != model_dim:
                raise InvalidArgument(
                    f"dimension {dim} differs from embed model {embed_model!r}'s {model_dim}",
                    reason="DIMENSION_MISMATCH",
                    field_violations=[
                        FieldViolation("collection.dimension", f"must be {model_dim}")
                    ],
                )
            dim = model_dim
        if not dim:
            raise InvalidArgument(
                "dimension is required when there is no embed model",
                field_violations=[FieldViolation("collection.dimension", "required")],
            )
        v.check_range(dim, 1, 65_536, "collection.dimension")
        meta = StoredCollection(name, int(dim), distance, embed_model, time.time(), 0)
        meta = await self.on_store(lambda: self._store.create(meta))
        gone = self._collections.pop(name, None)
        if gone is not None:  # an incarnation deleted through another replica
            self.events.drop(name, gone.meta.uid)
        coll = self._collections[name] = _Collection(meta, TrajectoryCache(meta.dimension, 0))
        return self._info(coll)

    async def get_collection(self, name: str) -> CollectionInfo:
        """Raises NotFound (COLLECTION_NOT_FOUND)."""
        coll = await self._collection(name)
        await self._loaded(coll)
        return self._info(coll)

    async def list_collections(
        self, *, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[CollectionInfo], str]:
        """A page of collections in name order and the next page token ("" at the end).

        The token is the last name of the previous page.

        Raises:
            InvalidArgument: page_size outside 1-1000 (LIMIT_EXCEEDED) or a bad
                token (INVALID_PAGE_TOKEN).
        """
        v.check_range(page_size, 1, 1000, "page_size")
        if page_token and not v.COLLECTION_ID.match(page_token):
            raise InvalidArgument(
                "page_token is not one this server issued",
                reason="INVALID_PAGE_TOKEN",
                field_violations=[FieldViolation("page_token", "invalid")],
            )
        metas = await self.on_store(self._store.list)
        after = [m for m in metas if m.name > page_token]
        page = after[:page_size]
        out = []
        for m in page:
            coll = self._current(m)
            await self._loaded(coll)
            out.append(self._info(coll))
        next_token = page[-1].name if len(after) > page_size else ""
        return out, next_token

    async def collection_count(self) -> int:
        """How many driftd collections the store holds (for the collections quota)."""
        return len(await self.on_store(self._store.list))

    async def delete_collection(self, name: str) -> None:
        """Deletes the collection and its points. Raises NotFound."""
        v.check_collection_id(name, "name")
        gone = await self.on_store(lambda: self._store.delete(name))
        self._collections.pop(name, None)
        self.events.drop(name, gone.uid)
        metrics.forget_collection(name)

    async def attach_collection(
        self, chroma_collection: str, *, time_key: str, series_key: str = "", embed_model: str = ""
    ) -> CollectionInfo:
        """Adopts an existing Chroma collection without copying its data.

        Raises:
            InvalidArgument: bad name or empty time_key.
            NotFound: no such Chroma collection.
            AlreadyExists: already a driftd collection.
            FailedPrecondition: the Chroma collection is empty.
        """
        v.check_collection_id(chroma_collection, "chroma_collection")
        if not time_key:
            raise InvalidArgument(
                "time_key is required", field_violations=[FieldViolation("time_key", "required")]
            )
        meta = await self.on_store(
            lambda: self._store.attach(
                chroma_collection, time_key=time_key, series_key=series_key, embed_model=embed_model
            )
        )
        coll = self._collections[chroma_collection] = _Collection(meta)
        await self._loaded(coll)
        return self._info(coll)

    # --- points --------------------------------------------------------------

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
        reserved = frozenset(k for k in (meta.time_key, meta.series_key) if k)
        batch, errors = v.validate_points(
            points, dimension=meta.dimension, embed_model=meta.embed_model, reserved_keys=reserved
        )
        if not lenient:
            v.raise_for_errors(errors)
        n = len(batch.points)
        if n == 0:
            return UpsertResult(0, 0, meta.version, tuple(errors))
        vectors = np.empty((n, meta.dimension), dtype=np.float32)
        for j, p in enumerate(batch.points):
            if p.vector is not None:
                vectors[j] = p.vector
        if batch.to_embed:
            embedded = await self.embed(
                meta.embed_model, [batch.points[j].text for j in batch.to_embed]
            )
            if embedded.shape[1] != meta.dimension:
                raise FailedPrecondition(
                    f"embed model {meta.embed_model!r} gives {embedded.shape[1]} dimensions, "
                    f"the collection has {meta.dimension}",
                    reason="DIMENSION_MISMATCH",
                )
            vectors[batch.to_embed] = embedded
        await self._loaded(coll)
        async with coll.write_lock:
            version = coll.meta.version + 1
            cols = Columns(
                ids=[p.id for p in batch.points],
                vectors=vectors,
                times=np.array([p.time.timestamp() for p in batch.points], dtype=np.float64),
                series=[p.series for p in batch.points],
                seqs=(version << _SEQ_SHIFT) + np.arange(n, dtype=np.int64),
                texts=[p.text for p in batch.points],
                payloads=[p.payload for p in batch.points],
            )

            def write() -> tuple[StoredCollection, SeenWrites | None]:
                self._store.upsert(coll.meta, cols)
                return self._store.commit(coll.meta, version, coll.seen)

            coll.meta, seen = await self.on_store(write)
            if seen is None:
                self._invalidate(coll)
            else:
                coll.seen = seen
                coll.cache.upsert(cols, version)
                metrics.set_cached_points(name, len(coll.cache))
            self.events.publish_upsert(name, coll.meta.version, cols.ids, cols.times, cols.series)
        metrics.POINTS_INGESTED.labels(collection=metrics.collection_label(name)).inc(n)
        self._untrimmed_bytes += vectors.nbytes
        if self._untrimmed_bytes >= TRIM_BYTES:
            self._untrimmed_bytes = 0
            self._store_thread.submit(memory.trim)  # after the writes queued there
        return UpsertResult(n, len(batch.to_embed), coll.meta.version, tuple(errors))

    async def get_points(
        self, name: str, ids: Sequence[str], *, include_vectors: bool = False
    ) -> tuple[list[Point], list[str]]:
        """Points by id (in request order) and the ids that do not exist.

        Raises NotFound (unknown collection), InvalidArgument (BATCH_TOO_LARGE).
        """
        coll = await self._collection(name)
        v.check_batch_size(len(ids), self.settings.max_batch_points, "ids")
        records = await self.on_store(
            lambda: self._store.fetch(coll.meta, list(ids), include_vectors=include_vectors)
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
                return self._store.commit(coll.meta, version, coll.seen)

            coll.meta, seen = await self.on_store(write)
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
    ) -> AsyncIterator[list[Point]]:
        """Points of a time window in time order, in chunks of ``chunk_size``.

        An async generator: stop iterating (or ``aclose()``) to stop the reads.
        Raises NotFound, InvalidArgument (chunk_size outside 1-10000).
        """
        v.check_range(chunk_size, 1, 10_000, "chunk_size")
        coll = await self._collection(name)
        cache = await self._loaded(coll)
        snap = cache.snapshot()
        positions = snap.select(start, end, series)
        for lo in range(0, len(positions), chunk_size):
            pos = positions[lo : lo + chunk_size]
            ids = [str(i) for i in snap.ids[pos]]
            records = await self.on_store(
                lambda ids=ids: self._store.fetch(coll.meta, ids, include_vectors=False)
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
        payload_filter: dict | None = None,
        include_vectors: bool = False,
    ) -> list[ScoredPoint]:
        """The top_k nearest points to a vector or text.

        Without a time/series filter this is Chroma's HNSW search (payload filter
        as a Chroma ``where``); with one, an exact scan of the cached trajectory.

        Raises NotFound, InvalidArgument (query, top_k), FailedPrecondition (text
        without an embed model).
        """
        coll = await self._collection(name)
        v.check_range(top_k, 1, self.settings.max_top_k, "top_k")
        query = await self._start_vector(
            coll, vector=vector, text=text, point_id=None, field="query"
        )
        where = payload_where(payload_filter or {})
        cache = await self._loaded(coll)
        if start is None and end is None and not series:
            hits = await self.on_store(lambda: self._store.query(coll.meta, query, top_k, where))
        else:
            snap = cache.snapshot()
            rows = snap.rows[snap.select(start, end, series)]
            if where is not None:
                allowed = await self.on_store(lambda: self._store.ids_where(coll.meta, where))
                rows = np.array([r for r in rows if cache.id_of_row(r) in allowed], dtype=np.int64)
            hits = _exact_knn(cache, rows, query, top_k, coll.meta.distance)
        if not hits:
            return []
        found, _ = await self.get_points(
            name, [h[0] for h in hits], include_vectors=include_vectors
        )
        by_id = {p.id: p for p in found}
        return [ScoredPoint(by_id[i], d) for i, d in hits if i in by_id]

    # --- flow ----------------------------------------------------------------

    async def _start_vector(
        self, coll: _Collection, *, vector, text, point_id, field: str = "start"
    ):
        """The one given start as a (d,) float32 vector.

        Raises InvalidArgument (none or several given, bad vector), NotFound
        (POINT_NOT_FOUND), FailedPrecondition (NO_EMBED_MODEL).
        """
        given = [
            k
            for k, val in (("vector", vector), ("text", text), ("point_id", point_id))
            if val is not None and (k == "vector" or val)
        ]
        if len(given) != 1:
            raise InvalidArgument(
                f"{field} needs exactly one of vector, text or point_id; got {len(given)}",
                reason="MISSING_CONTENT" if not given else "INVALID_FIELD",
                field_violations=[FieldViolation(field, "exactly one of vector, text, point_id")],
            )
        meta = coll.meta
        if vector is not None:
            vec = np.asarray(vector, dtype=np.float32).ravel()
            if vec.size != meta.dimension:
                raise InvalidArgument(
                    f"{field}.vector has {vec.size} values, "
                    f"the collection's dimension is {meta.dimension}",
                    reason="DIMENSION_MISMATCH",
                    field_violations=[
                        FieldViolation(f"{field}.vector", f"must have {meta.dimension} values")
                    ],
                )
            if not np.isfinite(vec).all():
                raise InvalidArgument(
                    f"{field}.vector contains NaN or infinity",
                    reason="NON_FINITE_VECTOR",
                    field_violations=[FieldViolation(f"{field}.vector", "must be finite")],
                )
            return vec
        if text:
            if not meta.embed_model:
                raise FailedPrecondition(
                    "the collection has no embed model; send a vector",
                    reason="NO_EMBED_MODEL",
                    field_violations=[FieldViolation(f"{field}.text", "no embed model")],
                )
            return (await self.embed(meta.embed_model, [text]))[0]
        cache = await self._loaded(coll)
        row = cache.row_of(point_id)
        if row is None:
            raise NotFound(
                f"point {point_id!r} does not exist",
                reason="POINT_NOT_FOUND",
                field_violations=[FieldViolation(f"{field}.point_id", "not found")],
            )
        return cache.vectors[row].copy()

    async def _model(self, coll: _Collection) -> _FlowModel:
        """The fitted flow of the collection's current version (fitted once, shared).

        Raises FailedPrecondition(NOT_ENOUGH_POINTS).
        """
        cache = await self._loaded(coll)
        async with coll.fit_lock:
            if coll.model is not None and coll.model.snapshot.version == cache.version:
                return coll.model
            snap = cache.snapshot()
            if len(snap) < MIN_POINTS:
                raise _not_enough(MIN_POINTS, len(snap))
            key = f"{coll.meta.name}/{snap.version}/{uuid.uuid4().hex[:8]}"
            t0 = time.perf_counter()
            fitted = None if coll.model is None else await self._refresh(coll, snap, key)
            kind = "full" if fitted is None else "incremental"
            if fitted is None:
                try:
                    fitted = await self._pool.submit(
                        flow_tasks.fit,
                        key,
                        Rows(cache.vectors, snap.rows),  # gathered off the event loop
                        snap.times,
                        snap.series,
                        normalize=coll.meta.distance == "cosine",
                        random_state=0,
                        replicates=self.settings.ensemble_size,
                    )
                except InsufficientDataError as exc:
                    raise _not_enough(exc.n_required, exc.n_available) from exc
            metrics.FLOW_FITS.labels(
                collection=metrics.collection_label(coll.meta.name), kind=kind
            ).inc()
            metrics.FLOW_FIT_SECONDS.labels(kind=kind).observe(time.perf_counter() - t0)
            if coll.model is None:
                metrics.CACHED_MODELS.inc()
            coll.model = _FlowModel(key, fitted[0], snap, fitted[1])
            # The result's unpickling buffers (tens of MB at 100k points) are freed
            # below glibc's raised mmap threshold: give their pages back.
            self._store_thread.submit(memory.trim)
            return coll.model

    async def _refresh(
        self, coll: _Collection, snap: Snapshot, key: str
    ) -> tuple[FlowField, FlowEnsemble | None] | None:
        """The collection's model refreshed with the points appended since its version
        (:meth:`FlowField.update`, in the pool worker that holds it: only the new rows
        travel) and its ensemble carried over (:meth:`FlowEnsemble.update`; None if
        that worker has none), kept there under ``key``; None when a full fit is
        needed: rows were overwritten or deleted since, a new point lands before its
        series' last one or changes how tied times spread, or the field refuses
        (:class:`RefitRequired`). Call under the fit lock."""
        old, cache = coll.model, coll.cache
        if cache.rewrite_version > old.snapshot.version:
            return None
        # No row changed or went since the model's version: the new ones come after.
        positions = np.flatnonzero(snap.rows >= len(old.snapshot))
        series = snap.series[positions]
        t = spread_appended(old.snapshot.times, old.snapshot.series, snap.times[positions], series)
        if t is None:
            return None
        X = cache.vectors[snap.rows[positions]]
        try:
            return await self._pool.on_model(
                "update", old, key, X, t, series, positions, self.settings.ensemble_size
            )
        except RefitRequired as exc:
            log.info("full refit of %s: %s", coll.meta.name, exc)
            return None

    async def flow_vector(
        self, name: str, *, vector=None, text: str | None = None, point_id: str | None = None
    ) -> FlowProbe:
        """The flow's velocity at a vector, text or stored point.

        Raises NotFound, InvalidArgument, FailedPrecondition (NOT_ENOUGH_POINTS,
        NO_EMBED_MODEL).
        """
        coll = await self._collection(name)
        x = await self._start_vector(coll, vector=vector, text=text, point_id=point_id)
        model = await self._model(coll)
        out = await self._pool.on_model(
            "probe", model, x[None, :], replicates=self.settings.ensemble_size
        )
        speed = float(out.speed[0])
        return FlowProbe(
            velocity=out.velocity[0].astype(np.float32),
            speed=speed,
            speed_per_step=speed * float(model.field.time_scale_),
            confidence=float(out.confidence[0]),
            support=float(out.support[0]),
            in_support=bool(out.in_support[0]),
            nearest_point_id=str(model.snapshot.ids[out.nearest[0]]),
        )

    async def flow_simulate(
        self,
        name: str,
        *,
        vector=None,
        text: str | None = None,
        point_id: str | None = None,
        steps: int = 100,
        dt_seconds: float | None = None,
        paths: int = 1,
        stop_outside_support: bool = False,
        seed: int = 0,
        band_coverage: float = 0.9,
    ) -> AsyncIterator[SimulationStep]:
        """Follows the flow from a start: yields each step of path 0, then path 1, ...

        Each path carries the uncertainty band of the flow's bootstrap ensemble
        (``settings.ensemble_size`` refits, each following its own flow from the
        path's start): the refits' mean position and the radius holding
        ``band_coverage`` of them. Computed in the pool in chunks of 1, 2, 4, ... up to
        SIM_CHUNK_STEPS steps, so the first step comes at once and closing the
        generator stops the work within one chunk.

        Raises NotFound, InvalidArgument (limits, start, dt_seconds <= 0,
        band_coverage outside (0, 1)), FailedPrecondition (NOT_ENOUGH_POINTS,
        NO_EMBED_MODEL).
        """
        v.check_range(steps, 1, self.settings.max_steps, "steps")
        v.check_range(paths, 1, self.settings.max_paths, "paths")
        if dt_seconds is not None and not (dt_seconds > 0 and np.isfinite(dt_seconds)):
            raise InvalidArgument(
                f"step duration must be positive, got {dt_seconds}",
                field_violations=[FieldViolation("step_duration", "must be positive")],
            )
        if not 0.0 < band_coverage < 1.0:
            raise InvalidArgument(
                f"band_coverage must be between 0 and 1 (exclusive), got {band_coverage}",
                field_violations=[FieldViolation("band_coverage", "must be in (0, 1)")],
            )
        coll = await self._collection(name)
        x0 = await self._start_vector(coll, vector=vector, text=text, point_id=point_id)
        model = await self._model(coll)
        cache = coll.cache
        if point_id:
            t_start = cache.time_of_row(cache.row_of(point_id))
        else:
            t_start = time.time()
        dt = float(dt_seconds) if dt_seconds else float(model.field.time_scale_)
        starts = await self._pool.on_model("starts", model, x0, paths, seed)
        cosine = coll.meta.distance == "cosine"
        for path, x in enumerate(starts):
            done, state, size = 0, None, 1
            while True:
                n = min(size, steps - done)
                size = min(2 * size, SIM_CHUNK_STEPS)
                chunk = await self._pool.on_model(
                    "simulate",
                    model,
                    x,
                    n,
                    dt,
                    stop_outside_support,
                    band_coverage,
                    state,
                    replicates=self.settings.ensemble_size,
                )
                traj = chunk.trajectory
                last = len(traj.positions) - 1
                finished = traj.stop_reason != "steps" or done + last >= steps
                # A chunk starts where the previous one ended: emit that position once.
                for i in range(0 if done == 0 else 1, last + 1):
                    nearest = int(chunk.nearest[i])
                    pos = traj.positions[i]
                    yield SimulationStep(
                        path=path,
                        step=done + i,
                        time=_utc(t_start + (done + i) * dt),
                        position=pos,
                        speed=float(traj.speeds[i]),
                        nearest_point_id=str(model.snapshot.ids[nearest]),
                        nearest_similarity=_similarity(
                            pos, cache.vectors[model.snapshot.rows[nearest]], cosine
                        ),
                        support=float(traj.support[i]),
                        in_support=bool(chunk.in_support[i]),
                        stop_reason=traj.stop_reason if finished and i == last else "",
                        ensemble_position=traj.ensemble_positions[i],
                        band_radius=float(traj.band_radius[i]),
                    )
                done += last
                if finished:
                    break
                x, state = traj.positions[-1], traj.ensemble_state

    async def _attractors(
        self,
        coll: _Collection,
        model: _FlowModel,
        seeds: int,
        seed: int,
        k: int,
        bootstrap: int | None = None,
    ) -> flow_tasks.AttractorsOut:
        """find_attractors in the pool; ``bootstrap`` refits (None: the server's
        ensemble) measure reproducibility. The default call is cached with the model."""
        default = seeds == 64 and seed == 0 and bootstrap in (None, self.settings.ensemble_size)
        if model.attractors is not None and default and k <= 3:
            return model.attractors
        out = await self._pool.on_model(
            "attractors",
            model,
            seeds,
            seed,
            max(k, 3),
            replicates=bootstrap or self.settings.ensemble_size,
        )
        if default:
            model.attractors = out  # the default call is what chapters link to
        return out

    async def flow_attractors(
        self,
        name: str,
        *,
        seeds: int = 64,
        representatives: int = 3,
        seed: int = 0,
        bootstrap: int | None = None,
    ) -> AttractorSet:
        """Fixed points of the flow, largest basin first; ``bootstrap`` refits
        (2 to ``settings.max_bootstrap``; None: the server's ensemble of
        ``settings.ensemble_size``) measure each one's reproducibility.

        Raises NotFound, InvalidArgument (limits), FailedPrecondition (NOT_ENOUGH_POINTS).
        """
        v.check_range(seeds, 1, self.settings.max_seeds, "seeds")
        v.check_range(representatives, 0, 100, "representatives")
        if bootstrap is not None:
            v.check_range(bootstrap, 2, self.settings.max_bootstrap, "bootstrap")
        coll = await self._collection(name)
        model = await self._model(coll)
        out = await self._attractors(coll, model, seeds, seed, representatives, bootstrap)
        cosine = coll.meta.distance == "cosine"
        infos = []
        for i, a in enumerate(out.attractors):
            reps = await self._representatives(
                coll, model.snapshot, out.representatives[i][:representatives], a.center, cosine
            )
            infos.append(
                AttractorInfo(
                    id=f"attractor-{i}",
                    stability=a.stability,
                    center=np.asarray(a.center, dtype=np.float32),
                    basin_fraction=float(a.basin_fraction),
                    eigenvalues=tuple(float(e) for e in np.real(a.eigenvalues)),
                    speed=float(a.speed),
                    reproducibility=float(a.reproducibility),
                    representatives=reps,
                )
            )
        return AttractorSet(
            tuple(infos), model.snapshot.version, bootstrap or self.settings.ensemble_size
        )

    async def _representatives(
        self, coll: _Collection, snap: Snapshot, positions, center: np.ndarray, cosine: bool
    ) -> tuple[Representative, ...]:
        ids = [str(snap.ids[p]) for p in positions]
        if not ids:
            return ()
        records = await self.on_store(
            lambda: self._store.fetch(coll.meta, ids, include_vectors=False)
        )
        out = []
        for p, pid in zip(positions, ids, strict=True):
            vec = coll.cache.vectors[snap.rows[p]]
            r = records.get(pid)
            out.append(
                Representative(
                    pid,
                    _utc(snap.times[p]),
                    (r.text or "") if r else "",
                    _similarity(center, vec, cosine),
                )
            )
        return tuple(out)

    async def flow_chapters(
        self,
        name: str,
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        penalty: float | None = None,
        representatives: int = 3,
    ) -> ChapterSet:
        """Chapters (regimes) of the timeline by change-point detection (ruptures PELT).

        Raises NotFound, InvalidArgument (limits), FailedPrecondition (NOT_ENOUGH_POINTS).
        """
        v.check_range(min_size, 2, 10_000, "min_size")
        v.check_range(representatives, 0, 100, "representatives")
        if penalty is not None and not (penalty > 0 and np.isfinite(penalty)):
            raise InvalidArgument(
                f"penalty must be positive, got {penalty}",
                field_violations=[FieldViolation("penalty", "must be positive")],
            )
        coll = await self._collection(name)
        model = await self._model(coll)
        snap = model.snapshot
        positions = snap.select(start, end, series)
        if len(positions) < 2 * min_size:
            raise _not_enough(2 * min_size, len(positions), what="points in the selection")
        # np.take lets the GIL go while it copies (fancy indexing held it ~50 ms at 100k).
        X = await asyncio.to_thread(np.take, coll.cache.vectors, snap.rows[positions], 0)
        cosine = coll.meta.distance == "cosine"
        out = await self._pool.submit(
            flow_tasks.chapters,
            X,
            normalize=cosine,
            min_size=min_size,
            penalty=penalty,
            k=representatives,
            random_state=0,
        )
        basins = (await self._attractors(coll, model, 64, 0, 3)).basin
        chapters = []
        for i, ((lo, hi), reps) in enumerate(zip(out.bounds, out.representatives, strict=True)):
            labels = basins[positions[lo:hi]]
            labels = labels[labels >= 0]
            chapters.append(
                await self._chapter(
                    coll,
                    snap,
                    i,
                    positions[lo:hi],
                    positions[reps],
                    X[lo:hi].mean(0),
                    f"attractor-{np.bincount(labels).argmax()}" if len(labels) else "",
                )
            )
        return ChapterSet(tuple(chapters), snap.version)

    async def split_chapters(
        self,
        name: str,
        starts,
        *,
        series: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        min_size: int = 5,
        representatives: int = 3,
    ) -> ChapterSet:
        """Chapters of a selection split at given chapter starts, with no change-point
        search and no flow fit: how DetectChapters(ONLINE) turns the monitor's online
        detector (:mod:`driftd.monitor.bocpd`) into chapters. ``attractor_id`` is empty.

        Args:
            starts: (m,) epoch seconds at which chapters after the first begin; a
                chapter begins at the first selected point at or after its time.
            series, start, end: the selection, as in :meth:`flow_chapters`.
            min_size: a chapter with fewer selected points merges into the one before
                it (the first one, cut short by ``start``, into the one after it).
            representatives: points nearest each chapter's mean, 0-100.

        Raises NotFound, InvalidArgument (limits), FailedPrecondition
        (NOT_ENOUGH_POINTS: fewer than 2 ``min_size`` selected points).
        """
        v.check_range(min_size, 2, 10_000, "min_size")
        v.check_range(representatives, 0, 100, "representatives")
        coll = await self._collection(name)
        cache = await self._loaded(coll)
        snap = cache.snapshot()
        positions = snap.select(start, end, series)
        n = len(positions)
        if n < 2 * min_size:
            raise _not_enough(2 * min_size, n, what="points in the selection")
        cuts = np.searchsorted(snap.times[positions], np.asarray(starts, dtype=np.float64))
        edges = [0]
        for c in np.unique(cuts):
            if c - edges[-1] >= min_size and c < n:
                edges.append(int(c))
        while len(edges) > 1 and n - edges[-1] < min_size:
            edges.pop()
        bounds = list(zip(edges, [*edges[1:], n], strict=True))
        cosine = coll.meta.distance == "cosine"

        def centres():
            # On a thread, with take (which lets the GIL go): a long series is a large copy.
            X = np.take(cache.vectors, snap.rows[positions], axis=0)
            if cosine:
                X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
            means = [X[lo:hi].mean(0) for lo, hi in bounds]
            return nearest_to_means(X, bounds, representatives), means

        reps, means = await asyncio.to_thread(centres)
        chapters = [
            await self._chapter(coll, snap, i, positions[lo:hi], positions[r], mean, "")
            for i, ((lo, hi), r, mean) in enumerate(zip(bounds, reps, means, strict=True))
        ]
        return ChapterSet(tuple(chapters), snap.version)

    async def _chapter(
        self,
        coll: _Collection,
        snap: Snapshot,
        index: int,
        segment: np.ndarray,
        reps: np.ndarray,
        centre: np.ndarray,
        attractor_id: str,
    ) -> ChapterInfo:
        """The chapter of time-ordered positions ``segment`` of ``snap``, with the
        points at positions ``reps`` as its representatives (similarity to ``centre``)."""
        cosine = coll.meta.distance == "cosine"
        return ChapterInfo(
            index=index,
            start_time=_utc(snap.times[segment[0]]),
            end_time=_utc(snap.times[segment[-1]]),
            point_count=len(segment),
            start_point_id=str(snap.ids[segment[0]]),
            end_point_id=str(snap.ids[segment[-1]]),
            representatives=await self._representatives(coll, snap, reps, centre, cosine),
            attractor_id=attractor_id,
        )


def _not_enough(required: int, available: int, what: str = "points") -> FailedPrecondition:
    return FailedPrecondition(
        f"too few {what} to fit a flow: {available} available, at least {required} needed",
        reason="NOT_ENOUGH_POINTS",
        metadata={"required": required, "available": available},
    )


def _similarity(a: np.ndarray, b: np.ndarray, cosine: bool) -> float:
    """Cosine similarity for cosine collections, negative Euclidean distance otherwise."""
    if cosine:
        denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
        return float(np.dot(a, b)) / denom
    return -float(np.linalg.norm(a - b))


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
