"""Online backup and restore through the CLI against real servers: ``driftd
backup`` while a writer streams into the collection, ``driftd restore`` into a
fresh server, then every point acknowledged before the backup began is there,
byte for byte; counts and checksums match; a corrupt file restores nothing.

Data: State of the Union paragraphs (../shared/data), embedded by the server.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import threading
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from support import SHARED_DATA, ServerProcess, error_details

from driftd import backup, convert
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

TEXTS = "bk-sotu"
VECTORS = "bk-vectors"
DRIFTD = str(Path(sys.executable).parent / "driftd")


def sotu_points(n: int) -> list[point_pb2.Point]:
    """The first ``n`` paragraphs as text points, a minute apart within a speech."""
    points = []
    with open(SHARED_DATA / "sotu_paragraphs.jsonl") as f:
        for line, _ in zip(f, range(n), strict=False):
            row = json.loads(line)
            when = datetime.fromisoformat(row["timestamp"]) + timedelta(minutes=row["meta"]["para"])
            p = point_pb2.Point(id=row["id"], series=row["series"], text=row["text"])
            p.time.CopyFrom(convert.datetime_to_timestamp(when))
            p.payload.update({"speech": row["meta"]["speech"], "para": row["meta"]["para"]})
            points.append(p)
    return points


class Writer(threading.Thread):
    """Upserts batches of fresh vector points until stopped; ``acked`` lists the
    ids of every acknowledged batch, in order."""

    def __init__(self, target: str, dim: int) -> None:
        super().__init__(daemon=True)
        self.target, self.dim = target, dim
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = np.random.default_rng(7)
        t0 = datetime(2010, 1, 1)
        try:
            with grpc.insecure_channel(self.target) as ch:
                stub = point_pb2_grpc.PointServiceStub(ch)
                batch = 0
                while not self.stop.is_set():
                    points = []
                    for i in range(20):
                        v = rng.normal(size=self.dim).astype(np.float32)
                        p = point_pb2.Point(
                            id=f"late-{batch:04d}-{i:02d}",
                            series="writer",
                            vector=(v / np.linalg.norm(v)).tolist(),
                            text=f"written during the backup {batch}/{i}",
                        )
                        when = t0 + timedelta(minutes=20 * batch + i)
                        p.time.CopyFrom(convert.datetime_to_timestamp(when))
                        points.append(p)
                    stub.UpsertPoints(
                        point_pb2.UpsertPointsRequest(parent=f"collections/{TEXTS}", points=points),
                        timeout=60,
                    )
                    self.acked += [p.id for p in points]
                    batch += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DRIFTD, *args], capture_output=True, text=True, timeout=600)


def get_points(channel, collection: str, ids: list[str]) -> dict[str, bytes]:
    """The points by id as serialised messages (vectors included)."""
    out = {}
    stub = point_pb2_grpc.PointServiceStub(channel)
    for lo in range(0, len(ids), 1000):
        resp = stub.GetPoints(
            point_pb2.GetPointsRequest(
                parent=f"collections/{collection}", ids=ids[lo : lo + 1000], include_vectors=True
            ),
            timeout=60,
        )
        out.update({p.id: p.SerializeToString(deterministic=True) for p in resp.points})
    return out


def collection(channel, name: str) -> collection_pb2.Collection:
    return collection_pb2_grpc.CollectionServiceStub(channel).GetCollection(
        collection_pb2.GetCollectionRequest(name=f"collections/{name}"), timeout=60
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("online-backup")
    source = ServerProcess(root / "a", root / "a.log").start()
    fresh = ServerProcess(root / "b", root / "b.log").start()
    yield source, fresh, root
    source.stop()
    fresh.stop()


def test_backup_while_writing_then_restore(servers):
    source, fresh, root = servers
    a = grpc.insecure_channel(source.target)
    colls = collection_pb2_grpc.CollectionServiceStub(a)
    colls.CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=TEXTS,
            collection=collection_pb2.Collection(embed_model="all-MiniLM-L6-v2"),
        ),
        timeout=60,
    )
    initial = sotu_points(200)
    point_pb2_grpc.PointServiceStub(a).UpsertPoints(
        point_pb2.UpsertPointsRequest(parent=f"collections/{TEXTS}", points=initial), timeout=300
    )
    rule = monitor_pb2.DriftRule(window=duration_pb2.Duration(seconds=86_400 * 30), min_points=25)
    monitor_pb2_grpc.MonitorServiceStub(a).CreateDriftRule(
        monitor_pb2.CreateDriftRuleRequest(
            parent=f"collections/{TEXTS}", drift_rule_id="monthly", drift_rule=rule
        ),
        timeout=60,
    )
    colls.CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=VECTORS,
            collection=collection_pb2.Collection(dimension=8, distance=collection_pb2.DISTANCE_L2),
        ),
        timeout=60,
    )
    rng = np.random.default_rng(1)
    vectors = []
    for i in range(120):
        p = point_pb2.Point(id=f"v{i:03d}", series=f"s{i % 3}", vector=rng.normal(size=8).tolist())
        p.time.CopyFrom(convert.datetime_to_timestamp(datetime(2024, 1, 1) + timedelta(hours=i)))
        p.payload.update({"i": i, "odd": bool(i % 2), "tag": f"t{i % 5}"})
        vectors.append(p)
    point_pb2_grpc.PointServiceStub(a).UpsertPoints(
        point_pb2.UpsertPointsRequest(parent=f"collections/{VECTORS}", points=vectors), timeout=60
    )

    writer = Writer(source.target, dim=384)
    writer.start()
    try:
        while len(writer.acked) < 60 and writer.error is None:
            writer.stop.wait(0.05)
        acked_before = list(writer.acked)
        out = root / "backup.tar.gz"
        done = cli("backup", "--target", source.target, "--output", str(out))
        acked_after = len(writer.acked)
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error
    assert done.returncode == 0, done.stderr
    assert acked_after > len(acked_before), "the writer did not write during the backup"

    manifest = backup.read_manifest(out)
    counts = {c["id"]: c["point_count"] for c in manifest["collections"]}
    assert counts[VECTORS] == 120
    # The snapshot holds everything acknowledged before the backup began, and at
    # most what was acknowledged by its end.
    assert 200 + len(acked_before) <= counts[TEXTS] <= 200 + acked_after

    restored = cli("restore", str(out), "--target", fresh.target)
    assert restored.returncode == 0, restored.stderr
    b = grpc.insecure_channel(fresh.target)
    for name, n in counts.items():
        assert collection(b, name).point_count == n
    texts = collection(b, TEXTS)
    assert texts.embed_model == "all-MiniLM-L6-v2" and texts.dimension == 384

    want_ids = [p.id for p in initial] + acked_before
    before, after = get_points(a, TEXTS, want_ids), get_points(b, TEXTS, want_ids)
    assert len(before) == len(want_ids) and after == before  # byte-identical
    ids = [p.id for p in vectors]
    assert get_points(b, VECTORS, ids) == get_points(a, VECTORS, ids)
    assert collection(b, VECTORS).distance == collection_pb2.DISTANCE_L2
    got_rule = monitor_pb2_grpc.MonitorServiceStub(b).GetDriftRule(
        monitor_pb2.GetDriftRuleRequest(name=f"collections/{TEXTS}/driftRules/monthly"),
        timeout=60,
    )
    assert (got_rule.window, got_rule.min_points) == (rule.window, 25)

    # One collection under a new id; the original id is taken now.
    copy = cli(
        "restore", str(out), "--collection", VECTORS, "--as", "bk-copy", "--target", fresh.target
    )
    assert copy.returncode == 0, copy.stderr
    assert get_points(b, "bk-copy", ids) == get_points(a, VECTORS, ids)
    again = cli("restore", str(out), "--collection", VECTORS, "--target", fresh.target)
    assert again.returncode == 1 and "already exists" in again.stderr.lower(), again.stderr

    # A corrupted point restores nothing.
    bad = root / "corrupt.tar.gz"
    with tarfile.open(out, "r:gz") as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == f"collections/{VECTORS}/points.ndjson":
                data = data.replace(b'"s1"', b'"s2"', 1)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    broken = cli(
        "restore", str(bad), "--collection", VECTORS, "--as", "bk-bad", "--target", fresh.target
    )
    assert broken.returncode == 1 and "checksum" in broken.stderr, broken.stderr
    with pytest.raises(grpc.RpcError) as caught:
        collection(b, "bk-bad")
    assert error_details(caught.value)[1] == "COLLECTION_NOT_FOUND"
    a.close()
    b.close()


def test_backup_file_is_the_documented_format(servers, tmp_path):
    """The archive holds what docs/operations.md describes, readable without driftd."""
    source, _, root = servers
    out = root / "backup.tar.gz"
    with gzip.open(out) as raw, tarfile.open(fileobj=raw) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        header = json.load(tar.extractfile(f"collections/{TEXTS}/collection.json"))
        first = json.loads(tar.extractfile(f"collections/{TEXTS}/points.ndjson").readline())
    assert names[-1] == "manifest.json"
    assert (manifest["format"], manifest["version"]) == ("driftd-backup", 1)
    assert header["collection"]["name"] == f"collections/{TEXTS}"
    assert header["driftRules"][0]["name"].endswith("/driftRules/monthly")
    assert set(first) >= {"id", "time", "series", "vector", "text", "payload"}
    assert len(first["vector"]) == 384


async def test_async_client_exports_and_imports(servers):
    from driftd.client import AsyncDriftClient

    source, fresh, _ = servers
    async with AsyncDriftClient(source.target) as a, AsyncDriftClient(fresh.target) as b:
        messages = [m async for m in a.export_collection(VECTORS, chunk_size=50)]
        assert [len(m.points) for m in messages] == [0, 50, 50, 20]

        async def requests():
            yield collection_pb2.ImportCollectionRequest(
                collection_id="bk-async",
                collection=messages[0].collection,
                drift_rules=messages[0].drift_rules,
            )
            for m in messages[1:]:
                yield collection_pb2.ImportCollectionRequest(points=m.points)

        done = await b.import_collection(requests())
    assert done.imported_point_count == 120 and done.collection.point_count == 120
    with grpc.insecure_channel(source.target) as ca, grpc.insecure_channel(fresh.target) as cb:
        ids = [f"v{i:03d}" for i in range(120)]
        assert get_points(cb, "bk-async", ids) == get_points(ca, VECTORS, ids)
