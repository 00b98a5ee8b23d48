"""Membership and the ring (driftd.server.cluster) against real gRPC health
servers on loopback: peers join on SERVING, leave on failed checks, DNS names
stand for their addresses, a replica leaving moves only its own keys, and
under TLS peers are verified (by the Service's name) with credentials that
follow a rotation of their files."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from support import free_port, make_pki

from driftd.server.cluster import Cluster
from driftd.server.security.tls import PeerCredentials, ReloadingCertificates

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_server(status=SERVING) -> tuple[grpc.aio.Server, health.aio.HealthServicer, str]:
    port = free_port()
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await servicer.set("", status)
    return server, servicer, f"127.0.0.1:{port}"


async def tls_health_server(
    port: int, cert: str, key: str
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A SERVING health server on ``port`` with driftd's server-side TLS."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_secure_port(
        f"127.0.0.1:{port}", ReloadingCertificates(cert, key).server_credentials()
    )
    await server.start()
    await servicer.set("", SERVING)
    return server, servicer


async def until(check, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_peers_join_on_serving_and_leave_on_failed_checks():
    b_server, b_health, b = await health_server()
    c_server, c_health, c = await health_server(NOT_SERVING)
    a = f"127.0.0.1:{free_port()}"  # this replica: never probed
    dead = f"127.0.0.1:{free_port()}"  # nothing listens
    cluster = Cluster(a, [a, b, c, dead])
    changes = []
    cluster.add_listener(lambda: changes.append(cluster.members))
    try:
        await cluster.start()
        assert cluster.members == {a, b}  # known before start() returns
        await c_health.set("", SERVING)
        await until(lambda: cluster.members == {a, b, c})
        owned_by_b = [k for k in (f"collections/k{i}" for i in range(300)) if cluster.owner(k) == b]
        assert owned_by_b and not any(cluster.owns(k) for k in owned_by_b)

        await b_health.set("", NOT_SERVING)  # draining: leaves the ring
        await until(lambda: cluster.members == {a, c})
        assert all(cluster.owner(k) in (a, c) for k in owned_by_b)
        await b_health.set("", SERVING)
        await until(lambda: cluster.members == {a, b, c})
        assert [cluster.owner(k) for k in owned_by_b] == [b] * len(owned_by_b)

        await c_server.stop(None)  # killed: connection refused
        await until(lambda: cluster.members == {a, b})
        assert changes == [
            frozenset({a, b}),
            frozenset({a, b, c}),
            frozenset({a, c}),
            frozenset({a, b, c}),
            frozenset({a, b}),
        ]
        assert cluster.collection_owner("x") in (a, b)
    finally:
        await cluster.stop()
        await b_server.stop(None)
        await c_server.stop(None)


async def test_a_dns_name_stands_for_its_addresses():
    server, _, b = await health_server()
    port = b.rpartition(":")[2]
    a = f"127.0.0.1:{free_port()}"
    cluster = Cluster(a, [f"localhost:{port}"])
    try:
        await cluster.start()
        assert f"127.0.0.1:{port}" in cluster.members  # ::1, if resolved, does not answer
    finally:
        await cluster.stop()
        await server.stop(None)


def test_alone_this_replica_owns_everything():
    cluster = Cluster("10.0.0.1:50051")
    assert not cluster.enabled and cluster.owns("users/u") and cluster.owns("collections/c")
    assert cluster.collection_owner("c") == ""


@settings(max_examples=50, deadline=None)
@given(
    replicas=st.sets(st.integers(1, 200), min_size=2, max_size=8),
    keys=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50),
    data=st.data(),
)
def test_a_leaving_replica_moves_only_its_own_keys(replicas, keys, data):
    names = sorted(f"10.0.0.{r}:50051" for r in replicas)
    gone = data.draw(st.sampled_from(names))
    before, after = Cluster(names[0]), Cluster(names[0])
    before._set_live(frozenset(names))
    after._set_live(frozenset(names) - {gone})
    for key in keys:
        if before.owner(key) != gone:
            assert after.owner(key) == before.owner(key)
        else:
            assert after.owner(key) != gone


async def test_tls_peers_are_verified_by_name_and_follow_rotated_files(tmp_path, caplog):
    """Certificates name the Service (driftd.test), peers are dialled by address:
    without the name override the peer never joins, with it it does; after the
    CA and the peer's certificate rotate (new CA), a restarted peer is reached
    only through the re-read CA."""
    first = make_pki(tmp_path / "first", "first", server_dns="driftd.test")
    live = tmp_path / "live"
    live.mkdir()
    ca, cert, key = (str(live / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    for src, dst in ((first.ca, ca), (first.server_cert, cert), (first.server_key, key)):
        shutil.copy(src, dst)
    port = free_port()
    b = f"127.0.0.1:{port}"
    server, _ = await tls_health_server(port, cert, key)
    a = f"127.0.0.1:{free_port()}"
    unnamed = Cluster(a, [b], credentials=PeerCredentials(ca))
    named = Cluster(
        a,
        [b],
        channel_options=[("grpc.ssl_target_name_override", "driftd.test")],
        credentials=PeerCredentials(ca),
    )
    caplog.set_level(logging.INFO, logger="driftd.server.security.tls")
    try:
        await unnamed.start()
        await named.start()
        assert unnamed.members == {a}  # the certificate does not name 127.0.0.1
        assert f"peer {b} is out of the ring: UNAVAILABLE" in caplog.text
        assert named.members == {a, b}

        second = make_pki(tmp_path / "second", "second", server_dns="driftd.test")
        for src, dst in ((second.ca, ca), (second.server_key, key), (second.server_cert, cert)):
            os.replace(src, dst)
        await until(lambda: "peer TLS credentials reloaded" in caplog.text)
        # A restarted peer presents the new certificate: only the new CA verifies it.
        await server.stop(None)
        server, _ = await tls_health_server(port, cert, key)
        await until(lambda: named.members == {a, b})
        await asyncio.sleep(3)  # more probes than DOWN_AFTER: it stays
        assert named.members == {a, b}
    finally:
        await unnamed.stop()
        await named.stop()
        await server.stop(None)


def test_peer_credentials_refuse_a_ca_without_certificates(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="peer CA file"):
        PeerCredentials(str(bad))
