"""The engine's shared core (:class:`EngineCore`): plumbing and per-collection state.

Threads and processes, so the event loop never blocks:
- Chroma: one dedicated thread owns the client (its local client is synchronous
  and not safe across processes): :class:`driftd.store.runner.StoreRunner`.
- Embedding: one thread (onnxruntime parallelises inside).
- Flow math: a forkserver process pool (:mod:`driftd.engine.pool`).

Each collection keeps an in-memory trajectory (:mod:`driftd.engine.cache`) loaded
on first use, and one fitted flow model per collection version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

import numpy as np

from driftd import metrics, tracing
from driftd.config import Settings
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine.cache import Snapshot, TrajectoryCache
from driftd.engine.embedding import Embedders
from driftd.engine.pool import MathPool
from driftd.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from driftd.flow import tasks as flow_tasks
from driftd.flow.ensemble import FlowEnsemble
from driftd.flow.field import FlowField
from driftd.monitor.events import EventHub
from driftd.store.chroma import (
    ChromaStore,
    SeenWrites,
    StoredCollection,
)
from driftd.store.runner import StoreRunner
from driftd.types import (
    CollectionInfo,
)

log = logging.getLogger(__name__)


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
    #: Attached collections: Chroma's record count that ``cache`` reflects; another
    #: client's writes change it (-1: not read).
    stored_count: int = -1
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    model: _FlowModel | None = None

    @property
    def loaded(self) -> TrajectoryCache:
        """The trajectory cache, for code that runs after :meth:`EngineCore._loaded`."""
        if self.cache is None:
            raise RuntimeError(f"collection {self.meta.name!r} used before it was loaded")
        return self.cache


class EngineCore:
    """What every part of the engine shares: settings, the store thread, the
    embedder, the math pool, the event hub and the per-collection state (settings,
    trajectory cache, flow model, locks)."""

    def __init__(self, settings: Settings, store: StoreRunner) -> None:
        self.settings = settings
        self._runner = store
        self._owns_store = False
        self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-embed")
        self._embedders = Embedders()
        self._pool: MathPool | None = None
        self._collections: dict[str, _Collection] = {}
        self._untrimmed_bytes = 0  # vector bytes upserted since the last memory.trim
        #: Live events of every collection; writes publish here once durable.
        self.events = EventHub()

    @classmethod
    async def open(
        cls, settings: Settings | None = None, *, store: StoreRunner | None = None
    ) -> Self:
        """Starts the math pool over ``store`` (the composition root's,
        :class:`driftd.engine.root.Driftd`); without one, opens Chroma on a store
        thread of its own, closed with the engine.

        Raises:
            Exception: Chroma cannot open the directory or reach the server.
        """
        settings = settings or Settings.from_env()
        owns = store is None
        if store is None:
            store = await StoreRunner.open(
                path=settings.chroma_path, url=settings.chroma_url, token=settings.chroma_token
            )
        db = cls(settings, store)
        db._owns_store = owns
        db._pool = MathPool(db.settings.workers)
        return db

    async def close(self) -> None:
        """Stops the pool (and the store thread, if this engine opened it). Idempotent."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown)
        if self._owns_store:
            await self._runner.aclose()
        self._embed_thread.shutdown(wait=False, cancel_futures=True)

    async def ready(self) -> bool:
        """True once storage is open."""
        return self._runner.is_open

    # --- plumbing ------------------------------------------------------------

    @property
    def _store(self) -> ChromaStore:
        """The Chroma adapter: use it only in functions run by ``self._runner.call``."""
        return self._runner.store

    @property
    def pool(self) -> MathPool:
        """The math process pool.

        Raises Unavailable once the engine is closed.
        """
        if self._pool is None:
            raise Unavailable("driftd is not serving: the engine is closed")
        return self._pool

    async def embed(self, model: str, texts: list[str], *, field: str = "text") -> np.ndarray:
        """Embeds texts on the embedding thread: (n,) str -> (n, d) float32.

        The model reads the first 256 tokens of each text (all-MiniLM-L6-v2's
        window); the rest of a longer text is not embedded.

        Raises InvalidArgument(UNKNOWN_EMBED_MODEL; LIMIT_EXCEEDED: a text over
        ``max_text_bytes`` or all over ``max_request_text_bytes``, ``field``
        names them).
        """
        v.check_texts(texts, self.settings, field)
        with tracing.tracer.start_as_current_span(
            "embed", attributes={"driftd.embed_model": model, "driftd.texts": len(texts)}
        ):
            return await asyncio.get_running_loop().run_in_executor(
                self._embed_thread, self._embedders.embed, model, texts
            )

    async def _collection(self, name: str) -> _Collection:
        """The collection's state. With a shared Chroma server other replicas may
        write too, so there its settings are re-read on every call (one small
        request) and a write id or incarnation other than the cached one drops the
        cached trajectory and flow model. An attached collection may also take
        writes from its owner's own Chroma clients, which driftd's write ids do not
        see: there a record count other than the cached one drops the cache too
        (one ``count`` per call; an overwrite that keeps the count is not noticed)."""
        v.check_collection_id(name, "name")
        coll = self._collections.get(name)
        if coll is None or self.settings.chroma_url:
            try:
                meta = await self._runner.call(lambda: self._store.get(name))
            except NotFound:
                gone = self._collections.pop(name, None)
                if gone is not None:
                    self.events.drop(name, gone.meta.uid)  # deleted through another replica
                raise
            coll = self._current(meta)
        if coll.meta.attached and coll.cache is not None:
            attached = coll.meta
            count = await self._runner.call(lambda: self._store.count(attached))
            if count != coll.stored_count:
                log.info("%s: written by another Chroma client: reloading", name)
                self._invalidate(coll)
                coll = self._collections[name]
        return coll

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

    def _commit(
        self, coll: _Collection, version: int
    ) -> tuple[StoredCollection, SeenWrites | None]:
        """:meth:`ChromaStore.commit` of a write to ``coll`` (on the store thread);
        for an attached collection the record count it leaves is noted too."""
        meta, seen = self._store.commit(coll.meta, version, coll.seen)
        if meta.attached:
            coll.stored_count = self._store.count(meta)
        return meta, seen

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

                def load() -> tuple[TrajectoryCache, SeenWrites, int]:
                    seen = self._store.seen_writes(meta)  # before the points it covers
                    count = self._store.count(meta) if meta.attached else -1  # likewise
                    cache = TrajectoryCache(meta.dimension, meta.version)
                    for cols in self._store.iter_load(meta):
                        cache.upsert(cols, meta.version)
                    memory.trim()  # Chroma's pages of embeddings, now in the cache
                    return cache, seen, count

                cache, coll.seen, coll.stored_count = await self._runner.call(load)
                coll.cache = cache
                metrics.set_cached_points(meta.name, len(cache))
                log.info(
                    "loaded %s: %d points in %.2f s",
                    meta.name,
                    len(cache),
                    time.perf_counter() - t0,
                )
        return coll.loaded

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
            if meta.distance == "cosine" and v.is_zero(vec):
                raise InvalidArgument(
                    f"{field}.vector is all zero: it has no cosine direction",
                    reason="ZERO_VECTOR",
                    field_violations=[FieldViolation(f"{field}.vector", "must not be all zero")],
                )
            return vec
        if text:
            if not meta.embed_model:
                raise FailedPrecondition(
                    "the collection has no embed model; send a vector",
                    reason="NO_EMBED_MODEL",
                    field_violations=[FieldViolation(f"{field}.text", "no embed model")],
                )
            return (await self.embed(meta.embed_model, [text], field=f"{field}.text"))[0]
        cache = await self._loaded(coll)
        row = cache.row_of(point_id)
        if row is None:
            raise NotFound(
                f"point {point_id!r} does not exist",
                reason="POINT_NOT_FOUND",
                field_violations=[FieldViolation(f"{field}.point_id", "not found")],
            )
        return cache.vectors[row].copy()
