"""The engine refreshes a collection's flow model from appended points alone (issue 3,
sec. 6), over a real Chroma directory: it counts the refresh apart from full fits,
keeps point positions right, stays close to a full fit, and refits from scratch after
anything but a plain append."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftd import DriftDB
from driftd.flow import FlowField
from driftd.flow.planted import k_well_system
from driftd.flow.timeline import spread_ties

NAME = "growing"


def _points(ps, rows):
    return [
        {
            "id": f"p{i}",
            "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
            "vector": ps.X[i],
            "series": f"s{int(ps.series[i])}",
        }
        for i in rows
    ]


def _fits(kind: str) -> float:
    value = REGISTRY.get_sample_value("driftd_flow_fits_total", {"collection": NAME, "kind": kind})
    return value or 0.0


@pytest.fixture(scope="module")
def system():
    return k_well_system(3000, k=3, random_state=1)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with DriftDB(str(tmp_path_factory.mktemp("chroma")), workers=2) as d:
        yield d


def test_appends_refresh_the_model_and_anything_else_refits(db, system):
    ps = system
    # The last 50 points of every series arrive late (+20 %); in time order they
    # interleave with the other series' points, so positions move.
    n = len(ps.X)
    rank = np.array([np.sum(ps.series[: i + 1] == ps.series[i]) for i in range(n)])
    late = rank > np.bincount(ps.series)[ps.series] - 50
    db.create_collection(NAME, dim=ps.X.shape[1])
    db.upsert(NAME, _points(ps, np.flatnonzero(~late)))
    db.flow_vector(NAME, vector=ps.X[0])
    assert (_fits("full"), _fits("incremental")) == (1, 0)

    db.upsert(NAME, _points(ps, np.flatnonzero(late)))
    probes = [db.flow_vector(NAME, point_id=f"p{i}") for i in range(0, n, 100)]
    assert (_fits("full"), _fits("incremental")) == (1, 1)
    # positions map to the right points after the refresh
    assert [p.nearest_point_id for p in probes] == [f"p{i}" for i in range(0, n, 100)]
    new = int(np.flatnonzero(late)[7])
    assert db.flow_vector(NAME, point_id=f"p{new}").nearest_point_id == f"p{new}"
    assert db.flow_simulate(NAME, point_id=f"p{new}", steps=2)[0].nearest_point_id == f"p{new}"
    full = FlowField(random_state=0).fit(ps.X, spread_ties(ps.t, ps.series), ps.series)
    V = np.array([p.velocity for p in probes], dtype=np.float64)
    V_full = full.predict(ps.X[::100])
    cosine = np.einsum("ij,ij->i", V, V_full) / np.linalg.norm(V, axis=1)
    assert np.mean(cosine / np.linalg.norm(V_full, axis=1)) >= 0.99

    # an overwrite (even with the same content) and a point inside a series refit
    db.upsert(NAME, _points(ps, [5]))
    db.flow_vector(NAME, vector=ps.X[0])
    assert (_fits("full"), _fits("incremental")) == (2, 1)
    inside = _points(ps, [20])[0] | {"id": "inside"}
    inside["timestamp"] = datetime.fromtimestamp(float(ps.t[20]) + 0.5, UTC)
    db.upsert(NAME, [inside])
    db.flow_vector(NAME, vector=ps.X[0])
    assert (_fits("full"), _fits("incremental")) == (3, 1)
    # appending after every series' end refreshes again
    tail = _points(ps, range(10))
    for j, p in enumerate(tail):
        p["id"] = "again-" + p["id"]
        p["timestamp"] = datetime.fromtimestamp(float(ps.t[-1]) + 60.0 * (1 + j), UTC)
    db.upsert(NAME, tail)
    db.flow_vector(NAME, vector=ps.X[0])
    assert (_fits("full"), _fits("incremental")) == (3, 2)
