"""``python -m bench.observability``: what the per-RPC access line and tracing
cost. Four ``driftd serve`` processes side by side: access log off; access
lines as text; as JSON; JSON with every RPC traced and exported over OTLP/gRPC
to a collector in this process. Unary GetCollection calls go to each in turn,
round after round (so load on the machine hits all four alike); it prints the
median and p90 latency per server and the ratio of medians to the first.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support import ServerProcess  # noqa: E402

from driftd.v1 import collection_pb2, collection_pb2_grpc  # noqa: E402

ROUNDS, CALLS = 10, 200


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    spans = 0

    def Export(self, request, context):  # noqa: N802 - the OTLP service's name
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> int:
    sink = _Sink()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    configs = {
        "access log off": {"DRIFTD_ACCESS_LOG": "off"},
        "access log, text": {},
        "access log, json": {"DRIFTD_LOG_FORMAT": "json"},
        "json + tracing (OTLP)": {
            "DRIFTD_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        },
    }
    root = Path(tempfile.mkdtemp(prefix="bench-observability-"))
    servers = {}
    try:
        for i, (name, env) in enumerate(configs.items()):
            env = {"DRIFTD_WORKERS": "1", **env}
            servers[name] = ServerProcess(root / f"c{i}", root / f"s{i}.log", **env).start()
        channels = {n: grpc.insecure_channel(s.target) for n, s in servers.items()}
        stubs = {n: collection_pb2_grpc.CollectionServiceStub(c) for n, c in channels.items()}
        for stub in stubs.values():
            stub.CreateCollection(
                collection_pb2.CreateCollectionRequest(
                    collection_id="bench", collection=collection_pb2.Collection(dimension=8)
                )
            )
        request = collection_pb2.GetCollectionRequest(name="collections/bench")
        latencies: dict[str, list[float]] = {n: [] for n in servers}
        for _ in range(ROUNDS):
            for name, stub in stubs.items():
                for _ in range(CALLS):
                    t0 = time.perf_counter()
                    stub.GetCollection(request, timeout=10)
                    latencies[name].append(time.perf_counter() - t0)
        base = statistics.median(latencies["access log off"])
        print(f"GetCollection, {ROUNDS} rounds x {CALLS} calls per server, interleaved")
        print(f"{'server':<24} {'median ms':>10} {'p90 ms':>8} {'median / off':>13}")
        for name, xs in latencies.items():
            med, p90 = statistics.median(xs), statistics.quantiles(xs, n=10)[-1]
            print(f"{name:<24} {med * 1e3:>10.3f} {p90 * 1e3:>8.3f} {med / base:>13.2f}")
        for c in channels.values():
            c.close()
    finally:
        for s in servers.values():
            s.stop()
        time.sleep(0.5)  # the traced server flushes its spans on SIGTERM
        collector.stop(None)
    print(f"spans received by the collector: {sink.spans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
