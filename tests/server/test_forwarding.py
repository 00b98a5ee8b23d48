"""The forwarding interceptor between two real gRPC servers on loopback: a
replica (the interceptor over servicers that answer "local") and an owner
whose CollectionService reports what reached it (metadata, remaining deadline)
or fails with a rich error. Shows that a relayed call carries the caller's
metadata (``authorization`` unchanged), deadline and the forwarded-by marker,
that the owner's status and details come back unchanged, that a marked call is
served where it lands, and that an unreachable owner gives OWNER_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import json

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support import error_details, free_port

from driftd.errors import NotFound
from driftd.server.cluster import Cluster
from driftd.server.forwarding import FORWARDED_BY, ForwardingInterceptor
from driftd.server.status import maps_errors
from driftd.v1 import collection_pb2, collection_pb2_grpc


class Owner(collection_pb2_grpc.CollectionServiceServicer):
    """Reports the call as it arrived; ``collections/gone-*`` are NOT_FOUND."""

    @maps_errors
    async def GetCollection(self, request, context):
        if request.name.startswith("collections/gone-"):
            raise NotFound("gone", reason="COLLECTION_NOT_FOUND", metadata={"why": "test"})
        seen = {"metadata": dict(context.invocation_metadata()), "left": context.time_remaining()}
        return collection_pb2.Collection(name=request.name, embed_model=json.dumps(seen))


class Local(collection_pb2_grpc.CollectionServiceServicer):
    async def GetCollection(self, request, context):
        return collection_pb2.Collection(name=request.name, embed_model="local")


async def serve(servicer, interceptors=()) -> tuple[grpc.aio.Server, str]:
    port = free_port()
    server = grpc.aio.server(interceptors=list(interceptors))
    collection_pb2_grpc.add_CollectionServiceServicer_to_server(servicer, server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


def get(target: str, name: str, metadata=(), timeout: float = 30.0) -> collection_pb2.Collection:
    with grpc.insecure_channel(target) as ch:
        return collection_pb2_grpc.CollectionServiceStub(ch).GetCollection(
            collection_pb2.GetCollectionRequest(name=name), metadata=metadata, timeout=timeout
        )


async def test_relayed_calls_carry_metadata_deadline_and_errors_back():
    owner_server, owner = await serve(Owner())
    here = f"127.0.0.1:{free_port()}"
    cluster = Cluster(here, [here, owner])
    relay_server = None
    try:
        await cluster.start()
        assert cluster.members == {here, owner}
        relay_server = grpc.aio.server(interceptors=[ForwardingInterceptor(cluster)])
        collection_pb2_grpc.add_CollectionServiceServicer_to_server(Local(), relay_server)
        relay_server.add_insecure_port(here)
        await relay_server.start()
        names = [f"c{i}" for i in range(100)]
        theirs = next(n for n in names if cluster.owner(f"collections/{n}") == owner)
        ours = next(n for n in names if cluster.owns(f"collections/{n}"))

        auth = [("authorization", "Bearer k-123"), ("x-team", "blue")]
        got = await asyncio.to_thread(get, here, f"collections/{theirs}", auth, 20.0)
        seen = json.loads(got.embed_model)
        assert seen["metadata"]["authorization"] == "Bearer k-123"
        assert seen["metadata"]["x-team"] == "blue"
        assert seen["metadata"][FORWARDED_BY] == here
        assert 10.0 < seen["left"] <= 21.0  # None without a deadline; the wire rounds up
        mine = await asyncio.to_thread(get, here, f"collections/{ours}")
        assert mine.embed_model == "local"
        marked = await asyncio.to_thread(
            get, here, f"collections/{theirs}", [(FORWARDED_BY, "elsewhere")]
        )
        assert marked.embed_model == "local"  # never relayed twice

        gone = next(
            n for n in (f"gone-{i}" for i in range(100)) if not cluster.owns(f"collections/{n}")
        )
        try:
            await asyncio.to_thread(get, here, f"collections/{gone}")
        except grpc.RpcError as exc:
            assert error_details(exc)[:3] == (
                grpc.StatusCode.NOT_FOUND,
                "COLLECTION_NOT_FOUND",
                {"why": "test"},
            )
        else:
            raise AssertionError("the owner's NOT_FOUND did not come back")

        await owner_server.stop(None)  # the owner dies
        try:
            await asyncio.to_thread(get, here, f"collections/{theirs}")
        except grpc.RpcError as exc:
            code, reason, metadata, _ = error_details(exc)
            assert (code, reason, metadata) == (
                grpc.StatusCode.UNAVAILABLE,
                "OWNER_UNAVAILABLE",
                {"owner": owner},
            )
        else:
            raise AssertionError("a dead owner's call succeeded")
        async with asyncio.timeout(30):  # probed at once: its keys come here
            while cluster.members != {here}:
                await asyncio.sleep(0.05)
        after = await asyncio.to_thread(get, here, f"collections/{theirs}")
        assert after.embed_model == "local"
    finally:
        await cluster.stop()
        if relay_server is not None:
            await relay_server.stop(None)
        await owner_server.stop(None)
