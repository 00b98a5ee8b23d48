"""Tracing and structured logs of a real ``driftd serve`` process: its spans are
exported over OTLP/gRPC (configured by the standard OTEL_* variables) to an
in-process collector, its log lines are JSON.

The data are real State of the Union paragraphs (../shared/data), embedded by the
server with the real model.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent import futures
from datetime import datetime, timedelta

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from support import SHARED_DATA, ServerProcess, error_details

from driftd import convert, tracing
from driftd.v1 import (
    collection_pb2,
    collection_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    point_pb2,
    point_pb2_grpc,
)

NAME = "obs-sotu"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the OTLP service's name
        with self._lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    c.endpoint = f"http://127.0.0.1:{port}"
    yield c
    server.stop(None)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, collector):
    root = tmp_path_factory.mktemp("observability")
    srv = ServerProcess(
        root / "chroma",
        root / "server.log",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="driftd-under-test",
        DRIFTD_LOG_FORMAT="json",
        DRIFTD_WORKERS="1",
    ).start()
    channel = grpc.insecure_channel(srv.target)
    yield srv, channel
    channel.close()
    srv.stop()


def sotu_points(n: int) -> list[point_pb2.Point]:
    """The first ``n`` paragraphs as text points, a minute apart within a speech
    (the file's order is the sequence, ties in time are real)."""
    points = []
    with open(SHARED_DATA / "sotu_paragraphs.jsonl") as f:
        for line, _ in zip(f, range(n), strict=False):
            row = json.loads(line)
            when = datetime.fromisoformat(row["timestamp"]) + timedelta(minutes=row["meta"]["para"])
            p = point_pb2.Point(id=row["id"], series=row["series"], text=row["text"])
            p.time.CopyFrom(convert.datetime_to_timestamp(when))
            points.append(p)
    return points


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := predicate():
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_span_tree_of_upsert_and_probe(traced, collector):
    srv, channel = traced
    collection_pb2_grpc.CollectionServiceStub(channel).CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=NAME, collection=collection_pb2.Collection(embed_model="all-MiniLM-L6-v2")
        ),
        timeout=60,
    )
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = [("traceparent", f"00-{trace_id}-{parent_id}-01")]
    points = sotu_points(80)
    point_pb2_grpc.PointServiceStub(channel).UpsertPoints(
        point_pb2.UpsertPointsRequest(parent=f"collections/{NAME}", points=points),
        metadata=metadata,
        timeout=120,
    )
    flow_pb2_grpc.FlowServiceStub(channel).ProbeFlow(
        flow_pb2.ProbeFlowRequest(
            parent=f"collections/{NAME}", start=flow_pb2.FlowStart(point_id=points[40].id)
        ),
        metadata=metadata,
        timeout=120,
    )

    def both_rpcs():
        spans = collector.of_trace(trace_id)
        names = {s.name for s in spans}
        wanted = {"driftd.v1.PointService/UpsertPoints", "driftd.v1.FlowService/ProbeFlow"}
        return spans if wanted <= names and "pool run" in names else None

    spans = wait_for(both_rpcs)
    by_id = {s.span_id: s for s in spans}
    children: dict[bytes, list[trace_pb2.Span]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)

    def below(span) -> list[trace_pb2.Span]:
        out = []
        for child in children.get(span.span_id, []):
            out += [child, *below(child)]
        return out

    def rpc(name: str) -> trace_pb2.Span:
        [span] = [s for s in spans if s.name == name]
        # A server span, child of the caller's span from the traceparent header.
        assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert span.parent_span_id.hex() == parent_id
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["rpc.grpc.status_code"].int_value == 0
        assert attributes["rpc.method"].string_value == name.rsplit("/", 1)[1]
        return span

    upsert = rpc("driftd.v1.PointService/UpsertPoints")
    upsert_names = {s.name for s in below(upsert)}
    assert "embed" in upsert_names
    chroma = [n for n in upsert_names if n.startswith("chroma ")]
    # The points' write (named after the engine method that makes it).
    assert any(n.startswith("chroma PointsMixin.") for n in chroma), upsert_names

    probe = rpc("driftd.v1.FlowService/ProbeFlow")
    under_probe = below(probe)
    tasks = [s for s in under_probe if s.name.startswith("pool ") and children.get(s.span_id)]
    assert {"pool fit"} <= {s.name for s in tasks}, [s.name for s in under_probe]
    for task in tasks:
        phases = {c.name: c for c in children[task.span_id]}
        queue, run = phases["pool queue"], phases["pool run"]
        # The queue wait ends where the run starts, both within the task's span.
        assert queue.end_time_unix_nano == run.start_time_unix_nano
        assert task.start_time_unix_nano <= queue.start_time_unix_nano
        assert run.end_time_unix_nano <= task.end_time_unix_nano
    for s in below(upsert) + under_probe:
        assert s.start_time_unix_nano >= by_id[s.parent_span_id].start_time_unix_nano

    # The JSON access lines of both RPCs carry the same trace id.
    access = wait_for(lambda: [r for r in log_records(srv) if r.get("trace_id") == trace_id])
    assert {r["method"] for r in access if r["logger"] == "driftd.access"} >= {
        "/driftd.v1.PointService/UpsertPoints",
        "/driftd.v1.FlowService/ProbeFlow",
    }


def log_records(srv: ServerProcess) -> list[dict]:
    """The server's log lines, each parsed as JSON (a line that does not parse fails)."""
    return [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.strip()]


def test_json_log_lines(traced):
    srv, channel = traced
    with pytest.raises(grpc.RpcError) as caught:
        collection_pb2_grpc.CollectionServiceStub(channel).GetCollection(
            collection_pb2.GetCollectionRequest(name="collections/obs-missing"), timeout=30
        )
    assert error_details(caught.value)[1] == "COLLECTION_NOT_FOUND"

    def access_line():
        for r in log_records(srv):
            if r.get("method") == "/driftd.v1.CollectionService/GetCollection":
                return r

    records = log_records(srv)
    for r in records:
        assert {"time", "level", "logger", "message"} <= r.keys(), r
        datetime.fromisoformat(r["time"])
    assert any(r["message"] == "driftd ready" for r in records)
    line = wait_for(access_line)
    assert line["logger"] == "driftd.access" and line["level"] == "INFO"
    assert line["code"] == "NOT_FOUND" and line["reason"] == "COLLECTION_NOT_FOUND"
    assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert line["duration_ms"] > 0
    assert "key_name" not in line  # no API keys on this server


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),  # off by default
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ, on):
    # Only the decision: installing the SDK would change this process's global provider.
    assert tracing._wanted(environ) is on


def test_forwarded_call_carries_the_trace_to_the_owner():
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    incoming = propagate.extract({"traceparent": f"00-{trace_id}-{parent_id}-01"})
    token = otel_context.attach(incoming)
    try:
        with tracing.forwarded_call("10.0.0.7:50051", "/driftd.v1.PointService/UpsertPoints") as md:
            sent = dict(md)
    finally:
        otel_context.detach(token)
    version, sent_trace, _, flags = sent["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
