"""INTERNAL stays for bugs, and a bug is traceable: logged once with its traceback
under an error id that the client sees in the ErrorInfo metadata (issue 13).

A real grpc.aio server on loopback serves a handler that has a bug (a division by
zero), wrapped by the one exception mapping, :func:`driftd.server.status.maps_errors`.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import empty_pb2
from support import error_details

from driftd.errors import NotFound
from driftd.server.status import maps_errors


class _Buggy:
    @maps_errors
    async def Unary(self, request, context):
        return 1 // 0

    @maps_errors
    async def Stream(self, request, context):
        yield empty_pb2.Empty()
        raise KeyError("a bug after the first message")

    @maps_errors
    async def Missing(self, request, context):
        raise NotFound("no such collection")


@pytest.fixture
async def target():
    server = grpc.aio.server()
    buggy = _Buggy()
    codec = {
        "request_deserializer": empty_pb2.Empty.FromString,
        "response_serializer": empty_pb2.Empty.SerializeToString,
    }
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Buggy",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(buggy.Unary, **codec),
                    "Stream": grpc.unary_stream_rpc_method_handler(buggy.Stream, **codec),
                    "Missing": grpc.unary_unary_rpc_method_handler(buggy.Missing, **codec),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _call(channel, kind: str, name: str):
    method = getattr(channel, kind)(
        f"/test.Buggy/{name}",
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )
    return method(empty_pb2.Empty())


@pytest.mark.parametrize("kind, name", [("unary_unary", "Unary"), ("unary_stream", "Stream")])
async def test_a_bug_is_internal_with_an_error_id_logged_once(target, caplog, kind, name):
    caplog.set_level(logging.ERROR, logger="driftd.server.status")
    async with grpc.aio.insecure_channel(target) as channel:
        call = _call(channel, kind, name)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if kind == "unary_unary":
                await call
            else:
                async for _ in call:
                    pass
    code, reason, metadata, _ = error_details(err.value)
    assert (code, reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    error_id = metadata["error_id"]
    assert len(error_id) == 16
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


async def test_a_client_error_carries_no_error_id(target, caplog):
    caplog.set_level(logging.DEBUG, logger="driftd.server.status")
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, "unary_unary", "Missing")
    code, reason, metadata, _ = error_details(err.value)
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "COLLECTION_NOT_FOUND")
    assert "error_id" not in metadata
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
