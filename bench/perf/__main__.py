"""``python -m bench.perf [--points N] [--queries Q] [--trajectory N] [--curves 10000,...]``

driftd over gRPC against what a user would otherwise call directly, measured side
by side by this process on the same machine (d = 384):

- vector ingest: Chroma ``upsert`` in-process (batches of 500, driftd's metadata)
  vs ``DriftClient.writer`` (StreamUpsertPoints, batches of 500); target >= 1.0.
- text ingest: fastembed alone vs driftd embedding server-side (600 SOTU paragraphs).
- SearchPoints top-10 p50/p99 vs Chroma ``query`` (which returns the same
  metadata and documents): no filter, a time window (the later half; Chroma
  ``where`` on the time key) and a payload filter (one tag of 10); targets p50
  <= 1.3x, p99 <= 1.5x.
- GetTrajectory of 100k points (no vectors) vs Chroma ``get`` of the same points.
- ghz (pinned, built by ci/ghz.sh) at concurrency 1, 8, 32 against SearchPoints,
  ProbeFlow and RouteMessage: throughput, p99 and the server's CPU use (cores).
- the flow's cost curves (bench/perf/curves.py) at ``--curves`` sizes.

The server is the test suite's harness (tests/support.py); raw Chroma gets its own
directory. Ratios are driftd / raw: for times above 1 is slower, for throughputs
below 1 is slower. Exit status 1 when a checked target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import chromadb
import numpy as np

from bench.flow.sotu import load as load_sotu
from bench.perf import curves
from driftd.client import DriftClient
from driftd.engine.embedding import Embedders
from driftd.flow.planted import k_well_system

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import REPO, ServerProcess  # noqa: E402 - the tests' harness

D = 384
BATCH = 500
T0 = 1.7e9
TAGS = 10
MODEL = "all-MiniLM-L6-v2"
CONCURRENCY = (1, 8, 32)
# Targets of issue 18 (driftd / raw; ingest raw / driftd).
SEARCH_P50, SEARCH_P99, INGEST = 1.3, 1.5, 1.0


def _ms(xs: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms of durations in seconds."""
    xs = sorted(xs)
    return 1e3 * statistics.median(xs), 1e3 * xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def _timed(fn, items) -> list[float]:
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


class Table:
    """Rows of (what, raw, driftd, ratio, target) and whether the targets held."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.missed: list[str] = []

    def add(
        self,
        what: str,
        raw: float,
        ours: float,
        unit: str,
        target: float | None,
        higher_better=False,
    ):
        ratio = ours / raw  # driftd / raw: > 1 is slower for times, faster for rates
        ok = target is None or (ratio >= target if higher_better else ratio <= target)
        if not ok:
            self.missed.append(what)
        mark = (
            ""
            if target is None
            else f"{'>=' if higher_better else '<='} {target} {'ok' if ok else 'MISSED'}"
        )
        self.rows.append((what, f"{raw:,.2f} {unit}", f"{ours:,.2f} {unit}", f"{ratio:.2f}", mark))
        print(f"  measured: {'  '.join(self.rows[-1])}", flush=True)  # progress

    def print(self) -> None:
        head = ("", "raw", "driftd", "ratio", "target")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        for r in [head, *self.rows]:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), flush=True)


def _points(X: np.ndarray, offset: int = 0) -> list[dict]:
    return [
        {
            "id": f"p{offset + i}",
            "timestamp": datetime.fromtimestamp(T0 + 60.0 * (offset + i), UTC),
            "vector": X[i],
            "payload": {"tag": f"t{(offset + i) % TAGS}"},
        }
        for i in range(len(X))
    ]


def _raw_upsert(col, X: np.ndarray, offset: int, batch: int) -> None:
    for lo in range(0, len(X), batch):
        hi = min(lo + batch, len(X))
        col.upsert(
            ids=[f"p{offset + i}" for i in range(lo, hi)],
            embeddings=X[lo:hi],
            metadatas=[
                {"tag": f"t{(offset + i) % TAGS}", "driftd:time": T0 + 60.0 * (offset + i)}
                for i in range(lo, hi)
            ],
        )


def ingest_and_search(client: DriftClient, raw, table: Table, n: int, queries: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, D)).astype(np.float32)
    col = raw.create_collection(
        "perf", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    t0 = time.perf_counter()
    _raw_upsert(col, X, 0, BATCH)
    raw_rate = n / (time.perf_counter() - t0)
    client.create_collection("perf", dim=D, distance="cosine")
    pts = _points(X)
    t0 = time.perf_counter()
    with client.writer("perf", batch_size=BATCH) as w:
        w.extend(pts)
    ours_rate = n / (time.perf_counter() - t0)
    table.add(
        f"vector ingest, {n:,} pts, batches of {BATCH}", raw_rate, ours_rate, "pts/s", INGEST, True
    )

    Q = rng.standard_normal((queries, D)).astype(np.float32)
    half = T0 + 60.0 * n / 2
    cases = [
        ("SearchPoints top-10", None, {}),
        (
            "  time window (later half)",
            {"driftd:time": {"$gte": half}},
            {"start": datetime.fromtimestamp(half, UTC)},
        ),
        (f"  payload filter (1 tag of {TAGS})", {"tag": "t3"}, {"payload_filter": {"tag": "t3"}}),
    ]
    for what, where, kw in cases:
        for q in Q[:10]:  # warm both
            col.query(query_embeddings=[q], n_results=10, where=where)
            client.search("perf", vector=q, top_k=10, **kw)
        raw_t = _timed(lambda q, w=where: col.query(query_embeddings=[q], n_results=10, where=w), Q)
        ours_t = _timed(lambda q, kw=kw: client.search("perf", vector=q, top_k=10, **kw), Q)
        (r50, r99), (o50, o99) = _ms(raw_t), _ms(ours_t)
        table.add(f"{what} p50", r50, o50, "ms", SEARCH_P50)
        table.add(f"{what} p99", r99, o99, "ms", SEARCH_P99)


def text_ingest(client: DriftClient, table: Table, count: int = 600) -> None:
    rows, _ = load_sotu()
    texts = [r["text"] for r in rows[:count]]
    model = Embedders().get(MODEL)
    list(model.embed(texts[:8]))  # loaded and warm
    t0 = time.perf_counter()
    list(model.embed(texts))
    raw_rate = count / (time.perf_counter() - t0)
    client.create_collection("perf-texts", embed_model=MODEL)
    t0 = time.perf_counter()
    with client.writer("perf-texts", batch_size=64) as w:
        w.extend(
            {"id": r["id"], "timestamp": r["timestamp"], "text": r["text"]} for r in rows[:count]
        )
    table.add(
        f"text ingest, {count} SOTU paragraphs",
        raw_rate,
        count / (time.perf_counter() - t0),
        "texts/s",
        None,
        True,
    )


def trajectory(client: DriftClient, raw, table: Table, n: int) -> None:
    X = np.random.default_rng(1).standard_normal((n, D)).astype(np.float32)
    col = raw.create_collection("perf-traj", embedding_function=None)
    _raw_upsert(col, X, 0, 5000)
    client.create_collection("perf-traj", dim=D)
    client.upsert("perf-traj", _points(X), batch_size=5000)
    t0 = time.perf_counter()
    got = 0
    for lo in range(0, n, 5000):  # Chroma's own batch limit applies to get too
        got += len(col.get(limit=5000, offset=lo, include=["metadatas", "documents"])["ids"])
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = sum(1 for _ in client.trajectory("perf-traj"))
    assert got == ours == n, (got, ours)
    table.add(f"GetTrajectory {n:,} pts vs Chroma get", raw_s, time.perf_counter() - t0, "s", None)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / 100.0


def ghz_rows(server: ServerProcess, client: DriftClient, requests: int, tmp: Path) -> list[str]:
    ghz = subprocess.run(
        ["bash", str(REPO / "ci" / "ghz.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    # ghz resolves the methods from a descriptor set with its imports (the
    # committed one has none; driftd's reflection is v1alpha only).
    protoset = tmp / "driftd.protoset"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            "--include_imports",
            f"--descriptor_set_out={protoset}",
            *map(str, sorted((REPO / "proto/driftd/v1").glob("*.proto"))),
        ],
        check=True,
    )
    ps = k_well_system(5000, k=3, n_series=20, random_state=0)
    client.create_collection("perf-flow", dim=D)
    client.upsert(
        "perf-flow",
        [
            {
                "id": f"f{i}",
                "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
                "vector": ps.X[i],
                "series": f"s{ps.series[i]}",
            }
            for i in range(len(ps.X))
        ],
        batch_size=5000,
    )
    client.flow_vector("perf-flow", vector=ps.X[0])  # fits once
    vec = [round(float(x), 6) for x in ps.X[1]]
    calls = {
        "SearchPoints": (
            "driftd.v1.PointService/SearchPoints",
            {"parent": "collections/perf", "vector": {"values": vec}, "top_k": 10},
        ),
        "ProbeFlow": (
            "driftd.v1.FlowService/ProbeFlow",
            {"parent": "collections/perf-flow", "start": {"vector": {"values": vec}}},
        ),
        "RouteMessage": (
            "driftd.v1.RoutingService/RouteMessage",
            {
                "conversation": "conversations/perf",
                "role": "MESSAGE_ROLE_USER",
                "content": "book a table",
                "vector": vec,
            },
        ),
    }
    lines = [
        f"ghz, {requests} requests per run: throughput, p50/p99, server CPU"
        f" (cores; {_cores()} on this machine)"
    ]
    for name, (method, data) in calls.items():
        for c in CONCURRENCY:
            before, t0 = _cpu_seconds(server.proc.pid), time.perf_counter()
            run = subprocess.run(
                [
                    ghz,
                    "--insecure",
                    "--protoset",
                    str(protoset),
                    "--call",
                    method,
                    "-d",
                    json.dumps(data),
                    "-n",
                    str(requests),
                    "-c",
                    str(c),
                    "--format",
                    "json",
                    server.target,
                ],
                capture_output=True,
                text=True,
            )
            if run.returncode:
                lines.append(f"  {name:13s} c={c:<3d} ghz failed: {run.stderr.strip()[:200]}")
                continue
            out = run.stdout
            cores = (_cpu_seconds(server.proc.pid) - before) / (time.perf_counter() - t0)
            r = json.loads(out)
            lat = {d["percentage"]: d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
            p50, p99 = lat.get(50, float("nan")), lat.get(99, float("nan"))
            errors = sum(v for k, v in (r.get("statusCodeDistribution") or {}).items() if k != "OK")
            lines.append(
                f"  {name:13s} c={c:<3d} {r['rps']:8.1f} req/s  p50 {p50:7.2f} ms"
                f"  p99 {p99:7.2f} ms  server CPU {cores:4.2f}  errors {errors}"
            )
    return lines


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20_000, help="points for ingest and search")
    ap.add_argument("--queries", type=int, default=300, help="searches per case")
    ap.add_argument("--trajectory", type=int, default=100_000, help="points of GetTrajectory")
    ap.add_argument("--requests", type=int, default=400, help="ghz requests per run")
    ap.add_argument(
        "--curves",
        default=",".join(map(str, curves.DEFAULT_SIZES)),
        help="cost-curve sizes (add 300000,1000000 for the full curve)",
    )
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: table,ghz,curves")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    table = Table()
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        if not {"table", "ghz"} <= skip:
            server = ServerProcess(Path(tmp) / "driftd", Path(tmp) / "server.log").start()
            raw = chromadb.PersistentClient(path=str(Path(tmp) / "raw"))
            try:
                with DriftClient(server.target, timeout=600) as client:
                    ingest_and_search(client, raw, table, args.points, args.queries)
                    if "table" not in skip:
                        text_ingest(client, table)
                        trajectory(client, raw, table, args.trajectory)
                    print(
                        f"\ndriftd over gRPC vs raw (d = {D}, one process measures both):",
                        flush=True,
                    )
                    table.print()
                    if "ghz" not in skip:
                        print()
                        for line in ghz_rows(server, client, args.requests, Path(tmp)):
                            print(line, flush=True)
            finally:
                server.stop()
    if "curves" not in skip:
        print()
        missed = curves.run([int(s) for s in args.curves.split(",") if s])
        table.missed += missed
    if table.missed:
        print(f"\ntargets missed: {'; '.join(table.missed)}", flush=True)
    return 1 if table.missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
