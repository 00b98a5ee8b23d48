"""SIGKILL in the middle of a StreamUpsertPoints: after a restart every point of
every acknowledged batch is there, and the stream resumes after the last ack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
