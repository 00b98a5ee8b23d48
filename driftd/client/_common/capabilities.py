"""Unary RPCs of monitoring, behaviours and conversation routing (results are
the driftd.v1 response messages or :mod:`driftd.routing.types`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from driftd import convert
from driftd.client._common.calls import Call
from driftd.client._common.options import Time, health_modules
from driftd.client._common.parse import _as_vector, _choice, _time_arg
from driftd.errors import (
    FieldViolation,
    InvalidArgument,
)
from driftd.routing import convert as routing_convert
from driftd.routing import types as routing_types
from driftd.v1 import (
    behavior_pb2,
    monitor_pb2,
    routing_pb2,
)

EVENT_TYPES: dict[str, monitor_pb2.EventType.ValueType] = {
    "points_upserted": monitor_pb2.EVENT_TYPE_POINTS_UPSERTED,
    "points_deleted": monitor_pb2.EVENT_TYPE_POINTS_DELETED,
    "chapter_detected": monitor_pb2.EVENT_TYPE_CHAPTER_DETECTED,
    "drift_alarm": monitor_pb2.EVENT_TYPE_DRIFT_ALARM,
}
INTENTS: dict[str, behavior_pb2.BehaviorIntent.ValueType] = {
    name.removeprefix("BEHAVIOR_INTENT_").lower(): value
    for name, value in behavior_pb2.BehaviorIntent.items()
    if value
}
POLARITIES: dict[str, behavior_pb2.BehaviorPolarity.ValueType] = {
    "positive": behavior_pb2.BEHAVIOR_POLARITY_POSITIVE,
    "negative": behavior_pb2.BEHAVIOR_POLARITY_NEGATIVE,
}
BEHAVIOR_STATES: dict[str, behavior_pb2.BehaviorState.ValueType] = {
    "": behavior_pb2.BEHAVIOR_STATE_UNSPECIFIED,
    "active": behavior_pb2.BEHAVIOR_STATE_ACTIVE,
    "superseded": behavior_pb2.BEHAVIOR_STATE_SUPERSEDED,
}


def _window(bounds: tuple[Time, Time], series: str, field: str) -> monitor_pb2.Window:
    start, end = bounds
    return monitor_pb2.Window(
        time_range=convert.bounds_to_time_range(
            _time_arg(start, f"{field}.time_range.start_time"),
            _time_arg(end, f"{field}.time_range.end_time"),
        ),
        series=series,
    )


def compare_windows(
    name: str,
    window_a: tuple[Time, Time],
    window_b: tuple[Time, Time],
    *,
    series: str,
    series_b: str | None,
    permutations: int,
    alpha: float,
    max_points_per_window: int,
    seed: int,
) -> Call[monitor_pb2.CompareWindowsResponse]:
    request = monitor_pb2.CompareWindowsRequest(
        parent=convert.collection_name(name),
        window_a=_window(window_a, series, "window_a"),
        window_b=_window(window_b, series if series_b is None else series_b, "window_b"),
        permutations=permutations,
        alpha=alpha,
        max_points_per_window=max_points_per_window,
        seed=seed,
    )
    return Call("monitor.CompareWindows", request, lambda r: r)


def embedding_health(
    name: str,
    *,
    start: Time,
    end: Time,
    series: str,
    max_outliers: int,
    duplicate_similarity: float,
    max_points: int,
    seed: int,
) -> Call[monitor_pb2.EmbeddingHealthResponse]:
    request = monitor_pb2.EmbeddingHealthRequest(
        parent=convert.collection_name(name),
        window=_window((start, end), series, "window"),
        max_outliers=max_outliers,
        duplicate_similarity=duplicate_similarity,
        max_points=max_points,
        seed=seed,
    )
    return Call("monitor.EmbeddingHealth", request, lambda r: r)


def _rule_name(name: str, rule_id: str) -> str:
    return f"{convert.collection_name(name)}/driftRules/{rule_id}"


def create_drift_rule(
    name: str,
    *,
    window_seconds: float,
    rule_id: str,
    p_value_threshold: float,
    series: str,
    min_points: int,
) -> Call[monitor_pb2.DriftRule]:
    rule = monitor_pb2.DriftRule(
        p_value_threshold=p_value_threshold, series=series, min_points=min_points
    )
    rule.window.FromTimedelta(timedelta(seconds=window_seconds))
    request = monitor_pb2.CreateDriftRuleRequest(
        parent=convert.collection_name(name), drift_rule_id=rule_id, drift_rule=rule
    )
    return Call("monitor.CreateDriftRule", request, lambda r: r)


def get_drift_rule(name: str, rule_id: str) -> Call[monitor_pb2.DriftRule]:
    request = monitor_pb2.GetDriftRuleRequest(name=_rule_name(name, rule_id))
    return Call("monitor.GetDriftRule", request, lambda r: r)


def list_drift_rules_page(
    name: str, page_size: int, page_token: str
) -> Call[tuple[list[monitor_pb2.DriftRule], str]]:
    request = monitor_pb2.ListDriftRulesRequest(
        parent=convert.collection_name(name), page_size=page_size, page_token=page_token
    )
    return Call(
        "monitor.ListDriftRules", request, lambda r: (list(r.drift_rules), r.next_page_token)
    )


def delete_drift_rule(name: str, rule_id: str) -> Call[None]:
    request = monitor_pb2.DeleteDriftRuleRequest(name=_rule_name(name, rule_id))
    return Call("monitor.DeleteDriftRule", request, lambda _: None)


def watch_request(
    name: str, *, after_sequence: int, event_types: Sequence[str]
) -> monitor_pb2.WatchCollectionRequest:
    return monitor_pb2.WatchCollectionRequest(
        parent=convert.collection_name(name),
        after_sequence=after_sequence,
        event_types=[
            _choice(t, EVENT_TYPES, f"event_types[{i}]") for i, t in enumerate(event_types)
        ],
    )


def read_event(
    r: monitor_pb2.WatchCollectionResponse,
) -> tuple[monitor_pb2.WatchCollectionResponse]:
    return (r,)


def _policy(policy: Mapping[str, float] | None) -> behavior_pb2.BehaviorPolicy:
    try:
        fields: dict[str, Any] = dict(policy or {})
        return behavior_pb2.BehaviorPolicy(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"policy: {exc}", field_violations=[FieldViolation("policy", str(exc))]
        ) from exc


def _candidate(i: int, c: Mapping[str, Any]) -> behavior_pb2.BehaviorCandidate:
    at = f"candidates[{i}]"
    msg = behavior_pb2.BehaviorCandidate(
        intent=_choice(c.get("intent", ""), INTENTS, f"{at}.intent"),
        target=c.get("target", ""),
        context=c.get("context", ""),
        polarity=_choice(c.get("polarity", "positive"), POLARITIES, f"{at}.polarity"),
        credibility=c.get("credibility", 0.0),
    )
    if c.get("vector") is not None:
        vector = _as_vector(c["vector"])
        if vector is None:
            raise InvalidArgument(
                f"{at}.vector must be a flat list of numbers",
                field_violations=[FieldViolation(f"{at}.vector", "a flat list of numbers")],
            )
        msg.vector.values.extend(vector.tolist())
    elif c.get("text"):
        msg.text = c["text"]
    return msg


def process_behaviors(
    user_id: str,
    candidates: Sequence[Mapping[str, Any]],
    *,
    time: Time,
    policy: Mapping[str, float] | None,
) -> Call[behavior_pb2.ProcessBehaviorsResponse]:
    request = behavior_pb2.ProcessBehaviorsRequest(
        parent=f"users/{user_id}",
        candidates=[_candidate(i, c) for i, c in enumerate(candidates)],
        policy=_policy(policy),
    )
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    return Call("behaviors.ProcessBehaviors", request, lambda r: r)


def list_behaviors_page(
    user_id: str,
    *,
    state: str,
    time: Time,
    policy: Mapping[str, float] | None,
    page_size: int,
    page_token: str,
) -> Call[tuple[list[behavior_pb2.Behavior], str]]:
    request = behavior_pb2.ListBehaviorsRequest(
        parent=f"users/{user_id}",
        state=_choice(state, BEHAVIOR_STATES, "state"),
        policy=_policy(policy),
        page_size=page_size,
        page_token=page_token,
    )
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    return Call(
        "behaviors.ListBehaviors", request, lambda r: (list(r.behaviors), r.next_page_token)
    )


# --- conversation routing --------------------------------------------------------


def _conversation_name(conversation: str) -> str:
    """A conversation id or resource name as the resource name."""
    if conversation.startswith("conversations/"):
        return conversation
    return routing_convert.conversation_name(conversation)


def _branch_name(conversation: str, branch: str) -> str:
    """A branch id ("b2") of ``conversation``, or a branch resource name, as the
    resource name."""
    if branch.startswith("conversations/"):
        return branch
    return f"{_conversation_name(conversation)}/branches/{branch}"


def route_message(
    conversation: str,
    content: str,
    *,
    role: str,
    vector,
    time: Time,
    message_id: str,
    config: Mapping[str, float | int | bool] | None,
) -> Call[routing_types.RouteResult]:
    """RouteMessage. Raises InvalidArgument for an unknown role (INVALID_ROLE), a
    vector that is not a flat list of numbers, or an unknown config field."""
    if role not in routing_convert.ROLE_TO_PROTO:
        raise InvalidArgument(
            f"role must be one of {', '.join(routing_convert.ROLE_TO_PROTO)}, got {role!r}",
            reason="INVALID_ROLE",
            field_violations=[FieldViolation("role", "user or assistant")],
        )
    request = routing_pb2.RouteMessageRequest(
        conversation=_conversation_name(conversation),
        role=routing_convert.ROLE_TO_PROTO[role],
        content=content,
        message_id=message_id,
    )
    if vector is not None:
        values = _as_vector(vector)
        if values is None:
            raise InvalidArgument(
                "vector must be a flat list of numbers",
                field_violations=[FieldViolation("vector", "a flat list of numbers")],
            )
        request.vector.extend(values.tolist())
    at = _time_arg(time, "time")
    if at is not None:
        request.time.CopyFrom(convert.datetime_to_timestamp(at))
    if config:
        request.config.CopyFrom(routing_convert.config_to_proto(config))
    return Call("routing.RouteMessage", request, routing_convert.route_from_proto)


def list_branches_page(
    conversation: str, page_size: int, page_token: str
) -> Call[routing_types.BranchList]:
    request = routing_pb2.ListBranchesRequest(
        parent=_conversation_name(conversation), page_size=page_size, page_token=page_token
    )
    return Call("routing.ListBranches", request, routing_convert.branch_list_from_proto)


def branch_context(
    conversation: str, branch: str, max_messages: int
) -> Call[routing_types.BranchContext]:
    request = routing_pb2.GetBranchContextRequest(
        name=_branch_name(conversation, branch), max_messages=max_messages
    )
    return Call("routing.GetBranchContext", request, routing_convert.context_from_proto)


def extract_facts(conversation: str, branch: str) -> Call[routing_types.FactsResult]:
    request = routing_pb2.ExtractFactsRequest(name=_branch_name(conversation, branch))
    return Call("routing.ExtractFacts", request, routing_convert.facts_from_proto)


def health_check(service: str) -> Call[str]:
    health_pb2, _ = health_modules()
    return Call(
        "health.Check",
        health_pb2.HealthCheckRequest(service=service),
        lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
    )
