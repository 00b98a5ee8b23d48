"""Accuracy on real dialogues: held-out Schema-Guided Dialogue conversations
(from the benchmark's report split, never used for calibration or for fitting
the topic projection) routed with the shipped defaults beat driftos-embed's
rule on the same embeddings by the issue's margin and find ROUTEs at the
issue's operating point; the server decides exactly as the offline router."""

from __future__ import annotations

import grpc
import pytest

from bench.routing import evaluate as ev
from bench.routing.baseline import BaselineConfig
from driftd.routing import convert
from driftd.routing.router import RoutingConfig
from driftd.v1 import routing_pb2, routing_pb2_grpc

SLICE = 40  # conversations sent through the server, about 800 turns
OFFLINE = 200  # conversations scored offline, about 4,200 turns and 39 ROUTEs

pytestmark = pytest.mark.skipif(not ev.DATA.exists(), reason=f"{ev.DATA} is not there")


def test_beats_the_baseline_and_finds_returns_on_held_out_dialogues(server):
    _, report = ev.split(ev.load(), report=1000, calibration=1500)
    held_out = report[:SLICE]
    actions = []
    with grpc.insecure_channel(server.target) as channel:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        for conv in held_out:
            for turn in conv.turns:
                resp = stub.RouteMessage(
                    routing_pb2.RouteMessageRequest(
                        conversation=f"conversations/accuracy-{conv.id}",
                        role=convert.ROLE_TO_PROTO[turn.role],
                        content=turn.content,
                    ),
                    timeout=60,
                )
                actions.append(convert.ACTION_FROM_PROTO[resp.action])
    vectors = ev.embed(report[:OFFLINE])
    # The server and the offline router agree exactly on the same embeddings.
    assert actions == ev.replay(held_out, vectors[:SLICE], RoutingConfig())
    truth = ev.gold(report[:OFFLINE])
    ours = ev.score(truth, ev.replay(report[:OFFLINE], vectors, RoutingConfig()))
    baseline = ev.score(truth, ev.replay_baseline(report[:OFFLINE], vectors, BaselineConfig()))
    assert ours.macro_f1 >= baseline.macro_f1 + 0.10, (ours, baseline)
    assert ours.recall["BRANCH"] >= 0.6 and ours.precision["STAY"] >= 0.9, ours
    assert ours.recall["ROUTE"] >= 0.6 and ours.precision["ROUTE"] >= 0.5, ours
