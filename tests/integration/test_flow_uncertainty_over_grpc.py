"""The flow's bootstrap uncertainty through the Python clients and a real server:
ProbeFlow confidence, the SimulatePaths band and FindAttractors reproducibility on
five planted wells, one of them barely visited (1,500 points in 384-d)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from driftd.client import AsyncDriftClient
from driftd.config import Settings
from driftd.errors import InvalidArgument
from driftd.flow.planted import k_well_system

NAME = "grpc-uncertainty"
ENSEMBLE_SIZE = 8  # the server default (DRIFTD_ENSEMBLE_SIZE)


@pytest.fixture(scope="module")
def wells(client):
    system = k_well_system(1500, k=5, random_state=0)
    client.create_collection(name=NAME, dim=system.X.shape[1])
    rows = [
        {
            "id": f"w{i}",
            "timestamp": datetime.fromtimestamp(float(system.t[i]), UTC),
            "vector": system.X[i],
            "series": f"s{int(system.series[i])}",
        }
        for i in range(len(system.X))
    ]
    acks = list(client.stream_upsert(NAME, rows))
    assert sum(a.accepted for a in acks) == len(rows)
    return system


def test_confidence_is_high_in_the_data_and_zero_far_away(client, wells):
    inside = [client.flow_vector(NAME, point_id=f"w{i}") for i in range(0, 1500, 75)]
    assert all(p.in_support for p in inside)
    assert np.median([p.confidence for p in inside]) > 0.8
    far = np.random.default_rng(3).standard_normal(wells.X.shape[1]).astype(np.float32)
    probe = client.flow_vector(NAME, vector=far)
    assert not probe.in_support
    assert probe.confidence < 0.01
    assert probe.support < min(p.support for p in inside)


def test_band_is_widest_where_the_data_are_sparse(client, wells):
    ends = []
    for centre in wells.centers:
        steps = client.flow_simulate(
            NAME, vector=centre.astype(np.float32), steps=50, include_vectors=True
        )
        # paths stop early once they stall at their well: compare the final bands
        assert steps[-1].stop_reason in ("steps", "low_speed") and steps[0].band_radius < 1e-6
        for s in steps:
            assert s.ensemble_position.shape == (wells.X.shape[1],)
            assert abs(np.linalg.norm(s.ensemble_position) - 1.0) < 1e-5
        ends.append((client.flow_vector(NAME, vector=centre).support, steps[-1].band_radius))
    support, radius = np.array(ends).T
    assert radius.argmax() == support.argmin()
    assert radius.max() > 3 * radius[support.argmax()]
    # without vectors the band radius still streams; the positions do not
    bare = client.flow_simulate(NAME, point_id="w7", steps=3, include_vectors=False)
    assert all(s.ensemble_position.size == 0 for s in bare) and bare[-1].band_radius > 0


def test_reproducibility_is_measured_and_deterministic(client, wells):
    found = client.flow_attractors(NAME, seeds=32, include_vectors=True)
    assert found.bootstrap == ENSEMBLE_SIZE
    stable = [a for a in found.attractors if a.stability == "stable"]
    strong = [a for a in stable if a.basin_fraction >= 0.15]
    assert len(strong) == 4
    for a in strong:
        assert np.linalg.norm(wells.centers - a.center, axis=1).min() < 0.05
        assert a.reproducibility >= 0.85
    weakest = min(stable, key=lambda a: a.basin_fraction)
    assert weakest.reproducibility < 0.5
    assert {a.stability for a in found.attractors} == {"stable", "saddle"}
    more = client.flow_attractors(NAME, seeds=32, bootstrap=16)
    again = client.flow_attractors(NAME, seeds=32, bootstrap=16)
    assert more.bootstrap == 16
    assert [(a.id, a.stability, a.reproducibility) for a in more.attractors] == [
        (a.id, a.stability, a.reproducibility) for a in again.attractors
    ]
    assert all(a.reproducibility * 16 == round(a.reproducibility * 16) for a in more.attractors)


async def test_asyncio_client_exposes_the_same_fields(server, wells):
    async with AsyncDriftClient(server.target, timeout=120) as db:
        found = await db.flow_attractors(NAME, seeds=32, bootstrap=4)
        steps = await db.flow_simulate(NAME, point_id="w3", steps=5, band_coverage=0.5)
    assert found.bootstrap == 4 and all(0 <= a.reproducibility <= 1 for a in found.attractors)
    assert len(steps) == 6 and steps[-1].band_radius > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bootstrap": 1}, "bootstrap"),
        ({"bootstrap": 65}, "bootstrap"),
        ({"band_coverage": 1.5}, "band_coverage"),
        ({"band_coverage": -0.1}, "band_coverage"),
    ],
)
def test_bad_uncertainty_arguments_are_rejected(client, wells, kwargs, field):
    with pytest.raises(InvalidArgument) as err:
        if field == "bootstrap":
            client.flow_attractors(NAME, **kwargs)
        else:
            client.flow_simulate(NAME, point_id="w3", steps=2, **kwargs)
    assert [v.field for v in err.value.field_violations] == [field]


def test_ensemble_size_is_configurable():
    assert Settings.from_env({"DRIFTD_ENSEMBLE_SIZE": "4"}).ensemble_size == 4
    assert Settings.from_env({}).ensemble_size == ENSEMBLE_SIZE
    with pytest.raises(ValueError, match="ensemble_size must be >= 2"):
        Settings.from_env({"DRIFTD_ENSEMBLE_SIZE": "1"})
