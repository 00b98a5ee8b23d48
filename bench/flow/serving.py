"""Serving (issue 3, section 6): a real ``driftd serve`` process, with embedded Chroma
and then with Chroma in its own process (``chroma run``, server mode).

Memory: the server's resident set (VmRSS of the main process, from /proc) after
start, after upserting n points of the planted 3-well system (d = 384, 50 series,
vectors, batches of 10,000), after fitting the flow (a ProbeFlow) and after a
FindAttractors; reported as (RSS - baseline) / raw float32 vector bytes (n x d x 4),
target <= 2x. The pool workers are separate processes, reported on their own. In
server mode Chroma's index lives in the ``chroma run`` process, so the driftd figure
is driftd's own memory (its trajectory cache and models).

Health under load: the median and p99 of grpc.health.v1 Check (sequential, one
channel) while idle, while every pool worker is kept busy by concurrent
DetectChapters (the n vectors go to a worker on every call) and FindAttractors
(a new seed each call, so nothing is cached) from separate client processes, and,
as a control, while as many busy loops outside driftd load the CPU as much: on a
small shared machine the scheduler alone adds milliseconds; target p99 ratio <= 2x.

The servers are the test suite's harness (tests/support.py), on free loopback ports.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftd.client import DriftClient
from driftd.config import Settings
from driftd.engine.pool import WORKER_NICENESS
from driftd.flow.planted import k_well_system

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import ChromaServer, ServerProcess  # noqa: E402 - the tests' harness

BATCH = 10_000
COLLECTION = "bench-serving"
HEALTH_CHECKS = 300
# Workers of the server's pool: the default (CPUs - 1, 1 to 4).
WORKERS = Settings().workers


def _rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _children_rss(pid: int) -> int:
    """Summed RSS of the pool processes (children of ``pid``, and theirs)."""
    total = 0
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            total += _rss(int(c)) + _children_rss(int(c))
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _latencies(stub, count: int, pause: float = 0.01) -> list[float]:
    """Seconds of ``count`` sequential health checks, ``pause`` apart."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
        out.append(time.perf_counter() - t0)
        time.sleep(pause)
    return out


def _p(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def serving_lines(n: int = 100_000, dim: int = 384) -> list[str]:
    """Memory and health on a server with embedded Chroma, then memory with Chroma in
    its own process (server mode), as printable lines."""
    ps = k_well_system(n, k=3, dim=dim, n_series=50, random_state=0)
    lines = [f"serving: driftd serve (embedded Chroma, {WORKERS} pool workers), n={n:,}, d={dim}"]
    with tempfile.TemporaryDirectory(prefix="driftd-bench-") as root:
        server = ServerProcess(
            Path(root) / "chroma",
            Path(root) / "server.log",
            DRIFTD_WORKERS=str(WORKERS),
            DRIFTD_LOG_LEVEL="WARNING",
        ).start()
        try:
            lines += _memory_lines(server, ps)
            lines += _health_lines(server.target)
        finally:
            server.stop()
    lines.append(f"serving: Chroma server mode (chroma run beside driftd), n={n:,}, d={dim}")
    with tempfile.TemporaryDirectory(prefix="driftd-bench-") as root:
        chroma = ChromaServer(Path(root) / "chroma", Path(root) / "chroma.log").wait_ready()
        try:
            server = ServerProcess(
                Path(root) / "unused",
                Path(root) / "server.log",
                DRIFTD_CHROMA_URL=chroma.url,
                DRIFTD_WORKERS=str(WORKERS),
                DRIFTD_LOG_LEVEL="WARNING",
            ).start()
            try:
                chroma_base = _rss(chroma.proc.pid)
                lines += _memory_lines(server, ps)
                lines.append(
                    f"    the chroma run process: RSS {_mb(chroma_base)} at start,"
                    f" {_mb(_rss(chroma.proc.pid))} at the end"
                )
            finally:
                server.stop()
        finally:
            chroma.stop()
    return lines


def _memory_lines(server: ServerProcess, ps) -> list[str]:
    """Upserts the planted system ``ps`` into a new collection of ``server``, fits its
    flow and finds its attractors, reading the server's RSS after each step."""
    n, dim = ps.X.shape
    raw = n * dim * 4
    pid = server.proc.pid
    time.sleep(1.0)
    base = _rss(pid)
    with DriftClient(server.target, timeout=3600) as db:
        db.create_collection(name=COLLECTION, dim=dim, distance="l2")
        t0 = time.perf_counter()
        for lo in range(0, n, BATCH):
            db.upsert(
                COLLECTION,
                [
                    {
                        "id": f"p{i}",
                        "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
                        "vector": ps.X[i],
                        "series": f"s{int(ps.series[i])}",
                    }
                    for i in range(lo, min(lo + BATCH, n))
                ],
                batch_size=BATCH,
            )
        ingest = time.perf_counter() - t0
        after_upsert = _rss(pid)
        t0 = time.perf_counter()
        db.flow_vector(COLLECTION, point_id="p0")
        fit = time.perf_counter() - t0
        after_fit = _rss(pid)
        t0 = time.perf_counter()
        db.flow_attractors(COLLECTION)
        attract = time.perf_counter() - t0
        after_attractors = _rss(pid)
        workers = _children_rss(pid)
    lines = [f"  memory: raw float32 vectors {_mb(raw)}; driftd RSS at start {_mb(base)}"]
    for label, rss in (
        (f"after upsert ({ingest:.0f} s)", after_upsert),
        (f"after the fit ({fit:.0f} s)", after_fit),
        (f"after FindAttractors ({attract:.0f} s)", after_attractors),
    ):
        ratio = (rss - base) / raw
        ok = "yes" if ratio <= 2 else "MISS"
        lines.append(
            f"    {label:<28} RSS {_mb(rss):>10}  (RSS - start) / raw = {ratio:.2f}x"
            f"  target <= 2x: {ok}"
        )
    lines.append(f"    pool worker processes (separate): RSS {_mb(workers)} in total")
    return lines


def _load(target: str, k: int, stop) -> None:
    """One load process: DetectChapters (even k) or FindAttractors with a new seed
    each call (odd k) until ``stop`` (a multiprocessing Event) is set."""
    with DriftClient(target, timeout=3600) as db:
        seed = k
        while not stop.is_set():
            if k % 2:
                db.flow_attractors(COLLECTION, seed=seed)
                seed += 2 * WORKERS
            else:
                db.flow_chapters(COLLECTION)


def _under(stub, start) -> list[float]:
    """Health-check latencies while the load that ``start()`` begins runs; then
    calls the function it returned, which stops the load and waits for it."""
    stop = start()
    time.sleep(5.0)  # every pool worker busy
    out = _latencies(stub, HEALTH_CHECKS)
    stop()
    return out


def _health_lines(target: str) -> list[str]:
    ctx = multiprocessing.get_context("spawn")

    def load():
        # Separate processes: load threads in this one would share the checker's GIL.
        event = ctx.Event()
        procs = [ctx.Process(target=_load, args=(target, k, event)) for k in range(WORKERS + 1)]
        for p in procs:
            p.start()

        def stop():
            event.set()
            for p in procs:
                p.join()

        return stop

    def hogs():
        # Control: the same CPU pressure from outside driftd (busy loops at the
        # workers' niceness): what the machine's scheduler alone costs a check.
        procs = [
            subprocess.Popen(
                ["nice", "-n", str(WORKER_NICENESS), sys.executable, "-c", "while True: pass"]
            )
            for _ in range(WORKERS)
        ]

        def stop():
            for p in procs:
                p.kill()
                p.wait()

        return stop

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        _latencies(stub, 20)  # warm the channel
        idle = _latencies(stub, HEALTH_CHECKS)
        control = _under(stub, hogs)
        busy = _under(stub, load)
    lines = [f"  health Check ({HEALTH_CHECKS} sequential, one channel), ms:"]
    for label, values in (
        ("idle", idle),
        (f"{WORKERS} busy-loop processes, not driftd (control)", control),
        (f"pool saturated: {WORKERS + 1} clients of DetectChapters/FindAttractors", busy),
    ):
        lines.append(
            f"    {label:<62} p50 {1e3 * statistics.median(values):6.2f}"
            f"  p99 {1e3 * _p(values, 0.99):6.2f}  max {1e3 * max(values):6.2f}"
        )
    ratio = _p(busy, 0.99) / _p(idle, 0.99)
    lines.append(
        f"    saturated / idle: p50 {statistics.median(busy) / statistics.median(idle):.2f}x,"
        f" p99 {ratio:.2f}x (target p99 <= 2x: {'yes' if ratio <= 2 else 'MISS'});"
        f" saturated / control p99 {_p(busy, 0.99) / _p(control, 0.99):.2f}x"
    )
    return lines
