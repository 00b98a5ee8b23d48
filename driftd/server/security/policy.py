"""Which role each RPC needs and which resource it touches: one table, checked
against the proto descriptors by tests/server/test_security_policy.py (a new RPC
without a rule fails that test, like the retry classification).

Roles are ordered: reader < writer < admin. A key's collection scope is a list
of globs (``fnmatch``) matched against the resource the RPC names:

* a glob without ``/`` matches the id of any top-level resource: collections,
  conversations (RoutingService) and users (BehaviorService) alike, so a tenant
  prefix such as ``team-a-*`` covers ``collections/team-a-docs``,
  ``conversations/team-a-42`` and ``users/team-a-bob``;
* a glob with ``/`` matches the whole top-level name, so ``collections/*``
  reaches every collection but no conversation or user.

Sub-resources (drift rules, branches) belong to their top-level resource.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass


class Role(enum.IntEnum):
    """An API key's role; a higher role may do everything a lower one may."""

    READER = 1
    WRITER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The keys file's spelling: ``"reader"``, ``"writer"``, ``"admin"``."""
        return self.name.lower()


@dataclass(frozen=True)
class Rule:
    """What an RPC needs.

    Attributes:
        role: the lowest role allowed to call it.
        resource: the request field naming the resource ("" when none); for a
            streaming request every message's field is checked.
        bare_kind: set when ``resource`` holds a bare id (``collection_id``): the
            kind its name is built with (``"collections"``).
        writes: adds data (refused in disk-pressure read-only mode); deletes do
            not, so an operator can free space.
    """

    role: Role
    resource: str = ""
    bare_kind: str = ""
    writes: bool = False


R, W, A = Role.READER, Role.WRITER, Role.ADMIN

#: Full method name -> rule. Every driftd RPC and reflection appear here;
#: grpc.health.v1 is open (OPEN_SERVICES) so Kubernetes probes need no key.
RULES: dict[str, Rule] = {
    "/driftd.v1.CollectionService/CreateCollection": Rule(A, "collection_id", "collections", True),
    "/driftd.v1.CollectionService/GetCollection": Rule(R, "name"),
    "/driftd.v1.CollectionService/ListCollections": Rule(R),
    "/driftd.v1.CollectionService/DeleteCollection": Rule(A, "name"),
    "/driftd.v1.CollectionService/AttachCollection": Rule(
        A, "chroma_collection", "collections", True
    ),
    # A backup reads every point and rule of the collection; a restore creates one.
    "/driftd.v1.CollectionService/ExportCollection": Rule(R, "name"),
    "/driftd.v1.CollectionService/ImportCollection": Rule(A, "collection_id", "collections", True),
    "/driftd.v1.PointService/UpsertPoints": Rule(W, "parent", writes=True),
    "/driftd.v1.PointService/StreamUpsertPoints": Rule(W, "parent", writes=True),
    "/driftd.v1.PointService/GetPoints": Rule(R, "parent"),
    "/driftd.v1.PointService/DeletePoints": Rule(W, "parent"),
    "/driftd.v1.PointService/GetTrajectory": Rule(R, "parent"),
    "/driftd.v1.PointService/SearchPoints": Rule(R, "parent"),
    "/driftd.v1.FlowService/ProbeFlow": Rule(R, "parent"),
    "/driftd.v1.FlowService/SimulatePaths": Rule(R, "parent"),
    "/driftd.v1.FlowService/FindAttractors": Rule(R, "parent"),
    "/driftd.v1.FlowService/DetectChapters": Rule(R, "parent"),
    "/driftd.v1.MonitorService/CompareWindows": Rule(R, "parent"),
    "/driftd.v1.MonitorService/EmbeddingHealth": Rule(R, "parent"),
    "/driftd.v1.MonitorService/WatchCollection": Rule(W, "parent"),
    "/driftd.v1.MonitorService/CreateDriftRule": Rule(A, "parent", writes=True),
    "/driftd.v1.MonitorService/GetDriftRule": Rule(R, "name"),
    "/driftd.v1.MonitorService/ListDriftRules": Rule(R, "parent"),
    "/driftd.v1.MonitorService/DeleteDriftRule": Rule(A, "name"),
    "/driftd.v1.RoutingService/RouteMessage": Rule(W, "conversation", writes=True),
    "/driftd.v1.RoutingService/ListBranches": Rule(R, "parent"),
    "/driftd.v1.RoutingService/GetBranchContext": Rule(R, "name"),
    "/driftd.v1.RoutingService/ExtractFacts": Rule(W, "name", writes=True),
    "/driftd.v1.BehaviorService/ProcessBehaviors": Rule(W, "parent", writes=True),
    "/driftd.v1.BehaviorService/ListBehaviors": Rule(R, "parent"),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Rule(R),
}

#: Services callable without a key: Kubernetes and load-balancer probes.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

#: RPCs whose response lists collections: a scoped key sees only its own.
COLLECTION_LISTS = frozenset({"/driftd.v1.CollectionService/ListCollections"})


def is_open(method: str) -> bool:
    """True for RPCs that need no API key (``/grpc.health.v1.Health/Check``...)."""
    return method.lstrip("/").rpartition("/")[0] in OPEN_SERVICES


def resource_name(rule: Rule, request: object) -> str:
    """The top-level resource the request names, ``"collections/sotu"``; "" when
    the rule names none or the field is empty (the servicer rejects the latter)."""
    if not rule.resource:
        return ""
    value = getattr(request, rule.resource, "")
    if not value:
        return ""
    if rule.bare_kind:
        return f"{rule.bare_kind}/{value}"
    kind, _, rest = value.partition("/")
    return f"{kind}/{rest.partition('/')[0]}"


def in_scope(scopes: Sequence[str] | None, name: str) -> bool:
    """Whether a key with collection globs ``scopes`` (None: all) may reach the
    top-level resource ``name`` (``"kind/id"``); see the module docstring."""
    if scopes is None:
        return True
    kind, _, rid = name.partition("/")
    if not kind or not rid:
        return False  # fail closed on names the servicer will reject anyway
    return any(fnmatch.fnmatchcase(name if "/" in glob else rid, glob) for glob in scopes)


#: RPCs that create a collection (the collections quota).
COLLECTION_CREATES = frozenset(
    {
        "/driftd.v1.CollectionService/CreateCollection",
        "/driftd.v1.CollectionService/AttachCollection",
        "/driftd.v1.CollectionService/ImportCollection",
    }
)

#: RPCs that add points from ``request.points`` (the points-per-collection quota).
POINT_WRITES = frozenset(
    {"/driftd.v1.PointService/UpsertPoints", "/driftd.v1.PointService/StreamUpsertPoints"}
)
