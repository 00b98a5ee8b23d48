"""Backup and restore of the Chroma directory, as docs/operations.md describes
it: stop the writer, copy the directory, start driftd on the copy. Also the
move from embedded mode to server mode by serving the copied directory with
``chroma run``. Real processes throughout."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from support import ServerProcess

from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

DIM = 6
T0 = datetime(2024, 1, 1, tzinfo=UTC)
CID = "backup-notes"


def points(n: int) -> list[point_pb2.Point]:
    rng = np.random.default_rng(3)
    x, out = rng.normal(0, 2, DIM), []
    for i in range(n):
        x = x + 0.2 * (np.ones(DIM) - x) + rng.normal(0, 0.01, DIM)
        p = point_pb2.Point(id=f"p{i:03d}", series=f"s{i % 2}", vector=x.tolist(), text=f"t{i}")
        p.time.FromDatetime(T0 + timedelta(hours=i))
        p.payload.update({"i": i})
        out.append(p)
    return out


def snapshot(target: str) -> dict:
    """What a client sees of the collection: metadata, trajectory, a probe."""
    with grpc.insecure_channel(target) as ch:
        col = collection_pb2_grpc.CollectionServiceStub(ch).GetCollection(
            collection_pb2.GetCollectionRequest(name=f"collections/{CID}"), timeout=120
        )
        traj = [
            (p.id, p.series, p.time.seconds, p.text, p.payload["i"], tuple(p.vector))
            for chunk in point_pb2_grpc.PointServiceStub(ch).GetTrajectory(
                point_pb2.GetTrajectoryRequest(parent=f"collections/{CID}", include_vectors=True),
                timeout=120,
            )
            for p in chunk.points
        ]
        probe = flow_pb2_grpc.FlowServiceStub(ch).ProbeFlow(
            flow_pb2.ProbeFlowRequest(
                parent=f"collections/{CID}", start=flow_pb2.FlowStart(point_id="p010")
            ),
            timeout=120,
        )
    return {
        # Vectors compared apart, with a float32 tolerance: a cosine collection's
        # vectors come back from Chroma within an ulp of what was written.
        "vectors": np.array([t[-1] for t in traj]),
        "point_count": col.point_count,
        "series_count": col.series_count,
        "version": col.version,
        "dimension": col.dimension,
        "trajectory": [t[:-1] for t in traj],
        "velocity": np.asarray(probe.velocity),
    }


def assert_same(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a.pop("vectors"), b.pop("vectors"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.pop("velocity"), b.pop("velocity"), rtol=1e-4, atol=1e-9)
    assert a == b


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """An embedded-mode driftd with one collection, stopped (the writer is down)."""
    root = tmp_path_factory.mktemp("backup-original")
    srv = ServerProcess(root / "data", root / "original.log").start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            collection_pb2_grpc.CollectionServiceStub(ch).CreateCollection(
                collection_pb2.CreateCollectionRequest(
                    collection_id=CID, collection=collection_pb2.Collection(dimension=DIM)
                ),
                timeout=120,
            )
            point_pb2_grpc.PointServiceStub(ch).UpsertPoints(
                point_pb2.UpsertPointsRequest(parent=f"collections/{CID}", points=points(40)),
                timeout=120,
            )
        before = snapshot(srv.target)
    finally:
        srv.stop()  # SIGTERM: drained and closed
    assert srv.proc.returncode == 0, srv.log()
    return root / "data", before


def test_restore_a_copied_directory(original, tmp_path):
    data, before = original
    backup = tmp_path / "backup"
    shutil.copytree(data, backup, symlinks=True)
    restored = ServerProcess(backup, tmp_path / "restored.log").start()
    try:
        assert_same(snapshot(restored.target), dict(before))
    finally:
        restored.stop()


def test_embedded_backup_served_by_a_chroma_server(original, tmp_path, chroma_factory):
    data, before = original
    copy = tmp_path / "for-server"
    shutil.copytree(data, copy, symlinks=True)
    chroma = chroma_factory(copy)
    srv = ServerProcess(tmp_path / "unused", tmp_path / "server.log", DRIFTD_CHROMA_URL=chroma.url)
    srv.start()
    try:
        assert_same(snapshot(srv.target), dict(before))
    finally:
        srv.stop()
