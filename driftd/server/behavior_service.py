"""BehaviorService: users' behaviours with decaying credibility."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
from google.protobuf import timestamp_pb2

from driftd import convert
from driftd.behaviors import rules
from driftd.behaviors.store import (
    BehaviorStore,
    CandidateInput,
    behavior_name,
    check_policy,
    parse_user_name,
)
from driftd.errors import FieldViolation, InvalidArgument
from driftd.server.status import maps_errors
from driftd.v1 import behavior_pb2, behavior_pb2_grpc

#: ListBehaviors' page size when the request says 0.
DEFAULT_PAGE_SIZE = 100

INTENT_FROM_PROTO = {
    behavior_pb2.BEHAVIOR_INTENT_PREFERENCE: "preference",
    behavior_pb2.BEHAVIOR_INTENT_HABIT: "habit",
    behavior_pb2.BEHAVIOR_INTENT_SKILL: "skill",
    behavior_pb2.BEHAVIOR_INTENT_GOAL: "goal",
    behavior_pb2.BEHAVIOR_INTENT_BELIEF: "belief",
}
INTENT_TO_PROTO = {v: k for k, v in INTENT_FROM_PROTO.items()}
POLARITY_FROM_PROTO = {
    behavior_pb2.BEHAVIOR_POLARITY_UNSPECIFIED: "positive",
    behavior_pb2.BEHAVIOR_POLARITY_POSITIVE: "positive",
    behavior_pb2.BEHAVIOR_POLARITY_NEGATIVE: "negative",
}
POLARITY_TO_PROTO = {
    "positive": behavior_pb2.BEHAVIOR_POLARITY_POSITIVE,
    "negative": behavior_pb2.BEHAVIOR_POLARITY_NEGATIVE,
}
STATE_FROM_PROTO = {
    behavior_pb2.BEHAVIOR_STATE_UNSPECIFIED: "",
    behavior_pb2.BEHAVIOR_STATE_ACTIVE: "active",
    behavior_pb2.BEHAVIOR_STATE_SUPERSEDED: "superseded",
}
STATE_TO_PROTO = {v: k for k, v in STATE_FROM_PROTO.items() if v}
ACTION_TO_PROTO = {
    rules.INSERT: behavior_pb2.BEHAVIOR_ACTION_INSERT,
    rules.REINFORCE: behavior_pb2.BEHAVIOR_ACTION_REINFORCE,
    rules.SUPERSEDE: behavior_pb2.BEHAVIOR_ACTION_SUPERSEDE,
    rules.IGNORE: behavior_pb2.BEHAVIOR_ACTION_IGNORE,
}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    return convert.datetime_to_timestamp(datetime.fromtimestamp(seconds, tz=UTC))


def policy_from_proto(p: behavior_pb2.BehaviorPolicy) -> rules.Policy:
    """A BehaviorPolicy with 0 fields replaced by the defaults, validated.

    Raises InvalidArgument(LIMIT_EXCEEDED) naming ``policy.{field}``.
    """
    d = rules.Policy()
    return check_policy(
        rules.Policy(
            half_life_days=p.half_life_days or d.half_life_days,
            conflict_similarity=p.conflict_similarity or d.conflict_similarity,
            identical_similarity=p.identical_similarity or d.identical_similarity,
            signal_window_days=p.signal_window_days or d.signal_window_days,
            signals_to_supersede=p.signals_to_supersede or d.signals_to_supersede,
        )
    )


def _time(request) -> float:
    """The request's ``time`` in epoch seconds; now when unset.

    Raises InvalidArgument(INVALID_TIMESTAMP) for a Timestamp out of range.
    """
    try:
        t = convert.optional_time(request, "time")
    except (OverflowError, ValueError) as exc:
        raise InvalidArgument(
            "time is out of range",
            reason="INVALID_TIMESTAMP",
            field_violations=[FieldViolation("time", "out of range")],
        ) from exc
    return t.timestamp() if t is not None else time.time()


def _candidate(i: int, c: behavior_pb2.BehaviorCandidate) -> CandidateInput:
    if c.intent not in INTENT_FROM_PROTO:
        raise InvalidArgument(
            f"candidates[{i}].intent is required (PREFERENCE, HABIT, SKILL, GOAL or BELIEF)",
            field_violations=[FieldViolation(f"candidates[{i}].intent", "required")],
        )
    if c.polarity not in POLARITY_FROM_PROTO:
        raise InvalidArgument(
            f"candidates[{i}].polarity {c.polarity} is not a BehaviorPolarity",
            field_violations=[FieldViolation(f"candidates[{i}].polarity", "unknown value")],
        )
    which = c.WhichOneof("content")
    return CandidateInput(
        intent=INTENT_FROM_PROTO[c.intent],
        target=c.target,
        context=c.context,
        polarity=POLARITY_FROM_PROTO[c.polarity],
        credibility=c.credibility,
        vector=np.asarray(c.vector.values, dtype=np.float32) if which == "vector" else None,
        text=c.text if which == "text" else None,
    )


def behavior_to_proto(b: rules.Behavior, at: float, policy: rules.Policy) -> behavior_pb2.Behavior:
    msg = behavior_pb2.Behavior(
        name=behavior_name(b.user_id, b.id),
        intent=INTENT_TO_PROTO[b.intent],
        target=b.target,
        context=b.context,
        polarity=POLARITY_TO_PROTO[b.polarity],
        text=b.text,
        credibility=b.credibility,
        effective_credibility=rules.effective_credibility(b, at, policy),
        state=STATE_TO_PROTO[b.state],
        create_time=_timestamp(b.create_time),
        last_seen_time=_timestamp(b.last_seen_time),
        seen_count=b.seen_count,
        superseded_by=behavior_name(b.user_id, b.superseded_by),
        supersedes=behavior_name(b.user_id, b.supersedes),
        drift_signal_times=[_timestamp(s.time) for s in b.signals],
    )
    if b.supersede_time is not None:
        msg.supersede_time.CopyFrom(_timestamp(b.supersede_time))
    return msg


class BehaviorServiceServicer(behavior_pb2_grpc.BehaviorServiceServicer):
    """Translates BehaviorService RPCs to :class:`~driftd.behaviors.store.BehaviorStore`
    calls; errors map via :func:`driftd.server.status.maps_errors`."""

    def __init__(self, store: BehaviorStore) -> None:
        self._store = store

    @maps_errors
    async def ProcessBehaviors(self, request, context) -> behavior_pb2.ProcessBehaviorsResponse:
        user_id = parse_user_name(request.parent)
        policy = policy_from_proto(request.policy)
        at = _time(request)
        candidates = [_candidate(i, c) for i, c in enumerate(request.candidates)]
        decisions = await self._store.process(user_id, candidates, at=at, policy=policy)
        return behavior_pb2.ProcessBehaviorsResponse(
            decisions=[
                behavior_pb2.BehaviorDecision(
                    index=d.index,
                    action=ACTION_TO_PROTO[d.action],
                    reason=d.reason,
                    old_behavior=behavior_name(user_id, d.old_id),
                    new_behavior=behavior_name(user_id, d.new_id),
                    effective_credibility=d.effective_credibility,
                    similarity=d.similarity,
                    drift_detected=d.drift_detected,
                    drift_signal_count=d.signal_count,
                )
                for d in decisions
            ]
        )

    @maps_errors
    async def ListBehaviors(self, request, context) -> behavior_pb2.ListBehaviorsResponse:
        user_id = parse_user_name(request.parent)
        if request.state not in STATE_FROM_PROTO:
            raise InvalidArgument(
                f"state {request.state} is not a BehaviorState",
                field_violations=[FieldViolation("state", "unknown value")],
            )
        policy = policy_from_proto(request.policy)
        at = _time(request)
        found, token = await self._store.list(
            user_id,
            state=STATE_FROM_PROTO[request.state],
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            page_token=request.page_token,
        )
        return behavior_pb2.ListBehaviorsResponse(
            behaviors=[behavior_to_proto(b, at, policy) for b in found], next_page_token=token
        )
