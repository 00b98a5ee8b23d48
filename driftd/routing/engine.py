"""The routing engine: conversations, branches and facts, kept through its
repository (:class:`driftd.routing.ports.RoutingRepository`; in Chroma by
:mod:`driftd.store.routing`).

Messages. One record per message, id ``{conversation_id}/{key}``: ``key`` is a
time-ordered unique id (:func:`message_key`: nanoseconds of the writer's clock,
never below the latest key the writer has seen in the conversation, plus 64
random bits), so two replicas writing to one conversation at once never store
the same id and no acknowledged message is overwritten. A conversation's
messages are ordered by key (records written before keys existed have none and
come first, by their stored ``index``). A record holds the message's
embedding, its text as the document, and in its metadata the conversation,
key, index (its position when routed), message id, role, time, the decision
(branch, action, similarity, confidence, reason, parent branch, cluster) and
the routing config in force (JSON). This is the source of truth: a
conversation's branches, centroids and config are rebuilt from its messages.
Facts stored by ExtractFacts are one record per branch (id
``{conversation_id}/{branch_id}``).

Durability. With embedded Chroma a routed message is made durable in the
write-ahead log (:mod:`driftd.routing.wal`, ``driftd-routing.wal`` in the
Chroma directory) and moved to Chroma in batches by a background task; every
read first drains what is pending, and start-up replays the log. With a Chroma
server (several replicas) there is no log: the message is written to Chroma
before it is acknowledged, so every replica reads it at once and a replaced pod
loses nothing.

In memory, each conversation keeps its router state (per-branch sums of unit
vectors, recent vectors, word counts), loaded from storage on first use and
kept in an LRU of ``max_conversations``. A per-conversation lock orders its
messages; different conversations route concurrently. A message is decided,
made durable, and only then applied to memory, in a task shielded from the
caller's cancellation, so memory and storage never disagree.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from time import time_ns
from typing import Any, TypeVar, cast

import numpy as np

from driftd.config import Settings
from driftd.engine import validate as v
from driftd.engine.embedding import Embedders
from driftd.errors import FieldViolation, InvalidArgument, NotFound, Unavailable
from driftd.routing import llm, wal
from driftd.routing.convert import check_conversation_id
from driftd.routing.facts import SourceMessage, extract_facts
from driftd.routing.ports import RoutingRepository
from driftd.routing.projection import shipped_projection
from driftd.routing.router import (
    BranchState,
    ConversationState,
    Decision,
    Router,
    RoutingConfig,
    branch_of,
    unit,
)
from driftd.routing.types import (
    ROLES,
    BranchContext,
    BranchFacts,
    BranchInfo,
    BranchList,
    Fact,
    FactsResult,
    MessageInfo,
    Role,
    RouteResult,
)
from driftd.store.system import StoredRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

MESSAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Server-assigned message ids; clients may not use this form.
_SERVER_MESSAGE_ID = re.compile(r"^m[0-9]+$")
DEFAULT_PAGE_SIZE = 100
WAL_FILE = "driftd-routing.wal"
# The mover writes logged messages to Chroma once no message has been logged for
# _IDLE_SECONDS, or at once when _MAX_PENDING wait: a Chroma write slows the
# RouteMessage calls that overlap it (measured p99 15 ms without overlap, 45 ms
# with a write every 0.25 s), and batches cost a fraction of single writes.
# Readers drain at once anyway.
_IDLE_SECONDS = 0.05
_MAX_PENDING = 1000
# Seconds between retries when moving logged messages to Chroma fails.
_RETRY_SECONDS = 1.0

#: Allowed values of each RoutingConfig field (inclusive).
CONFIG_RANGES: dict[str, tuple[float, float]] = {
    "stay_threshold": (-1.0, 1.0),
    "route_threshold": (-1.0, 2.0),
    "route_margin": (-1.0, 2.0),
    "new_cluster_threshold": (-1.0, 1.0),
    "answer_boost": (0.0, 1.0),
    "short_message_boost": (0.0, 1.0),
    "new_word_penalty": (0.0, 1.0),
    "cue_weight": (0.0, 1.0),
    "anchor_weight": (0.0, 1.0),
    "recent_messages": (0, 100),
    "route_candidates": (1, 1000),
}


def _branch_id(index: int) -> str:
    return f"b{index}"


_last_key_ns = 0


def message_key(after: str = "") -> str:
    """A new message key: 32 lowercase hex digits, 16 of nanoseconds since the
    epoch and 16 random. Keys compare (as strings) in creation order within this
    process, and later than ``after`` (a key already stored in the conversation,
    possibly by another replica with a clock ahead of this one's), so appending
    keeps the conversation's order even across replicas; the random half makes
    two writers' keys distinct even within one nanosecond. Like UUIDv7 (RFC 9562)
    with a nanosecond clock and the ``after`` floor of a hybrid logical clock.
    """
    global _last_key_ns
    floor = int(after[:16], 16) if after else 0
    _last_key_ns = max(time_ns(), _last_key_ns + 1, floor + 1)
    return f"{_last_key_ns:016x}{secrets.randbits(64):016x}"


def _order(md: Mapping) -> tuple[str, int]:
    """Sort key of a stored message: its key, then (records from before keys) its index."""
    return str(md.get("key", "")), int(md["index"])


def merge_config(base: RoutingConfig, changes: Mapping[str, float | int | bool]) -> RoutingConfig:
    """``base`` with ``changes`` applied.

    Raises:
        InvalidArgument: an unknown field (INVALID_FIELD), a value of the wrong
            type (INVALID_FIELD) or outside :data:`CONFIG_RANGES` (LIMIT_EXCEEDED);
            the field path is ``config.{name}``.
    """
    kinds = {f.name: type(getattr(base, f.name)) for f in fields(RoutingConfig)}
    clean: dict[str, Any] = {}  # each converted to its field's type
    for key, value in changes.items():
        at = f"config.{key}"
        kind = kinds.get(key)
        ok = kind is not None and (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, int | float) and not isinstance(value, bool)
        )
        if ok and kind is int:
            ok = float(value).is_integer()
        if ok and kind is float:
            ok = math.isfinite(value)
        if kind is None or not ok:
            raise InvalidArgument(
                f"{at}: {value!r} is not a valid value"
                + ("" if kind else f"; known fields: {', '.join(kinds)}"),
                field_violations=[FieldViolation(at, "unknown field or wrong type")],
            )
        if key in CONFIG_RANGES:
            v.check_range(value, *CONFIG_RANGES[key], at)
        clean[key] = kind(value)
    return replace(base, **clean)


@dataclass
class _StoredFacts:
    facts: tuple[Fact, ...]
    extractor: str
    message_count: int


@dataclass
class _Conversation:
    """A loaded conversation: router state, message id -> record id, stored
    facts, and the latest message key."""

    id: str
    state: ConversationState = field(default_factory=ConversationState)
    message_ids: dict[str, str] = field(default_factory=dict)
    facts: dict[int, _StoredFacts] = field(default_factory=dict)
    last_key: str = ""


@dataclass(frozen=True)
class _Row:
    """A stored message as read back (without its vector)."""

    index: int
    id: str
    role: str
    content: str
    time: float
    branch: int
    action: str

    def info(self) -> MessageInfo:
        return MessageInfo(
            self.id,
            self.index,
            self.role,  # type: ignore[arg-type]
            self.content,
            datetime.fromtimestamp(self.time, UTC),
            self.action,  # type: ignore[arg-type]
        )


class RoutingEngine:
    """Conversation routing. Opens itself on first use; close with :meth:`aclose`.

    Args:
        settings: ``embed_model`` (for a new store), ``chroma_url`` (set: no
            write-ahead log) and ``chroma_path`` (where the log lives otherwise).
        repository: where messages and facts are kept.
        max_conversations: conversations kept in memory (least recently used
            ones are dropped and reloaded on demand).
        facts_llm: the OpenAI-compatible fact extractor; None: the rules.
    """

    def __init__(
        self,
        settings: Settings,
        repository: RoutingRepository,
        *,
        max_conversations: int = 2_000,
        facts_llm: llm.LLMConfig | None = None,
    ) -> None:
        self._settings = settings
        self._repo = repository
        # Replaced at set-up by one with the embed model's topic projection;
        # applying stored decisions (all this one is used for) does not need it.
        self._router = Router()
        self._max_conversations = max_conversations
        self._facts_llm = facts_llm
        self._cache: OrderedDict[str, _Conversation] = OrderedDict()
        # Embedded Chroma: ids of the conversations with messages, so a new
        # conversation's first message needs no read. (Another replica may add
        # conversations to a Chroma server at any time: there, always read.)
        self._known: set[str] = set()
        # Bumped by retain: state read or built before it is not cached after it.
        self._epoch = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._setup_lock = asyncio.Lock()
        self._model = ""
        self._dimension = 0
        self._wal: wal.WriteAheadLog | None = None
        self._wal_thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-routing-wal")
        # Routing embeds one short text per call on its own single-threaded model:
        # measured p99 13 ms against 28 ms for onnxruntime's default threads on a
        # busy 2-core machine (the same vectors), and no wait behind bulk
        # embeddings of PointService uploads on the engine's shared embed thread.
        self._embedder = Embedders(threads=1)
        self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="driftd-routing-embed")
        self._pending: list[tuple[int, StoredRecord]] = []  # (number in the log, record)
        self._drain_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._mover: asyncio.Task[None] | None = None

    # --- plumbing ------------------------------------------------------------

    async def _setup(self) -> None:
        """Opens the repository, replays the write-ahead log (embedded Chroma
        only) and starts the task that moves logged messages to storage, and
        learns the embed model's dimension."""
        if self._dimension:
            return
        async with self._setup_lock:
            if self._dimension:
                return
            model = await self._repo.open(self._settings.embed_model)
            if not self._settings.chroma_url:
                log_ = wal.WriteAheadLog(Path(self._settings.chroma_path) / WAL_FILE)
                records = await self._on_wal(log_.read)
                if records:
                    await self._repo.add_messages(records)
                    log.info("replayed %d routed messages from %s", len(records), log_.path)
                await self._on_wal(log_.truncate, log_.appended)
                self._wal = log_
                self._mover = asyncio.get_running_loop().create_task(self._move_forever())
                # One writer: the set of conversations stays true without reads.
                self._known = await self._repo.conversation_ids()
            self._model = model
            # A file read (once per model): off the loop like every other one.
            self._router = Router(await asyncio.to_thread(shipped_projection, model))
            dimension = int((await self._embed(["dimension probe"])).shape[1])
            self._dimension = dimension  # last: a non-zero dimension means set up

    async def _embed(self, texts: list[str]) -> np.ndarray:
        """(n,) texts -> (n, d) float32 with the routing model, on the routing
        embed thread. Raises InvalidArgument(UNKNOWN_EMBED_MODEL)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._embed_thread, self._embedder.embed, self._model, texts
        )

    async def aclose(self) -> None:
        """Moves pending messages to storage and stops the engine's task and
        threads. Idempotent."""
        if self._mover is not None:
            self._mover.cancel()
            self._mover = None
        if self._wal is not None:
            await self._drain()
            self._wal.close()
            self._wal = None
        self._wal_thread.shutdown(wait=True)
        self._embed_thread.shutdown(wait=True)

    async def _on_wal(self, fn: Callable[..., T], *args: object) -> T:
        """Runs a blocking log call on the log's own thread (never the store's,
        which may be busy with a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self._wal_thread, fn, *args)

    async def _drain(self) -> None:
        """Moves every pending message to storage, then empties the log if nothing
        newer was logged meanwhile."""
        async with self._drain_lock:
            batch = list(self._pending)
            if not batch or self._wal is None:
                return
            await self._repo.add_messages([r for _, r in batch])
            del self._pending[: len(batch)]
            await self._on_wal(self._wal.truncate, batch[-1][0])

    async def _move_forever(self) -> None:
        """Drains in the pauses between messages (or when too many wait)."""
        while True:
            await self._kick.wait()
            while len(self._pending) < _MAX_PENDING:
                self._kick.clear()
                try:
                    await asyncio.wait_for(self._kick.wait(), _IDLE_SECONDS)
                except TimeoutError:
                    break
            self._kick.clear()
            try:
                await self._drain()
            except Unavailable:
                return  # the engine is closing; the log keeps the messages for the next start
            except Exception:
                log.exception("moving routed messages to Chroma failed; retrying")
                await asyncio.sleep(_RETRY_SECONDS)
                self._kick.set()

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Drops the in-memory state of every conversation ``keep(id)`` rejects
        (in server mode with peers: another replica owns it now); if it comes
        back here, it is read from Chroma again, with what the other owner wrote."""
        self._epoch += 1
        for cid in [c for c in self._cache if not keep(c)]:
            del self._cache[cid]

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _evict(self) -> None:
        """Drops least recently used conversations beyond the cache size (not
        those being worked on)."""
        for cid in list(self._cache):
            if len(self._cache) <= self._max_conversations:
                break
            lock = self._locks.get(cid)
            if lock is None or not lock.locked():
                del self._cache[cid]
                self._locks.pop(cid, None)

    async def _conversation(self, cid: str) -> _Conversation:
        """The conversation's state (empty if it has no messages), loading it from
        Chroma on first use. Call with the conversation's lock held."""
        conv = self._cache.get(cid)
        if conv is not None:
            self._cache.move_to_end(cid)
            return conv
        if self._wal is not None and cid not in self._known:
            return _Conversation(cid)
        epoch = self._epoch
        await self._drain()
        got = await self._repo.messages(cid, embeddings=True)
        facts = await self._repo.facts(cid)
        conv = _Conversation(cid)
        for rec in sorted(got, key=lambda r: _order(r.metadata)):
            md = rec.metadata
            cfg = RoutingConfig.from_dict(json.loads(md["config"]))
            self._router.apply(
                conv.state,
                cfg,
                _decision_from_metadata(md),
                unit(rec.embedding),
                rec.document,
                md["time"],
            )
            conv.message_ids[md["message_id"]] = rec.id
            conv.last_key = max(conv.last_key, str(md.get("key", "")))
        for rec in facts:
            md = rec.metadata
            conv.facts[int(md["branch"])] = _StoredFacts(
                tuple(Fact(**f) for f in json.loads(rec.document)),
                str(md["extractor"]),
                int(md["message_count"]),
            )
        if got and epoch == self._epoch:
            self._cache[cid] = conv
            self._evict()
        return conv

    async def _existing(self, cid: str) -> _Conversation:
        """Like :meth:`_conversation`; raises NotFound(CONVERSATION_NOT_FOUND) when empty."""
        conv = await self._conversation(cid)
        if not conv.state.message_count:
            raise NotFound(
                f"conversation {cid!r} has no messages",
                reason="CONVERSATION_NOT_FOUND",
                metadata={"conversation": cid},
            )
        return conv

    # --- routing -------------------------------------------------------------

    async def route(
        self,
        conversation_id: str,
        *,
        role: str,
        content: str = "",
        vector=None,
        time: datetime | None = None,
        message_id: str = "",
        config: Mapping[str, float | int | bool] | None = None,
    ) -> RouteResult:
        """Routes one message and logs it; returns once it is durable.

        Args:
            conversation_id: created by its first message.
            role: "user" or "assistant".
            content: the text; embedded unless ``vector`` is given.
            vector: the message's embedding, (d,) of the embed model's dimension.
            time: when it was written; None means now.
            message_id: the client's id; re-sending it returns the stored
                decision. "" assigns ``m{index}``.
            config: RoutingConfig fields to change from this message on.

        Raises:
            InvalidArgument: INVALID_NAME, INVALID_ROLE, MISSING_CONTENT,
                DIMENSION_MISMATCH, NON_FINITE_VECTOR, INVALID_FIELD (message id,
                zero vector, config field), LIMIT_EXCEEDED (content length,
                config value). Nothing is written.
        """
        check_conversation_id(conversation_id)
        if role not in ROLES:
            raise InvalidArgument(
                f"role must be one of {', '.join(ROLES)}, got {role!r}",
                reason="INVALID_ROLE",
                field_violations=[FieldViolation("role", "must be user or assistant")],
            )
        content = content or ""
        if vector is None and not content.strip():
            raise InvalidArgument(
                "a message needs a non-empty content or a vector",
                reason="MISSING_CONTENT",
                field_violations=[FieldViolation("content", "required (or vector)")],
            )
        v.check_texts([content], self._settings, "content")
        if message_id and (
            not MESSAGE_ID.match(message_id) or _SERVER_MESSAGE_ID.match(message_id)
        ):
            raise InvalidArgument(
                f"invalid message id {message_id!r}: use 1-128 characters of [A-Za-z0-9._:-] "
                "starting with a letter or digit; 'm{number}' is reserved for server ids",
                field_violations=[FieldViolation("message_id", "invalid")],
            )
        merge_config(RoutingConfig(), config or {})  # validate before any work
        when = (time or datetime.now(UTC)).timestamp()
        await self._setup()
        if vector is not None:
            x = self._checked_vector(vector)
        else:
            x = unit((await self._embed([content]))[0])
        # Once the decision is being made, finish it even if the caller goes away:
        # a logged message must also be applied to memory.
        commit = asyncio.ensure_future(
            self._commit(
                conversation_id,
                role,
                content,
                x.astype(np.float32),
                when,
                message_id,
                config or {},
            )
        )
        return await asyncio.shield(commit)

    async def _commit(
        self,
        cid: str,
        role: str,
        content: str,
        stored: np.ndarray,
        when: float,
        message_id: str,
        changes: Mapping[str, float | int | bool],
    ) -> RouteResult:
        """Decides under the conversation's lock, logs the message, applies it.

        ``stored`` (d,) float32 is the vector as Chroma keeps it; routing uses its
        unit float64 form, exactly as a reload from Chroma will.
        """
        x = unit(stored)
        async with self._lock(cid):
            epoch = self._epoch
            conv = await self._conversation(cid)
            if message_id and message_id in conv.message_ids:
                return await self._stored_result(conv, conv.message_ids[message_id])
            state = conv.state
            cfg = merge_config(state.config, changes)
            decision = self._router.decide(state, cfg, cast(Role, role), x, content)  # checked
            index = state.message_count
            mid = message_id or f"m{index}"
            key = message_key(conv.last_key)
            md = _decision_metadata(decision)
            md.update(
                conversation=cid,
                key=key,
                index=index,
                message_id=mid,
                role=role,
                time=when,
                config=json.dumps(cfg.to_dict(), sort_keys=True),
            )
            record = StoredRecord(f"{cid}/{key}", md, content, stored)
            if self._wal is not None:
                number = await self._on_wal(self._wal.append, record)
                self._pending.append((number, record))
                self._kick.set()
            else:
                await self._repo.add_messages([record])
            self._known.add(cid)
            branch = self._router.apply(state, cfg, decision, x, content, when)
            conv.message_ids[mid] = record.id
            conv.last_key = key
            if epoch == self._epoch:  # else the conversation may have moved: reread it
                self._cache[cid] = conv
                self._cache.move_to_end(cid)
                self._evict()
            return _result(cid, decision, branch.words.topic(), mid)

    def _checked_vector(self, vector) -> np.ndarray:
        """The vector as a unit float64 (d,) array.

        Raises InvalidArgument (DIMENSION_MISMATCH, NON_FINITE_VECTOR, INVALID_FIELD).
        """
        vec = np.asarray(vector, dtype=np.float64).ravel()
        if vec.size != self._dimension:
            raise InvalidArgument(
                f"vector has {vec.size} values; the embed model {self._model!r} "
                f"gives {self._dimension}",
                reason="DIMENSION_MISMATCH",
                field_violations=[FieldViolation("vector", f"must have {self._dimension} values")],
                metadata={"expected": self._dimension, "actual": vec.size},
            )
        if not np.isfinite(vec).all():
            raise InvalidArgument(
                "vector contains NaN or infinity",
                reason="NON_FINITE_VECTOR",
                field_violations=[FieldViolation("vector", "must be finite")],
            )
        if not np.linalg.norm(vec) > 0:
            raise InvalidArgument(
                "vector is all zeros: it has no direction to compare",
                field_violations=[FieldViolation("vector", "must not be all zeros")],
            )
        return unit(vec)

    async def _stored_result(self, conv: _Conversation, record_id: str) -> RouteResult:
        """The decision stored in message record ``record_id`` (a retried message id)."""
        await self._drain()
        rec = await self._repo.message(record_id)
        if rec is None:  # message_ids only holds records known to be stored
            raise RuntimeError(f"message record {record_id!r} is missing")
        md = rec.metadata
        decision = _decision_from_metadata(md)
        state = conv.state
        index = branch_of(
            dict(state.labels), len(state.branches), state.current, decision.branch, False
        )
        topic = state.branches[index].words.topic()
        return _result(conv.id, decision, topic, md["message_id"])

    # --- reading -------------------------------------------------------------

    async def list_branches(
        self, conversation_id: str, *, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> BranchList:
        """A page of the conversation's branches in creation order.

        Raises:
            InvalidArgument: bad id (INVALID_NAME), page_size outside 1-1000
                (LIMIT_EXCEEDED), a page token not issued here (INVALID_PAGE_TOKEN).
            NotFound(CONVERSATION_NOT_FOUND).
        """
        check_conversation_id(conversation_id, "parent")
        v.check_range(page_size, 1, 1000, "page_size")
        if page_token and not page_token.isdigit():
            raise InvalidArgument(
                "page_token is not one this server issued",
                reason="INVALID_PAGE_TOKEN",
                field_violations=[FieldViolation("page_token", "invalid")],
            )
        start = int(page_token or 0)
        await self._setup()
        async with self._lock(conversation_id):
            conv = await self._existing(conversation_id)
            state = conv.state
            page = [_branch_info(conversation_id, state, b) for b in state.branches]
        end = start + page_size
        return BranchList(
            tuple(page[start:end]),
            str(end) if end < len(page) else "",
            _branch_id(state.current),
        )

    async def _snapshot(self, cid: str, branch_id: str):
        """(conversation, branch infos, messages so far, stored facts) under the lock.

        Raises NotFound (CONVERSATION_NOT_FOUND, BRANCH_NOT_FOUND).
        """
        await self._setup()
        async with self._lock(cid):
            conv = await self._existing(cid)
            state = conv.state
            index = int(branch_id[1:])
            if index >= len(state.branches):
                raise NotFound(
                    f"conversation {cid!r} has no branch {branch_id!r}",
                    reason="BRANCH_NOT_FOUND",
                    metadata={"conversation": cid, "branch": branch_id},
                    field_violations=[FieldViolation("name", "no such branch")],
                )
            infos = [_branch_info(cid, state, b) for b in state.branches]
            return conv, infos, state.message_count, dict(conv.facts)

    async def _rows(self, cid: str, count: int) -> list[_Row]:
        """The conversation's first ``count`` messages, in order (texts, no vectors);
        ``index`` is the position in that order."""
        await self._drain()
        got = await self._repo.messages(cid, embeddings=False)
        rows = []
        labels: dict[int, int] = {}
        branches, current = 0, -1
        for i, r in enumerate(sorted(got, key=lambda r: _order(r.metadata))[:count]):
            md = r.metadata
            new = bool(md["new_branch"])
            current = branch_of(labels, branches, current, int(md["branch"]), new)
            branches += new
            rows.append(
                _Row(i, md["message_id"], md["role"], r.document, md["time"], current, md["action"])
            )
        return rows

    async def branch_context(
        self, conversation_id: str, branch_id: str, *, max_messages: int = 0
    ) -> BranchContext:
        """The branch's (latest ``max_messages``, 0: all) messages in order and the
        facts of every branch: those stored by ExtractFacts while still current
        (extracted from the branch's present message count), the rules' otherwise.

        Raises:
            InvalidArgument: max_messages outside 0-100,000 (LIMIT_EXCEEDED).
            NotFound: CONVERSATION_NOT_FOUND, BRANCH_NOT_FOUND.
        """
        check_conversation_id(conversation_id, "name")
        v.check_range(max_messages, 0, 100_000, "max_messages")
        _, infos, count, stored = await self._snapshot(conversation_id, branch_id)
        rows = await self._rows(conversation_id, count)
        by_branch: dict[int, list[_Row]] = {}
        for r in rows:
            by_branch.setdefault(r.branch, []).append(r)
        index = int(branch_id[1:])
        mine = by_branch.get(index, [])
        if max_messages:
            mine = mine[-max_messages:]
        facts = []
        for i, info in enumerate(infos):
            kept = stored.get(i)
            if kept is not None and kept.message_count == info.message_count:
                found = kept.facts
            else:
                found = tuple(extract_facts(_sources(by_branch.get(i, []))))
            facts.append(BranchFacts(info.branch_id, info.topic, i == index, found))
        return BranchContext(
            infos[index],
            tuple(r.info() for r in mine),
            tuple(facts),
        )

    async def extract_facts(self, conversation_id: str, branch_id: str) -> FactsResult:
        """Extracts the branch's facts now (the LLM endpoint if configured, else
        the rules) and stores them with the message count they reflect.

        Raises:
            NotFound: CONVERSATION_NOT_FOUND, BRANCH_NOT_FOUND.
            Unavailable(FACTS_EXTRACTOR_FAILED): the LLM endpoint failed.
        """
        check_conversation_id(conversation_id, "name")
        conv, infos, count, _ = await self._snapshot(conversation_id, branch_id)
        index = int(branch_id[1:])
        rows = [r for r in await self._rows(conversation_id, count) if r.branch == index]
        sources = _sources(rows)
        if self._facts_llm is not None:
            found = tuple(await asyncio.to_thread(llm.extract, self._facts_llm, sources))
            extractor = self._facts_llm.name
        else:
            found, extractor = tuple(extract_facts(sources)), "rules"
        centroid = unit(conv.state.branches[index].total).astype(np.float32)
        md = {
            "conversation": conversation_id,
            "branch": index,
            "message_count": len(rows),
            "extractor": extractor,
        }
        doc = json.dumps([asdict(f) for f in found])
        await self._repo.save_facts(
            StoredRecord(f"{conversation_id}/{branch_id}", md, doc, centroid)
        )
        async with self._lock(conversation_id):
            conv.facts[index] = _StoredFacts(found, extractor, len(rows))
        return FactsResult(conversation_id, branch_id, found, extractor, len(rows))


# --- helpers -----------------------------------------------------------------


def _sources(rows: list[_Row]) -> list[SourceMessage]:
    return [SourceMessage(r.id, r.role, r.content) for r in rows]


def _decision_metadata(d: Decision) -> dict:
    return {
        "action": d.action,
        "drift_action": d.drift_action,
        "branch": d.branch,
        "similarity": d.similarity,
        "confidence": d.confidence,
        "reason": d.reason,
        "new_branch": d.is_new_branch,
        "previous_branch": d.previous_branch,
        "cluster": d.cluster,
    }


def _decision_from_metadata(md: Mapping) -> Decision:
    return Decision(
        action=md["action"],
        drift_action=md["drift_action"],
        branch=int(md["branch"]),
        similarity=float(md["similarity"]),
        confidence=float(md["confidence"]),
        reason=str(md["reason"]),
        is_new_branch=bool(md["new_branch"]),
        previous_branch=int(md["previous_branch"]),
        cluster=int(md["cluster"]),
    )


def _result(cid: str, d: Decision, topic: str, message_id: str) -> RouteResult:
    return RouteResult(
        conversation_id=cid,
        action=d.action,
        drift_action=d.drift_action,
        branch_id=_branch_id(d.branch),
        branch_topic=topic,
        similarity=d.similarity,
        confidence=d.confidence,
        reason=d.reason,
        is_new_branch=d.is_new_branch,
        message_id=message_id,
        previous_branch_id=_branch_id(d.previous_branch) if d.previous_branch >= 0 else "",
    )


def _branch_info(cid: str, state: ConversationState, b: BranchState) -> BranchInfo:
    return BranchInfo(
        conversation_id=cid,
        branch_id=_branch_id(b.index),
        topic=b.words.topic(),
        message_count=b.count,
        create_time=datetime.fromtimestamp(b.create_time, UTC),
        update_time=datetime.fromtimestamp(b.update_time, UTC),
        parent_branch_id=_branch_id(b.parent) if b.parent >= 0 else "",
        cluster=b.cluster,
        current=b.index == state.current,
    )


def default_engine(settings: Settings, repository: RoutingRepository) -> RoutingEngine:
    """A RoutingEngine with the fact extractor from the environment."""
    return RoutingEngine(settings, repository, facts_llm=llm.LLMConfig.from_env())
