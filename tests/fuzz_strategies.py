"""Hypothesis strategies for any driftd request, built from the proto descriptors
(used by tests/fuzz).

:func:`request` walks a message descriptor field by field, so a field added to
the proto is fuzzed without editing this file. Each field is unset or gets a
value that is valid-ish (names of the fuzz server's collections, ids it holds,
vectors of their dimensions, times near the data) or hostile (random and long
Unicode, reserved keys, NaN, extreme integers, times outside 0001-9999).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = descriptor.FieldDescriptor
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z, where the seeded points are

#: Values a field of this name usually means; a sane message draws from them.
HINTS: dict[str, list[str]] = {
    "parent": ["collections/fuzz-cos", "collections/fuzz-l2", "collections/fuzz-text"],
    "name": [
        "collections/fuzz-cos",
        "collections/fuzz-text",
        "collections/fuzz-cos/driftRules/r1",
    ],
    "collection_id": ["fuzz-tmp", "fuzz-tmp2"],
    "chroma_collection": ["fuzz-cos", "fuzz-tmp", "driftd.sys.writes"],
    "conversation": ["conversations/c1", "conversations/c2"],
    "id": ["p1", "p2", "new1", "new2"],
    "ids": ["p1", "p2", "p3", "new1"],
    "point_id": ["p1", "p2", "p10"],
    "message_id": ["m1", "m2"],
    "drift_rule_id": ["r1", "r2"],
    "series": ["s0", "s1"],
    "key": ["n", "tag"],
    "time_key": ["t", "driftd:time"],
    "series_key": ["s"],
    "embed_model": ["all-MiniLM-L6-v2", "no-such-model"],
    "text": ["the economy grows", "war and peace"],
    "content": ["book a table for two", "what about the weather"],
}
#: Resource names of the services that are not about collections.
_USERS = ["users/u1", "users/u2"]
_BRANCHES = ["conversations/c1/branches/b1", "conversations/c1/branches/b2"]
#: Per request field, where the hint must differ. Fuzzed deletes only touch
#: the fuzz's own scratch collection and points, so the seeded ones stay for
#: the calls that read them.
OVERRIDES: dict[tuple[str, str], list[str]] = {
    ("DeleteCollectionRequest", "name"): ["collections/fuzz-tmp", "collections/fuzz-tmp2"],
    ("DeletePointsRequest", "ids"): ["new1", "new2", "p59"],
    ("ListBranchesRequest", "parent"): ["conversations/c1", "conversations/c2"],
    ("GetBranchContextRequest", "name"): _BRANCHES,
    ("ExtractFactsRequest", "name"): _BRANCHES,
    ("ProcessBehaviorsRequest", "parent"): _USERS,
    ("ListBehaviorsRequest", "parent"): _USERS,
}
HOSTILE_STRINGS = [
    "",
    "$or",
    "$and",
    "driftd:time",
    "#document",
    "chroma:document",
    "collections/",
    "collections/" + "x" * 600,
    "a" * 5000,
    "\x00\x01",
    "ü" * 300,
    "../../etc",
]
DIMENSIONS = [4, 384]


# Each generator takes ``sane``: in a sane message (3 of 4) values are the
# kind a correct client sends, so calls reach the engine and the math; in a
# hostile one anything goes.


def _strings(msg_name: str, field: str, sane: bool) -> st.SearchStrategy[str]:
    hints = OVERRIDES.get((msg_name, field)) or HINTS.get(field)
    if sane:
        return st.sampled_from(hints) if hints else st.text("abcdefgh-", max_size=8)
    return st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE_STRINGS))


def _floats(sane: bool) -> st.SearchStrategy[float]:
    if sane:
        return st.one_of(st.floats(0, 1), st.floats(-2, 2, allow_nan=False))
    return st.one_of(
        st.sampled_from([0.0, 1.0, 0.5, 1e-300, -1e300, float("nan"), float("inf")]),
        st.floats(width=32),
    )


def _vectors(sane: bool) -> st.SearchStrategy[list[float]]:
    exact = st.sampled_from(DIMENSIONS).flatmap(
        lambda d: st.lists(st.floats(-1, 1, width=32), min_size=d, max_size=d)
    )
    if sane:
        return exact
    return st.one_of(
        st.sampled_from(DIMENSIONS).map(lambda d: [0.0] * d),
        st.lists(st.floats(width=32), max_size=6),
        exact.map(lambda v: [x * 1e30 for x in v]),
    )


def _ints(kind: int, sane: bool) -> st.SearchStrategy[int]:
    bits = {FD.TYPE_INT32: 31, FD.TYPE_SINT32: 31, FD.TYPE_SFIXED32: 31}.get(kind)
    unsigned = kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32, FD.TYPE_UINT64, FD.TYPE_FIXED64)
    if unsigned:
        high = 2**32 - 1 if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32) else 2**64 - 1
        low = 0
    else:
        high = 2 ** (bits or 63) - 1
        low = -(2 ** (bits or 63))
    if sane:
        return st.integers(0, 24)
    return st.one_of(st.integers(max(low, -3), 20_000), st.integers(low, high))


def _timestamps(sane: bool) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    if sane:
        return st.builds(timestamp_pb2.Timestamp, seconds=st.integers(T0 - 600, T0 + 4200))
    seconds = st.one_of(
        st.sampled_from([253_402_300_799, 253_402_300_800, -62_135_596_800, -62_135_596_801]),
        st.integers(-(2**63), 2**63 - 1),
    )
    nanos = st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1))
    return st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def _durations(sane: bool) -> st.SearchStrategy[duration_pb2.Duration]:
    if sane:
        return st.builds(duration_pb2.Duration, seconds=st.integers(1, 3600))
    # Hostile durations are out of the type's range: a huge in-range step is
    # the work bound of SimulatePaths (issue 13, defect 2), not an input check.
    seconds = st.one_of(
        st.sampled_from([315_576_000_001, 10**14, -(10**14)]),
        st.integers(-(2**63), 2**63 - 1).filter(lambda s: abs(s) > 315_576_000_000),
    )
    return st.builds(duration_pb2.Duration, seconds=seconds, nanos=st.integers(-5, 5))


def _structs(sane: bool) -> st.SearchStrategy[struct_pb2.Struct]:
    def build(d: dict) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(d)
        return s

    if sane:
        values = st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 60).map(float))
        return st.dictionaries(st.sampled_from(["n", "tag", "x"]), values, max_size=2).map(build)
    keys = st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE_STRINGS[:8]))
    scalars = st.one_of(st.text(max_size=20), _floats(False), st.booleans())
    values = st.one_of(
        scalars, st.none(), st.lists(scalars, max_size=2), st.dictionaries(keys, scalars)
    )
    return st.one_of(
        st.dictionaries(keys, values, max_size=6),
        st.integers(200, 600).map(lambda n: {f"k{i}": i for i in range(n)}),
    ).map(build)


def _values(sane: bool) -> st.SearchStrategy[struct_pb2.Value]:
    strings = st.builds(struct_pb2.Value, string_value=st.sampled_from(["a", "b", "c"]))
    numbers = st.builds(struct_pb2.Value, number_value=_floats(sane))
    if sane:
        return st.one_of(strings, numbers)
    return st.one_of(
        strings,
        numbers,
        st.builds(struct_pb2.Value, bool_value=st.booleans()),
        st.just(struct_pb2.Value(null_value=0)),
    )


_WELL_KNOWN = {
    "google.protobuf.Timestamp": _timestamps,
    "google.protobuf.Duration": _durations,
    "google.protobuf.Struct": _structs,
    "google.protobuf.Value": _values,
}


def _field(desc: descriptor.Descriptor, f: FD, depth: int, sane: bool) -> st.SearchStrategy[Any]:
    """Strategy of one value of field ``f`` (an element, for repeated fields)."""
    if f.type == FD.TYPE_MESSAGE:
        make = _WELL_KNOWN.get(f.message_type.full_name)
        if make is not None:
            return make(sane)
        if f.message_type.name == "FloatVector":
            return _vectors(sane).map(lambda v: f.message_type._concrete_class(values=v))
        return _message(f.message_type, depth + 1, sane)
    if f.type == FD.TYPE_STRING:
        return _strings(desc.name, f.name, sane)
    if f.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if f.type == FD.TYPE_BOOL:
        return st.booleans()
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return _floats(sane)
    if f.type == FD.TYPE_ENUM:
        # Sane: a set value (X_UNSPECIFIED = 0 only where it is the only one).
        numbers = [v.number for v in f.enum_type.values if v.number] or [0]
        return st.sampled_from(numbers) if sane else st.integers(-5, 50)
    return _ints(f.type, sane)


def _message(desc: descriptor.Descriptor, depth: int, sane: bool) -> st.SearchStrategy[Message]:
    cls = desc._concrete_class

    @st.composite
    def build(draw) -> Message:
        msg = cls()
        if depth > 3:
            return msg
        for f in desc.fields:
            # A sane message names its target (strings with hints) and fills
            # its message fields (a start, a window) always.
            always = sane and (
                (f.type == FD.TYPE_STRING and f.name in HINTS)
                or (f.type == FD.TYPE_MESSAGE and not f.is_repeated)
            )
            if not always and not draw(st.booleans()):
                continue
            if f.is_repeated and f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
                getattr(msg, f.name).extend(draw(_vectors(sane)))
            elif f.is_repeated:
                values = st.lists(_field(desc, f, depth, sane), max_size=4)
                getattr(msg, f.name).extend(draw(values))
            elif f.type == FD.TYPE_MESSAGE:
                getattr(msg, f.name).CopyFrom(draw(_field(desc, f, depth, sane)))
            else:
                setattr(msg, f.name, draw(_field(desc, f, depth, sane)))
        return msg

    return build()


def request(desc: descriptor.Descriptor) -> st.SearchStrategy[Message]:
    """A strategy of ``desc``'s messages: sane (3 of 4) or hostile throughout;
    each field unset or drawn (repeated fields 0-4 elements); message fields
    below depth 3 stay empty."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda sane: _message(desc, 0, sane))
