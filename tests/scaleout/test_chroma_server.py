"""Scale-out over a Chroma server: a real ``chroma run`` on loopback and two
``driftd serve`` replicas that share it (``DRIFTD_CHROMA_URL``).

Points written through one replica are read, searched, probed and simulated
through the other; each replica's cached trajectory and flow model follow the
collection's version when the other replica writes or deletes; deletes and
collection removal are seen across replicas. Everything goes through the
generated stubs over real gRPC; nothing is faked.
"""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from support import ServerProcess, error_details

from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

DIM = 8
T0 = datetime(2024, 1, 1, tzinfo=UTC)
TIMEOUT = 120.0


# --- processes -------------------------------------------------------------


@dataclass
class Replica:
    """One driftd replica and stubs on one channel to it."""

    server: ServerProcess
    channel: grpc.Channel
    collections: collection_pb2_grpc.CollectionServiceStub
    points: point_pb2_grpc.PointServiceStub
    flow: flow_pb2_grpc.FlowServiceStub

    @classmethod
    def connect(cls, server: ServerProcess) -> Replica:
        channel = grpc.insecure_channel(server.target)
        return cls(
            server,
            channel,
            collection_pb2_grpc.CollectionServiceStub(channel),
            point_pb2_grpc.PointServiceStub(channel),
            flow_pb2_grpc.FlowServiceStub(channel),
        )

    def metric(self, name: str, **labels: str) -> float:
        """The value of ``name{labels}`` on the replica's metrics port (0 when absent)."""
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def collection(self, cid: str) -> collection_pb2.Collection:
        return self.collections.GetCollection(
            collection_pb2.GetCollectionRequest(name=f"collections/{cid}"), timeout=TIMEOUT
        )

    def trajectory(self, cid: str, **kw) -> list[point_pb2.Point]:
        req = point_pb2.GetTrajectoryRequest(parent=f"collections/{cid}", **kw)
        return [
            p for chunk in self.points.GetTrajectory(req, timeout=TIMEOUT) for p in chunk.points
        ]

    def probe(self, cid: str, vector: np.ndarray) -> flow_pb2.ProbeFlowResponse:
        start = flow_pb2.FlowStart(vector=point_pb2.FloatVector(values=vector.tolist()))
        return self.flow.ProbeFlow(
            flow_pb2.ProbeFlowRequest(parent=f"collections/{cid}", start=start), timeout=TIMEOUT
        )

    def simulate(self, cid: str, point_id: str, steps: int = 8) -> list:
        req = flow_pb2.SimulatePathsRequest(
            parent=f"collections/{cid}",
            start=flow_pb2.FlowStart(point_id=point_id),
            steps=steps,
            include_vectors=True,
        )
        return list(self.flow.SimulatePaths(req, timeout=TIMEOUT))


@pytest.fixture(scope="module")
def replicas(chroma, tmp_path_factory):
    """Two driftd replicas against the one Chroma server (started in parallel)."""
    root = tmp_path_factory.mktemp("replicas")
    servers = [
        ServerProcess(
            root / f"unused-{name}",  # DRIFTD_CHROMA_URL overrides the embedded path
            root / f"driftd-{name}.log",
            DRIFTD_CHROMA_URL=chroma.url,
        )
        for name in ("a", "b")
    ]
    errors: list[BaseException] = []

    def start(s: ServerProcess) -> None:
        try:
            s.start()
        except BaseException as exc:  # reported below, on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        reps = [Replica.connect(s) for s in servers]
        yield reps
        for r in reps:
            r.channel.close()
    finally:
        for s in servers:
            s.stop()
    for s in servers:
        assert not (s.chroma_path.exists() and any(s.chroma_path.iterdir())), (
            "a replica in server mode wrote an embedded Chroma directory"
        )


# --- data ------------------------------------------------------------------


def relaxing(series: str, target: np.ndarray, *, n: int, seed: int, prefix: str, t0=T0):
    """A timeline relaxing towards ``target`` (a planted flow), one point per minute."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2.0, DIM)
    out = []
    for i in range(n):
        x = x + 0.15 * (target - x) + rng.normal(0, 0.01, DIM)
        p = point_pb2.Point(
            id=f"{prefix}{i:03d}", series=series, vector=x.astype(np.float32).tolist()
        )
        p.time.FromDatetime(t0 + timedelta(minutes=i))
        p.payload.update({"series": series, "i": i})
        out.append(p)
    return out


def create(replica: Replica, cid: str) -> collection_pb2.Collection:
    return replica.collections.CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=cid,
            collection=collection_pb2.Collection(
                dimension=DIM, distance=collection_pb2.DISTANCE_L2
            ),
        ),
        timeout=TIMEOUT,
    )


def upsert(replica: Replica, cid: str, points) -> point_pb2.UpsertPointsResponse:
    return replica.points.UpsertPoints(
        point_pb2.UpsertPointsRequest(parent=f"collections/{cid}", points=points), timeout=TIMEOUT
    )


def stream_upsert(replica: Replica, cid: str, batches) -> list:
    def requests():
        for seq, batch in enumerate(batches, start=1):
            yield point_pb2.StreamUpsertPointsRequest(
                parent=f"collections/{cid}", sequence=seq, points=batch
            )

    return list(replica.points.StreamUpsertPoints(requests(), timeout=TIMEOUT))


def ids_of(points) -> list[str]:
    return [p.id for p in points]


def vec(p) -> np.ndarray:
    return np.asarray(p.vector, dtype=np.float32)


# --- tests -----------------------------------------------------------------


def test_replicas_use_the_chroma_server(chroma, replicas):
    a, b = replicas
    create(a, "scale-shared")
    upsert(a, "scale-shared", relaxing("s", np.zeros(DIM), n=12, seed=1, prefix="p"))
    # The collection is stored in the Chroma server itself, where any client sees it.
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=chroma.port)
    assert "scale-shared" in {c.name for c in client.list_collections()}
    assert client.get_collection("scale-shared").count() == 12
    assert b.collection("scale-shared").point_count == 12


def test_written_through_one_is_read_through_the_other(replicas):
    a, b = replicas
    cid = "scale-read"
    created = create(a, cid)
    assert created.name == f"collections/{cid}"
    # B sees the new (empty) collection at once, and lists it.
    assert b.collection(cid).point_count == 0
    listed = b.collections.ListCollections(
        collection_pb2.ListCollectionsRequest(page_size=1000), timeout=TIMEOUT
    )
    assert f"collections/{cid}" in {c.name for c in listed.collections}

    pts = relaxing("s1", np.full(DIM, 1.0), n=40, seed=2, prefix="r")
    resp = upsert(a, cid, pts)
    assert resp.upserted_count == 40

    got_b = b.collection(cid)
    assert got_b.point_count == 40
    assert got_b.series_count == 1
    assert got_b.version == resp.collection_version == a.collection(cid).version
    assert got_b.start_time.ToDatetime(UTC) == T0
    assert got_b.end_time.ToDatetime(UTC) == T0 + timedelta(minutes=39)

    # GetPoints through B returns A's points with their vectors and payloads.
    gp = b.points.GetPoints(
        point_pb2.GetPointsRequest(
            parent=f"collections/{cid}", ids=["r000", "r039", "nope"], include_vectors=True
        ),
        timeout=TIMEOUT,
    )
    assert ids_of(gp.points) == ["r000", "r039"]
    assert list(gp.missing_ids) == ["nope"]
    np.testing.assert_array_equal(vec(gp.points[1]), vec(pts[39]))
    assert gp.points[1].payload["i"] == 39

    # The trajectory through B is A's, in time order, with identical vectors.
    traj = b.trajectory(cid, include_vectors=True, chunk_size=7)
    assert ids_of(traj) == ids_of(pts)
    for got, sent in zip(traj, pts, strict=True):
        np.testing.assert_array_equal(vec(got), vec(sent))

    # Search through B finds A's point nearest the query.
    hit = b.points.SearchPoints(
        point_pb2.SearchPointsRequest(
            parent=f"collections/{cid}",
            vector=point_pb2.FloatVector(values=list(pts[20].vector)),
            top_k=3,
        ),
        timeout=TIMEOUT,
    )
    assert hit.results[0].point.id == "r020"
    assert hit.results[0].distance == pytest.approx(0.0, abs=1e-5)


def test_probe_and_simulate_through_the_other_replica(replicas):
    a, b = replicas
    cid = "scale-flow"
    create(a, cid)
    target = np.zeros(DIM)
    target[0] = 3.0
    pts = [
        p for s in range(4) for p in relaxing(f"s{s}", target, n=30, seed=10 + s, prefix=f"f{s}-")
    ]
    # Written by A as a stream (acked batches), read and simulated by B.
    acks = stream_upsert(a, cid, [pts[i : i + 25] for i in range(0, len(pts), 25)])
    assert [ack.sequence for ack in acks] == [1, 2, 3, 4, 5]
    assert sum(ack.accepted_count for ack in acks) == len(pts)

    probe_at = np.zeros(DIM)
    pb, pa = b.probe(cid, probe_at), a.probe(cid, probe_at)
    # The planted flow at the origin points towards the target (+x0).
    v = np.asarray(pb.velocity)
    assert v[0] > 0 and v[0] / np.linalg.norm(v) > 0.8, v
    # Same data, same seed: both replicas fit the same field.
    np.testing.assert_allclose(pb.velocity, pa.velocity, rtol=1e-4, atol=1e-7)
    assert pb.nearest_point_id == pa.nearest_point_id

    steps_b = b.simulate(cid, "f2-003", steps=6)
    steps_a = a.simulate(cid, "f2-003", steps=6)
    assert [s.step for s in steps_b] == list(range(len(steps_b)))
    assert len(steps_b) >= 2
    # Step 0 is the stored point A wrote (positions live in the fitted
    # reduced space, so they are compared through the nearest point).
    start = steps_b[0]
    assert start.nearest_point_id == "f2-003"
    assert start.time.ToDatetime(UTC) == T0 + timedelta(minutes=3)
    # The path moves towards the attractor at the target.
    d0 = np.linalg.norm(np.asarray(steps_b[0].position) - target)
    d1 = np.linalg.norm(np.asarray(steps_b[-1].position) - target)
    assert d1 < d0
    assert len(steps_a) == len(steps_b)
    for sa, sb in zip(steps_a, steps_b, strict=True):
        np.testing.assert_allclose(sa.position, sb.position, rtol=1e-4, atol=1e-5)


def test_cached_model_follows_the_collection_version(replicas):
    """Both replicas fit and cache a model; a write through B makes A's cache
    stale; A's next probe refits on the new version (one more fit, seen in its
    metrics) and agrees with B."""
    a, b = replicas
    cid = "scale-cache"
    create(a, cid)
    plus, minus = np.zeros(DIM), np.zeros(DIM)
    plus[1], minus[1] = 3.0, -3.0
    first = [
        p for s in range(3) for p in relaxing(f"up{s}", plus, n=30, seed=20 + s, prefix=f"u{s}-")
    ]
    v1 = upsert(a, cid, first).collection_version

    probe_at = np.zeros(DIM)
    before_a, before_b = a.probe(cid, probe_at), b.probe(cid, probe_at)
    assert before_a.velocity[1] > 0 and before_b.velocity[1] > 0
    fits_a = a.metric("driftd_flow_fits_total", collection=cid)
    fits_b = b.metric("driftd_flow_fits_total", collection=cid)
    assert fits_a == 1 and fits_b == 1
    # The model is cached: probing again at the same version does not refit.
    a.probe(cid, probe_at), b.probe(cid, probe_at)
    assert a.metric("driftd_flow_fits_total", collection=cid) == fits_a
    assert b.metric("driftd_flow_fits_total", collection=cid) == fits_b

    # B writes many timelines that run the other way and replace the old ones'
    # influence near the origin.
    second = [
        p for s in range(9) for p in relaxing(f"down{s}", minus, n=30, seed=40 + s, prefix=f"d{s}-")
    ]
    acks = stream_upsert(b, cid, [second[i : i + 90] for i in range(0, len(second), 90)])
    v2 = acks[-1].collection_version
    assert v2 > v1
    assert a.collection(cid).version == v2
    assert a.collection(cid).point_count == len(first) + len(second)

    after_a = a.probe(cid, probe_at)
    after_b = b.probe(cid, probe_at)
    assert a.metric("driftd_flow_fits_total", collection=cid) == fits_a + 1
    assert b.metric("driftd_flow_fits_total", collection=cid) == fits_b + 1
    np.testing.assert_allclose(after_a.velocity, after_b.velocity, rtol=1e-4, atol=1e-7)
    assert after_a.velocity[1] < before_a.velocity[1]
    # A's trajectory and its simulation include the points B wrote.
    assert set(ids_of(a.trajectory(cid))) == set(ids_of(first)) | set(ids_of(second))
    assert a.simulate(cid, "d4-002", steps=3)[0].nearest_point_id == "d4-002"


def test_deletes_are_seen_by_the_other_replica(replicas):
    a, b = replicas
    cid = "scale-delete"
    create(a, cid)
    pts = relaxing("s", np.zeros(DIM), n=30, seed=5, prefix="x")
    upsert(a, cid, pts)
    b.probe(cid, np.zeros(DIM))  # B caches the trajectory and a model
    assert len(b.trajectory(cid)) == 30

    gone = ["x000", "x001", "x002"]
    resp = a.points.DeletePoints(
        point_pb2.DeletePointsRequest(parent=f"collections/{cid}", ids=gone), timeout=TIMEOUT
    )
    assert resp.deleted_count == 3
    assert b.collection(cid).point_count == 27
    assert b.collection(cid).version == resp.collection_version
    traj = b.trajectory(cid)
    assert ids_of(traj) == ids_of(pts[3:])
    gp = b.points.GetPoints(
        point_pb2.GetPointsRequest(parent=f"collections/{cid}", ids=gone), timeout=TIMEOUT
    )
    assert list(gp.missing_ids) == gone
    with pytest.raises(grpc.RpcError) as caught:
        b.simulate(cid, "x000")
    assert error_details(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "POINT_NOT_FOUND")

    # Deleting the collection through B: A answers NOT_FOUND from then on.
    b.collections.DeleteCollection(
        collection_pb2.DeleteCollectionRequest(name=f"collections/{cid}"), timeout=TIMEOUT
    )
    for call in (lambda: a.collection(cid), lambda: a.probe(cid, np.zeros(DIM))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert error_details(caught.value)[:2] == (
            grpc.StatusCode.NOT_FOUND,
            "COLLECTION_NOT_FOUND",
        )


def test_a_collection_created_again_through_the_other_replica(replicas):
    """B deletes and creates again a collection A has cached, before either
    writes to it: A serves the new one (its settings, not its cached ones)."""
    a, b = replicas
    cid = "scale-again"
    create(a, cid)
    assert a.collection(cid).dimension == b.collection(cid).dimension == DIM
    b.collections.DeleteCollection(
        collection_pb2.DeleteCollectionRequest(name=f"collections/{cid}"), timeout=TIMEOUT
    )
    b.collections.CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=cid,
            collection=collection_pb2.Collection(
                dimension=3, distance=collection_pb2.DISTANCE_COSINE
            ),
        ),
        timeout=TIMEOUT,
    )
    got = a.collection(cid)
    assert (got.dimension, got.distance) == (3, collection_pb2.DISTANCE_COSINE)
    p = point_pb2.Point(id="n0", vector=[1.0, 0.0, 0.0])
    p.time.FromDatetime(T0)
    assert upsert(a, cid, [p]).upserted_count == 1
    assert b.collection(cid).point_count == 1


def test_concurrent_writers_on_both_replicas(replicas):
    """Both replicas write the same collection at the same time; afterwards
    each one serves every point (no replica keeps a cache that misses the
    other's writes)."""
    a, b = replicas
    cid = "scale-race"
    create(a, cid)
    rounds = 8
    batches = {
        name: [
            relaxing(
                name,
                np.zeros(DIM),
                n=5,
                seed=100 + 10 * k + j,
                prefix=f"{name}{j}-",
                t0=T0 + timedelta(hours=j),
            )
            for j in range(rounds)
        ]
        for k, name in enumerate(("a", "b"))
    }
    # Warm both caches, so both replicas hold a trajectory when the race starts.
    upsert(a, cid, relaxing("w", np.zeros(DIM), n=10, seed=99, prefix="w"))
    assert len(a.trajectory(cid)) == len(b.trajectory(cid)) == 10

    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(replica: Replica, name: str) -> None:
        try:
            for batch in batches[name]:
                barrier.wait(timeout=60)
                upsert(replica, cid, batch)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(r, n)) for r, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    expected = 10 + 2 * rounds * 5
    stored = a.points.GetPoints(
        point_pb2.GetPointsRequest(
            parent=f"collections/{cid}",
            ids=[p.id for bs in batches.values() for batch in bs for p in batch],
        ),
        timeout=TIMEOUT,
    )
    assert not stored.missing_ids  # Chroma has every point
    for replica, name in ((a, "A"), (b, "B")):
        traj = replica.trajectory(cid)
        assert len(traj) == expected, (
            f"replica {name} serves {len(traj)} of {expected} points "
            f"(version {replica.collection(cid).version})"
        )
        assert replica.collection(cid).point_count == expected
