"""driftd's security layer: TLS/mTLS on the port, API keys with roles and
collection scopes, quotas and rate limits, the audit log (see the README's
"Security" section and docs/operations.md).

``build`` makes it from the settings; the server adds ``interceptor`` to its
interceptors and listens with ``add_port``.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from driftd.config import Settings
from driftd.server.security.interceptor import SecurityInterceptor
from driftd.server.security.keys import CURRENT_PRINCIPAL, KeyRing, current_key_name, hash_key
from driftd.server.security.quotas import Quotas
from driftd.server.security.tls import PeerCredentials, ReloadingCertificates

__all__ = [
    "CURRENT_PRINCIPAL",
    "ConfigError",
    "Security",
    "build",
    "current_key_name",
    "hash_key",
    "is_loopback",
]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The security settings are invalid or unsafe; the server does not start."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP, ``localhost`` or "") reaches only this machine.
    Empty, wildcard (``0.0.0.0``, ``::``) and other names count as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Security:
    """The security layer of one server.

    Attributes:
        interceptor: add it to the server's interceptors (after metrics, so
            refused RPCs are counted).
        tls: the reloading certificates; None: plaintext.
        peers: credentials of the calls to peer replicas; None: plaintext
            (no TLS on the port, or no peers).
    """

    interceptor: SecurityInterceptor
    tls: ReloadingCertificates | None
    peers: PeerCredentials | None = None

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Listens on ``address``: TLS when configured (plaintext is then refused),
        else plaintext. Returns the bound port.

        Raises:
            RuntimeError: grpc cannot bind the address.
        """
        if self.tls is not None:
            return server.add_secure_port(address, self.tls.server_credentials())
        return server.add_insecure_port(address)


def build(settings: Settings, engine: Any, host: str) -> Security:
    """The security layer for ``settings`` (``host``: the gRPC listen host).

    Raises:
        ConfigError: neither API keys nor TLS on a non-loopback host without
            ``insecure``; a keys file, certificates or the peers' CA that do
            not load.
    """
    if not (settings.api_keys_file or settings.tls_cert_file) and not is_loopback(host):
        if not settings.insecure:
            raise ConfigError(
                f"refusing to listen on {host or 'all interfaces'!r} without API keys or TLS: "
                "anyone who reaches the port could read, overwrite and delete every "
                "collection. Set --api-keys-file and/or --tls-cert-file/--tls-key-file, listen "
                "on 127.0.0.1, or pass --insecure (DRIFTD_INSECURE=true) if a network policy "
                "or mesh protects the port"
            )
        logger.warning("driftd is serving %s without API keys or TLS (--insecure)", host)
    try:
        keys = KeyRing(settings.api_keys_file) if settings.api_keys_file else None
        tls = (
            ReloadingCertificates(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            )
            if settings.tls_cert_file
            else None
        )
        # Under mTLS peers demand a client certificate: this replica's own.
        peers = (
            PeerCredentials(
                settings.peer_ca_file,
                *(
                    (settings.tls_cert_file, settings.tls_key_file)
                    if settings.tls_client_ca_file
                    else ()
                ),
            )
            if settings.peers and settings.tls_cert_file
            else None
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if keys is not None and tls is None and not is_loopback(host):
        logger.warning("API keys without TLS: keys cross the network in plaintext")
    return Security(SecurityInterceptor(keys, Quotas(settings), engine), tls, peers)
