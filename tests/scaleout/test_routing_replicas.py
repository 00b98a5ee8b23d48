"""Routing through several replicas over one Chroma server keeps every
acknowledged message (issue 15, part 3): message records have time-ordered
unique ids (no ``{conversation}/{index}`` numbering from a replica's memory), and
in server mode each message is in Chroma before RouteMessage answers (no
replica-local write-ahead log).

Two ``driftd serve`` replicas share a real ``chroma run``; a third, started
afterwards with nothing cached, reads the conversations back. Messages are the
turns of real Schema-Guided Dialogue conversations from ``../shared/data/``.
"""

from __future__ import annotations

import json
import threading

import grpc
import pytest
from support import SHARED_DATA, ServerProcess

from driftd.v1 import routing_pb2 as pb
from driftd.v1 import routing_pb2_grpc

TIMEOUT = 120.0
ROLES = {"user": pb.MESSAGE_ROLE_USER, "assistant": pb.MESSAGE_ROLE_ASSISTANT}


def sgd_conversations(count: int, min_turns: int) -> list[list[dict]]:
    """The turns of the first ``count`` SGD conversations with at least ``min_turns``."""
    found = []
    with open(SHARED_DATA / "sgd_routing_train.jsonl") as f:
        for line in f:
            turns = json.loads(line)["turns"]
            if len(turns) >= min_turns:
                found.append(turns[:min_turns])
                if len(found) == count:
                    break
    return found


@pytest.fixture(scope="module")
def replicas(chroma, tmp_path_factory):
    """Replicas A and B over the one Chroma server, and a function that starts a
    fresh reader replica (nothing in memory) over it too."""
    root = tmp_path_factory.mktemp("routing-replicas")
    started: list[ServerProcess] = []

    def start(name: str) -> routing_pb2_grpc.RoutingServiceStub:
        srv = ServerProcess(
            root / f"unused-{name}", root / f"driftd-{name}.log", DRIFTD_CHROMA_URL=chroma.url
        )
        started.append(srv)
        srv.start()
        return routing_pb2_grpc.RoutingServiceStub(grpc.insecure_channel(srv.target))

    try:
        yield start("a"), start("b"), start
    finally:
        for srv in started:
            srv.stop()


def route(stub, cid: str, turn: dict, message_id: str) -> pb.RouteMessageResponse:
    return stub.RouteMessage(
        pb.RouteMessageRequest(
            conversation=f"conversations/{cid}",
            role=ROLES[turn["role"]],
            content=turn["content"],
            message_id=message_id,
        ),
        timeout=TIMEOUT,
    )


def stored_messages(stub, cid: str) -> list[tuple[str, str]]:
    """(message id, content) of every stored message of the conversation, read
    branch by branch through ``stub``."""
    branches = stub.ListBranches(
        pb.ListBranchesRequest(parent=f"conversations/{cid}", page_size=1000), timeout=TIMEOUT
    ).branches
    out = []
    for b in branches:
        ctx = stub.GetBranchContext(pb.GetBranchContextRequest(name=b.name), timeout=TIMEOUT)
        out.extend((m.id, m.content) for m in ctx.messages)
    assert sum(b.message_count for b in branches) == len(out)
    return out


def test_alternating_replicas_keep_every_message(replicas):
    a, b, start = replicas
    turns = sgd_conversations(1, 12)[0]
    sent = []
    for i, turn in enumerate(turns):
        mid = f"t{i}"
        ack = route((a, b)[i % 2], "alternating", turn, mid)
        assert ack.message_id == mid
        sent.append((mid, turn["content"]))
    reader = start("reader-1")
    assert sorted(stored_messages(reader, "alternating")) == sorted(sent)


def test_concurrent_writers_to_one_conversation_keep_every_message(replicas):
    a, b, start = replicas
    first, second = sgd_conversations(2, 10)
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(stub, name: str, turns: list[dict]) -> None:
        try:
            for i, turn in enumerate(turns):
                ack = route(stub, "concurrent", turn, f"{name}{i}")
                with lock:
                    acked.append((ack.message_id, turn["content"]))
        except BaseException as exc:  # reported on the test thread
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(a, "a", first)),
        threading.Thread(target=writer, args=(b, "b", second)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(acked) == len(first) + len(second)
    reader = start("reader-2")
    assert sorted(stored_messages(reader, "concurrent")) == sorted(acked)
