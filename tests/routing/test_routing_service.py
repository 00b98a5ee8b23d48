"""RoutingService on the wire: a real server process, real Chroma and the real
default embedding model; decisions, branches, contexts, facts, retries, config,
precise errors for bad input with nothing written, and a conversation that
continues across a SIGKILL."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
from support import ServerProcess, error_details

from driftd.routing import convert
from driftd.v1 import routing_pb2 as pb
from driftd.v1 import routing_pb2_grpc

USER, ASSISTANT = pb.MESSAGE_ROLE_USER, pb.MESSAGE_ROLE_ASSISTANT
STAY, BRANCH, ROUTE = pb.ROUTE_ACTION_STAY, pb.ROUTE_ACTION_BRANCH, pb.ROUTE_ACTION_ROUTE
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

#: A game, a hotel, back to the game: (role, text, expected action, expected branch).
TRIP = [
    (
        USER,
        "I want to buy two tickets for the Warriors game in San Francisco on March 4th.",
        BRANCH,
        "b0",
    ),
    (
        ASSISTANT,
        "The Warriors play at Chase Center on March 4th at 7:30 pm. Tickets are $85 each.",
        STAY,
        "b0",
    ),
    (USER, "Great, what time does the game start?", STAY, "b0"),
    (ASSISTANT, "The game starts at 7:30 pm.", STAY, "b0"),
    (USER, "Thanks. I also need a hotel room near the arena for two nights.", BRANCH, "b1"),
    (ASSISTANT, "The Hyatt Regency has a room for $220 per night. Shall I book it?", STAY, "b1"),
    (USER, "Yes, book the hotel room please.", STAY, "b1"),
    (ASSISTANT, "Your hotel room is booked.", STAY, "b1"),
    (
        USER,
        "Now back to the game: please purchase the two tickets for the Warriors game.",
        ROUTE,
        "b0",
    ),
    (ASSISTANT, "Done, your two tickets for the Warriors game are confirmed.", STAY, "b0"),
]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield routing_pb2_grpc.RoutingServiceStub(channel)


def send(stub, conversation, role, content="", **fields):
    return stub.RouteMessage(
        pb.RouteMessageRequest(
            conversation=f"conversations/{conversation}", role=role, content=content, **fields
        ),
        timeout=60,
    )


@pytest.fixture(scope="module")
def trip(stub):
    """The TRIP conversation, routed once: its responses."""
    return [send(stub, "trip", role, text) for role, text, _, _ in TRIP]


def test_routes_a_topic_shift_and_a_return(trip):
    got = [(r.action, r.branch.rpartition("/")[2]) for r in trip]
    assert got == [(action, branch) for _, _, action, branch in TRIP]
    first, shift, back = trip[0], trip[4], trip[8]
    assert first.is_new_branch and first.previous_branch == ""
    assert first.drift_action == pb.DRIFT_ACTION_BRANCH_NEW_CLUSTER
    assert shift.is_new_branch and shift.previous_branch == "conversations/trip/branches/b0"
    assert back.drift_action == pb.DRIFT_ACTION_ROUTE and not back.is_new_branch
    assert back.previous_branch == "conversations/trip/branches/b1"
    assert "game" in back.branch_topic and "hotel" in shift.branch_topic
    assert [r.message_id for r in trip] == [f"m{i}" for i in range(len(TRIP))]
    for r in trip:
        assert r.reason and 0.0 <= r.confidence <= 1.0 and -1.0 <= r.similarity <= 1.0


def test_lists_branches_in_pages(stub, trip):
    resp = stub.ListBranches(pb.ListBranchesRequest(parent="conversations/trip"), timeout=30)
    assert [b.name for b in resp.branches] == [
        "conversations/trip/branches/b0",
        "conversations/trip/branches/b1",
    ]
    assert [b.message_count for b in resp.branches] == [6, 4]
    assert [b.current for b in resp.branches] == [True, False]
    assert resp.current_branch == "conversations/trip/branches/b0"
    assert resp.branches[1].parent_branch == "conversations/trip/branches/b0"
    assert resp.branches[0].update_time.ToDatetime() >= resp.branches[1].update_time.ToDatetime()
    page = stub.ListBranches(
        pb.ListBranchesRequest(parent="conversations/trip", page_size=1), timeout=30
    )
    assert len(page.branches) == 1 and page.next_page_token
    rest = stub.ListBranches(
        pb.ListBranchesRequest(
            parent="conversations/trip", page_size=1, page_token=page.next_page_token
        ),
        timeout=30,
    )
    assert [b.name for b in rest.branches] == ["conversations/trip/branches/b1"]
    assert rest.next_page_token == ""


def test_branch_context_and_facts(stub, trip):
    ctx = stub.GetBranchContext(
        pb.GetBranchContextRequest(name="conversations/trip/branches/b0"), timeout=30
    )
    assert [m.content for m in ctx.messages] == [TRIP[i][1] for i in (0, 1, 2, 3, 8, 9)]
    assert [m.index for m in ctx.messages] == [0, 1, 2, 3, 8, 9]
    assert ctx.messages[4].action == ROUTE and ctx.messages[1].role == ASSISTANT
    assert [(f.branch.rpartition("/")[2], f.current) for f in ctx.facts] == [
        ("b0", True),
        ("b1", False),
    ]
    game = {(f.key, f.value) for f in ctx.facts[0].facts}
    assert {("date", "March 4th"), ("time", "7:30 pm"), ("amount", "$85")} <= game
    hotel = {(f.key, f.value) for f in ctx.facts[1].facts}
    assert ("amount", "$220") in hotel and ("nights", "2") in hotel
    latest = stub.GetBranchContext(
        pb.GetBranchContextRequest(name="conversations/trip/branches/b0", max_messages=2),
        timeout=30,
    )
    assert [m.index for m in latest.messages] == [8, 9]

    extracted = stub.ExtractFacts(
        pb.ExtractFactsRequest(name="conversations/trip/branches/b1"), timeout=30
    )
    assert extracted.extractor == "rules" and extracted.message_count == 4
    assert [(f.key, f.value) for f in extracted.facts] == [
        (f.key, f.value) for f in ctx.facts[1].facts
    ]


def test_retried_message_id_returns_the_stored_decision(stub):
    first = send(stub, "retry", USER, "Find me a vegan restaurant in Oakland.", message_id="c-1")
    again = send(stub, "retry", USER, "Find me a vegan restaurant in Oakland.", message_id="c-1")
    assert again == first and first.message_id == "c-1"
    nxt = send(stub, "retry", ASSISTANT, "Golden Lotus is a vegan place in Oakland.")
    assert nxt.message_id == "m1"
    branches = stub.ListBranches(pb.ListBranchesRequest(parent="conversations/retry"), timeout=30)
    assert branches.branches[0].message_count == 2


def test_vectors_and_per_conversation_config(stub):
    x = np.zeros(384, dtype=np.float32)
    x[0] = 1.0
    first = send(stub, "cfg", USER, "weather in Paris", vector=list(x))
    assert first.action == BRANCH
    config = convert.config_to_proto({"stay_threshold": 1.0, "short_message_boost": 0.0})
    shifted = send(stub, "cfg", USER, "weather tomorrow in Paris", vector=list(x), config=config)
    assert shifted.action == BRANCH and "< 1" in shifted.reason
    # The config stays with the conversation.
    again = send(stub, "cfg", USER, "weather next week in Paris", vector=list(x))
    assert again.action == BRANCH and again.branch == "conversations/cfg/branches/b2"


def assert_rejected(call, code, reason, fields, **metadata):
    with pytest.raises(grpc.RpcError) as exc:
        call()
    got_code, got_reason, got_meta, got_fields = error_details(exc.value)
    assert (got_code, got_reason, got_fields) == (code, reason, fields), exc.value.details()
    for key, value in metadata.items():
        assert got_meta[key] == str(value)


BAD_MESSAGES = [
    ("empty content", {"role": USER, "content": ""}, "MISSING_CONTENT", ["content"]),
    ("blank content", {"role": USER, "content": "  \n"}, "MISSING_CONTENT", ["content"]),
    ("unset role", {"role": 0, "content": "hi there"}, "INVALID_ROLE", ["role"]),
    ("unknown role", {"role": 7, "content": "hi there"}, "INVALID_ROLE", ["role"]),
    ("short vector", {"role": USER, "vector": [0.1, 0.2]}, "DIMENSION_MISMATCH", ["vector"]),
    ("NaN", {"role": USER, "vector": [math.nan] * 384}, "NON_FINITE_VECTOR", ["vector"]),
    ("zero vector", {"role": USER, "vector": [0.0] * 384}, "INVALID_FIELD", ["vector"]),
    (
        "bad message id",
        {"role": USER, "content": "hi", "message_id": "m7"},
        "INVALID_FIELD",
        ["message_id"],
    ),
    (
        "bad config",
        {"role": USER, "content": "hi", "config": pb.RoutingConfig(route_candidates=0)},
        "LIMIT_EXCEEDED",
        ["config.route_candidates"],
    ),
]


@pytest.mark.parametrize(
    ("fields", "reason", "violations"),
    [case[1:] for case in BAD_MESSAGES],
    ids=[case[0] for case in BAD_MESSAGES],
)
def test_bad_messages_are_rejected_and_write_nothing(stub, trip, fields, reason, violations):
    for conversation in ("fresh", "trip"):
        assert_rejected(
            lambda c=conversation: stub.RouteMessage(
                pb.RouteMessageRequest(conversation=f"conversations/{c}", **fields), timeout=30
            ),
            INVALID,
            reason,
            violations,
        )
    assert_rejected(
        lambda: stub.ListBranches(pb.ListBranchesRequest(parent="conversations/fresh")),
        NOT_FOUND,
        "CONVERSATION_NOT_FOUND",
        [],
        conversation="fresh",
    )
    branches = stub.ListBranches(pb.ListBranchesRequest(parent="conversations/trip"), timeout=30)
    assert sum(b.message_count for b in branches.branches) == len(TRIP)


def test_dimension_mismatch_says_what_is_expected(stub):
    assert_rejected(
        lambda: send(stub, "dims", USER, vector=[1.0] * 385),
        INVALID,
        "DIMENSION_MISMATCH",
        ["vector"],
        expected=384,
        actual=385,
    )


@pytest.mark.parametrize(
    ("call", "code", "reason", "fields"),
    [
        (
            lambda s: s.RouteMessage(pb.RouteMessageRequest(conversation="chats/x", role=USER)),
            INVALID,
            "INVALID_NAME",
            ["conversation"],
        ),
        (
            lambda s: s.ListBranches(pb.ListBranchesRequest(parent="conversations/a/b")),
            INVALID,
            "INVALID_NAME",
            ["parent"],
        ),
        (
            lambda s: s.ListBranches(
                pb.ListBranchesRequest(parent="conversations/trip", page_token="zz")
            ),
            INVALID,
            "INVALID_PAGE_TOKEN",
            ["page_token"],
        ),
        (
            lambda s: s.GetBranchContext(
                pb.GetBranchContextRequest(name="conversations/trip/branches/b9")
            ),
            NOT_FOUND,
            "BRANCH_NOT_FOUND",
            ["name"],
        ),
        (
            lambda s: s.GetBranchContext(
                pb.GetBranchContextRequest(name="conversations/nobody/branches/b0")
            ),
            NOT_FOUND,
            "CONVERSATION_NOT_FOUND",
            [],
        ),
        (
            lambda s: s.ExtractFacts(pb.ExtractFactsRequest(name="conversations/trip/b0")),
            INVALID,
            "INVALID_NAME",
            ["name"],
        ),
        (
            lambda s: s.GetBranchContext(
                pb.GetBranchContextRequest(name="conversations/trip/branches/b0", max_messages=-1)
            ),
            INVALID,
            "LIMIT_EXCEEDED",
            ["max_messages"],
        ),
    ],
    ids=[
        "bad conversation name",
        "bad parent",
        "bad page token",
        "unknown branch",
        "unknown conversation",
        "bad branch name",
        "negative max_messages",
    ],
)
def test_bad_names_and_unknown_resources(stub, trip, call, code, reason, fields):
    assert_rejected(lambda: call(stub), code, reason, fields)


@pytest.fixture
def crashable(tmp_path):
    srv = ServerProcess(tmp_path / "chroma", tmp_path / "server.log").start()
    yield srv
    srv.stop()


def test_conversation_continues_after_sigkill(crashable):
    """Acknowledged messages are replayed from the write-ahead log into Chroma,
    and the conversation goes on as if the server had never stopped."""
    with grpc.insecure_channel(crashable.target) as channel:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        before = [send(stub, "trip", role, text) for role, text, _, _ in TRIP[:5]]
    crashable.kill()  # right after the last ack: no drain, no flush

    crashable.start()
    with grpc.insecure_channel(crashable.target) as channel:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        listed = stub.ListBranches(pb.ListBranchesRequest(parent="conversations/trip"), timeout=60)
        assert [(b.message_count, b.current) for b in listed.branches] == [(4, False), (1, True)]
        after = [send(stub, "trip", role, text) for role, text, _, _ in TRIP[5:]]
        got = [(r.action, r.branch.rpartition("/")[2]) for r in before + after]
        assert got == [(action, branch) for _, _, action, branch in TRIP]
        assert after[0].message_id == "m5"
        ctx = stub.GetBranchContext(
            pb.GetBranchContextRequest(name="conversations/trip/branches/b0"), timeout=60
        )
        assert [m.index for m in ctx.messages] == [0, 1, 2, 3, 8, 9]


def test_python_clients(server):
    from driftd.client import AsyncDriftClient, DriftClient
    from driftd.errors import InvalidArgument, NotFound

    with DriftClient(server.target, timeout=60) as db:
        got = [
            db.route("client-sync", text, role="user" if role == USER else "assistant")
            for role, text, _, _ in TRIP
        ]
        assert [(r.action, r.branch_id) for r in got] == [
            (convert.ACTION_FROM_PROTO[action], branch) for _, _, action, branch in TRIP
        ]
        assert got[8].previous_branch_id == "b1" and got[8].conversation_id == "client-sync"
        branches = db.branches("conversations/client-sync", page_size=1)
        assert [(b.branch_id, b.message_count, b.current) for b in branches] == [
            ("b0", 6, True),
            ("b1", 4, False),
        ]
        current = db.context("client-sync", max_messages=3)  # the current branch: b0
        assert current.branch.branch_id == "b0" and [m.index for m in current.messages] == [3, 8, 9]
        assert [bf.current for bf in current.facts] == [True, False]
        facts = db.facts("client-sync", "b1")
        assert facts.extractor == "rules" and ("amount", "$220") in {
            (f.key, f.value) for f in facts.facts
        }
        with pytest.raises(InvalidArgument) as exc:
            db.route("client-sync", "hello", role="system")
        assert exc.value.reason == "INVALID_ROLE"
        with pytest.raises(NotFound) as exc:
            db.context("client-sync", "b7")
        assert exc.value.reason == "BRANCH_NOT_FOUND"

    async def run():
        async with AsyncDriftClient(server.target, timeout=60) as adb:
            first = await adb.route(
                "client-aio", "Find me a dentist in Berkeley.", time="2024-05-01T09:00:00Z"
            )
            listed = await adb.branches("client-aio")
            ctx = await adb.context("client-aio", first.branch_id)
            facts = await adb.facts("client-aio", "conversations/client-aio/branches/b0")
            return first, listed, ctx, facts

    first, listed, ctx, facts = asyncio.run(run())
    assert first.action == "BRANCH" and [b.branch_id for b in listed] == ["b0"]
    assert ctx.messages[0].time.isoformat() == "2024-05-01T09:00:00+00:00"
    assert ("location", "Berkeley") in {(f.key, f.value) for f in facts.facts}
