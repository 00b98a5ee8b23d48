"""The security layer against live servers on loopback with real certificates
(generated here) and keys files: TLS refuses plaintext, mTLS refuses clients
without a certificate, every RPC's role and scope hold, quotas and rate limits
answer with RetryInfo, certificates and keys rotate without a restart, the
read-only mode under disk pressure, and the non-loopback refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from support import (
    ChromaServer,
    ServerProcess,
    error_details,
    free_port,
    make_pki,
    write_keys,
)

from driftd.client import TLS, DriftClient
from driftd.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from driftd.server.security.policy import RULES, Role
from driftd.v1 import behavior_pb2, collection_pb2, flow_pb2, monitor_pb2, point_pb2, routing_pb2

KEYS = {
    "reader": ("reader-key-0123456789", "reader", None),
    "writer": ("writer-key-0123456789", "writer", None),
    "admin": ("admin-key-0123456789", "admin", None),
    "team-a": ("team-a-key-0123456789", "admin", ["team-a-*"]),
}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
DESCRIPTORS = {
    f"/{s.full_name}/{m.name}": m
    for module in (collection_pb2, point_pb2, flow_pb2, routing_pb2, monitor_pb2, behavior_pb2)
    for s in module.DESCRIPTOR.services_by_name.values()
    for m in s.methods
}


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name][0]}"),)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    pki = make_pki(root / "pki")
    write_keys(root / "keys.json", KEYS)
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    srv = ServerProcess(
        root / "chroma",
        root / "server.log",
        credentials=creds,
        DRIFTD_TLS_CERT_FILE=str(pki.server_cert),
        DRIFTD_TLS_KEY_FILE=str(pki.server_key),
        DRIFTD_API_KEYS_FILE=str(root / "keys.json"),
    ).start()
    srv.pki, srv.keys_file = pki, root / "keys.json"
    srv.channel = grpc.secure_channel(srv.target, creds)
    yield srv
    srv.channel.close()
    srv.stop()


def _name(method: str, kind_id: str) -> str:
    """A resource name of the right shape for ``method`` under the top-level id."""
    rule = RULES[method]
    if rule.bare_kind:
        return kind_id
    service = method.split("/")[1]
    kind = {
        "driftd.v1.RoutingService": "conversations",
        "driftd.v1.BehaviorService": "users",
    }.get(service, "collections")
    suffix = {"GetDriftRule": "/driftRules/r1", "DeleteDriftRule": "/driftRules/r1"}
    suffix |= {"GetBranchContext": "/branches/b0", "ExtractFacts": "/branches/b0"}
    return f"{kind}/{kind_id}{suffix.get(method.rpartition('/')[2], '')}"


def invoke(channel, method: str, metadata, resource_id: str = "team-a-none"):
    """Calls ``method`` with a request naming ``resource_id`` (otherwise empty);
    returns the status code (OK when the call or its first message succeeded)."""
    if method == REFLECTION:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        request_type = reflection_pb2.ServerReflectionRequest
        response_type = reflection_pb2.ServerReflectionResponse
        streams = (True, True)
    else:
        desc = DESCRIPTORS[method]
        module = sys.modules[desc.input_type.file.name.replace("/", ".").replace(".proto", "_pb2")]
        request_type = getattr(module, desc.input_type.name)
        response_type = getattr(
            sys.modules[desc.output_type.file.name.replace("/", ".").replace(".proto", "_pb2")]
            if desc.output_type.file.package == "driftd.v1"
            else __import__("google.protobuf.empty_pb2", fromlist=["x"]),
            desc.output_type.name,
        )
        request = request_type()
        if RULES[method].resource:
            setattr(request, RULES[method].resource, _name(method, resource_id))
        streams = (desc.client_streaming, desc.server_streaming)
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    call = kinds[streams](
        method,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        if streams == (True, False):
            call(iter([request]), metadata=metadata, timeout=10)
        elif streams[0]:
            next(iter(call(iter([request]), metadata=metadata, timeout=10)))
        elif streams[1]:
            next(iter(call(request, metadata=metadata, timeout=3)), None)
        else:
            call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err
    return None


AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def test_plaintext_is_refused_under_tls(tls_server):
    with grpc.insecure_channel(tls_server.target) as plain:
        err = invoke(plain, "/driftd.v1.CollectionService/ListCollections", bearer("admin"))
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE


def test_health_is_open_and_reflection_needs_a_key(tls_server):
    assert tls_server.health() == "SERVING"  # TLS, no key
    err = invoke(tls_server.channel, REFLECTION, ())
    assert error_details(err)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert invoke(tls_server.channel, REFLECTION, bearer("reader")) is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "API_KEY_MISSING"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "API_KEY_MISSING"),
        ((("authorization", "Bearer not-a-key"),), "API_KEY_INVALID"),
        ((("authorization", f"Bearer {KEYS['admin'][0]}x"),), "API_KEY_INVALID"),
    ],
)
def test_unauthenticated(tls_server, metadata, reason):
    err = invoke(tls_server.channel, "/driftd.v1.CollectionService/ListCollections", metadata)
    assert error_details(err)[:2] == (grpc.StatusCode.UNAUTHENTICATED, reason)


@pytest.mark.parametrize("method", sorted(m for m in RULES if m != REFLECTION))
def test_every_rpc_checks_its_role(tls_server, method):
    rule = RULES[method]
    if rule.role > Role.READER:
        below = Role(rule.role - 1).label
        err = invoke(tls_server.channel, method, bearer(below), "team-a-x")
        code, reason, metadata, _ = error_details(err)
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        assert metadata["required_role"] == rule.role.label
    err = invoke(tls_server.channel, method, bearer(rule.role.label), "team-a-x")
    assert err is None or err.code() not in AUTH_CODES, err


@pytest.mark.parametrize("method", sorted(m for m, r in RULES.items() if r.resource))
def test_every_scoped_rpc_checks_the_scope(tls_server, method):
    err = invoke(tls_server.channel, method, bearer("team-a"), "team-b-x")
    code, reason, metadata, _ = error_details(err)
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert metadata["resource"].split("/")[1] == "team-b-x"
    err = invoke(tls_server.channel, method, bearer("team-a"), "team-a-x")
    assert err is None or err.code() not in AUTH_CODES, err


def test_lists_show_only_the_scope(tls_server):
    tls = TLS(ca_file=str(tls_server.pki.ca))
    with DriftClient(tls_server.target, api_key=KEYS["admin"][0], tls=tls) as admin:
        for name in ("team-a-one", "team-b-one", "team-a-two"):
            admin.create_collection(name, dim=3)
        assert {"team-a-one", "team-a-two", "team-b-one"} <= {
            c.name for c in admin.list_collections()
        }
    with DriftClient(tls_server.target, api_key=KEYS["team-a"][0], tls=tls) as scoped:
        names = {c.name for c in scoped.list_collections()}
        assert {"team-a-one", "team-a-two"} <= names
        assert all(n.startswith("team-a-") for n in names)
        with pytest.raises(PermissionDenied):
            scoped.get_collection("team-b-one")


def test_a_stream_cannot_switch_to_a_collection_out_of_scope(tls_server):
    tls = TLS(ca_file=str(tls_server.pki.ca))
    with DriftClient(tls_server.target, api_key=KEYS["admin"][0], tls=tls) as admin:
        admin.create_collection("team-a-stream", dim=3)
    allowed = point_pb2.StreamUpsertPointsRequest(parent="collections/team-a-stream", sequence=1)
    other = point_pb2.StreamUpsertPointsRequest(parent="collections/team-b-one", sequence=2)
    stream = tls_server.channel.stream_stream(
        "/driftd.v1.PointService/StreamUpsertPoints",
        request_serializer=point_pb2.StreamUpsertPointsRequest.SerializeToString,
        response_deserializer=point_pb2.StreamUpsertPointsResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stream(iter([allowed, other]), metadata=bearer("team-a"), timeout=10))
    assert error_details(err.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_denials_and_admin_actions_are_audited_without_the_key(tls_server):
    tls = TLS(ca_file=str(tls_server.pki.ca))
    with DriftClient(tls_server.target, api_key=KEYS["admin"][0], tls=tls) as admin:
        admin.create_collection("team-a-audit", dim=3)
    invoke(tls_server.channel, "/driftd.v1.CollectionService/DeleteCollection", bearer("writer"))
    lines = [
        json.loads(line.split("driftd.audit: ", 1)[1])
        for line in tls_server.log_path.read_text().splitlines()
        if "driftd.audit: " in line
    ]
    denied = [r for r in lines if r["audit"] == "denied" and r["key"] == "writer"]
    assert any(r["method"].endswith("/DeleteCollection") for r in denied)
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") for r in lines)
    admin = [r for r in lines if r["audit"] == "admin" and r["key"] == "admin"]
    assert any(
        r["method"].endswith("/CreateCollection")
        and r["resource"] == "collections/team-a-audit"
        and r["code"] == "OK"
        for r in admin
    )
    log = tls_server.log_path.read_text()
    assert not any(key in log for key, _, _ in KEYS.values())


def test_keys_file_rotates_without_restart(tls_server):
    with_late = {**KEYS, "late": ("late-key-0123456789", "reader", None)}
    metadata = (("authorization", "Bearer late-key-0123456789"),)
    method = "/driftd.v1.CollectionService/ListCollections"
    assert error_details(invoke(tls_server.channel, method, metadata))[1] == "API_KEY_INVALID"
    write_keys(tls_server.keys_file, with_late)
    try:
        assert invoke(tls_server.channel, method, metadata) is None
    finally:
        write_keys(tls_server.keys_file, KEYS)
    assert error_details(invoke(tls_server.channel, method, metadata))[1] == "API_KEY_INVALID"


# --- mutual TLS and certificate rotation ------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtls")
    pki = make_pki(root / "pki", "first")
    client_creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    srv = ServerProcess(
        root / "chroma",
        root / "server.log",
        credentials=client_creds,
        DRIFTD_TLS_CERT_FILE=str(pki.server_cert),
        DRIFTD_TLS_KEY_FILE=str(pki.server_key),
        DRIFTD_TLS_CLIENT_CA_FILE=str(pki.ca),
    ).start()
    srv.pki, srv.root = pki, root
    yield srv
    srv.stop()


def _list(target: str, tls: TLS) -> int:
    with DriftClient(target, tls=tls, retries=None, timeout=10) as c:
        return len(list(c.list_collections()))


def test_mtls_requires_a_client_certificate(mtls_server):
    pki = mtls_server.pki
    with_cert = TLS(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert _list(mtls_server.target, with_cert) >= 0
    with pytest.raises(Exception) as err:
        _list(mtls_server.target, TLS(ca_file=str(pki.ca)))
    assert err.value.code == "UNAVAILABLE"
    stranger = make_pki(mtls_server.root / "stranger", "stranger")  # right CA for the server only
    with pytest.raises(Exception) as err:
        _list(
            mtls_server.target,
            TLS(str(pki.ca), str(stranger.client_cert), str(stranger.client_key)),
        )
    assert err.value.code == "UNAVAILABLE"


def test_certificates_rotate_without_restart(mtls_server):
    old = mtls_server.pki
    old_ca = mtls_server.root / "old-ca.pem"
    old_ca.write_bytes(old.ca.read_bytes())
    new = make_pki(mtls_server.root / "rotated", "second")
    pid = mtls_server.proc.pid
    # Renames over the served paths, one file at a time, as a rotation lands.
    for src, dst in (
        (new.server_key, old.server_key),
        (new.server_cert, old.server_cert),
        (new.ca, old.ca),
    ):
        os.replace(src, dst)
    rotated = TLS(str(old.ca), str(new.client_cert), str(new.client_key))
    assert _list(mtls_server.target, rotated) >= 0
    with pytest.raises(Exception) as err:  # the old CA no longer trusts the server
        _list(mtls_server.target, TLS(str(old_ca), str(new.client_cert), str(new.client_key)))
    assert err.value.code == "UNAVAILABLE"
    assert mtls_server.proc.pid == pid and mtls_server.proc.poll() is None
    assert "TLS certificates reloaded" in mtls_server.log()


# --- quotas, rate limits, metrics labels -----------------------------------------------------


QUOTA_KEYS = {
    name: (f"{name}-key-0123456789", "admin", None)
    for name in ("points", "collections", "rate", "streams", "client")
}


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("quotas")
    write_keys(root / "keys.json", QUOTA_KEYS)
    srv = ServerProcess(
        root / "chroma",
        root / "server.log",
        DRIFTD_API_KEYS_FILE=str(root / "keys.json"),
        DRIFTD_RATE_LIMIT_RPS="0.01",
        DRIFTD_RATE_LIMIT_BURST="6",
        DRIFTD_MAX_COLLECTIONS="3",
        DRIFTD_MAX_POINTS_PER_COLLECTION="5",
        DRIFTD_MAX_STREAMS_PER_KEY="1",
        DRIFTD_METRICS_COLLECTION_LABELS="false",
    ).start()
    with _client(srv, "client") as c:  # two events to replay (watch test)
        c.create_collection("q-watch", dim=3)
        c.upsert("q-watch", _points(1))
        c.upsert("q-watch", _points(1, start=1))
    yield srv
    srv.stop()


def _client(srv, name):
    # A keyed client over plaintext loopback (gRPC local credentials).
    return DriftClient(srv.target, api_key=QUOTA_KEYS[name][0], retries=None, timeout=30)


def _points(n, start=0):
    return [
        {"id": f"p{i}", "timestamp": f"2024-05-01T00:00:{i:02d}Z", "vector": [1.0, float(i), 0.5]}
        for i in range(start, start + n)
    ]


def _retry_and_quota(err: ResourceExhausted):
    status = rpc_status.from_call(err.__cause__)
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    for detail in status.details:
        if detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
        elif detail.Is(quota.DESCRIPTOR):
            detail.Unpack(quota)
    return retry.retry_delay.ToTimedelta().total_seconds(), [v.subject for v in quota.violations]


def test_rate_limit_answers_with_retry_info(quota_server):
    with _client(quota_server, "rate") as c:
        for _ in range(6):
            list(c.list_collections())
        with pytest.raises(ResourceExhausted) as err:
            list(c.list_collections())
    assert err.value.reason == "RATE_LIMITED"
    delay, subjects = _retry_and_quota(err.value)
    assert delay > 1 and subjects == ["key:rate"]
    with _client(quota_server, "client") as other:  # buckets are per key
        list(other.list_collections())


def test_points_per_collection_quota(quota_server):
    with _client(quota_server, "points") as c:
        c.create_collection("q-points", dim=3)
        c.upsert("q-points", _points(4))
        with pytest.raises(ResourceExhausted) as err:
            c.upsert("q-points", _points(2, start=4))
        assert err.value.reason == "QUOTA_EXCEEDED"
        assert _retry_and_quota(err.value)[1] == ["collection:q-points"]
        assert c.get_collection("q-points").point_count == 4  # nothing written
        c.upsert("q-points", _points(1, start=4))


def test_collections_quota(quota_server):
    with _client(quota_server, "collections") as c:
        created = [f"q-coll-{i}" for i in range(3 - len(list(c.list_collections())))]
        try:
            for name in created:
                c.create_collection(name, dim=3)
            with pytest.raises(ResourceExhausted) as err:
                c.create_collection("q-coll-extra", dim=3)
        finally:
            for name in created:
                c.delete_collection(name)
    assert err.value.reason == "QUOTA_EXCEEDED"
    assert _retry_and_quota(err.value)[1] == ["collections"]


def test_concurrent_streams_per_key(quota_server):
    with _client(quota_server, "streams") as c:
        with pytest.raises(FailedPrecondition) as expired:
            next(c.watch("q-watch", after_sequence=1))
        first = int(expired.value.metadata["oldest_sequence"])
        events = c.watch("q-watch", after_sequence=first)
        next(events)  # the second event, replayed: the stream holds the key's one slot
        with pytest.raises(ResourceExhausted) as err:
            next(c.watch("q-watch", after_sequence=first))
        events.close()
        assert next(c.watch("q-watch", after_sequence=first))  # the slot came back
    assert err.value.reason == "QUOTA_EXCEEDED"
    delay, subjects = _retry_and_quota(err.value)
    assert delay > 0 and subjects == ["key:streams"]


def test_metrics_without_collection_labels(quota_server):
    url = f"http://127.0.0.1:{quota_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'driftd_points_ingested_total{collection=""}' in text
    assert "q-points" not in text


# --- disk pressure, non-loopback refusal --------------------------------------------------------


def test_disk_pressure_refuses_writes_but_not_reads(tmp_path):
    srv = ServerProcess(
        tmp_path / "chroma", tmp_path / "server.log", DRIFTD_READ_ONLY_DISK_PERCENT="0.001"
    ).start()
    try:
        with DriftClient(srv.target, retries=None, timeout=30) as c:
            with pytest.raises(ResourceExhausted) as err:
                c.create_collection("full", dim=3)
            assert err.value.reason == "STORAGE_FULL"
            delay, subjects = _retry_and_quota(err.value)
            assert delay > 0 and subjects == ["disk"]
            assert list(c.list_collections()) == []
    finally:
        srv.stop()


def test_non_loopback_needs_keys_tls_or_insecure(tmp_path):
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "driftd"), "serve", "--address", f"0.0.0.0:{port}"]
    env = {**os.environ, "DRIFTD_CHROMA_PATH": str(tmp_path / "c"), "DRIFTD_METRICS_PORT": "0"}
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "without API keys or TLS" in refused.stderr and "--insecure" in refused.stderr
    proc = subprocess.Popen([*cmd, "--insecure"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=max(1, deadline - time.monotonic()))
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    assert "without API keys or TLS (--insecure)" in stderr


def test_client_keys_need_tls_off_loopback():
    with pytest.raises(InvalidArgument, match="needs TLS"):
        DriftClient("10.1.2.3:50051", api_key="k")


def test_unauthenticated_maps_to_its_client_error(quota_server):
    with DriftClient(quota_server.target, retries=None, timeout=10) as c:
        with pytest.raises(Unauthenticated) as err:
            c.get_collection("q-points")
    assert err.value.reason == "API_KEY_MISSING"


def test_cli_ingest_with_a_key_and_tls(tls_server, tmp_path, monkeypatch, capsys):
    from driftd.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(p) for p in _points(3)))
    argv = ["ingest", str(rows), "--collection", "team-a-cli", "--create", "--dim", "3"]
    argv += ["--target", tls_server.target, "--tls-ca", str(tls_server.pki.ca)]
    monkeypatch.setenv("DRIFTD_API_KEY", KEYS["admin"][0])
    assert main(argv) == 0
    assert "accepted   3 points" in capsys.readouterr().out
    monkeypatch.setenv("DRIFTD_API_KEY", KEYS["reader"][0])
    assert main(argv) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    monkeypatch.delenv("DRIFTD_API_KEY")
    assert main([*argv, "--api-key", KEYS["writer"][0]]) == 1  # --create needs admin
    assert main([*argv[:4], *argv[7:], "--api-key", KEYS["writer"][0]]) == 0


async def test_async_client_sends_the_key_on_unary_and_streaming_calls(tls_server):
    from driftd.client import AsyncDriftClient

    tls = TLS(ca_file=str(tls_server.pki.ca))
    async with AsyncDriftClient(tls_server.target, api_key=KEYS["admin"][0], tls=tls) as db:
        await db.create_collection("team-a-async", dim=3)
        await db.upsert("team-a-async", _points(3))
        assert len([p async for p in db.trajectory("team-a-async")]) == 3
    async with AsyncDriftClient(tls_server.target, api_key=KEYS["team-a"][0], tls=tls) as db:
        with pytest.raises(PermissionDenied):
            [p async for p in db.trajectory("team-b-one")]


def test_server_mode_with_a_chroma_token(tmp_path):
    """driftd's Chroma client carries the token (Chroma's TokenAuthClientProvider:
    ``Authorization: Bearer``). chromadb 1.5's ``chroma run`` does not check it,
    so this shows that the setting works end to end; the NetworkPolicy of the
    server overlay is what keeps other pods away from Chroma."""
    chroma = ChromaServer(tmp_path / "chroma", tmp_path / "chroma.log").wait_ready()
    try:
        srv = ServerProcess(
            tmp_path / "unused",
            tmp_path / "server.log",
            DRIFTD_CHROMA_URL=chroma.url,
            DRIFTD_CHROMA_TOKEN="chroma-token-0123456789",
        ).start()
        try:
            with DriftClient(srv.target, retries=None, timeout=60) as c:
                c.create_collection("tokened", dim=3)
                assert c.upsert("tokened", _points(3)).upserted == 3
        finally:
            srv.stop()
    finally:
        chroma.stop()


def test_health_port_answers_probes_in_plaintext_beside_tls(tls_server, tmp_path):
    """Kubelet's gRPC probes cannot speak TLS: --health-address serves only health."""
    health_port = free_port()
    srv = ServerProcess(
        tmp_path / "chroma",
        tmp_path / "server.log",
        credentials=grpc.ssl_channel_credentials(tls_server.pki.ca.read_bytes()),
        DRIFTD_TLS_CERT_FILE=str(tls_server.pki.server_cert),
        DRIFTD_TLS_KEY_FILE=str(tls_server.pki.server_key),
        DRIFTD_API_KEYS_FILE=str(tls_server.keys_file),
        DRIFTD_HEALTH_ADDRESS=f"127.0.0.1:{health_port}",
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            stub = health_pb2_grpc.HealthStub(plain)
            for service in ("", "driftd.v1.PointService"):
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
            err = invoke(plain, "/driftd.v1.CollectionService/ListCollections", bearer("admin"))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED  # nothing but health there
    finally:
        srv.stop()
