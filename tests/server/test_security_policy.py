"""The security layer without a server: every RPC has a role (from the proto
descriptors, like the retry classification), the README's roles table matches
the policy, keys files parse strictly, authentication refuses whatever is not a
listed key, scopes, quotas' arithmetic, and the non-loopback refusal."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import REPO

from driftd.config import Settings
from driftd.errors import QuotaExceeded, Unauthenticated
from driftd.server.app import SERVICE_NAMES
from driftd.server.security import ConfigError, build, hash_key, is_loopback
from driftd.server.security.keys import KeyRing, parse_keys
from driftd.server.security.policy import RULES, Role, in_scope, is_open
from driftd.server.security.quotas import Quotas, TokenBucket
from driftd.v1 import (
    behavior_pb2,
    collection_pb2,
    flow_pb2,
    monitor_pb2,
    point_pb2,
    routing_pb2,
)

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def _methods():
    pools = [collection_pb2, point_pb2, flow_pb2, routing_pb2, monitor_pb2, behavior_pb2]
    for module in pools:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name in SERVICE_NAMES:
                for method in service.methods:
                    yield f"/{service.full_name}/{method.name}", method


def test_every_rpc_has_a_role():
    """A new RPC in the proto without a rule in policy.RULES fails here."""
    methods = dict(_methods())
    assert {name.rpartition("/")[0].lstrip("/") for name in methods} == set(SERVICE_NAMES)
    missing = sorted(set(methods) - set(RULES))
    assert not missing, f"RPCs without a role in driftd/server/security/policy.py: {missing}"
    stale = sorted(set(RULES) - set(methods) - {REFLECTION})
    assert not stale, f"rules for RPCs that do not exist: {stale}"


@pytest.mark.parametrize("method", sorted(RULES))
def test_rule_fields_exist(method):
    if method == REFLECTION:
        return
    descriptor = dict(_methods())[method]
    rule = RULES[method]
    if rule.resource:
        assert rule.resource in descriptor.input_type.fields_by_name
    # Every RPC that names something is scoped: only list RPCs over all
    # collections go without (their answers are filtered instead).
    assert rule.resource or method.endswith("/ListCollections")


def test_writes_need_a_writer():
    assert all(rule.role >= Role.WRITER for rule in RULES.values() if rule.writes)
    assert is_open("/grpc.health.v1.Health/Check") and is_open("/grpc.health.v1.Health/Watch")
    assert not is_open(REFLECTION) and REFLECTION in RULES


def test_readme_roles_table_matches_the_policy():
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+Service)/(\w+)` \| (reader|writer|admin) \|", readme, re.M)
    table = {f"/driftd.v1.{service}/{method}": role for service, method, role in rows}
    expected = {m: r.role.label for m, r in RULES.items() if m != REFLECTION}
    assert table == expected


# --- keys -------------------------------------------------------------------------


def _keys_file(tmp_path, *entries):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


def _entry(name, key, role="reader", **extra):
    return {"name": name, "sha256": hash_key(key), "role": role, **extra}


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        '{"keys": {}}',
        '{"keys": [{"sha256": "' + "a" * 64 + '", "role": "reader"}]}',
        '{"keys": [{"name": "a", "sha256": "abc", "role": "reader"}]}',
        '{"keys": [{"name": "a", "sha256": "' + "a" * 64 + '", "role": "root"}]}',
        '{"keys": [{"name": "a", "sha256": "' + "a" * 64 + '", "role": "reader", '
        '"collections": "x*"}]}',
        '{"keys": [{"name": "a", "sha256": "' + "a" * 64 + '", "role": "reader"}, '
        '{"name": "a", "sha256": "' + "b" * 64 + '", "role": "reader"}]}',
    ],
)
def test_bad_keys_files_are_refused(doc):
    with pytest.raises(ValueError):
        parse_keys(doc)


def test_keys_authenticate_and_reload(tmp_path):
    path = _keys_file(tmp_path, _entry("bot", "s3cret", "writer", collections=["a-*"]))
    ring = KeyRing(str(path))
    principal = ring.authenticate("Bearer s3cret")
    assert (principal.name, principal.role, principal.scopes) == ("bot", Role.WRITER, ("a-*",))
    with pytest.raises(Unauthenticated) as missing:
        ring.authenticate(None)
    assert missing.value.reason == "API_KEY_MISSING"
    with pytest.raises(Unauthenticated) as invalid:
        ring.authenticate("Bearer s3cret2")
    assert invalid.value.reason == "API_KEY_INVALID"

    _keys_file(tmp_path, _entry("bot2", "n3w", "admin"))
    assert ring.authenticate("bearer n3w").name == "bot2"
    with pytest.raises(Unauthenticated):
        ring.authenticate("Bearer s3cret")
    path.write_text("{broken")  # an invalid rewrite keeps the keys in force
    assert ring.authenticate("Bearer n3w").name == "bot2"


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    return KeyRing(str(_keys_file(tmp_path_factory.mktemp("keys"), _entry("k", "the-one-key"))))


@given(header=st.text(max_size=200))
def test_only_listed_keys_authenticate(ring, header):
    try:
        principal = ring.authenticate(header)
    except Unauthenticated as exc:
        assert exc.reason in ("API_KEY_MISSING", "API_KEY_INVALID")
    else:
        assert header.split()[-1] == "the-one-key" and principal.name == "k"


# --- scopes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "name", "allowed"),
    [
        (None, "collections/anything", True),
        (["team-a-*"], "collections/team-a-docs", True),
        (["team-a-*"], "conversations/team-a-42", True),
        (["team-a-*"], "users/team-a-bob", True),
        (["team-a-*"], "collections/team-b-docs", False),
        (["collections/*"], "collections/x", True),
        (["collections/*"], "conversations/x", False),
        (["team-a-*"], "", False),
        (["*"], "collections", False),
        ([], "collections/x", False),
    ],
)
def test_scopes(scopes, name, allowed):
    assert in_scope(scopes, name) is allowed


# --- quotas -----------------------------------------------------------------------------


def test_token_bucket_refuses_past_its_burst():
    bucket = TokenBucket(rate=0.001, burst=2)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    wait = bucket.take()
    assert 0 < wait <= 1000.0


def test_quota_errors_carry_retry_and_subject():
    quotas = Quotas(Settings(max_rpcs_per_key=1, max_points_per_collection=10))
    with quotas.concurrent("bot", stream=False):
        with pytest.raises(QuotaExceeded) as busy, quotas.concurrent("bot", stream=False):
            pass
        with quotas.concurrent("other", stream=False), quotas.concurrent("bot", stream=True):
            pass
    assert busy.value.retry_delay > 0
    assert busy.value.quota_violations[0].subject == "key:bot"
    with quotas.concurrent("bot", stream=False):  # the slot was released
        pass
    quotas.check_points("c", stored=4, adding=6)
    with pytest.raises(QuotaExceeded):
        quotas.check_points("c", stored=5, adding=6)


# --- exposure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("driftd", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_exposed_address_needs_keys_tls_or_insecure(tmp_path):
    with pytest.raises(ConfigError, match="--insecure"):
        build(Settings(address="0.0.0.0:50051"), None, "0.0.0.0")
    build(Settings(address="0.0.0.0:50051", insecure=True), None, "0.0.0.0")
    keys = _keys_file(tmp_path, _entry("k", "key"))
    build(Settings(address="0.0.0.0:50051", api_keys_file=str(keys)), None, "0.0.0.0")
    build(Settings(), None, "127.0.0.1")
