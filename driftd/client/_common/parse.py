"""Parsing user input: points, times, vectors; bad input raises
InvalidArgument before any request is sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import numpy as np

from driftd import convert, types
from driftd.client._common.options import PointLike, Time
from driftd.errors import (
    FieldViolation,
    InvalidArgument,
)
from driftd.v1 import (
    point_pb2,
)

#: An enum value of a driftd.v1 proto.
E = TypeVar("E")


def parse_time(value: object) -> datetime | None:
    """A datetime, an RFC 3339 string or epoch seconds (int or float, UTC) as an
    aware UTC datetime (naive means UTC); None when ``value`` is none of these or
    does not parse (or is out of datetime's range)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):  # NaN, inf, beyond year 9999
            return None
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def parse_point(raw: PointLike, index: int = 0) -> types.Point:
    """One input point as a :class:`driftd.types.Point`.

    ``raw`` is a Point (passed through) or a dict ``{"id": str, "timestamp":
    RFC 3339 str | datetime | epoch seconds (int | float), "text": str | "vector":
    list | ndarray, "series"?: str, "payload"?: {str: str | float | int | bool}}``
    (``"time"`` is accepted for ``"timestamp"``; other keys are ignored). Only the
    row's shape is checked here; the server checks it against the collection
    (dimension, embed model, finiteness, duplicate ids).

    Raises:
        InvalidArgument: one field violation per bad field, with proto paths
            ``points[{index}].{id,time,vector,text,series,payload}``; the reason is
            the first problem's ErrorReason name.
    """
    if isinstance(raw, types.Point):
        return raw
    at = f"points[{index}]"
    if not isinstance(raw, Mapping):
        _raise_bad(
            index, [("INVALID_FIELD", at, f"must be a dict or a Point, not {type(raw).__name__}")]
        )
    problems: list[tuple[str, str, str]] = []

    pid = raw.get("id")
    if not isinstance(pid, str) or not pid:
        problems.append(("INVALID_FIELD", f"{at}.id", "must be a non-empty string"))

    raw_time = raw.get("timestamp", raw.get("time"))
    time = parse_time(raw_time)
    if time is None:
        problems.append(
            (
                "INVALID_TIMESTAMP",
                f"{at}.time",
                f"timestamp {raw_time!r} is missing or not RFC 3339 or epoch seconds",
            )
        )

    raw_vector, vector = raw.get("vector"), None
    if raw_vector is not None:
        vector = _as_vector(raw_vector)
        if vector is None:
            problems.append(("INVALID_FIELD", f"{at}.vector", "must be a flat list of numbers"))
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        problems.append(("INVALID_FIELD", f"{at}.text", "must be a string"))
    elif raw_vector is None and not text:
        problems.append(("MISSING_CONTENT", at, "needs a vector or a text"))

    series = raw.get("series") or ""
    if not isinstance(series, str):
        problems.append(("INVALID_FIELD", f"{at}.series", "must be a string"))

    payload = raw.get("payload") or {}
    if not isinstance(payload, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | bool | int | float) for k, v in payload.items()
    ):
        problems.append(
            ("INVALID_PAYLOAD", f"{at}.payload", "must map strings to strings, numbers or bools")
        )

    if problems or not isinstance(pid, str):
        _raise_bad(index, problems)
    return types.Point(
        id=pid, time=time, series=series, vector=vector, text=text or None, payload=dict(payload)
    )


def parse_points(raws: Iterable[PointLike], first_index: int = 0) -> list[types.Point]:
    """Every point of ``raws`` parsed with :func:`parse_point`, numbered from
    ``first_index``.

    Raises:
        InvalidArgument: listing the violations of every bad point (reason of the
            first; metadata ``invalid_count``).
    """
    points: list[types.Point] = []
    errors: list[InvalidArgument] = []
    for i, raw in enumerate(raws, first_index):
        try:
            points.append(parse_point(raw, i))
        except InvalidArgument as exc:
            errors.append(exc)
    if errors:
        raise InvalidArgument(
            f"{len(errors)} invalid point(s); first: {errors[0].message}",
            reason=errors[0].reason,
            field_violations=[v for e in errors for v in e.field_violations],
            metadata={"invalid_count": len(errors)},
        )
    return points


def _as_vector(value: object) -> np.ndarray | None:
    """``value`` as a float32 (d,) array; None unless it is a non-empty flat list
    (or array) of numbers."""
    if isinstance(value, str | bytes | Mapping):
        return None
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return vector if vector.ndim == 1 and vector.size else None


def _raise_bad(index: int, problems: list[tuple[str, str, str]]) -> NoReturn:
    reason, path, description = problems[0]
    raise InvalidArgument(
        f"{path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(p, d) for _, p, d in problems],
        metadata={"index": index},
    )


def _time_arg(value: Time, field: str) -> datetime | None:
    if value is None:
        return None
    parsed = parse_time(value)
    if parsed is None:
        raise InvalidArgument(
            f"{field}: {value!r} is not a datetime, an RFC 3339 string or epoch seconds",
            reason="INVALID_TIMESTAMP",
            field_violations=[
                FieldViolation(field, "must be a datetime, an RFC 3339 string or epoch seconds")
            ],
        )
    return parsed


def _time_range(start: Time, end: Time) -> point_pb2.TimeRange:
    return convert.bounds_to_time_range(
        _time_arg(start, "time_range.start_time"), _time_arg(end, "time_range.end_time")
    )


def _exactly_one(field: str, **options: object) -> None:
    given = [k for k, v in options.items() if v is not None]
    if len(given) != 1:
        names = ", ".join(options)
        raise InvalidArgument(
            f"{field}: give exactly one of {names} (got {', '.join(given) or 'none'})",
            field_violations=[FieldViolation(field, f"exactly one of {names}")],
        )


def _choice(value: str, options: Mapping[str, E], field: str) -> E:
    if value not in options:
        raise InvalidArgument(
            f"{field} must be one of {', '.join(o for o in options if o)}, got {value!r}",
            field_violations=[FieldViolation(field, "unknown value")],
        )
    return options[value]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidArgument(
            f"batch_size must be at least 1, got {batch_size}",
            reason="LIMIT_EXCEEDED",
            field_violations=[FieldViolation("batch_size", "must be at least 1")],
        )
