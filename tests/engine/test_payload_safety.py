"""No payload the engine accepts can poison a collection (issue 13, defect 1).

Hypothesis generates payloads of arbitrary keys (any Unicode, reserved
prefixes, long) and values (strings, numbers of any size, bools, nested and
null values) against small limits. Each one either is refused with
INVALID_ARGUMENT (INVALID_PAYLOAD / LIMIT_EXCEEDED) and writes nothing, or is
stored in real Chroma, reads back equal, and leaves the collection readable,
writable and listed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftd import DriftDB
from driftd.engine.validate import payload_problem
from driftd.errors import InvalidArgument

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LIMITS = {"max_payload_keys": 8, "max_payload_value_bytes": 64, "max_payload_bytes": 256}

# Python strings may hold lone surrogates (protobuf's never do).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
keys = st.one_of(
    any_text,
    st.sampled_from(
        ["", "#document", "chroma:document", "$and", "driftd:seq", "driftd:time", "lone\ud800"]
    ),
    st.builds(lambda p, s: p + s, st.sampled_from(["$", "#", "chroma:", "driftd:"]), st.text()),
    st.text(min_size=250, max_size=270),
)
values = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=80),
    st.just("lone\udfff"),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with DriftDB(str(tmp_path_factory.mktemp("chroma")), workers=1, **LIMITS) as d:
        d.create_collection("safe", dim=2, distance="l2")
        yield d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.dictionaries(keys, values, max_size=10))
def test_accepted_payloads_never_poison_the_collection(db, payload):
    accepted = payload_problem(payload, "payload", frozenset(), db.settings) is None
    point = {"id": "p", "timestamp": T0, "vector": [1.0, 2.0], "payload": payload}
    if not accepted:
        with pytest.raises(InvalidArgument) as exc:
            db.upsert("safe", [point])
        assert exc.value.reason in ("INVALID_PAYLOAD", "LIMIT_EXCEEDED")
        return
    db.upsert("safe", [point])
    (got,), missing = db.get_points("safe", ["p"])
    assert not missing
    assert got.payload.keys() == payload.keys()
    for key, value in payload.items():
        assert got.payload[key] == value or (
            isinstance(value, float) and math.isclose(got.payload[key], value)
        )
    # The collection stays readable, writable and listed.
    db.upsert("safe", [{"id": "q", "timestamp": T0, "vector": [3.0, 4.0]}])
    assert db.get_collection("safe").point_count == 2
    assert "safe" in [c.name for c in db.list_collections()[0]]
    assert [p.id for p in db.trajectory("safe")] == ["p", "q"]


def test_upsert_replaces_payload_and_text_of_an_existing_point(db):
    """Found by the test above: Chroma's upsert merges metadata and keeps the old
    document, so a replaced point kept stale payload keys and text."""
    db.create_collection("replace", dim=2, distance="l2")
    db.upsert(
        "replace",
        [
            {
                "id": "r",
                "timestamp": T0,
                "vector": [1, 2],
                "text": "old",
                "payload": {"a": 1, "b": 2},
            }
        ],
    )
    db.upsert("replace", [{"id": "r", "timestamp": T0, "vector": [2, 1], "payload": {"a": 3}}])
    (got,), _ = db.get_points("replace", ["r"])
    assert (got.payload, got.text) == ({"a": 3}, None)
    assert [p.payload for p in db.trajectory("replace")] == [{"a": 3}]


@pytest.mark.parametrize("field", ["id", "series", "text"])
def test_lone_surrogates_in_ids_series_and_texts_are_refused(db, field):
    point = {"id": "s", "timestamp": T0, "vector": [1.0, 2.0], field: "bad\ud800"}
    with pytest.raises(InvalidArgument) as exc:
        db.upsert("safe", [point])
    assert exc.value.field_violations[0].field == f"points[0].{field}"
