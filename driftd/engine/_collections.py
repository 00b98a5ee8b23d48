"""Collections: create, get, list, delete, attach (part of :class:`AsyncDriftDB`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from driftd import metrics
from driftd.engine import memory
from driftd.engine import validate as v
from driftd.engine._core import EngineCore, _Collection
from driftd.engine.cache import TrajectoryCache
from driftd.errors import (
    FieldViolation,
    InvalidArgument,
)
from driftd.store.chroma import (
    StoredCollection,
)
from driftd.types import (
    CollectionInfo,
)

log = logging.getLogger(__name__)


class CollectionsMixin(EngineCore):
    """Collection methods of the engine."""

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
            name: 3-512 chars of [A-Za-z0-9._-], alphanumeric at both ends.
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
        v.check_range(dim, 1, self.settings.max_dimension, "collection.dimension")
        meta = StoredCollection(name, int(dim), distance, embed_model, time.time(), 0)
        meta = await self._runner.call(lambda: self._store.create(meta))
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
        self,
        *,
        page_size: int = 100,
        page_token: str = "",
        load: Callable[[str], bool] = lambda name: True,
    ) -> tuple[list[CollectionInfo], str]:
        """A page of collections in name order and the next page token ("" at the end).

        The token is the last name of the previous page. A collection for which
        ``load(name)`` is False is not read into memory (another replica owns
        it): its counts and time span are left zero and unset.

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
        metas = await self._runner.call(self._store.list)
        after = [m for m in metas if m.name > page_token]
        page = after[:page_size]
        out = []
        for m in page:
            if load(m.name):
                coll = self._current(m)
                await self._loaded(coll)
            else:
                coll = _Collection(m)  # not kept: its owner holds its state
            out.append(self._info(coll))
        next_token = page[-1].name if len(after) > page_size else ""
        return out, next_token

    async def collection_count(self) -> int:
        """How many driftd collections the store holds (for the collections quota)."""
        return len(await self._runner.call(self._store.list))

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forgets every collection ``keep(name)`` rejects (in server mode with
        peers: another replica owns it now): its trajectory cache and flow model
        go, and its watches end with UNAVAILABLE (OWNER_MOVED) so their clients
        resume at the new owner. A later call for it reads it from Chroma again."""
        lost = [n for n in self._collections if not keep(n)]
        for name in lost:
            coll = self._collections.pop(name)
            if coll.model is not None:
                metrics.CACHED_MODELS.dec()
            with contextlib.suppress(KeyError):
                metrics.CACHED_POINTS.remove(name)
            self.events.release(name)
        if lost:
            self._runner.call(memory.trim)  # the dropped caches' pages

    async def delete_collection(self, name: str) -> None:
        """Deletes the collection and its points. Raises NotFound."""
        v.check_collection_id(name, "name")
        gone = await self._runner.call(lambda: self._store.delete(name))
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
        meta = await self._runner.call(
            lambda: self._store.attach(
                chroma_collection, time_key=time_key, series_key=series_key, embed_model=embed_model
            )
        )
        coll = self._collections[chroma_collection] = _Collection(meta)
        await self._loaded(coll)
        return self._info(coll)
