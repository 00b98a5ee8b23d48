"""The in-process engine (``from driftd import DriftDB``) over a real Chroma
directory: writes are durable and validated whole, the cache survives a reopen,
and the flow recovers planted attractors in 384-d."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from driftd import DriftDB
from driftd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from driftd.flow.planted import k_well_system

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _points(X, t, series, prefix="p"):
    return [
        {
            "id": f"{prefix}{i}",
            "timestamp": datetime.fromtimestamp(float(t[i]), UTC),
            "vector": X[i],
            "series": f"s{int(series[i])}",
        }
        for i in range(len(X))
    ]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with DriftDB(str(tmp_path_factory.mktemp("chroma")), workers=2) as d:
        yield d


def test_collection_lifecycle_and_errors(db):
    info = db.create_collection("life", dim=4, distance="l2")
    assert (info.name, info.dimension, info.distance, info.point_count) == ("life", 4, "l2", 0)
    with pytest.raises(AlreadyExists):
        db.create_collection("life", dim=4)
    with pytest.raises(InvalidArgument) as bad:
        db.create_collection("-bad-", dim=4)
    assert bad.value.reason == "INVALID_NAME"
    with pytest.raises(NotFound):
        db.get_collection("missing")
    db.delete_collection("life")
    with pytest.raises(NotFound):
        db.get_collection("life")


def test_rejected_batch_writes_nothing(db):
    db.create_collection("strict", dim=3)
    good = {"id": "a", "timestamp": "2024-01-01T00:00:00Z", "vector": [1, 0, 0]}
    bad = {"id": "b", "timestamp": "2024-01-01T00:00:01Z", "vector": [1, float("nan"), 0]}
    with pytest.raises(InvalidArgument) as err:
        db.upsert("strict", [good, bad])
    assert err.value.reason == "NON_FINITE_VECTOR"
    assert [fv.field for fv in err.value.field_violations] == ["points[1].vector"]
    assert db.get_collection("strict").point_count == 0
    found, missing = db.get_points("strict", ["a"])
    assert found == [] and missing == ["a"]
    with pytest.raises(FailedPrecondition) as err:
        db.upsert("strict", [{"id": "t", "timestamp": "2024-01-01T00:00:00Z", "text": "hello"}])
    assert err.value.reason == "NO_EMBED_MODEL"


def test_planted_wells_recovered_and_reopen(db, tmp_path):
    system = k_well_system(6000, k=3, random_state=0)
    db.create_collection("wells", dim=system.X.shape[1], distance="l2")
    pts = _points(system.X, system.t, system.series)
    for lo in range(0, len(pts), 2000):
        db.upsert("wells", pts[lo : lo + 2000])
    assert db.get_collection("wells").point_count == len(pts)

    found = db.flow_attractors("wells", seeds=64)
    stable = [a for a in found.attractors if a.stability == "stable"]
    assert len(stable) == 3
    centers = system.centers
    sep = min(
        np.linalg.norm(centers[i] - centers[j])
        for i in range(len(centers))
        for j in range(i + 1, len(centers))
    )
    for a in stable:
        dist = np.linalg.norm(centers - a.center[None, :], axis=1).min()
        assert dist < 0.1 * sep, (dist, sep)

    probe = db.flow_vector("wells", vector=system.X[10])
    assert probe.velocity.shape == (system.X.shape[1],)
    assert probe.in_support

    steps = db.flow_simulate("wells", point_id="p10", steps=120, dt_seconds=None)
    assert steps[0].step == 0 and steps[-1].step == len(steps) - 1 <= 120
    assert steps[0].time == datetime.fromtimestamp(float(system.t[10]), UTC)


def test_trajectory_in_time_order_with_ties(db):
    db.create_collection("ties", dim=2)
    pts = [
        {"id": f"x{i}", "timestamp": T0 + timedelta(days=i // 3), "vector": [1.0, i]}
        for i in range(9)
    ]
    db.upsert("ties", list(reversed(pts[6:])) + pts[:6])
    got = db.trajectory("ties")
    assert [p.id for p in got[:6]] == [f"x{i}" for i in range(6)]
    assert [p.time for p in got] == sorted(p.time for p in got)
