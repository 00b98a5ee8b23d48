"""API keys: the keys file, its reload on change, and authentication.

The file (``--api-keys-file``) is JSON::

    {"keys": [{"name": "ingest-bot", "sha256": "<hex sha256 of the key>",
               "role": "writer", "collections": ["team-a-*"]}]}

Only hashes are stored. Clients send ``authorization: Bearer <key>``; the key's
SHA-256 is compared with every entry's in constant time (``hmac.compare_digest``),
so neither the key nor which entry matched leaks through timing.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from driftd.errors import Unauthenticated
from driftd.server.security.policy import Role

logger = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        name: the key's name from the keys file ("" when the server has no keys:
            every caller is the same anonymous admin, and global quotas apply).
        role: the key's role.
        scopes: the key's collection globs; None means every resource.
    """

    name: str
    role: Role
    scopes: tuple[str, ...] | None = None


ANONYMOUS = Principal("", Role.ADMIN)

#: The caller of the RPC running in this task, set by the security interceptor
#: before the handler runs (access logs read it; None outside an RPC).
CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "driftd_principal", default=None
)


def current_key_name() -> str:
    """The API key name of the RPC running in this task; "" when anonymous or
    outside an RPC. For access logs and tracing."""
    principal = CURRENT_PRINCIPAL.get()
    return principal.name if principal else ""


def hash_key(key: str) -> str:
    """The keys file's ``sha256`` of an API key: lower-case hex of SHA-256(UTF-8)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


def parse_keys(text: str, source: str = "keys file") -> list[_Entry]:
    """The entries of a keys file's JSON text.

    Raises:
        ValueError: not JSON, or an entry with a missing/duplicate name, a hash
            that is not 64 hex digits, an unknown role or collections that are
            not a list of strings.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError(f'{source}: expected {{"keys": [...]}}')
    roles = {r.label: r for r in Role}
    entries, names = [], set()
    for i, raw in enumerate(keys):
        where = f"{source}: keys[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: not an object")
        name, digest, role = raw.get("name"), raw.get("sha256"), raw.get("role")
        scopes = raw.get("collections")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"{where}: name must be a non-empty string, unique in the file")
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise ValueError(f"{where} ({name}): sha256 must be 64 hex digits")
        if role not in roles:
            raise ValueError(f"{where} ({name}): role must be one of {', '.join(roles)}")
        if scopes is not None and (
            not isinstance(scopes, list) or not all(isinstance(g, str) and g for g in scopes)
        ):
            raise ValueError(f"{where} ({name}): collections must be a list of glob strings")
        names.add(name)
        entries.append(
            _Entry(
                bytes.fromhex(digest),
                Principal(name, roles[role], None if scopes is None else tuple(scopes)),
            )
        )
    return entries


class KeyRing:
    """The keys of a keys file, re-read when the file changes (checked with one
    ``stat`` per RPC: a rotated file applies to the next RPC, no restart).

    A file that becomes invalid is logged and ignored: the previous keys stay in
    force until it is fixed.

    Raises:
        ValueError, OSError: at construction, when the file cannot be read or parsed.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: Sequence[_Entry] = ()
        self._reload(strict=True)

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _reload(self, *, strict: bool = False) -> None:
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                entries = parse_keys(f.read(), self.path)
        except (OSError, ValueError) as exc:
            if strict:
                raise
            logger.error("API keys not reloaded, the previous keys stay in force: %s", exc)
            return
        if self._stamp is not None:
            logger.info("API keys reloaded from %s: %d keys", self.path, len(entries))
        self._stamp, self._entries = stamp, entries

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``authorization`` metadata value.

        Raises:
            Unauthenticated: API_KEY_MISSING without a ``Bearer`` value,
                API_KEY_INVALID when no entry's hash matches.
        """
        self._reload()
        match = _BEARER.match(authorization or "")
        if match is None:
            raise Unauthenticated(
                "this server requires an API key: send metadata 'authorization: Bearer <key>'",
                reason="API_KEY_MISSING",
            )
        digest = hashlib.sha256(match.group(1).encode()).digest()
        found = None
        for entry in self._entries:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        if found is None:
            raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
        return found
