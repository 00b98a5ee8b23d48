"""Validation of names, points and request limits, before anything is written.

Every check reports a proto field path (``points[3].vector``) and an ErrorReason
name, so the server can return precise BadRequest field violations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from driftd.errors import FailedPrecondition, FieldViolation, InvalidArgument
from driftd.store.chroma import KEY_PREFIX, SYSTEM_PREFIX
from driftd.types import Point, PointError

COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
MAX_ID_CHARS = 512
MAX_SERIES_CHARS = 256
DISTANCES = ("cosine", "l2", "ip")


def check_collection_id(name: str, field: str = "collection_id") -> str:
    """Returns ``name`` if valid.

    Raises:
        InvalidArgument(INVALID_NAME): not 3-63 chars of [A-Za-z0-9._-] with
            alphanumeric ends.
    """
    if (
        not isinstance(name, str)
        or not COLLECTION_ID.match(name)
        or ".." in name
        or name.startswith(SYSTEM_PREFIX)
    ):
        raise InvalidArgument(
            f"invalid collection id {name!r}: use 3-63 characters of [A-Za-z0-9._-], "
            f"starting and ending with a letter or digit, not starting with {SYSTEM_PREFIX!r}",
            reason="INVALID_NAME",
            field_violations=[
                FieldViolation(field, "must match [A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
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
    embed_model: str,
    reserved_keys: frozenset[str],
) -> tuple[ValidBatch, list[PointError]]:
    """Checks every point of a batch; returns the valid ones and one error per bad point.

    Checks: id (1-512 chars, unique in the batch), time (present, parsable),
    content (a finite vector of ``dimension`` floats, or a text with an embed
    model), series (<= 256 chars), payload (flat scalars, no reserved keys).
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
        problem = _check_point(p, i, dimension, embed_model, reserved_keys, seen)
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


def _check_point(
    p: Point, i: int, dimension: int, embed_model: str, reserved: frozenset[str], seen: set[str]
) -> tuple[str, str] | None:
    at = f"points[{i}]"
    if not isinstance(p.id, str) or not 1 <= len(p.id) <= MAX_ID_CHARS:
        return "INVALID_FIELD", f"{at}.id: must be a string of 1-{MAX_ID_CHARS} characters"
    if p.id in seen:
        return "DUPLICATE_ID", f"{at}.id: {p.id!r} appears more than once in the batch"
    if p.time is None:
        return "INVALID_TIMESTAMP", f"{at}.time: missing or not an RFC 3339 timestamp"
    if not isinstance(p.series, str) or len(p.series) > MAX_SERIES_CHARS:
        return (
            "INVALID_FIELD",
            f"{at}.series: must be a string of at most {MAX_SERIES_CHARS} characters",
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
    elif p.text:
        if not isinstance(p.text, str):
            return "INVALID_FIELD", f"{at}.text: must be a string"
        if not embed_model:
            return (
                "NO_EMBED_MODEL",
                f"{at}.text: the collection has no embed model; send a vector",
            )
    else:
        return "MISSING_CONTENT", f"{at}: needs a vector or a text"
    for key, value in p.payload.items():
        if key.startswith(KEY_PREFIX) or key in reserved:
            return "INVALID_PAYLOAD", f"{at}.payload[{key!r}]: reserved key"
        if not isinstance(value, str | bool | int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            return (
                "INVALID_PAYLOAD",
                f"{at}.payload[{key!r}]: must be a string, a finite number or a bool",
            )
    return None


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
