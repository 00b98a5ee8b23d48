"""Chroma adapter: driftd's collections and points in Chroma collections.

Synchronous by design: Chroma's local client is not safe across processes and
blocks, so the engine calls a ChromaStore only from its one store thread.

Schema. A driftd collection is a Chroma collection whose metadata carries
``driftd:*`` keys (dimension, distance, embed model, version and write id, time
and series keys). Each record stores its vector as the embedding, its text as the
document, and in its metadata the payload plus the time (seconds since the epoch,
under the collection's time key), the series (under its series key, absent for
the default series) and ``driftd:seq``, an insertion sequence that orders points
with equal times. Attached collections keep their own time/series keys.

Several replicas on one Chroma server (server mode) tell whether another one
wrote by the collection's write id, fresh for every write, and by the write
journal (:data:`WRITES_COLLECTION`), which catches the writes whose id a
concurrent writer overwrote: see :meth:`ChromaStore.commit`.
"""

from __future__ import annotations

import builtins
import logging
import time as _time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import chromadb
import chromadb.config
import chromadb.errors
import numpy as np
from chromadb.api.collection_configuration import CreateCollectionConfiguration
from chromadb.base_types import LiteralValue, LogicalOperator, Where, WhereOperator

from driftd.errors import AlreadyExists, FailedPrecondition, NotFound

log = logging.getLogger(__name__)

KEY_PREFIX = "driftd:"
TIME_KEY = "driftd:time"
SERIES_KEY = "driftd:series"
SEQ_KEY = "driftd:seq"
#: Chroma collections of driftd's own capabilities (write journal, routing,
#: monitoring) use this prefix; user collections may not.
SYSTEM_PREFIX = "driftd.sys."
#: Server mode: one record per write of any driftd collection (id
#: ``{collection uid}/{write id}``, metadata ``collection`` and ``time``). Unlike
#: the collection's metadata, records with distinct ids are never overwritten.
WRITES_COLLECTION = SYSTEM_PREFIX + "writes"
_SCHEMA_VERSION = 1
# Rows read per Chroma get() when loading a collection into memory.
_PAGE = 5000
# Clock difference tolerated between replicas when the journal is read by time.
_JOURNAL_SKEW = 60.0
# Journal entries are pruned after this long: far longer than one write lasts.
_JOURNAL_KEEP = 600.0


@dataclass(frozen=True)
class StoredCollection:
    """A driftd collection's persistent settings (its Chroma collection metadata)."""

    name: str
    dimension: int
    distance: str  # "cosine" | "l2" | "ip" (Chroma's hnsw space names)
    embed_model: str
    create_time: float  # seconds since the epoch
    version: int
    time_key: str = TIME_KEY
    series_key: str = SERIES_KEY
    attached: bool = False
    #: Fresh for every write: unlike ``version``, two replicas writing at once
    #: never store the same one.
    write_id: str = ""
    #: Chroma's id of the collection (not in its metadata): a collection deleted
    #: and created again under the same name has a new one.
    uid: str = ""

    @property
    def state(self) -> tuple[str, str, int]:
        """What a cached copy is compared on: same incarnation, same last write."""
        return self.uid, self.write_id, self.version

    def to_metadata(self) -> dict:
        return {
            "driftd:schema": _SCHEMA_VERSION,
            "driftd:dimension": self.dimension,
            "driftd:distance": self.distance,
            "driftd:embed_model": self.embed_model,
            "driftd:create_time": self.create_time,
            "driftd:version": self.version,
            "driftd:time_key": self.time_key,
            "driftd:series_key": self.series_key,
            "driftd:attached": self.attached,
            "driftd:write_id": self.write_id,
        }

    @classmethod
    def of(cls, col) -> StoredCollection | None:
        """A Chroma collection's driftd settings; None when it is not a driftd collection."""
        md = col.metadata
        if not md or "driftd:schema" not in md:
            return None
        return cls(
            name=col.name,
            dimension=int(md["driftd:dimension"]),
            distance=str(md["driftd:distance"]),
            embed_model=str(md.get("driftd:embed_model", "")),
            create_time=float(md["driftd:create_time"]),
            version=int(md.get("driftd:version", 0)),
            time_key=str(md.get("driftd:time_key", TIME_KEY)),
            series_key=str(md.get("driftd:series_key", SERIES_KEY)),
            attached=bool(md.get("driftd:attached", False)),
            write_id=str(md.get("driftd:write_id", "")),
            uid=str(col.id),
        )


@dataclass(frozen=True)
class SeenWrites:
    """The journal entries of one collection that a replica's cache reflects,
    read at ``at`` (epoch seconds, this host's clock; 0 = never read)."""

    ids: frozenset[str] = frozenset()
    at: float = 0.0


@dataclass
class Columns:
    """Column-wise points, as written to or loaded from Chroma.

    ids (n,) str; vectors (n, d) float32; times (n,) float64 seconds since the
    epoch; series (n,) str ("" = default); seqs (n,) int64 insertion sequence.
    texts/payloads are only filled for writes.
    """

    ids: list[str]
    vectors: np.ndarray
    times: np.ndarray
    series: list[str]
    seqs: np.ndarray
    texts: list[str | None] | None = None
    payloads: list[dict] | None = None


@dataclass(frozen=True)
class Record:
    """One stored point as read back by id."""

    id: str
    time: float
    series: str
    text: str | None
    payload: dict
    vector: np.ndarray | None


def hnsw_config(space: str) -> CreateCollectionConfiguration:
    """A collection configuration for Chroma's HNSW index in ``space`` ("cosine",
    "l2" or "ip"). Raises ValueError for another space."""
    if space == "cosine":
        return {"hnsw": {"space": "cosine"}}
    if space == "l2":
        return {"hnsw": {"space": "l2"}}
    if space == "ip":
        return {"hnsw": {"space": "ip"}}
    raise ValueError(f"not a Chroma space: {space!r}")


def parse_time_value(value: object) -> float | None:
    """A stored time (number of epoch seconds, or RFC 3339 string) as epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        # Naive times are taken as UTC, like RFC 3339 without an offset.
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return None


#: Chroma's client side of its token auth (``Authorization: Bearer <token>``).
_TOKEN_AUTH_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"


class ChromaStore:
    """driftd's view of one Chroma client (embedded directory or server).

    Args:
        path: directory of an embedded PersistentClient.
        url: ``http://host:port`` of a Chroma server; overrides ``path``.
        token: with ``url``: Chroma's token auth (``TokenAuthClientProvider``),
            sent as ``Authorization: Bearer <token>`` on every request.
    """

    def __init__(self, *, path: str = "./driftd_data", url: str = "", token: str = "") -> None:
        if url:
            from urllib.parse import urlparse

            u = urlparse(url)
            settings = (
                chromadb.config.Settings(
                    chroma_client_auth_provider=_TOKEN_AUTH_PROVIDER,
                    chroma_client_auth_credentials=token,
                )
                if token
                else chromadb.config.Settings()
            )
            self.client = chromadb.HttpClient(
                host=u.hostname or "localhost",
                port=u.port or 8000,
                ssl=u.scheme == "https",
                settings=settings,
            )
            self.location = url
        else:
            self.client = chromadb.PersistentClient(path=path)
            self.location = path
        self.max_batch_size = int(self.client.get_max_batch_size())
        # Embedded, this process is the only writer and needs no journal.
        self._journal = (
            self.client.get_or_create_collection(WRITES_COLLECTION, embedding_function=None)
            if url
            else None
        )
        self._pruned: dict[str, float] = {}  # collection uid -> last journal prune
        # name -> Chroma collection handle: looking one up costs as much as a small
        # query (a third of SearchPoints' time before), so each is looked up once.
        self._handles: dict[str, Any] = {}

    def heartbeat(self) -> None:
        """Raises if Chroma does not answer (the readiness probe)."""
        self.client.heartbeat()

    # --- collections ---------------------------------------------------------

    def _chroma(self, name: str):
        try:
            return self.client.get_collection(name, embedding_function=None)
        except (chromadb.errors.NotFoundError, ValueError) as exc:
            raise NotFound(f"collection {name!r} does not exist") from exc

    def _handle(self, meta: StoredCollection):
        """The Chroma collection of ``meta``, looked up once per incarnation (uid).

        Raises NotFound.
        """
        col = self._handles.get(meta.name)
        if col is None or str(col.id) != meta.uid:
            col = self._handles[meta.name] = self._chroma(meta.name)
        return col

    def get(self, name: str) -> StoredCollection:
        """Raises NotFound when absent or not a driftd collection."""
        meta = StoredCollection.of(self._chroma(name))
        if meta is None:
            raise NotFound(
                f"Chroma collection {name!r} is not a driftd collection; attach it first"
            )
        return meta

    def list(self) -> list[StoredCollection]:
        """All driftd collections, in name order."""
        out = []
        for col in self.client.list_collections():
            meta = StoredCollection.of(col)
            if meta is not None:
                out.append(meta)
        return sorted(out, key=lambda m: m.name)

    def create(self, meta: StoredCollection) -> StoredCollection:
        """Returns ``meta`` with its Chroma id.

        Raises AlreadyExists when a Chroma collection of that name exists.
        """
        existing = {c.name for c in self.client.list_collections()}
        if meta.name in existing:
            raise AlreadyExists(f"collection {meta.name!r} already exists")
        col = self.client.create_collection(
            meta.name,
            metadata=meta.to_metadata(),
            configuration=hnsw_config(meta.distance),
            embedding_function=None,
        )
        return replace(meta, uid=str(col.id))

    def delete(self, name: str) -> StoredCollection:
        """Deletes the collection (and its journal entries); returns what it was.

        Raises NotFound.
        """
        meta = self.get(name)
        self.client.delete_collection(name)
        self._handles.pop(name, None)
        if self._journal is not None:
            self._journal.delete(where={"collection": meta.uid})
            self._pruned.pop(meta.uid, None)
        return meta

    # --- writes of several replicas (server mode) ----------------------------

    def seen_writes(self, meta: StoredCollection) -> SeenWrites:
        """The journal entries a cache loaded from now on reflects (read it first)."""
        if self._journal is None:
            return SeenWrites()
        now = _time.time()
        return SeenWrites(frozenset(self._journal_ids(meta.uid, now - _JOURNAL_SKEW)), now)

    def commit(
        self, meta: StoredCollection, version: int, seen: SeenWrites
    ) -> tuple[StoredCollection, SeenWrites | None]:
        """Publishes a write whose points are durable: stores ``version`` under a
        fresh write id, which is what other replicas' freshness checks compare.

        Chroma has no compare-and-set, so when two replicas write at once the later
        one's settings overwrite the earlier one's: the later writer's cache then
        misses the earlier writer's points while its write id looks current. So in
        server mode each write then appends its entry to the journal and reads the
        entries added since the writer's cache was last known complete (``seen``).
        Of two overlapping writes, the one that reads later sees the other's entry:
        it stores yet another write id, so that every replica reloads, itself
        included.

        Returns:
            The stored settings, and the journal entries the writer's cache
            reflects once it applies this write; None when it must reload instead.
        """
        col = self._chroma(meta.name)
        new = replace(meta, version=version, write_id=uuid.uuid4().hex)
        _set_metadata(col, new)
        if self._journal is None:
            return new, seen
        now = _time.time()
        entry = f"{meta.uid}/{new.write_id}"
        self._journal.add(
            ids=[entry],
            embeddings=np.zeros((1, 1), dtype=np.float32),
            metadatas=[{"collection": meta.uid, "time": now}],
        )
        ids = self._journal_ids(meta.uid, seen.at - _JOURNAL_SKEW)
        others = ids - seen.ids - {entry}
        if others:
            col = self._chroma(meta.name)
            current = StoredCollection.of(col) or new
            log.info(
                "%d concurrent write(s) to %s by other replicas: caches reload",
                len(others),
                meta.name,
            )
            new = replace(
                current, version=max(current.version, version) + 1, write_id=uuid.uuid4().hex
            )
            _set_metadata(col, new)
            return new, None
        if now - self._pruned.setdefault(meta.uid, now) > _JOURNAL_KEEP:
            self._journal.delete(where=_journal_where(meta.uid, "$lt", now - _JOURNAL_KEEP))
            self._pruned[meta.uid] = now
        return new, SeenWrites(frozenset(ids), now)

    def _journal_ids(self, uid: str, since: float) -> set[str]:
        if self._journal is None:
            return set()
        got = self._journal.get(where=_journal_where(uid, "$gte", since), include=[])
        return set(got["ids"])

    def attach(
        self, name: str, *, time_key: str, series_key: str, embed_model: str
    ) -> StoredCollection:
        """Marks an existing Chroma collection as a driftd collection (no data copied).

        Raises:
            NotFound: no such Chroma collection.
            AlreadyExists: it is a driftd collection already.
            FailedPrecondition: it holds no embeddings to learn the dimension from.
        """
        col = self._chroma(name)
        if StoredCollection.of(col) is not None:
            raise AlreadyExists(f"collection {name!r} is already a driftd collection")
        sample = col.get(limit=1, include=["embeddings"])
        if not sample["ids"]:
            raise FailedPrecondition(
                f"Chroma collection {name!r} is empty: its dimension cannot be known",
                reason="NOT_ENOUGH_POINTS",
                metadata={"required": 1, "available": 0},
            )
        meta = StoredCollection(
            name=name,
            dimension=len(sample["embeddings"][0]),
            distance=_space(col),
            embed_model=embed_model,
            create_time=_time.time(),
            version=0,
            time_key=time_key,
            series_key=series_key or SERIES_KEY,
            attached=True,
            uid=str(col.id),
        )
        _set_metadata(col, meta)
        return meta

    def count(self, meta: StoredCollection) -> int:
        """Records in the collection, by whoever wrote them: how the engine notices
        another Chroma client's writes to an attached collection."""
        return int(self._chroma(meta.name).count())

    # --- points --------------------------------------------------------------

    def upsert(self, meta: StoredCollection, cols: Columns, replacing: Sequence[str] = ()) -> None:
        """Writes the points in Chroma-sized chunks; durable when it returns.

        ``replacing`` are the ids that exist already. Chroma's upsert merges
        metadata and keeps a document it is not given, so for those the keys
        the new point lacks are deleted (set to None) and a missing text
        becomes "" (read back as None): an upsert replaces the whole point.

        The batch was validated whole before; should a later chunk still fail,
        the earlier chunks of this batch are deleted again so nothing is half-written.
        """
        col = self._handle(meta)
        metadatas = []
        for i in range(len(cols.ids)):
            md = dict(cols.payloads[i]) if cols.payloads else {}
            md[meta.time_key] = float(cols.times[i])
            md[SEQ_KEY] = int(cols.seqs[i])
            if cols.series[i]:
                md[meta.series_key] = cols.series[i]
            metadatas.append(md)
        texts: builtins.list[str | None] = (
            builtins.list(cols.texts) if cols.texts else [None] * len(cols.ids)
        )
        if replacing:
            at = {pid: i for i, pid in enumerate(cols.ids)}
            for lo in range(0, len(replacing), self.max_batch_size):
                old = col.get(
                    ids=list(replacing[lo : lo + self.max_batch_size]),
                    include=["metadatas", "documents"],
                )
                for pid, old_md, old_doc in zip(
                    old["ids"], old["metadatas"], old["documents"], strict=True
                ):
                    i = at[pid]
                    for key in (old_md or {}).keys() - metadatas[i].keys():
                        metadatas[i][key] = None
                    if old_doc and texts[i] is None:
                        texts[i] = ""
        written: builtins.list[str] = []
        step = self.max_batch_size
        try:
            for lo in range(0, len(cols.ids), step):
                hi = lo + step
                col.upsert(
                    ids=cols.ids[lo:hi],
                    embeddings=cols.vectors[lo:hi],
                    metadatas=metadatas[lo:hi],
                    documents=texts[lo:hi] if any(t is not None for t in texts) else None,
                )
                written.extend(cols.ids[lo:hi])
        except Exception as exc:
            # An error need not mean nothing was stored (a full disk failed Chroma's
            # compaction after the batch was logged): read it back before answering.
            if self._stored(col, cols):
                log.warning("a write failed (%r) but its %d points are stored", exc, len(cols.ids))
                return
            if written:
                log.warning("rolling back %d points of a failed batch", len(written))
                try:
                    col.delete(ids=written)
                except Exception:
                    log.warning("rollback failed: a reload will show what is stored")
            raise

    def _stored(self, col, cols: Columns) -> bool:
        """Whether every point of ``cols`` is stored as this write left it (its
        sequence numbers); False when that cannot be read."""
        try:
            for lo in range(0, len(cols.ids), self.max_batch_size):
                ids = cols.ids[lo : lo + self.max_batch_size]
                got = col.get(ids=ids, include=["metadatas"])
                seqs = {
                    i: (md or {}).get(SEQ_KEY)
                    for i, md in zip(got["ids"], got["metadatas"], strict=True)
                }
                if any(
                    seqs.get(i) != int(s)
                    for i, s in zip(ids, cols.seqs[lo : lo + self.max_batch_size], strict=True)
                ):
                    return False
        except Exception:
            return False
        return True

    def fetch(
        self, meta: StoredCollection, ids: Sequence[str], *, include_vectors: bool
    ) -> dict[str, Record]:
        """Records by id (absent ids are simply missing from the result)."""
        col = self._handle(meta)
        include = ["metadatas", "documents"] + (["embeddings"] if include_vectors else [])
        out: dict[str, Record] = {}
        for lo in range(0, len(ids), self.max_batch_size):
            got = col.get(ids=list(ids[lo : lo + self.max_batch_size]), include=include)
            for j, pid in enumerate(got["ids"]):
                out[pid] = _record(
                    meta,
                    pid,
                    got["metadatas"][j],
                    got["documents"][j],
                    got["embeddings"][j] if include_vectors else None,
                )
        return out

    def delete_points(self, meta: StoredCollection, ids: Sequence[str]) -> None:
        col = self._handle(meta)
        for lo in range(0, len(ids), self.max_batch_size):
            col.delete(ids=list(ids[lo : lo + self.max_batch_size]))

    def iter_load(self, meta: StoredCollection) -> Iterator[Columns]:
        """The whole collection, page by page (records without a parsable time are skipped)."""
        col = self._handle(meta)
        offset = 0
        while True:
            got = col.get(limit=_PAGE, offset=offset, include=["embeddings", "metadatas"])
            n = len(got["ids"])
            if n == 0:
                return
            offset += n
            keep, times, series, seqs = [], [], [], []
            for j, md in enumerate(got["metadatas"]):
                md = md or {}
                t = parse_time_value(md.get(meta.time_key))
                if t is None:
                    continue
                keep.append(j)
                times.append(t)
                series.append(str(md.get(meta.series_key, "") or ""))
                seqs.append(int(md.get(SEQ_KEY, 0)))
            emb = np.asarray(got["embeddings"], dtype=np.float32).reshape(n, -1)
            yield Columns(
                ids=[got["ids"][j] for j in keep],
                vectors=emb[keep],
                times=np.asarray(times, dtype=np.float64),
                series=series,
                seqs=np.asarray(seqs, dtype=np.int64),
            )

    def query(
        self,
        meta: StoredCollection,
        vector: np.ndarray,
        k: int,
        where: dict | None,
        *,
        include_vectors: bool,
    ) -> builtins.list[tuple[Record, float]]:
        """Approximate k nearest (Chroma's HNSW) as ``(record, distance)``, nearest
        first: one Chroma query that also returns the records, as a user calling
        Chroma directly would (a second get by id cost as much as the query)."""
        include = ["metadatas", "documents", "distances"] + (
            ["embeddings"] if include_vectors else []
        )
        got = self._handle(meta).query(
            query_embeddings=[np.asarray(vector, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=include,
        )
        return [
            (
                _record(
                    meta,
                    pid,
                    got["metadatas"][0][j],
                    got["documents"][0][j],
                    got["embeddings"][0][j] if include_vectors else None,
                ),
                float(got["distances"][0][j]),
            )
            for j, pid in enumerate(got["ids"][0])
        ]

    def ids_where(self, meta: StoredCollection, where: dict) -> builtins.list[str]:
        """Ids of the records whose metadata matches a Chroma ``where`` filter."""
        return self._handle(meta).get(where=where, include=[])["ids"]


def _record(meta: StoredCollection, pid: str, metadata, document, embedding) -> Record:
    """A Chroma row as a Record: driftd's keys split off the payload, ``embedding``
    (d,) float32 when given."""
    md = dict(metadata or {})
    t = parse_time_value(md.pop(meta.time_key, None))
    series = str(md.pop(meta.series_key, "") or "")
    payload = {k: v for k, v in md.items() if not k.startswith(KEY_PREFIX)}
    return Record(
        pid,
        t if t is not None else float("nan"),
        series,
        document or None,  # Chroma gives "" for a record written without one
        payload,
        None if embedding is None else np.asarray(embedding, dtype=np.float32),
    )


def _space(col) -> str:
    """The collection's distance ("l2", "cosine" or "ip"), from its configuration
    (where chromadb 1.x keeps it for collections made either with
    ``configuration={"hnsw": {"space": ...}}`` or with the older
    ``metadata={"hnsw:space": ...}``), else the legacy metadata key; Chroma's
    default "l2" when neither says."""
    config = col.configuration_json or {}
    for index in ("hnsw", "spann"):
        space = (config.get(index) or {}).get("space")
        if space:
            return str(space)
    return str((col.metadata or {}).get("hnsw:space", "l2"))


def _set_metadata(col, meta: StoredCollection) -> None:
    """Stores driftd's keys beside the collection owner's metadata.

    ``modify`` refuses ``hnsw:*`` keys, even unchanged (chromadb 1.5.9: "Changing
    the distance function of a collection once it is created is not supported"),
    and replaces the whole metadata: those keys are left out. The index settings
    they made live on in the collection's configuration.
    """
    own = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
    col.modify(metadata={**own, **meta.to_metadata()})


def _journal_where(uid: str, op: Literal["$lt", "$gte"], seconds: float) -> Where:
    """The journal entries of collection ``uid`` whose time is ``op`` ``seconds``."""
    of_collection: Where = {"collection": uid}
    bound: dict[WhereOperator | LogicalOperator, LiteralValue] = {op: seconds}
    in_time: Where = {"time": bound}
    return {"$and": [of_collection, in_time]}


def payload_where(clauses: Sequence[tuple[str, str, object]]) -> dict | None:
    """Validated ``(key, operator, operand)`` clauses
    (:func:`driftd.engine.validate.check_filter`) as one Chroma ``where`` (AND);
    None when there are none."""
    where = [{key: {op: operand}} for key, op, operand in clauses]
    if not where:
        return None
    return where[0] if len(where) == 1 else {"$and": where}
