"""Replicas that own keys (issue 15), over one real ``chroma run``.

Memory: ``--collections`` collections of ``--points`` points each (random
walks, ``--dim``-d float32) are written once. Then one driftd alone reads them
all (GetCollection on each: the trajectory caches load), and its resident set
over its own start-up value is the baseline; then three driftd replicas with
``DRIFTD_PEERS`` are asked for every collection through one of them (each
request goes to the owner, which alone loads it). Reported: each replica's
growth, the largest over the single replica's (target <= 0.5x), and how many
collections each owns (consistent hashing of 30 keys over 3 replicas is not
an exact 10/10/10 split).

Ingest: six writer processes, one per collection, build their batches of
1000 vectors, connect, and on a common signal send them with UpsertPoints
(the clock runs from the signal to the last ack); first all through one replica alone, then writer
i through replica i mod 3 of three with peers (each write is forwarded to
the collection's owner when it lands elsewhere). Reported: points per second
of each, the ratio (target >= 1.8x), and the CPU seconds each process spent
(chroma run, each driftd), which show where the time goes: on a 2-core
machine, three replicas, Chroma and six writers share two cores, so the ratio
is bounded by the CPU, not by driftd.

The servers are the test suite's harness (tests/support.py), on free loopback
ports; every phase starts its replicas afresh. Medians and ratios are
measured within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np

from driftd import convert
from driftd.v1 import collection_pb2, collection_pb2_grpc, point_pb2, point_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import ChromaServer, ServerProcess  # noqa: E402 - the tests' harness

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BATCH = 1000
TIMEOUT = 600.0
INGEST_WRITERS = 6
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (the math pool)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            total += tree_cpu_seconds(int(c))
    return total


def batches(seed: int, n: int, dim: int):
    """``n`` points of a random walk in ``dim`` dimensions, as UpsertPoints batches."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((n, dim)).astype(np.float32) * 0.1, axis=0)
    for lo in range(0, n, BATCH):
        pts = []
        for i in range(lo, min(n, lo + BATCH)):
            p = point_pb2.Point(id=f"p{i}", vector=x[i].tolist())
            p.time.CopyFrom(convert.datetime_to_timestamp(T0 + timedelta(seconds=i)))
            pts.append(p)
        yield pts


def create(target: str, names: list[str], dim: int) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = collection_pb2_grpc.CollectionServiceStub(ch)
        for name in names:
            stub.CreateCollection(
                collection_pb2.CreateCollectionRequest(
                    collection_id=name,
                    collection=collection_pb2.Collection(
                        dimension=dim, distance=collection_pb2.DISTANCE_L2
                    ),
                ),
                timeout=TIMEOUT,
            )


def write(target: str, name: str, seed: int, n: int, dim: int, ready, go) -> None:
    """Writes one collection (a writer process's whole job): builds its batches,
    says ``ready``, waits for ``go``, then sends them one after the other."""
    todo = list(batches(seed, n, dim))
    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as ch:
        stub = point_pb2_grpc.PointServiceStub(ch)
        grpc.channel_ready_future(ch).result(timeout=60)
        ready.release()
        go.wait()
        for pts in todo:
            stub.UpsertPoints(
                point_pb2.UpsertPointsRequest(parent=f"collections/{name}", points=pts),
                timeout=TIMEOUT,
            )


def write_all(jobs: list[tuple[str, str, int, int, int]]) -> float:
    """Runs the writer jobs in parallel processes; returns the wall seconds from
    the moment all are connected with their batches built until the last ack."""
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=write, args=(*job, ready, go)) for job in jobs]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=600):
            raise RuntimeError("a writer did not get ready")
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    secs = time.perf_counter() - t0
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"writers failed: exit codes {[p.exitcode for p in procs]}")
    return secs


class Replicas:
    """``count`` driftd processes over one Chroma server; with peers when > 1."""

    def __init__(self, root: Path, chroma: ChromaServer, count: int, tag: str) -> None:
        self.servers = [
            ServerProcess(
                root / f"unused-{tag}{i}",
                root / f"driftd-{tag}{i}.log",
                DRIFTD_CHROMA_URL=chroma.url,
                DRIFTD_WORKERS="1",
                DRIFTD_LOG_LEVEL="WARNING",
            )
            for i in range(count)
        ]
        if count > 1:
            peers = ",".join(s.target for s in self.servers)
            for s in self.servers:
                s.extra_env.update(DRIFTD_PEERS=peers, DRIFTD_ADVERTISE_ADDRESS=s.target)

    def __enter__(self) -> Replicas:
        threads = [threading.Thread(target=s.start) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in self.servers:
            if s.health() != "SERVING":
                raise RuntimeError(f"a replica did not start:\n{s.log()}")
        if len(self.servers) > 1:
            self._wait_members()
        return self

    def _wait_members(self) -> None:
        deadline = time.monotonic() + 60
        for s in self.servers:
            while True:
                url = f"http://127.0.0.1:{s.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as r:
                    text = r.read().decode()
                if f"driftd_cluster_members {len(self.servers)}.0" in text:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("replicas did not see each other")
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        for s in self.servers:
            s.stop()

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.servers]


def owners(target: str, names: list[str]) -> dict[str, str]:
    with grpc.insecure_channel(target) as ch:
        stub = collection_pb2_grpc.CollectionServiceStub(ch)
        return {
            n: stub.GetCollection(
                collection_pb2.GetCollectionRequest(name=f"collections/{n}"), timeout=TIMEOUT
            ).owner
            for n in names
        }


def settle() -> None:
    time.sleep(3)  # freed pages go back, background loads finish


def memory(root: Path, chroma: ChromaServer, n_coll: int, n_points: int, dim: int) -> list[str]:
    names = [f"mem-{i:02d}" for i in range(n_coll)]
    raw = n_coll * n_points * dim * 4
    with Replicas(root, chroma, 1, "w") as writer:
        create(writer.servers[0].target, names, dim)
        secs = write_all(
            [(writer.servers[0].target, n, i, n_points, dim) for i, n in enumerate(names)]
        )
    lines = [
        f"scaleout memory: {n_coll} collections x {n_points:,} points, d={dim} "
        f"({raw / 1e6:,.0f} MB of float32 vectors; written in {secs:.0f} s)"
    ]
    with Replicas(root, chroma, 1, "one") as one:
        pid = one.pids()[0]
        base = rss(pid)
        owners(one.servers[0].target, names)  # loads every cache
        settle()
        single = rss(pid) - base
    lines.append(
        f"    one replica alone, every collection loaded: RSS +{single / 1e6:,.0f} MB "
        f"({single / raw:.2f}x the raw vectors)"
    )
    with Replicas(root, chroma, 3, "three") as three:
        bases = [rss(p) for p in three.pids()]
        owner_of = owners(three.servers[0].target, names)
        settle()
        growth = [rss(p) - b for p, b in zip(three.pids(), bases, strict=True)]
        counts = [sum(o == s.target for o in owner_of.values()) for s in three.servers]
    for i, (g, c) in enumerate(zip(growth, counts, strict=True)):
        lines.append(
            f"    three replicas, replica {i} (owns {c} collections): RSS +{g / 1e6:,.0f} MB "
            f"= {g / single:.2f}x the single replica"
        )
    worst = max(growth) / single
    lines.append(
        f"    largest replica / single replica: {worst:.2f}x (target <= 0.5x: "
        f"{'met' if worst <= 0.5 else 'NOT met'}); the busiest replica owns "
        f"{max(counts)} of {n_coll} collections ({max(counts) / n_coll:.2f})"
    )
    return lines


def ingest(root: Path, chroma: ChromaServer, n_points: int, dim: int) -> list[str]:
    lines = [
        f"scaleout ingest: {INGEST_WRITERS} writer processes, one collection each, "
        f"{n_points:,} points each, d={dim}, UpsertPoints batches of {BATCH}"
    ]
    rates = {}
    for count in (1, 3):
        names = [f"ingest{count}-{i}" for i in range(INGEST_WRITERS)]
        with Replicas(root, chroma, count, f"i{count}-") as reps:
            targets = [s.target for s in reps.servers]
            create(targets[0], names, dim)
            pids = [chroma.proc.pid, *reps.pids()]
            cpu0 = [tree_cpu_seconds(p) for p in pids]
            secs = write_all(
                [(targets[i % count], name, 100 + i, n_points, dim) for i, name in enumerate(names)]
            )
            cpu = [tree_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
            owner_of = owners(targets[0], names) if count > 1 else {}
        rates[count] = INGEST_WRITERS * n_points / secs
        split = "/".join(str(sum(o == t for o in owner_of.values())) for t in targets)
        lines.append(
            f"    through {count} replica{'s' if count > 1 else ''}: "
            f"{rates[count]:,.0f} points/s ({secs:.1f} s); CPU seconds: chroma run "
            f"{cpu[0]:.1f}, driftd {' + '.join(f'{c:.1f}' for c in cpu[1:])}"
            + (f"; collections owned {split}" if owner_of else "")
        )
    ratio = rates[3] / rates[1]
    lines.append(
        f"    3 replicas / 1: {ratio:.2f}x (target >= 1.8x: {'met' if ratio >= 1.8 else 'NOT met'}"
        f"; {os.cpu_count()} CPUs shared by chroma, the replicas and the writers)"
    )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--collections", type=int, default=30)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--ingest-points", type=int, default=20_000)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="driftd-bench-scaleout-") as tmp:
        root = Path(tmp)
        chroma = ChromaServer(root / "chroma", root / "chroma.log").wait_ready()
        try:
            out = (
                []
                if args.no_memory
                else memory(root, chroma, args.collections, args.points, args.dim)
            )
            for line in out:
                print(line, flush=True)
            for line in ingest(root, chroma, args.ingest_points, args.dim):
                print(line, flush=True)
        finally:
            chroma.stop()
    return 0
