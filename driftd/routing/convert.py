"""Resource names and proto <-> value-type conversions of RoutingService, used by
the servicer and by the Python client. Imports only protobuf and the generated
modules (no grpc, numpy or chromadb).

Names: ``conversations/{conversation_id}`` and
``conversations/{conversation_id}/branches/{branch_id}``; conversation ids are
1-128 characters of [A-Za-z0-9._-] starting with a letter or digit, branch ids
are ``b0``, ``b1``, ... in creation order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from driftd.convert import datetime_to_timestamp, timestamp_to_datetime
from driftd.errors import FieldViolation, InvalidArgument
from driftd.routing import types
from driftd.v1 import routing_pb2

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BRANCH_ID = re.compile(r"^b(0|[1-9][0-9]{0,8})$")
_CONVERSATION_NAME = re.compile(r"^conversations/([^/]+)$")
_BRANCH_NAME = re.compile(r"^conversations/([^/]+)/branches/([^/]+)$")

ROLE_TO_PROTO: dict[types.Role, routing_pb2.MessageRole.ValueType] = {
    "user": routing_pb2.MESSAGE_ROLE_USER,
    "assistant": routing_pb2.MESSAGE_ROLE_ASSISTANT,
}
ROLE_FROM_PROTO: dict[routing_pb2.MessageRole.ValueType, types.Role] = {
    v: k for k, v in ROLE_TO_PROTO.items()
}
ACTION_TO_PROTO: dict[types.Action, routing_pb2.RouteAction.ValueType] = {
    "STAY": routing_pb2.ROUTE_ACTION_STAY,
    "BRANCH": routing_pb2.ROUTE_ACTION_BRANCH,
    "ROUTE": routing_pb2.ROUTE_ACTION_ROUTE,
}
ACTION_FROM_PROTO: dict[routing_pb2.RouteAction.ValueType, types.Action] = {
    v: k for k, v in ACTION_TO_PROTO.items()
}
DRIFT_TO_PROTO: dict[types.DriftAction, routing_pb2.DriftAction.ValueType] = {
    "STAY": routing_pb2.DRIFT_ACTION_STAY,
    "BRANCH_SAME_CLUSTER": routing_pb2.DRIFT_ACTION_BRANCH_SAME_CLUSTER,
    "BRANCH_NEW_CLUSTER": routing_pb2.DRIFT_ACTION_BRANCH_NEW_CLUSTER,
    "ROUTE": routing_pb2.DRIFT_ACTION_ROUTE,
}
DRIFT_FROM_PROTO: dict[routing_pb2.DriftAction.ValueType, types.DriftAction] = {
    v: k for k, v in DRIFT_TO_PROTO.items()
}
#: RoutingConfig's fields, in proto order.
CONFIG_FIELDS = tuple(f.name for f in routing_pb2.RoutingConfig.DESCRIPTOR.fields)


# --- names -------------------------------------------------------------------


def check_conversation_id(cid: str, field: str = "conversation") -> str:
    """Returns ``cid`` if valid; raises InvalidArgument(INVALID_NAME) otherwise."""
    if not isinstance(cid, str) or not CONVERSATION_ID.match(cid):
        raise InvalidArgument(
            f"invalid conversation id {cid!r}: use 1-128 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")],
        )
    return cid


def conversation_name(cid: str) -> str:
    return f"conversations/{cid}"


def branch_name(cid: str, branch_id: str) -> str:
    return f"conversations/{cid}/branches/{branch_id}"


def parse_conversation_name(name: str, field: str = "conversation") -> str:
    """``"conversations/{id}"`` -> ``id``.

    Raises:
        InvalidArgument(INVALID_NAME): not of that form or an invalid id.
    """
    m = _CONVERSATION_NAME.match(name or "")
    if m is None:
        raise InvalidArgument(
            f"{field} must be 'conversations/{{conversation_id}}', got {name!r}",
            reason="INVALID_NAME",
            field_violations=[FieldViolation(field, "must be 'conversations/{conversation_id}'")],
        )
    return check_conversation_id(m.group(1), field)


def parse_branch_name(name: str, field: str = "name") -> tuple[str, str]:
    """``"conversations/{cid}/branches/{bid}"`` -> ``(cid, bid)``.

    Raises:
        InvalidArgument(INVALID_NAME): not of that form, or a bad id.
    """
    m = _BRANCH_NAME.match(name or "")
    if m is None or not BRANCH_ID.match(m.group(2)):
        raise InvalidArgument(
            f"{field} must be 'conversations/{{conversation_id}}/branches/b{{n}}', got {name!r}",
            reason="INVALID_NAME",
            field_violations=[
                FieldViolation(field, "must be 'conversations/{conversation_id}/branches/b{n}'")
            ],
        )
    return check_conversation_id(m.group(1), field), m.group(2)


# --- config ------------------------------------------------------------------


def config_to_proto(changes: Mapping[str, float | int | bool] | None) -> routing_pb2.RoutingConfig:
    """A RoutingConfig setting exactly the given fields.

    Raises:
        InvalidArgument: an unknown field name or a value of the wrong type.
    """
    msg = routing_pb2.RoutingConfig()
    for key, value in (changes or {}).items():
        if key not in CONFIG_FIELDS:
            raise InvalidArgument(
                f"unknown routing config field {key!r}; known: {', '.join(CONFIG_FIELDS)}",
                field_violations=[FieldViolation(f"config.{key}", "unknown field")],
            )
        try:
            setattr(msg, key, value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"config.{key}: {exc}",
                field_violations=[FieldViolation(f"config.{key}", "wrong type")],
            ) from exc
    return msg


def config_from_proto(msg: routing_pb2.RoutingConfig) -> dict[str, float | int | bool]:
    """The fields set in ``msg`` as a dict."""
    return {f.name: value for f, value in msg.ListFields() if f.name in CONFIG_FIELDS}


# --- results -----------------------------------------------------------------


def route_to_proto(r: types.RouteResult) -> routing_pb2.RouteMessageResponse:
    return routing_pb2.RouteMessageResponse(
        action=ACTION_TO_PROTO[r.action],
        drift_action=DRIFT_TO_PROTO[r.drift_action],
        branch=branch_name(r.conversation_id, r.branch_id),
        branch_topic=r.branch_topic,
        similarity=r.similarity,
        confidence=r.confidence,
        reason=r.reason,
        is_new_branch=r.is_new_branch,
        message_id=r.message_id,
        previous_branch=(
            branch_name(r.conversation_id, r.previous_branch_id) if r.previous_branch_id else ""
        ),
    )


def route_from_proto(msg: routing_pb2.RouteMessageResponse) -> types.RouteResult:
    cid, bid = parse_branch_name(msg.branch, "branch")
    return types.RouteResult(
        conversation_id=cid,
        action=ACTION_FROM_PROTO[msg.action],
        drift_action=DRIFT_FROM_PROTO[msg.drift_action],
        branch_id=bid,
        branch_topic=msg.branch_topic,
        similarity=msg.similarity,
        confidence=msg.confidence,
        reason=msg.reason,
        is_new_branch=msg.is_new_branch,
        message_id=msg.message_id,
        previous_branch_id=(
            parse_branch_name(msg.previous_branch, "previous_branch")[1]
            if msg.previous_branch
            else ""
        ),
    )


def branch_to_proto(b: types.BranchInfo) -> routing_pb2.Branch:
    return routing_pb2.Branch(
        name=branch_name(b.conversation_id, b.branch_id),
        topic=b.topic,
        message_count=b.message_count,
        create_time=datetime_to_timestamp(b.create_time),
        update_time=datetime_to_timestamp(b.update_time),
        parent_branch=(
            branch_name(b.conversation_id, b.parent_branch_id) if b.parent_branch_id else ""
        ),
        cluster=b.cluster,
        current=b.current,
    )


def branch_from_proto(msg: routing_pb2.Branch) -> types.BranchInfo:
    cid, bid = parse_branch_name(msg.name)
    return types.BranchInfo(
        conversation_id=cid,
        branch_id=bid,
        topic=msg.topic,
        message_count=msg.message_count,
        create_time=timestamp_to_datetime(msg.create_time),
        update_time=timestamp_to_datetime(msg.update_time),
        parent_branch_id=(
            parse_branch_name(msg.parent_branch, "parent_branch")[1] if msg.parent_branch else ""
        ),
        cluster=msg.cluster,
        current=msg.current,
    )


def branch_list_to_proto(cid: str, page: types.BranchList) -> routing_pb2.ListBranchesResponse:
    return routing_pb2.ListBranchesResponse(
        branches=[branch_to_proto(b) for b in page.branches],
        next_page_token=page.next_page_token,
        current_branch=branch_name(cid, page.current_branch_id),
    )


def branch_list_from_proto(msg: routing_pb2.ListBranchesResponse) -> types.BranchList:
    return types.BranchList(
        branches=tuple(branch_from_proto(b) for b in msg.branches),
        next_page_token=msg.next_page_token,
        current_branch_id=parse_branch_name(msg.current_branch, "current_branch")[1],
    )


def fact_to_proto(f: types.Fact) -> routing_pb2.Fact:
    return routing_pb2.Fact(
        key=f.key, value=f.value, confidence=f.confidence, source_message_id=f.source_message_id
    )


def fact_from_proto(msg: routing_pb2.Fact) -> types.Fact:
    return types.Fact(msg.key, msg.value, msg.confidence, msg.source_message_id)


def context_to_proto(c: types.BranchContext) -> routing_pb2.GetBranchContextResponse:
    cid = c.branch.conversation_id
    return routing_pb2.GetBranchContextResponse(
        branch=branch_to_proto(c.branch),
        messages=[
            routing_pb2.ConversationMessage(
                id=m.id,
                index=m.index,
                role=ROLE_TO_PROTO[m.role],
                content=m.content,
                time=datetime_to_timestamp(m.time),
                action=ACTION_TO_PROTO[m.action],
            )
            for m in c.messages
        ],
        facts=[
            routing_pb2.BranchFacts(
                branch=branch_name(cid, bf.branch_id),
                topic=bf.topic,
                current=bf.current,
                facts=[fact_to_proto(f) for f in bf.facts],
            )
            for bf in c.facts
        ],
    )


def context_from_proto(msg: routing_pb2.GetBranchContextResponse) -> types.BranchContext:
    return types.BranchContext(
        branch=branch_from_proto(msg.branch),
        messages=tuple(
            types.MessageInfo(
                id=m.id,
                index=m.index,
                role=ROLE_FROM_PROTO[m.role],
                content=m.content,
                time=timestamp_to_datetime(m.time),
                action=ACTION_FROM_PROTO[m.action],
            )
            for m in msg.messages
        ),
        facts=tuple(
            types.BranchFacts(
                branch_id=parse_branch_name(bf.branch, "branch")[1],
                topic=bf.topic,
                current=bf.current,
                facts=tuple(fact_from_proto(f) for f in bf.facts),
            )
            for bf in msg.facts
        ),
    )


def facts_to_proto(r: types.FactsResult) -> routing_pb2.ExtractFactsResponse:
    return routing_pb2.ExtractFactsResponse(
        branch=branch_name(r.conversation_id, r.branch_id),
        facts=[fact_to_proto(f) for f in r.facts],
        extractor=r.extractor,
        message_count=r.message_count,
    )


def facts_from_proto(msg: routing_pb2.ExtractFactsResponse) -> types.FactsResult:
    cid, bid = parse_branch_name(msg.branch, "branch")
    return types.FactsResult(
        conversation_id=cid,
        branch_id=bid,
        facts=tuple(fact_from_proto(f) for f in msg.facts),
        extractor=msg.extractor,
        message_count=msg.message_count,
    )
