"""The cost of the security layer (issue 14): latency of ProbeFlow and
UpsertPoints with TLS + API keys vs plaintext without keys, in one run.

Three ``driftd serve`` processes (the test suite's harness, loopback, embedded
Chroma) hold the same planted 3-well collection (n = 2,000, d = 384): plaintext
without keys; TLS without keys (a P-256 certificate generated here), to split
the cost; TLS with a keys file of 50 keys (every key's hash is compared, so the
lookup costs the same whichever key calls). One client per server keeps its
channel open, as real clients do: the TLS handshake is paid once, not per RPC.
Each round calls every server once, in a rotating order, so load on the shared
machine hits all alike; medians and 99th percentiles of ROUNDS calls each, and
their ratios to plaintext.

    python -m bench.security        (or make bench)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np

from driftd.client import TLS, DriftClient
from driftd.flow.planted import k_well_system
from driftd.server.security import hash_key

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import ServerProcess, make_pki  # noqa: E402 - the tests' harness

N, DIM = 2_000, 384
ROUNDS = 300
UPSERT_BATCH = 10
KEYS = 50
COLLECTION = "bench-security"
MODES = ("plaintext", "TLS", "TLS + key")


def _points(ps, ids: range) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
            "vector": ps.X[i],
            "series": f"s{int(ps.series[i])}",
        }
        for i in ids
    ]


def _servers(stack: ExitStack, root: Path) -> dict[str, tuple[ServerProcess, dict]]:
    """mode -> (running server, DriftClient arguments of an admin and of the bench key)."""
    pki = make_pki(root / "pki", "bench")
    tls = TLS(ca_file=str(pki.ca))
    secrets = [f"bench-key-{i:03d}-{'x' * 24}" for i in range(KEYS)]
    entries = [
        {"name": f"k{i}", "sha256": hash_key(k), "role": "admin"} for i, k in enumerate(secrets)
    ]
    (root / "keys.json").write_text(json.dumps({"keys": entries}))
    common = {"DRIFTD_LOG_LEVEL": "WARNING", "DRIFTD_WORKERS": "1"}
    tls_env = {
        "DRIFTD_TLS_CERT_FILE": str(pki.server_cert),
        "DRIFTD_TLS_KEY_FILE": str(pki.server_key),
    }
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    specs = {
        "plaintext": ({}, None, {}),
        "TLS": (tls_env, creds, {"tls": tls}),
        "TLS + key": (
            {**tls_env, "DRIFTD_API_KEYS_FILE": str(root / "keys.json")},
            creds,
            {"tls": tls, "api_key": secrets[-1]},
        ),
    }
    out = {}
    for i, (mode, (env, health_creds, client_args)) in enumerate(specs.items()):
        server = ServerProcess(
            root / f"chroma{i}", root / f"server{i}.log", credentials=health_creds, **env, **common
        ).start()
        stack.callback(server.stop)
        out[mode] = (server, client_args)
    return out


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _q(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def measure() -> dict[tuple[str, str], list[float]]:
    ps = k_well_system(N, k=3, dim=DIM, n_series=10, random_state=0)
    rng = np.random.default_rng(0)
    probes = ps.X[rng.integers(0, N, ROUNDS)] + rng.normal(0, 0.01, (ROUNDS, DIM))
    end = datetime.fromtimestamp(float(ps.t.max()), UTC)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="driftd-bench-security-") as tmp, ExitStack() as stack:
        clients = {}
        for mode, (server, args) in _servers(stack, Path(tmp)).items():
            db = stack.enter_context(DriftClient(server.target, timeout=600, **args))
            db.create_collection(COLLECTION, dim=DIM, distance="l2")
            db.upsert(COLLECTION, _points(ps, range(N)), batch_size=N)
            db.flow_vector(COLLECTION, point_id="p0")  # the fit, outside the timing
            clients[mode] = db

        def rounds(rpc: str, call: Callable[[DriftClient, int], object]) -> None:
            for i in range(ROUNDS):
                shift = i % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    times.setdefault((rpc, mode), []).append(
                        _timed(lambda mode=mode, i=i: call(clients[mode], i))
                    )

        rounds("ProbeFlow", lambda db, i: db.flow_vector(COLLECTION, vector=probes[i]))

        def upsert(db: DriftClient, i: int) -> None:
            batch = [
                {
                    "id": f"u{i}-{j}",
                    "timestamp": end + timedelta(seconds=i * UPSERT_BATCH + j),
                    "vector": probes[(i + j) % ROUNDS],
                    "series": "s0",
                }
                for j in range(UPSERT_BATCH)
            ]
            db.upsert(COLLECTION, batch)

        rounds("UpsertPoints", upsert)
    return times


def main() -> int:
    times = measure()
    print(
        f"security: {ROUNDS} calls per RPC and mode, servers in rotating order; n={N:,}, "
        f"d={DIM}, {KEYS} keys, upserts of {UPSERT_BATCH} points"
    )
    print(f"  {'RPC':<13} {'mode':<10} {'p50 ms':>8} {'p99 ms':>8}   ratio to plaintext p50, p99")
    for rpc in ("ProbeFlow", "UpsertPoints"):
        base = times[(rpc, "plaintext")]
        for mode in MODES:
            t = times[(rpc, mode)]
            p50, p99 = statistics.median(t), _q(t, 0.99)
            ratio = (
                f"   {p50 / statistics.median(base):.2f}x, {p99 / _q(base, 0.99):.2f}x"
                if mode != "plaintext"
                else ""
            )
            print(f"  {rpc:<13} {mode:<10} {1e3 * p50:>8.2f} {1e3 * p99:>8.2f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
