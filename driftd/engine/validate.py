"""Validation of names, points and request limits, before anything is written.

Every check reports a proto field path (``points[3].vector``) and an ErrorReason
name, so the server can return precise BadRequest field violations.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from driftd.config import Settings
from driftd.errors import FailedPrecondition, FieldViolation, InvalidArgument
from driftd.store.chroma import KEY_PREFIX, SYSTEM_PREFIX
from driftd.types import PayloadCondition, Point, PointError

#: Chroma's own rule for collection names (3-512 characters).
COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
MAX_ID_CHARS = 512
MAX_SERIES_CHARS = 256
#: Characters of a payload key.
MAX_KEY_CHARS = 256
#: Payload key prefixes Chroma or driftd give a meaning: ``$`` operators and
#: ``#document``-style keys in ``where`` filters, ``chroma:`` internal fields,
#: ``driftd:`` driftd's own. Such keys answered INTERNAL or broke the collection.
RESERVED_KEY_PREFIXES = ("$", "#", "chroma:", KEY_PREFIX)
#: Values per ValueSet of a payload condition.
MAX_SET_VALUES = 100
DISTANCES = ("cosine", "l2", "ip")


def check_collection_id(name: str, field: str = "collection_id") -> str:
    """Returns ``name`` if valid.

    Raises:
        InvalidArgument(INVALID_NAME): not 3-512 chars of [A-Za-z0-9._-] with
            alphanumeric ends.
    """
    if (
        not isinstance(name, str)
        or not COLLECTION_ID.match(name)
        or ".." in name
        or name.startswith(SYSTEM_PREFIX)
    ):
        raise InvalidArgument(
            f"invalid collection id {name!r}: use 3-512 characters of [A-Za-z0-9._-], "
            f"starting and ending with a letter or digit, not starting with {SYSTEM_PREFIX!r}",
            reason="INVALID_NAME",
            field_violations=[
                FieldViolation(field, "must match [A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")
            ],
        )
    return name


def parse_collection_name(resource_name: str, field: str = "parent") -> str:
    """``"collections/{id}"`` -> ``id``.

    Raises:
        InvalidArgument(INVALID_NAME): not of that form or an invalid id.
    """
    prefix = "collections/"
    if not resource_name.startswith(prefix):
        raise InvalidArgument(
            f"{field} must be a resource name 'collections/{{collection_id}}', "
            f"got {resource_name!r}",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must be 'collections/{collection_id}'")],
        )
    return check_collection_id(resource_name[len(prefix) :], field)


def check_range(value: int | float, low: int | float, high: int | float, field: str) -> None:
    """Raises InvalidArgument(LIMIT_EXCEEDED) unless low <= value <= high."""
    if not (low <= value <= high):
        raise InvalidArgument(
            f"{field} must be between {low} and {high}, got {value}",
            reason="LIMIT_EXCEEDED",
            field_violations=[FieldViolation(field, f"must be between {low} and {high}")],
            metadata={"field": field, "limit": high},
        )


def check_batch_size(n: int, limit: int, field: str = "points") -> None:
    """Raises InvalidArgument(BATCH_TOO_LARGE) when n > limit."""
    if n > limit:
        raise InvalidArgument(
            f"batch of {n} items is over the limit of {limit}; split it",
            reason="BATCH_TOO_LARGE",
            field_violations=[FieldViolation(field, f"at most {limit} items per batch")],
            metadata={"limit": limit, "size": n},
        )


def parse_time(value: object) -> datetime | None:
    """A datetime, or an RFC 3339 / ISO 8601 string, as an aware UTC datetime; None if not.

    Naive values are taken as UTC.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def as_point(raw: Point | Mapping) -> Point:
    """A Point from a Point or a dict ``{id, timestamp|time, text|vector, series?, payload?}``.

    Values are not validated here (see :func:`validate_points`); unparsable times become None.
    """
    if isinstance(raw, Point):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"a point must be a dict or a Point, not {type(raw).__name__}")
    time = raw.get("timestamp", raw.get("time"))
    vector = raw.get("vector")
    return Point(
        id=raw.get("id", ""),
        time=parse_time(time),
        series=raw.get("series") or "",
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
        text=raw.get("text"),
        payload=dict(raw.get("payload") or {}),
    )


@dataclass
class ValidBatch:
    """The valid points of a batch, their positions, and which need embedding."""

    points: list[Point]
    indices: list[int]
    to_embed: list[int]  # positions in ``points`` whose text must be embedded


def validate_points(
    raws: Sequence[Point | Mapping],
    *,
    dimension: int,
    distance: str,
    embed_model: str,
    reserved_keys: frozenset[str],
    limits: Settings,
) -> tuple[ValidBatch, list[PointError]]:
    """Checks every point of a batch; returns the valid ones and one error per bad point.

    Checks: id (1-512 chars, unique in the batch), time (present, parsable),
    content (a finite vector of ``dimension`` floats, not all zero for cosine,
    or a text of at most ``limits.max_text_bytes`` with an embed model), series
    (<= 256 chars), payload (:func:`payload_problem`).
    """
    valid = ValidBatch([], [], [])
    errors: list[PointError] = []
    seen: set[str] = set()
    for i, raw in enumerate(raws):
        try:
            p = as_point(raw)
        except InvalidArgument as exc:
            errors.append(PointError(i, "", "INVALID_FIELD", exc.message))
            continue
        problem = _check_point(p, i, dimension, distance, embed_model, seen, limits)
        if problem is None:
            problem = payload_problem(p.payload, f"points[{i}].payload", reserved_keys, limits)
        pid = p.id if isinstance(p.id, str) else ""
        if problem is not None:
            errors.append(PointError(i, pid, *problem))
            continue
        seen.add(p.id)
        if p.vector is None:
            valid.to_embed.append(len(valid.points))
        valid.points.append(p)
        valid.indices.append(i)
    return valid, errors


def utf8_len(text: str) -> int | None:
    """UTF-8 bytes of ``text``; None when it cannot be encoded (a lone
    surrogate, possible from Python, never from protobuf), which Chroma refuses."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def is_zero(vector: np.ndarray) -> bool:
    """True when ``vector`` has no direction: its norm (in float64, so tiny
    float32 components do not underflow) is below 1e-12."""
    return float(np.linalg.norm(np.asarray(vector, dtype=np.float64))) < 1e-12


def _check_point(
    p: Point,
    i: int,
    dimension: int,
    distance: str,
    embed_model: str,
    seen: set[str],
    limits: Settings,
) -> tuple[str, str] | None:
    at = f"points[{i}]"
    if not isinstance(p.id, str) or not 1 <= len(p.id) <= MAX_ID_CHARS or utf8_len(p.id) is None:
        return "INVALID_FIELD", f"{at}.id: must be a string of 1-{MAX_ID_CHARS} characters"
    if p.id in seen:
        return "DUPLICATE_ID", f"{at}.id: {p.id!r} appears more than once in the batch"
    if p.time is None:
        return "INVALID_TIMESTAMP", f"{at}.time: missing or not an RFC 3339 timestamp"
    if (
        not isinstance(p.series, str)
        or len(p.series) > MAX_SERIES_CHARS
        or utf8_len(p.series) is None
    ):
        return (
            "INVALID_FIELD",
            f"{at}.series: must be a string of at most {MAX_SERIES_CHARS} characters",
        )
    if p.text is not None and not isinstance(p.text, str):
        return "INVALID_FIELD", f"{at}.text: must be a string"
    if p.text and utf8_len(p.text) is None:
        return "INVALID_FIELD", f"{at}.text: not valid Unicode (a lone surrogate)"
    if p.text and (utf8_len(p.text) or 0) > limits.max_text_bytes:
        return (
            "LIMIT_EXCEEDED",
            f"{at}.text: longer than {limits.max_text_bytes} UTF-8 bytes (max_text_bytes)",
        )
    if p.vector is not None:
        v = p.vector
        if v.ndim != 1 or v.shape[0] != dimension:
            return (
                "DIMENSION_MISMATCH",
                f"{at}.vector: has {v.size} values, the collection's dimension is {dimension}",
            )
        if not np.isfinite(v).all():
            return "NON_FINITE_VECTOR", f"{at}.vector: contains NaN or infinity"
        if distance == "cosine" and is_zero(v):
            return "ZERO_VECTOR", f"{at}.vector: all zero, which has no cosine direction"
    elif p.text:
        if not embed_model:
            return (
                "NO_EMBED_MODEL",
                f"{at}.text: the collection has no embed model; send a vector",
            )
    else:
        return "MISSING_CONTENT", f"{at}: needs a vector or a text"
    return None


def key_problem(key: object, reserved: frozenset[str] = frozenset()) -> str | None:
    """Why ``key`` cannot be a payload key (or be filtered on), or None.

    A key is 1-:data:`MAX_KEY_CHARS` printable characters (no control or
    surrogate characters), not one of ``reserved`` (the collection's time and
    series keys) and not starting with a :data:`RESERVED_KEY_PREFIXES` prefix.
    """
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if len(key) > MAX_KEY_CHARS:
        return f"longer than {MAX_KEY_CHARS} characters"
    if key.startswith(RESERVED_KEY_PREFIXES) or key in reserved:
        return "reserved key"
    if not key.isprintable() and any(
        unicodedata.category(c) in ("Cc", "Cs", "Cn", "Co") for c in key
    ):
        return "contains control, surrogate or unassigned characters"
    return None


def payload_problem(
    payload: Mapping, at: str, reserved: frozenset[str], limits: Settings
) -> tuple[str, str] | None:
    """``(reason, message)`` when ``payload`` may not be stored, else None.

    Bounds what Chroma's metadata segment is given: with thousands of keys (or
    reserved keys such as ``chroma:document``) a single record made the whole
    collection unreadable for good (chromadb 1.5.9). Reasons: LIMIT_EXCEEDED
    (over ``max_payload_keys``, ``max_payload_value_bytes`` or
    ``max_payload_bytes``), INVALID_PAYLOAD (a bad key, a value that is not a
    string, finite number or bool).
    """
    if not isinstance(payload, Mapping):
        return "INVALID_PAYLOAD", f"{at}: must be a map of keys to values"
    if len(payload) > limits.max_payload_keys:
        return (
            "LIMIT_EXCEEDED",
            f"{at}: {len(payload)} keys, over the limit of {limits.max_payload_keys}",
        )
    total = 0
    for key, value in payload.items():
        problem = key_problem(key, reserved)
        if problem is not None:
            return "INVALID_PAYLOAD", f"{at}: key {str(key)[:64]!r}: {problem}"
        if not isinstance(value, str | bool | int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            return (
                "INVALID_PAYLOAD",
                f"{at}: key {key[:64]!r}: must be a string, a finite number or a bool",
            )
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            return "INVALID_PAYLOAD", f"{at}: key {key[:64]!r}: integer outside 64 bits"
        size = utf8_len(value) if isinstance(value, str) else 8
        if size is None:
            return "INVALID_PAYLOAD", f"{at}: key {key[:64]!r}: not valid Unicode"
        if size > limits.max_payload_value_bytes:
            return (
                "LIMIT_EXCEEDED",
                f"{at}: key {key[:64]!r}: value over {limits.max_payload_value_bytes} bytes",
            )
        total += size + len(key.encode("utf-8"))
    if total > limits.max_payload_bytes:
        return (
            "LIMIT_EXCEEDED",
            f"{at}: {total} bytes of keys and values, over the limit of {limits.max_payload_bytes}",
        )
    return None


def check_texts(texts: Sequence[str], limits: Settings, field: str = "text") -> None:
    """Raises InvalidArgument(LIMIT_EXCEEDED) when a text is over
    ``max_text_bytes`` or all of them together over ``max_request_text_bytes``."""
    total = 0
    for i, text in enumerate(texts):
        size = utf8_len(text) or 0
        total += size
        if size > limits.max_text_bytes:
            name = field if len(texts) == 1 else f"{field}[{i}]"
            raise InvalidArgument(
                f"{name} has {size} UTF-8 bytes, over the limit of {limits.max_text_bytes}",
                reason="LIMIT_EXCEEDED",
                field_violations=[
                    FieldViolation(name, f"at most {limits.max_text_bytes} UTF-8 bytes")
                ],
                metadata={"limit": limits.max_text_bytes, "setting": "max_text_bytes"},
            )
    if total > limits.max_request_text_bytes:
        raise InvalidArgument(
            f"the request's texts have {total} UTF-8 bytes, "
            f"over the limit of {limits.max_request_text_bytes}; split it",
            reason="LIMIT_EXCEEDED",
            field_violations=[
                FieldViolation(field, f"at most {limits.max_request_text_bytes} bytes in all")
            ],
            metadata={"limit": limits.max_request_text_bytes, "setting": "max_request_text_bytes"},
        )


#: One ``where`` clause: payload key, Chroma operator, operand.
Clause = tuple[str, str, object]


def _filter_error(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {problem}",
        reason="INVALID_FILTER",
        field_violations=[FieldViolation(field, problem)],
    )


def _scalar_kind(value: object) -> str | None:
    """ "bool", "number" or "string" for a value a filter may compare; else None."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return "number"
    if isinstance(value, float) and math.isfinite(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def check_filter(
    payload_filter: Mapping | None,
    conditions: Sequence[PayloadCondition] = (),
    reserved: frozenset[str] = frozenset(),
) -> list[Clause]:
    """Payload equality filters and typed conditions as ``where`` clauses (AND).

    Keys follow the payload key rules (:func:`key_problem`), so no Chroma
    operator (``$or``), document (``#document``) or driftd key (``driftd:*``,
    the collection's time and series keys) can be filtered on. Operators map
    to Chroma's: equality ``$eq``, range ``$gt/$gte/$lt/$lte``, sets ``$in/$nin``.

    Raises:
        InvalidArgument(INVALID_FILTER): a bad key; a value that is not a string,
            finite number or bool; a condition with no or two kinds, a range
            without a finite bound, a set of 0 or over :data:`MAX_SET_VALUES`
            values or of mixed types.
    """
    clauses: list[Clause] = []
    for key, value in (payload_filter or {}).items():
        at = f"payload_filter[{str(key)[:64]!r}]"
        problem = key_problem(key, reserved)
        if problem is not None:
            raise _filter_error(at, problem)
        if _scalar_kind(value) is None:
            raise _filter_error(at, "must be a string, a finite number or a bool")
        clauses.append((key, "$eq", value))
    for i, c in enumerate(conditions):
        at = f"payload_conditions[{i}]"
        problem = key_problem(c.key, reserved)
        if problem is not None:
            raise _filter_error(f"{at}.key", problem)
        bounds = [
            (op, b)
            for op, b in (("$gt", c.gt), ("$gte", c.gte), ("$lt", c.lt), ("$lte", c.lte))
            if b is not None
        ]
        kinds = [
            k
            for k, given in (
                ("range", bounds),
                ("any_of", c.any_of is not None),
                ("none_of", c.none_of is not None),
            )
            if given
        ]
        if len(kinds) != 1:
            raise _filter_error(at, "needs exactly one of range, any_of or none_of")
        if bounds:
            for op, b in bounds:
                if _scalar_kind(b) != "number":
                    raise _filter_error(f"{at}.range", f"{op} must be a finite number")
                clauses.append((c.key, op, float(b)))
            continue
        values = list(c.any_of if c.any_of is not None else c.none_of or ())
        kind = kinds[0]
        if not 1 <= len(values) <= MAX_SET_VALUES:
            raise _filter_error(f"{at}.{kind}", f"needs 1-{MAX_SET_VALUES} values")
        types = {_scalar_kind(x) for x in values}
        if None in types or len(types) != 1:
            raise _filter_error(
                f"{at}.{kind}", "values must be all strings, all numbers or all bools"
            )
        clauses.append((c.key, "$in" if kind == "any_of" else "$nin", values))
    return clauses


def raise_for_errors(errors: list[PointError]) -> None:
    """Raises the batch's rejection: FAILED_PRECONDITION when every error is a
    missing embed model (the collection's state), INVALID_ARGUMENT otherwise."""
    if not errors:
        return
    violations = [
        FieldViolation(e.message.split(":", 1)[0], e.message.split(":", 1)[-1].strip())
        for e in errors
    ]
    reasons = {e.reason for e in errors}
    first = errors[0]
    summary = f"{len(errors)} invalid point(s); first: {first.message}"
    meta = {"invalid_count": len(errors)}
    if reasons == {"NO_EMBED_MODEL"}:
        raise FailedPrecondition(
            summary, reason="NO_EMBED_MODEL", field_violations=violations, metadata=meta
        )
    raise InvalidArgument(summary, reason=first.reason, field_violations=violations, metadata=meta)
