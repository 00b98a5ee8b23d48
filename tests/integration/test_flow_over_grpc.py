"""The flow end to end through the Python client and a real server process:
planted wells in 384-d are recovered as stable attractors, paths flow into them,
and planted regime switches come back as chapters."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from driftd.flow.planted import k_well_system, regime_switches


def _rows(X, t, series=None, prefix="p"):
    return [
        {
            "id": f"{prefix}{i}",
            "timestamp": datetime.fromtimestamp(float(t[i]), UTC),
            "vector": X[i],
            "series": "" if series is None else f"s{int(series[i])}",
        }
        for i in range(len(X))
    ]


@pytest.fixture(scope="module")
def wells(client):
    system = k_well_system(6000, k=3, random_state=0)
    client.create_collection(name="grpc-wells", dim=system.X.shape[1], distance="l2")
    acks = list(client.stream_upsert("grpc-wells", _rows(system.X, system.t, system.series)))
    assert sum(a.accepted for a in acks) == len(system.X)
    return system


def test_planted_wells_are_the_stable_attractors(client, wells):
    found = client.flow_attractors("grpc-wells", seeds=64, include_vectors=True)
    stable = [a for a in found.attractors if a.stability == "stable"]
    assert len(stable) == len(wells.centers) == 3
    separation = min(
        np.linalg.norm(a - b) for i, a in enumerate(wells.centers) for b in wells.centers[i + 1 :]
    )
    matched = set()
    for a in stable:
        dist = np.linalg.norm(wells.centers - a.center[None, :], axis=1)
        assert dist.min() < 0.1 * separation, (dist.min(), separation)
        matched.add(int(dist.argmin()))
        assert len(a.representatives) == 3
    assert matched == {0, 1, 2}  # one attractor per well
    assert abs(sum(a.basin_fraction for a in stable) - 1.0) < 0.05


def test_paths_flow_into_a_well(client, wells):
    steps = client.flow_simulate("grpc-wells", point_id="p5", steps=400, include_vectors=True)
    assert steps[0].step == 0 and [s.step for s in steps] == list(range(len(steps)))
    end = steps[-1].position
    dist = np.linalg.norm(wells.centers - end[None, :], axis=1).min()
    start = np.linalg.norm(wells.centers - steps[0].position[None, :], axis=1).min()
    assert dist < start
    probe = client.flow_vector("grpc-wells", vector=end)
    assert probe.speed < client.flow_vector("grpc-wells", point_id="p5").speed + 1e-12


def test_planted_regimes_are_the_chapters(client):
    X, t, truth = regime_switches(1200, 5, random_state=4)
    client.create_collection(name="grpc-regimes", dim=X.shape[1])
    client.upsert("grpc-regimes", points=_rows(X, t, prefix="r"))
    chapters = client.flow_chapters("grpc-regimes", min_size=10).chapters
    starts = [int(c.start_point_id[1:]) for c in chapters[1:]]
    hits = sum(any(abs(s - b) <= 5 for b in truth) for s in starts)
    recall = sum(any(abs(s - b) <= 5 for s in starts) for b in truth) / len(truth)
    precision = hits / max(len(starts), 1)
    assert precision >= 0.95 and recall >= 0.95, (starts, truth.tolist())
    assert sum(c.point_count for c in chapters) == len(X)
