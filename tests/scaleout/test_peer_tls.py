"""Replicas with peers AND TLS: a real ``chroma run`` and two ``driftd serve``
replicas under mutual TLS and API keys, whose certificate names only the
Service (``driftd.test``, not the loopback address the peers are dialled at),
as in the shipped server overlay. The peers' health probes and forwarded calls
go over TLS with the replica's own certificate: the ring forms, a non-owner
forwards and the owner answers, and the owner checks the forwarded key again.
Without a CA to verify peers, driftd refuses to start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from support import (
    ServerProcess,
    error_details,
    free_port,
    make_pki,
    start_all,
    wait_for,
    write_keys,
)

from driftd import convert
from driftd.v1 import collection_pb2, collection_pb2_grpc, point_pb2, point_pb2_grpc

SERVICE_NAME = "driftd.test"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
TIMEOUT = 120.0
DIM = 4
KEYS = {
    "reader": ("reader-key-0123456789", "reader", None),
    "writer": ("writer-key-0123456789", "writer", None),
    "admin": ("admin-key-0123456789", "admin", None),
}


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name][0]}"),)


def metric_lines(server: ServerProcess, name: str) -> list[str]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return [line for line in resp.read().decode().splitlines() if line.startswith(name)]


def members(server: ServerProcess) -> float:
    lines = metric_lines(server, "driftd_cluster_members ")
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def forwarded(server: ServerProcess, code: str) -> float:
    """driftd_forwarded_rpcs_total of UpsertPoints with grpc_code ``code``
    (``OK``, ``PermissionDenied``...), summed over owners."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metric_lines(server, "driftd_forwarded_rpcs_total{")
        if 'grpc_method="UpsertPoints"' in line and f'grpc_code="{code}"' in line
    )


@pytest.fixture(scope="module")
def replicas(chroma, tmp_path_factory):
    """Two replicas under mTLS and API keys (each its own keys file), peers
    verified with the cluster's CA (the mTLS client CA, by default) against
    the Service name."""
    root = tmp_path_factory.mktemp("peer-tls")
    pki = make_pki(root / "pki", "cluster", server_dns=SERVICE_NAME)
    creds = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    # Dialled at 127.0.0.1 like the peers: the certificate names the Service.
    options = [("grpc.ssl_target_name_override", SERVICE_NAME)]
    servers = []
    for name in "ab":
        keys = root / f"keys-{name}.json"
        write_keys(keys, KEYS)
        srv = ServerProcess(
            root / f"unused-{name}",
            root / f"driftd-{name}.log",
            credentials=creds,
            channel_options=options,
            DRIFTD_CHROMA_URL=chroma.url,
            DRIFTD_WORKERS="1",
            DRIFTD_TLS_CERT_FILE=str(pki.server_cert),
            DRIFTD_TLS_KEY_FILE=str(pki.server_key),
            DRIFTD_TLS_CLIENT_CA_FILE=str(pki.ca),
            DRIFTD_PEER_TLS_SERVER_NAME=SERVICE_NAME,
            DRIFTD_API_KEYS_FILE=str(keys),
        )
        srv.keys_file = keys
        servers.append(srv)
    peers = ",".join(s.target for s in servers)
    for s in servers:
        s.extra_env.update(DRIFTD_PEERS=peers, DRIFTD_ADVERTISE_ADDRESS=s.target)
    try:
        start_all(servers)
        for s in servers:
            s.channel = grpc.secure_channel(s.target, creds, options=options)
        for s in servers:
            wait_for(lambda s=s: members(s) == 2, what="2 members over TLS")
        yield servers
        for s in servers:
            s.channel.close()
    finally:
        for s in servers:
            s.stop()


def create(server: ServerProcess, cid: str) -> None:
    collection_pb2_grpc.CollectionServiceStub(server.channel).CreateCollection(
        collection_pb2.CreateCollectionRequest(
            collection_id=cid,
            collection=collection_pb2.Collection(
                dimension=DIM, distance=collection_pb2.DISTANCE_L2
            ),
        ),
        metadata=bearer("admin"),
        timeout=TIMEOUT,
    )


def points(n: int) -> list[point_pb2.Point]:
    out = []
    for i in range(n):
        p = point_pb2.Point(id=f"p{i}", vector=[float(i), 1.0, -1.0, 0.5])
        p.time.CopyFrom(convert.datetime_to_timestamp(T0 + timedelta(minutes=i)))
        out.append(p)
    return out


def owner_of(servers: list[ServerProcess], cid: str) -> str:
    """The owner every replica reports for the collection (they must agree)."""
    owners = {
        collection_pb2_grpc.CollectionServiceStub(s.channel)
        .GetCollection(
            collection_pb2.GetCollectionRequest(name=f"collections/{cid}"),
            metadata=bearer("reader"),
            timeout=TIMEOUT,
        )
        .owner
        for s in servers
    }
    assert len(owners) == 1, owners
    return owners.pop()


def test_the_ring_forms_over_tls_and_non_owners_forward(replicas):
    create(replicas[0], "tls-ring")
    owner = owner_of(replicas, "tls-ring")
    assert owner in {s.target for s in replicas}
    non_owner = next(s for s in replicas if s.target != owner)
    before = forwarded(non_owner, "OK")
    batch = points(40)
    resp = point_pb2_grpc.PointServiceStub(non_owner.channel).UpsertPoints(
        point_pb2.UpsertPointsRequest(parent="collections/tls-ring", points=batch),
        metadata=bearer("writer"),
        timeout=TIMEOUT,
    )
    assert resp.upserted_count == len(batch)
    assert forwarded(non_owner, "OK") == before + 1  # the owner answered it
    got = point_pb2_grpc.PointServiceStub(non_owner.channel).GetPoints(
        point_pb2.GetPointsRequest(parent="collections/tls-ring", ids=["p0", "p39"]),
        metadata=bearer("reader"),
        timeout=TIMEOUT,
    )
    assert [p.id for p in got.points] == ["p0", "p39"]


def test_the_owner_checks_a_forwarded_key_again(replicas):
    create(replicas[0], "tls-keys")
    owner = next(s for s in replicas if s.target == owner_of(replicas, "tls-keys"))
    non_owner = next(s for s in replicas if s is not owner)
    upsert = point_pb2.UpsertPointsRequest(parent="collections/tls-keys", points=points(5))
    stub = point_pb2_grpc.PointServiceStub(non_owner.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertPoints(upsert, metadata=bearer("reader"), timeout=TIMEOUT)
    assert error_details(err.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    # Only the owner demotes the writer: the non-owner lets the write through,
    # the owner refuses it, and the refusal comes back through the relay.
    write_keys(owner.keys_file, {**KEYS, "writer": (KEYS["writer"][0], "reader", None)})
    try:
        denied = forwarded(non_owner, "PermissionDenied")

        def refused_by_owner() -> bool:
            try:
                stub.UpsertPoints(upsert, metadata=bearer("writer"), timeout=TIMEOUT)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
                return True
            return False  # the owner has not re-read its keys file yet

        wait_for(refused_by_owner, what="the owner to refuse the demoted key")
        assert forwarded(non_owner, "PermissionDenied") == denied + 1
    finally:
        write_keys(owner.keys_file, KEYS)


def test_peers_and_tls_without_a_peer_ca_refuse_to_start(tmp_path):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    env = {
        **os.environ,
        "DRIFTD_ADDRESS": f"127.0.0.1:{port}",
        "DRIFTD_METRICS_PORT": "0",
        "DRIFTD_CHROMA_URL": "http://127.0.0.1:1",
        "DRIFTD_PEERS": f"127.0.0.1:{port},127.0.0.1:{free_port()}",
        "DRIFTD_TLS_CERT_FILE": str(pki.server_cert),
        "DRIFTD_TLS_KEY_FILE": str(pki.server_key),
    }
    driftd = shutil.which("driftd", path=str(Path(sys.executable).parent))
    refused = subprocess.run(
        [driftd, "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0
    assert "peer_tls_ca_file" in refused.stderr and "no peer can be verified" in refused.stderr


def test_peer_tls_settings_need_tls_and_a_way_to_verify_peers():
    from driftd.config import Settings

    peers = {
        "peers": "10.0.0.1:50051,10.0.0.2:50051",
        "chroma_url": "http://chroma:8000",
        "advertise_address": "10.0.0.1:50051",
    }
    tls = {"tls_cert_file": "tls.crt", "tls_key_file": "tls.key"}
    with pytest.raises(ValueError, match="need tls_cert_file"):
        Settings(peer_tls_server_name=SERVICE_NAME)
    with pytest.raises(ValueError, match="no peer can be verified"):
        Settings(**peers, **tls)
    assert Settings(**peers, **tls, tls_client_ca_file="ca.crt").peer_ca_file == "ca.crt"
    assert Settings(**peers, **tls, peer_tls_ca_file="peers.crt").peer_ca_file == "peers.crt"
    assert Settings(**peers).peer_ca_file == ""  # plaintext peers without TLS
