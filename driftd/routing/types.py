"""Value types of conversation routing: what the routing engine returns and the
Python client gives back. Dataclasses only (no numpy, grpc or chromadb), so the
client can import them.

Conversations and branches are named by bare ids here ("chat-1", "b2"); the
proto's resource names ("conversations/chat-1/branches/b2") are built and parsed
in :mod:`driftd.routing.convert`. Times are aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Action = Literal["STAY", "BRANCH", "ROUTE"]
DriftAction = Literal["STAY", "BRANCH_SAME_CLUSTER", "BRANCH_NEW_CLUSTER", "ROUTE"]
Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")


@dataclass(frozen=True)
class RouteResult:
    """What RouteMessage did with one message.

    ``similarity`` is the message's cosine to ``branch_id`` (for BRANCH: to the
    branch it left; 0 for the first message); ``confidence`` is 0-1.
    """

    conversation_id: str
    action: Action
    drift_action: DriftAction
    branch_id: str
    branch_topic: str
    similarity: float
    confidence: float
    reason: str
    is_new_branch: bool
    message_id: str
    previous_branch_id: str  # "" for the first message


@dataclass(frozen=True)
class BranchInfo:
    """A topic branch of a conversation."""

    conversation_id: str
    branch_id: str
    topic: str
    message_count: int
    create_time: datetime
    update_time: datetime
    parent_branch_id: str  # "" for the first branch
    cluster: int
    current: bool


@dataclass(frozen=True)
class BranchList:
    """A page of a conversation's branches, in creation order."""

    branches: tuple[BranchInfo, ...]
    next_page_token: str
    current_branch_id: str


@dataclass(frozen=True)
class MessageInfo:
    """A stored message; ``index`` is its 0-based position in the conversation."""

    id: str
    index: int
    role: Role
    content: str
    time: datetime
    action: Action


@dataclass(frozen=True)
class Fact:
    """``key`` = ``value``, with a confidence 0-1 and the id of the latest
    message stating it ("" when unknown)."""

    key: str
    value: str
    confidence: float
    source_message_id: str


@dataclass(frozen=True)
class BranchFacts:
    """The facts of one branch; ``current`` marks the branch a context is for."""

    branch_id: str
    topic: str
    current: bool
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class BranchContext:
    """GetBranchContext's answer: the branch, its messages in order, and the
    facts of every branch of the conversation in creation order."""

    branch: BranchInfo
    messages: tuple[MessageInfo, ...]
    facts: tuple[BranchFacts, ...]


@dataclass(frozen=True)
class FactsResult:
    """ExtractFacts' answer. ``extractor`` is "rules" or "llm:{model}"."""

    conversation_id: str
    branch_id: str
    facts: tuple[Fact, ...]
    extractor: str
    message_count: int
