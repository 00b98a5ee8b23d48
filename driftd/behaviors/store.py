"""Behaviours, and ProcessBehaviors / ListBehaviors over them.

Storage, through :class:`driftd.behaviors.ports.BehaviorRepository` (in Chroma:
:mod:`driftd.store.behaviors`, one system collection per dimension). A record is
one behaviour: its id a random uuid4 (never a counter, so two writers cannot
collide), its unit vector as the embedding, its text as the document, and its
fields as metadata (times in integer microseconds since the epoch; drift
signals as JSON). Only behaviours of the same dimension are compared: vectors
of different dimensions come from different models.

Consistency. Requests of one user are serialised (a lock striped by user id);
a request is validated and its texts embedded before anything is read for the
decisions, and all its changes are written with one Chroma upsert per
dimension at the end, so a rejected request writes nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from driftd.behaviors import rules
from driftd.behaviors.ports import BehaviorRepository
from driftd.behaviors.rules import Behavior, Candidate, Policy, Signal
from driftd.engine.validate import check_batch_size, check_range
from driftd.errors import FieldViolation, InvalidArgument
from driftd.store.system import StoredRecord

#: ``embed(model, texts)``: (n,) texts -> (n, d) float32, off the event loop.
Embed = Callable[[str, list[str]], Awaitable[np.ndarray]]
USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
INTENTS = ("preference", "habit", "skill", "goal", "belief")
POLARITIES = ("positive", "negative")
STATES = ("active", "superseded")
MAX_CANDIDATES = 1000
MAX_LABEL_CHARS = 256
_LOCK_STRIPES = 64
DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class CandidateInput:
    """A candidate as received (not validated): ``vector`` or ``text``."""

    intent: str
    target: str = ""
    context: str = ""
    polarity: str = "positive"
    credibility: float = 0.0
    vector: np.ndarray | None = None
    text: str | None = None


@dataclass(frozen=True)
class DecisionOut:
    """The outcome for candidate ``index``: behaviour ids, not resource names."""

    index: int
    action: str
    reason: str
    old_id: str
    new_id: str
    effective_credibility: float
    similarity: float
    drift_detected: bool
    signal_count: int


def check_user_id(user_id: str, field: str = "parent") -> str:
    """Returns ``user_id`` if valid.

    Raises:
        InvalidArgument(INVALID_NAME): not 1-128 characters of [A-Za-z0-9._@-]
            starting with a letter or digit.
    """
    if not isinstance(user_id, str) or not USER_ID.match(user_id):
        raise InvalidArgument(
            f"invalid user id {user_id!r}: use 1-128 characters of [A-Za-z0-9._@-] "
            f"starting with a letter or digit",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must be 'users/{user_id}'")],
        )
    return user_id


def parse_user_name(name: str, field: str = "parent") -> str:
    """``"users/{user_id}"`` -> ``user_id``.

    Raises:
        InvalidArgument(INVALID_NAME): not of that form or a bad id.
    """
    if not name.startswith("users/"):
        raise InvalidArgument(
            f"{field} must be a resource name 'users/{{user_id}}', got {name!r}",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must be 'users/{user_id}'")],
        )
    return check_user_id(name[len("users/") :], field)


def behavior_name(user_id: str, behavior_id: str) -> str:
    """The resource name ``users/{user_id}/behaviors/{behavior_id}``."""
    return f"users/{user_id}/behaviors/{behavior_id}" if behavior_id else ""


def check_policy(policy: Policy, field: str = "policy") -> Policy:
    """Returns ``policy`` if its values are in range.

    Raises:
        InvalidArgument(LIMIT_EXCEEDED): a value out of range (named by field path).
    """
    for name, low, high in (
        ("half_life_days", 1e-6, 1e6),
        ("conflict_similarity", 1e-9, 1.0),
        ("identical_similarity", 1e-9, 1.0),
        ("signal_window_days", 1e-6, 1e6),
        ("signals_to_supersede", 1, 100),
    ):
        value = getattr(policy, name)
        if not math.isfinite(value):
            value = math.inf  # reported as out of range below
        check_range(value, low, high, f"{field}.{name}")
    return policy


class BehaviorStore:
    """ProcessBehaviors and ListBehaviors.

    Args:
        repository: where behaviours are kept.
        embed: embeds candidate texts (the engine's :meth:`AsyncDriftDB.embed`).
        embed_model: the fastembed model for texts.
    """

    def __init__(self, repository: BehaviorRepository, embed: Embed, embed_model: str) -> None:
        self._repo = repository
        self._embed = embed
        self._embed_model = embed_model
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, user_id: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(user_id.encode()) % _LOCK_STRIPES]

    async def process(
        self,
        user_id: str,
        candidates: Sequence[CandidateInput],
        *,
        at: float | None = None,
        policy: Policy = DEFAULT_POLICY,
    ) -> builtins.list[DecisionOut]:
        """Decides and applies each candidate in order; returns one decision each.

        Args:
            at: when the candidates were observed (epoch seconds); None is now.

        Raises:
            InvalidArgument: bad user id (INVALID_NAME), no candidates
                (INVALID_FIELD) or too many (BATCH_TOO_LARGE), a bad candidate field
                (``candidates[i].field``: INVALID_FIELD, LIMIT_EXCEEDED,
                MISSING_CONTENT, NON_FINITE_VECTOR), a bad policy; nothing is written.
            InvalidArgument(UNKNOWN_EMBED_MODEL): texts and no usable default model.
        """
        check_user_id(user_id)
        check_batch_size(len(candidates), MAX_CANDIDATES, "candidates")
        if not candidates:
            raise _bad("candidates", "at least one candidate is required")
        check_policy(policy)
        at = time.time() if at is None else float(at)
        valid = await self._validate(candidates)
        async with self._lock(user_id):
            dims = sorted({len(c.vector) for c in valid})
            loaded = {d: await self._active(user_id, d) for d in dims}
            changed: dict[str, Behavior] = {}
            out = []
            for i, c in enumerate(valid):
                active = loaded[len(c.vector)]
                same = [b for b in active.values() if b.intent == c.intent]
                d = rules.decide(c, same, at, policy)
                new_id = ""
                # REINFORCE and IGNORE always name the old behaviour (rules.decide).
                if d.action == rules.REINFORCE and d.old is not None:
                    b = replace(
                        d.old,
                        credibility=d.new_credibility,
                        last_seen_time=max(d.old.last_seen_time, at),
                        seen_count=d.old.seen_count + 1,
                    )
                    active[b.id] = changed[b.id] = b
                    new_id = b.id
                elif d.action == rules.IGNORE and d.old is not None:
                    b = replace(d.old, signals=d.signals)
                    active[b.id] = changed[b.id] = b
                else:
                    new = Behavior(
                        id=uuid.uuid4().hex,
                        user_id=user_id,
                        intent=c.intent,
                        target=c.target,
                        context=c.context,
                        polarity=c.polarity,
                        text=c.text,
                        vector=c.vector,
                        credibility=d.new_credibility,
                        state="active",
                        create_time=at,
                        last_seen_time=at,
                        supersedes=d.old.id if d.old is not None else "",
                    )
                    if d.old is not None:
                        old = replace(
                            d.old, state="superseded", supersede_time=at, superseded_by=new.id
                        )
                        changed[old.id] = old
                        del active[old.id]
                    active[new.id] = changed[new.id] = new
                    new_id = new.id
                out.append(
                    DecisionOut(
                        index=i,
                        action=d.action,
                        reason=d.reason,
                        old_id=d.old.id if d.old is not None else "",
                        new_id=new_id,
                        effective_credibility=d.effective_credibility,
                        similarity=d.similarity,
                        drift_detected=d.drift_detected,
                        signal_count=d.signal_count,
                    )
                )
            if changed:
                await self._repo.write([_to_record(b) for b in changed.values()])
        return out

    async def list(
        self,
        user_id: str,
        *,
        state: str = "",
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[builtins.list[Behavior], str]:
        """A page of the user's behaviours (all dimensions), oldest first (create
        time, then id), and the next page token ("" at the end).

        Raises:
            InvalidArgument: bad user id, state, page size (LIMIT_EXCEEDED) or token
                (INVALID_PAGE_TOKEN).
        """
        check_user_id(user_id)
        check_range(page_size, 1, 1000, "page_size")
        if state and state not in STATES:
            raise InvalidArgument(
                f"state must be one of {', '.join(STATES)}, got {state!r}",
                field_violations=[FieldViolation("state", "unknown state")],
            )
        after = _parse_token(page_token)
        found = sorted(
            (_from_record(r) for r in await self._repo.of_user(user_id, state)),
            key=lambda b: (b.create_time, b.id),
        )
        if after is not None:
            found = [b for b in found if (b.create_time, b.id) > after]
        page = found[:page_size]
        token = f"{page[-1].create_time!r}:{page[-1].id}" if len(found) > page_size else ""
        return page, token

    async def _validate(self, candidates: Sequence[CandidateInput]) -> builtins.list[Candidate]:
        """Checks every candidate and embeds the texts; unit vectors out.

        Raises InvalidArgument naming ``candidates[i].field``.
        """
        texts: builtins.list[tuple[int, str]] = []
        vectors: dict[int, np.ndarray] = {}
        for i, c in enumerate(candidates):
            at = f"candidates[{i}]"
            if c.intent not in INTENTS:
                raise _bad(f"{at}.intent", f"must be one of {', '.join(INTENTS)}")
            if c.polarity not in POLARITIES:
                raise _bad(f"{at}.polarity", f"must be one of {', '.join(POLARITIES)}")
            for label in ("target", "context"):
                if len(getattr(c, label)) > MAX_LABEL_CHARS:
                    raise _bad(f"{at}.{label}", f"at most {MAX_LABEL_CHARS} characters")
            cred = c.credibility if math.isfinite(c.credibility) else math.inf
            check_range(cred, 0.0, 1.0, f"{at}.credibility")
            if c.vector is not None and len(c.vector):
                v = np.asarray(c.vector, dtype=np.float32).ravel()
                if not np.isfinite(v).all():
                    raise _bad(f"{at}.vector", "contains NaN or infinity", "NON_FINITE_VECTOR")
                check_range(len(v), 1, 65_536, f"{at}.vector")
                norm = float(np.linalg.norm(v))
                if norm == 0:
                    raise _bad(f"{at}.vector", "a zero vector has no direction")
                vectors[i] = v / norm
            elif c.text:
                texts.append((i, c.text))
            else:
                raise _bad(at, "needs a vector or a text", "MISSING_CONTENT")
        if texts:
            embedded = await self._embed(self._embed_model, [t for _, t in texts])
            for (i, _), v in zip(texts, embedded, strict=True):
                v = np.asarray(v, dtype=np.float32)
                vectors[i] = v / (float(np.linalg.norm(v)) or 1.0)
        return [
            Candidate(
                intent=c.intent,
                target=c.target,
                context=c.context,
                polarity=c.polarity,
                credibility=float(c.credibility),
                text=c.text or "",
                vector=vectors[i],
            )
            for i, c in enumerate(candidates)
        ]

    async def _active(self, user_id: str, dim: int) -> dict[str, Behavior]:
        return {r.id: _from_record(r) for r in await self._repo.active(user_id, dim)}


def _to_record(b: Behavior) -> StoredRecord:
    return StoredRecord(b.id, _to_metadata(b), b.text, b.vector)


def _to_metadata(b: Behavior) -> dict:
    md = {
        "user_id": b.user_id,
        "intent": b.intent,
        "target": b.target,
        "context": b.context,
        "polarity": b.polarity,
        "credibility": float(b.credibility),
        "state": b.state,
        "create_time": _micros(b.create_time),
        "last_seen_time": _micros(b.last_seen_time),
        "seen_count": int(b.seen_count),
        "superseded_by": b.superseded_by,
        "supersedes": b.supersedes,
        "signals": json.dumps([[s.time, s.credibility] for s in b.signals]),
    }
    if b.supersede_time is not None:
        md["supersede_time"] = _micros(b.supersede_time)
    return md


def _micros(seconds: float) -> int:
    """Epoch seconds as integer microseconds: Chroma keeps integers exactly but may
    round the last digit of a float, which would move a Timestamp by 1 µs."""
    return round(seconds * 1_000_000)


def _from_record(record: StoredRecord) -> Behavior:
    md, emb = record.metadata, record.embedding
    return Behavior(
        id=record.id,
        user_id=str(md["user_id"]),
        intent=str(md["intent"]),
        target=str(md.get("target", "")),
        context=str(md.get("context", "")),
        polarity=str(md["polarity"]),
        text=record.document,
        vector=np.asarray(emb, dtype=np.float32) if emb is not None else np.zeros(0, np.float32),
        credibility=float(md["credibility"]),
        state=str(md["state"]),
        create_time=md["create_time"] / 1e6,
        last_seen_time=md["last_seen_time"] / 1e6,
        seen_count=int(md.get("seen_count", 1)),
        supersede_time=md["supersede_time"] / 1e6 if "supersede_time" in md else None,
        superseded_by=str(md.get("superseded_by", "")),
        supersedes=str(md.get("supersedes", "")),
        signals=tuple(Signal(float(t), float(c)) for t, c in json.loads(md.get("signals", "[]"))),
    )


def _parse_token(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    created, _, behavior_id = token.partition(":")
    try:
        value = float(created)
    except ValueError:
        value = math.nan
    if not behavior_id or not math.isfinite(value):
        raise InvalidArgument(
            "page_token is not one this server issued",
            reason="INVALID_PAGE_TOKEN",
            field_violations=[FieldViolation("page_token", "invalid")],
        )
    return value, behavior_id


def _bad(field: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field, description)],
    )
