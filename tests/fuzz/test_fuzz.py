"""The fuzz suite (issue 13): generated requests to every RPC of a live server.

A real ``driftd serve`` over real Chroma and the real embedding model holds
three seeded collections (cosine and l2 vectors, State of the Union texts).
For every RPC of every driftd service, Hypothesis sends requests built from
the proto descriptors (:mod:`fuzz_strategies`): valid-ish and hostile messages, and
raw bytes that may not parse. Every answer must be OK or a precise status:
never INTERNAL or UNKNOWN, always an ErrorInfo (but for the caller's own
deadline or cancellation), trailers under 8 KB. Afterwards the server is still
SERVING, its memory stayed bounded, and every point a fuzzed write
acknowledged (and no fuzzed delete may have removed) is still readable.

Budget: ``DRIFTD_FUZZ_EXAMPLES`` generated requests per RPC (default 40, a few
minutes for the whole suite; ``make fuzz`` runs 1000, randomised). The counts
per RPC and status are printed at the end.
"""

from __future__ import annotations

import collections
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from fuzz_strategies import request
from google.protobuf import descriptor, descriptor_pool
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SHARED_DATA, ServerProcess

from driftd.client import DriftClient
from driftd.server.app import SERVICE_NAMES

EXAMPLES = int(os.environ.get("DRIFTD_FUZZ_EXAMPLES", "40"))
#: ``make fuzz`` explores; the suite in ``make test`` replays the same examples.
RANDOMISED = os.environ.get("DRIFTD_FUZZ_RANDOM", "") == "1"
TRAILER_LIMIT = 8 * 1024
#: Peak resident memory of the server and its math workers (the deploy
#: manifests give the pod 4 GiB).
RSS_LIMIT = 3 * 1024**3
#: Per call: the watch stream never ends by itself, so it is read briefly.
TIMEOUT, WATCH_TIMEOUT = 15.0, 0.5
#: Codes the caller causes itself (our deadline, our cancel): no ErrorInfo.
CALLER_CODES = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
T0 = 1_704_067_200


def _methods() -> list[descriptor.MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for s in SERVICE_NAMES for m in pool.FindServiceByName(s).methods]


METHODS = _methods()
COUNTS: collections.Counter = collections.Counter()
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


class Fuzz:
    """The server under fuzz, a channel to it, and what it acknowledged."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target)
        #: collection id -> ids of acknowledged points not deleted since.
        self.acked: dict[str, set[str]] = {}
        self.peak_rss = 0

    def rss(self) -> int:
        """Resident bytes of the server process and all its descendants."""
        total, todo = 0, [self.server.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            todo.extend(int(c) for c in children)
        self.peak_rss = max(self.peak_rss, total)
        return total


def _seed(client: DriftClient) -> dict[str, set[str]]:
    acked: dict[str, set[str]] = {}
    for name, distance in (("fuzz-cos", "cosine"), ("fuzz-l2", "l2")):
        client.create_collection(name=name, dim=4, distance=distance)
        points = [
            {
                "id": f"p{i}",
                "timestamp": datetime.fromtimestamp(T0 + 60 * i, UTC),
                "vector": [1 + (i % 7), (i % 3) - 1, 0.5, 1.0 - i / 60],
                "series": f"s{i % 2}",
                "payload": {"n": float(i), "tag": "abc"[i % 3]},
            }
            for i in range(60)
        ]
        client.upsert(name, points)
        acked[name] = {p["id"] for p in points}
    client.create_collection(name="fuzz-text", embed_model="all-MiniLM-L6-v2")
    lines = (SHARED_DATA / "sotu_paragraphs.jsonl").read_text().splitlines()[:60]
    rows = [json.loads(line) for line in lines]
    texts = [
        {
            "id": f"p{i}",
            "timestamp": datetime.fromtimestamp(T0 + 60 * i, UTC),
            "text": r["text"],
            "series": r["series"],
        }
        for i, r in enumerate(rows)
    ]
    client.upsert("fuzz-text", texts)
    acked["fuzz-text"] = {p["id"] for p in texts}
    return acked


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    # Flow work per call is bounded by these limits (and by issue 13's pool work
    # bounds), so a generated call cannot hold the one worker for minutes.
    server = ServerProcess(
        root / "chroma",
        root / "server.log",
        DRIFTD_WORKERS="1",
        DRIFTD_MAX_STEPS="200",
        DRIFTD_MAX_PATHS="4",
        DRIFTD_MAX_SEEDS="64",
        DRIFTD_MAX_BOOTSTRAP="4",
        DRIFTD_ENSEMBLE_SIZE="2",
    ).start()
    try:
        with DriftClient(server.target, timeout=120) as client:
            acked = _seed(client)
        f = Fuzz(server)
        f.acked = acked
        yield f
        f.channel.close()
    finally:
        server.stop()


def _collection(resource: str) -> str:
    return resource.removeprefix("collections/")


def _record(f: Fuzz, method, req, ok: bool, code, responses) -> None:
    """Keeps :attr:`Fuzz.acked` to what the server promised is stored."""
    name = method.name
    if name == "CreateCollection" and ok:
        f.acked[req.collection_id] = set()
    elif name == "DeleteCollection" and code not in (grpc.StatusCode.NOT_FOUND,):
        if ok or code in CALLER_CODES or code == grpc.StatusCode.UNAVAILABLE:
            f.acked.pop(_collection(req.name), None)
    elif name == "DeletePoints" and not (code and code.name in ("INVALID_ARGUMENT", "NOT_FOUND")):
        f.acked.get(_collection(req.parent), set()).difference_update(req.ids)
    elif name == "UpsertPoints" and ok:
        f.acked.setdefault(_collection(req.parent), set()).update(p.id for p in req.points)
    elif name == "StreamUpsertPoints":
        # Acks come in batch order; a stream ends at its first refused batch.
        parent = req[0].parent if req else ""
        for batch, ack in zip(req, responses, strict=False):
            bad = {e.index for e in ack.errors}
            f.acked.setdefault(_collection(parent), set()).update(
                p.id for i, p in enumerate(batch.points) if i not in bad
            )


def _check_error(method, err: grpc.RpcError) -> str:
    """Asserts the error is a precise, bounded status; returns "CODE" or "CODE/REASON"."""
    code = err.code()
    where = f"{method.full_name}: {code.name} {err.details()!r}"
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), where
    size = sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())
    assert size < TRAILER_LIMIT, f"{where}: trailers of {size} bytes"
    if code in CALLER_CODES:
        return code.name
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return f"{code.name}/{info.reason}"
    raise AssertionError(f"{where}: no ErrorInfo")


def _send(f: Fuzz, method, raw: list[bytes]) -> tuple[str, list]:
    """Sends ``raw`` (one message, or the stream's) and returns (outcome, responses)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out = method.output_type._concrete_class.FromString
    timeout = WATCH_TIMEOUT if method.name == "WatchCollection" else TIMEOUT
    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    call = getattr(f.channel, kind)(path, request_serializer=None, response_deserializer=out)
    responses: list = []
    try:
        if kind == "unary_unary":
            responses.append(call(raw[0], timeout=timeout))
        elif kind == "unary_stream":
            stream = call(raw[0], timeout=timeout)
            for response in stream:
                responses.append(response)
                if len(responses) >= 50:
                    stream.cancel()
                    break
        else:
            responses.extend(call(iter(raw), timeout=timeout))
        return "OK", responses
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED and len(responses) >= 50:
            return "OK", responses
        return _check_error(method, err), responses


def _parse(method, raw: bytes):
    try:
        return method.input_type._concrete_class.FromString(raw)
    except Exception:  # the server refuses it too (MALFORMED_REQUEST)
        return None


def _requests(method) -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(
        request(method.input_type).map(lambda m: m.SerializeToString()),
        request(method.input_type).map(lambda m: m.SerializeToString()),
        request(method.input_type).map(lambda m: m.SerializeToString()),
        st.binary(max_size=48),
    )
    if not method.client_streaming:
        return one.map(lambda b: [b])
    return st.lists(one, min_size=1, max_size=3)


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_fuzz_rpc(fuzz, method):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOMISED,
        suppress_health_check=list(HealthCheck),
    )
    @given(raw=_requests(method))
    def run(raw: list[bytes]) -> None:
        COUNTS[method.name] += 1
        outcome, responses = _send(fuzz, method, raw)
        OUTCOMES[method.name][outcome] += 1
        parsed = [_parse(method, r) for r in raw]
        if all(p is not None for p in parsed):
            req = parsed if method.client_streaming else parsed[0]
            code = None if outcome == "OK" else grpc.StatusCode[outcome.split("/")[0]]
            _record(fuzz, method, req, outcome == "OK", code, responses)
        assert fuzz.rss() < RSS_LIMIT, f"server RSS {fuzz.peak_rss / 2**20:.0f} MiB"

    run()


def test_after_fuzz_server_serves_and_kept_every_acknowledged_point(fuzz, capsys):
    assert fuzz.server.health() == "SERVING"
    for service in SERVICE_NAMES:
        assert fuzz.server.health(service) == "SERVING", service
    with DriftClient(fuzz.server.target, timeout=120) as client:
        listed = {c.name for c in client.list_collections()}
        for name, ids in fuzz.acked.items():
            assert name in listed, name
            ids = sorted(ids)
            for lo in range(0, len(ids), 1000):
                found, missing = client.get_points(name, ids[lo : lo + 1000])
                assert not missing, f"{name}: acknowledged points lost: {missing[:10]}"
            assert client.get_collection(name).point_count >= len(ids)
    with capsys.disabled():
        total = sum(COUNTS.values())
        print(f"\nfuzz: {total} requests, peak server RSS {fuzz.peak_rss / 2**20:.0f} MiB")
        for name in sorted(COUNTS):
            outcomes = ", ".join(f"{k} {v}" for k, v in OUTCOMES[name].most_common())
            print(f"  {name:20s} {COUNTS[name]:6d}  {outcomes}")
    assert total >= len(METHODS)
