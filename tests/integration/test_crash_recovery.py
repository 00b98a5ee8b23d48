"""SIGKILL in the middle of a StreamUpsertPoints: after a restart every point of
every acknowledged batch is there, and the stream resumes after the last ack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from support import ServerProcess

from driftd.client import DriftClient
from driftd.errors import DriftdError

DIM, BATCH, BATCHES = 16, 200, 40
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_points(n: int):
    rng = np.random.default_rng(3)
    return [
        {"id": f"c{i}", "timestamp": T0 + timedelta(minutes=i), "vector": rng.standard_normal(DIM)}
        for i in range(n)
    ]


@pytest.fixture
def crashable(tmp_path):
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log").start()
    yield srv
    srv.stop()


def test_acked_batches_survive_sigkill_and_stream_resumes(crashable):
    points = make_points(BATCH * BATCHES)
    acked: list[int] = []
    with DriftClient(crashable.target, timeout=60) as client:
        client.create_collection(name="crash", dim=DIM, distance="l2")
        with pytest.raises(DriftdError):  # the stream dies with the server
            for ack in client.stream_upsert("crash", points, batch_size=BATCH):
                assert ack.rejected == 0
                acked.append(ack.sequence)
                if len(acked) == 5:
                    crashable.kill()  # SIGKILL: no drain, no flush
    assert acked == [0, 1, 2, 3, 4]

    crashable.start()
    with DriftClient(crashable.target, timeout=60) as client:
        acked_ids = [p["id"] for p in points[: BATCH * len(acked)]]
        found, missing = client.get_points("crash", acked_ids)
        assert missing == [] and len(found) == len(acked_ids)

        resume = acked[-1] + 1
        acks = list(
            client.stream_upsert(
                "crash", points[BATCH * resume :], batch_size=BATCH, start_sequence=resume
            )
        )
        assert [a.sequence for a in acks] == list(range(resume, BATCHES))
        assert sum(a.accepted for a in acks) == BATCH * (BATCHES - resume)
        info = client.get_collection("crash")
        assert info.point_count == len(points)
        got = list(client.trajectory("crash"))
        assert [p.id for p in got] == [p["id"] for p in points]


def test_ingest_rides_out_a_server_restart(crashable, tmp_path):
    """``driftd ingest`` (the resumable writer) keeps going through a SIGKILL and
    restart of the server: exit status 0 and every row written once."""
    path = tmp_path / "rows.jsonl"
    rows = make_points(BATCH * BATCHES)
    with open(path, "w") as f:
        for r in rows:
            # Epoch seconds, as users pass them.
            f.write(
                json.dumps(
                    {
                        "id": r["id"],
                        "timestamp": r["timestamp"].timestamp(),
                        "vector": r["vector"].tolist(),
                    }
                )
                + "\n"
            )
    with DriftClient(crashable.target, timeout=60) as client:
        client.create_collection(name="resume", dim=DIM, distance="l2")
    ingest = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "driftd"),
            "ingest",
            str(path),
            "--collection",
            "resume",
            "--target",
            crashable.target,
            "--batch-size",
            str(BATCH),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with DriftClient(crashable.target, timeout=60) as client:
            while client.get_collection("resume").point_count < BATCH * 5:
                time.sleep(0.05)
        assert ingest.poll() is None, "ingest finished before the restart"
        crashable.kill()
        crashable.start()
        out, err = ingest.communicate(timeout=300)
    finally:
        if ingest.poll() is None:
            ingest.kill()
    assert ingest.returncode == 0, err
    assert f"accepted   {len(rows):,} points" in out and "rejected   0 points" in out, out
    with DriftClient(crashable.target, timeout=60) as client:
        info = client.get_collection("resume")
        assert info.point_count == len(rows)
        found, missing = client.get_points("resume", [r["id"] for r in rows[:: BATCH // 4]])
        assert missing == [] and [p.time for p in found] == [
            r["timestamp"] for r in rows[:: BATCH // 4]
        ]
