"""Storage faults (issue 13, defect 9): a Chroma server stopped and restarted under
load, and a full volume. Storage failures are UNAVAILABLE / RESOURCE_EXHAUSTED
with a storage reason (never INTERNAL), readiness follows the storage, and no
acknowledged write is lost.

Real processes throughout: ``chroma run`` (restarted on its port), ``driftd serve``
in server mode and, for the full volume, ``driftd serve`` on a small tmpfs (skipped
when this machine cannot mount one).
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from support import ChromaServer, ServerProcess

from driftd.client import DriftClient
from driftd.errors import DriftdError

POINT_SERVICE = "driftd.v1.PointService"
DIM = 8


def _batch(start: int, n: int, rng: np.random.Generator, dim: int = DIM) -> list[dict]:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        {
            "id": f"p{i}",
            "timestamp": t0 + timedelta(minutes=i),
            "vector": rng.normal(size=dim).astype(np.float32),
            "payload": {"batch": start},
        }
        for i in range(start, start + n)
    ]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout} s")


class _Writer(threading.Thread):
    """Upserts batches of 20 new points until stopped; records what was
    acknowledged and every error (code, reason)."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.client = DriftClient(target, timeout=10.0, retries=None)
        self.acked: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        start = 0
        while not self.stop.is_set():
            batch = _batch(start, 20, rng)
            start += 20
            try:
                self.client.upsert("load", batch)
            except DriftdError as exc:
                self.errors.append((exc.code, exc.reason))
                time.sleep(0.1)
            else:
                self.acked.extend(p["id"] for p in batch)
        self.client.close()


def test_chroma_server_stopped_and_restarted_under_load(tmp_path):
    chroma = ChromaServer(tmp_path / "chroma", tmp_path / "chroma.log").wait_ready()
    srv = ServerProcess(
        tmp_path / "unused",
        tmp_path / "driftd.log",
        DRIFTD_CHROMA_URL=chroma.url,
        DRIFTD_READINESS_INTERVAL_SECONDS="0.5",
    ).start()
    writer = _Writer(srv.target)
    try:
        with DriftClient(srv.target, timeout=30.0, retries=None) as c:
            c.create_collection(name="load", dim=DIM, distance="l2")
            writer.start()
            _wait(lambda: len(writer.acked) >= 100, 60, "writing")

            chroma.stop()
            _wait(lambda: srv.health(POINT_SERVICE) == "NOT_SERVING", 30, "NOT_SERVING")
            assert srv.health("") == "SERVING"  # liveness: no reason to restart driftd
            with pytest.raises(DriftdError) as err:
                c.get_points("load", ["p0"])
            assert (err.value.code, err.value.reason) == ("UNAVAILABLE", "STORAGE_UNAVAILABLE")
            _wait(lambda: len(writer.errors) >= 3, 30, "failing writes")

            chroma = ChromaServer(tmp_path / "chroma", tmp_path / "chroma.log", port=chroma.port)
            chroma.wait_ready()
            _wait(lambda: srv.health(POINT_SERVICE) == "SERVING", 30, "SERVING again")
            recovered = len(writer.acked)
            _wait(lambda: len(writer.acked) >= recovered + 100, 60, "writing again")
            writer.stop.set()
            writer.join(timeout=30)

            assert {code for code, _ in writer.errors} == {"UNAVAILABLE"}, writer.errors
            assert {reason for _, reason in writer.errors} == {"STORAGE_UNAVAILABLE"}
            for lo in range(0, len(writer.acked), 5000):
                _, missing = c.get_points("load", writer.acked[lo : lo + 5000])
                assert missing == []
            info = c.get_collection("load")
            assert info.point_count >= len(writer.acked)
    finally:
        writer.stop.set()
        srv.stop()
        chroma.stop()
    assert "INTERNAL" not in srv.log()


@pytest.fixture
def small_volume(tmp_path):
    """A 32 MiB tmpfs, unmounted afterwards; skips when mounting is not permitted."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_volume_answers_storage_full_and_keeps_every_acknowledged_write(
    tmp_path, small_volume
):
    # A reserve of 8 MiB; batches of 2,000 128-d points (1 MiB of vectors) fill the rest.
    env = {"DRIFTD_STORAGE_RESERVE_BYTES": str(8 << 20)}
    srv = ServerProcess(small_volume / "chroma", tmp_path / "driftd.log", **env).start()
    acked: list[str] = []
    rng = np.random.default_rng(1)
    try:
        with DriftClient(srv.target, timeout=60.0, retries=None) as c:
            c.create_collection(name="filling", dim=128, distance="l2")
            refused = None
            for start in range(0, 2_000_000, 2000):
                batch = _batch(start, 2000, rng, dim=128)
                try:
                    c.upsert("filling", batch, batch_size=len(batch))
                except DriftdError as exc:
                    refused = exc
                    break
                acked.extend(p["id"] for p in batch)
            assert refused is not None, "the volume never filled"
            assert (refused.code, refused.reason) == ("RESOURCE_EXHAUSTED", "STORAGE_FULL")
            assert acked, "nothing was written before the volume filled"
            # Reads still work and everything acknowledged is there.
            assert srv.health(POINT_SERVICE) == "SERVING"
            found, missing = c.get_points("filling", acked[-5000:])
            assert missing == []
            assert c.get_collection("filling").point_count == len(acked)
        srv.stop()
        srv.start()  # and after a restart
        with DriftClient(srv.target, timeout=60.0, retries=None) as c:
            assert c.get_collection("filling").point_count == len(acked)
    finally:
        srv.stop()
    assert "INTERNAL" not in srv.log()
