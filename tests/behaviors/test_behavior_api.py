"""BehaviorService end to end: a real server process over a real Chroma directory,
restarted to show that behaviours persist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from support import ServerProcess, error_details

from driftd import convert
from driftd.v1 import behavior_pb2, behavior_pb2_grpc

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PREFERENCE, HABIT = behavior_pb2.BEHAVIOR_INTENT_PREFERENCE, behavior_pb2.BEHAVIOR_INTENT_HABIT
NEGATIVE = behavior_pb2.BEHAVIOR_POLARITY_NEGATIVE
A = behavior_pb2
COFFEE = [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviors")
    server = ServerProcess(root / "chroma", root / "server.log").start()
    yield server
    server.stop()


def stub(server):
    return behavior_pb2_grpc.BehaviorServiceStub(grpc.insecure_channel(server.target))


def process(s, user, day, *candidates, **policy):
    request = A.ProcessBehaviorsRequest(
        parent=f"users/{user}", candidates=candidates, policy=A.BehaviorPolicy(**policy)
    )
    request.time.CopyFrom(convert.datetime_to_timestamp(T0 + timedelta(days=day)))
    return s.ProcessBehaviors(request).decisions


def cand(credibility, vector=COFFEE, polarity=A.BEHAVIOR_POLARITY_POSITIVE, target="coffee"):
    c = A.BehaviorCandidate(
        intent=PREFERENCE, target=target, credibility=credibility, polarity=polarity
    )
    c.vector.values.extend(vector)
    return c


def listed(s, user, day=None, state=0, **policy):
    request = A.ListBehaviorsRequest(
        parent=f"users/{user}", state=state, policy=A.BehaviorPolicy(**policy)
    )
    if day is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(T0 + timedelta(days=day)))
    return list(s.ListBehaviors(request).behaviors)


def test_decay_through_the_api(srv):
    s = stub(srv)
    (d,) = process(s, "decay", 0, cand(0.9))
    assert d.action == A.BEHAVIOR_ACTION_INSERT and d.new_behavior.startswith("users/decay/")
    eff = {day: listed(s, "decay", day)[0].effective_credibility for day in (180, 365, 730)}
    assert eff[180] == pytest.approx(0.45, abs=1e-3)  # one half-life (180 days, the default)
    assert eff[365] == pytest.approx(0.2207, abs=1e-3)
    assert eff[730] == pytest.approx(0.0541, abs=1e-3)
    # The figures (0.45 after a year, 0.22 after two) are one halving a year.
    at_365 = listed(s, "decay", 365, half_life_days=365)[0].effective_credibility
    at_730 = listed(s, "decay", 730, half_life_days=365)[0].effective_credibility
    assert (at_365, at_730) == (pytest.approx(0.45, abs=1e-3), pytest.approx(0.225, abs=1e-3))


def test_reinforce_supersede_ignore_and_history(srv):
    s = stub(srv)
    (ins,) = process(s, "ana", 0, cand(0.6))
    (again,) = process(s, "ana", 10, cand(0.5))
    assert again.action == A.BEHAVIOR_ACTION_REINFORCE and again.new_behavior == ins.new_behavior
    assert not again.drift_detected
    (b,) = listed(s, "ana", 10)
    assert b.seen_count == 2 and b.credibility > 0.6
    (weak,) = process(s, "ana", 20, cand(0.2, polarity=NEGATIVE))
    assert weak.action == A.BEHAVIOR_ACTION_IGNORE and weak.drift_detected
    assert weak.old_behavior == ins.new_behavior and weak.drift_signal_count == 1
    (strong,) = process(s, "ana", 30, cand(0.95, polarity=NEGATIVE))
    assert strong.action == A.BEHAVIOR_ACTION_SUPERSEDE and strong.drift_detected
    assert strong.effective_credibility < 0.95 and strong.similarity == pytest.approx(1.0)
    old, new = listed(s, "ana", 30)
    assert old.state == A.BEHAVIOR_STATE_SUPERSEDED and old.superseded_by == new.name
    assert new.supersedes == old.name and new.polarity == NEGATIVE
    assert len(old.drift_signal_times) == 1
    active = listed(s, "ana", 30, state=A.BEHAVIOR_STATE_ACTIVE)
    assert [b.name for b in active] == [new.name]
    # Another intent never conflicts.
    habit = A.BehaviorCandidate(intent=HABIT, target="coffee", credibility=0.5)
    habit.vector.values.extend(COFFEE)
    (d,) = process(s, "ana", 31, habit)
    assert d.action == A.BEHAVIOR_ACTION_INSERT


def test_three_weak_attempts_in_30_days_supersede_a_stale_behaviour_two_do_not(srv):
    s = stub(srv)
    for user, days, last in (
        ("three", (120, 125, 140), A.BEHAVIOR_ACTION_SUPERSEDE),
        ("two", (120, 125, 155), A.BEHAVIOR_ACTION_IGNORE),
    ):
        process(s, user, 0, cand(0.95))  # strong, then stale: ~0.6 at day 120
        actions = [process(s, user, day, cand(0.3, polarity=NEGATIVE))[0] for day in days]
        assert [a.action for a in actions[:2]] == [A.BEHAVIOR_ACTION_IGNORE] * 2
        assert all(a.effective_credibility > 0.3 for a in actions)
        assert actions[2].action == last, actions[2].reason
    assert [b.state for b in listed(s, "two")] == [A.BEHAVIOR_STATE_ACTIVE]


def test_text_candidates_conflict_by_meaning(srv):
    s = stub(srv)
    text = A.BehaviorCandidate(
        intent=PREFERENCE, target="tea", credibility=0.7, text="I love drinking green tea"
    )
    other = A.BehaviorCandidate(
        intent=PREFERENCE, target="hiking", credibility=0.7, text="I enjoy hiking in the mountains"
    )
    first, second = process(s, "texty", 0, text, other)
    assert (first.action, second.action) == (A.BEHAVIOR_ACTION_INSERT, A.BEHAVIOR_ACTION_INSERT)
    same = A.BehaviorCandidate(
        intent=PREFERENCE,
        target="green tea",
        credibility=0.9,
        text="I really love green tea",
        polarity=NEGATIVE,
    )
    (d,) = process(s, "texty", 1, same)
    assert d.old_behavior == first.new_behavior and d.similarity >= 0.55
    assert d.action == A.BEHAVIOR_ACTION_SUPERSEDE


@pytest.mark.parametrize(
    ("candidate", "reason", "field"),
    [
        (A.BehaviorCandidate(credibility=0.5, text="x"), "INVALID_FIELD", "candidates[1].intent"),
        (
            A.BehaviorCandidate(intent=PREFERENCE, credibility=1.5, text="x"),
            "LIMIT_EXCEEDED",
            "candidates[1].credibility",
        ),
        (
            A.BehaviorCandidate(intent=PREFERENCE, credibility=0.5),
            "MISSING_CONTENT",
            "candidates[1]",
        ),
        (
            A.BehaviorCandidate(intent=PREFERENCE, credibility=0.5, vector={"values": [0, 0]}),
            "INVALID_FIELD",
            "candidates[1].vector",
        ),
        (
            A.BehaviorCandidate(
                intent=PREFERENCE, credibility=0.5, vector={"values": [1, float("nan")]}
            ),
            "NON_FINITE_VECTOR",
            "candidates[1].vector",
        ),
    ],
)
def test_bad_candidates_write_nothing(srv, candidate, reason, field):
    s = stub(srv)
    with pytest.raises(grpc.RpcError) as exc:
        process(s, "careful", 0, cand(0.5), candidate)
    code, got_reason, _, fields = error_details(exc.value)
    assert (code, got_reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, reason, [field])
    assert listed(s, "careful") == []


def test_bad_names_policies_and_tokens(srv):
    s = stub(srv)
    for call, reason, field in (
        (
            lambda: s.ProcessBehaviors(A.ProcessBehaviorsRequest(parent="user/x")),
            "INVALID_NAME",
            "parent",
        ),
        (
            lambda: process(s, "x", 0, cand(0.5), half_life_days=-1),
            "LIMIT_EXCEEDED",
            "policy.half_life_days",
        ),
        (
            lambda: s.ProcessBehaviors(A.ProcessBehaviorsRequest(parent="users/x")),
            "INVALID_FIELD",
            "candidates",
        ),
        (
            lambda: s.ListBehaviors(A.ListBehaviorsRequest(parent="users/x", page_token="zz")),
            "INVALID_PAGE_TOKEN",
            "page_token",
        ),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert error_details(exc.value)[1:4:2] == (reason, [field])


def test_pages_and_restart(srv):
    s = stub(srv)
    for day in range(5):
        c = A.BehaviorCandidate(intent=HABIT, target=f"t{day}", credibility=0.5)
        c.vector.values.extend(np.eye(5)[day].tolist())
        process(s, "paged", day, c)
    first = s.ListBehaviors(A.ListBehaviorsRequest(parent="users/paged", page_size=3))
    rest = s.ListBehaviors(
        A.ListBehaviorsRequest(parent="users/paged", page_token=first.next_page_token)
    )
    assert len(first.behaviors) == 3 and len(rest.behaviors) == 2 and not rest.next_page_token
    names = [b.name for b in (*first.behaviors, *rest.behaviors)]
    srv.stop()
    srv.start()
    s = stub(srv)
    after = listed(s, "paged")
    assert [b.name for b in after] == names and [b.target for b in after] == [
        f"t{d}" for d in range(5)
    ]
    c = A.BehaviorCandidate(intent=HABIT, target="t0", credibility=0.5)
    c.vector.values.extend(np.eye(5)[0].tolist())
    (d,) = process(s, "paged", 6, c)
    assert d.action == A.BEHAVIOR_ACTION_REINFORCE and d.new_behavior == names[0]
