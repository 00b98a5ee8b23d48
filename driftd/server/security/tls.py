"""TLS and mutual TLS on the gRPC port, with certificates re-read on change.

gRPC's ``dynamic_ssl_server_credentials`` asks a fetcher for a new certificate
configuration at each new connection's handshake; ours compares the files'
modification stamps and re-reads them when they changed, so certificates that
cert-manager (or kubelet's Secret volume swap) rotates in place apply to new
connections without a restart. A pair that does not load (a half-written file, a
key not matching the certificate) is logged and skipped: the previous pair stays
in use and the next handshake tries again.

Calls to the other replicas (:class:`PeerCredentials`) use the same files: the
peers' CA, and under mTLS this replica's own certificate as its client
certificate. gRPC has no reloading *channel* credentials, so the cluster asks
:meth:`PeerCredentials.refresh` each membership round and opens new channels
when the files changed.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)


def stamps(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """(mtime ns, size, inode) of each file: a change of any means re-read.

    Raises:
        OSError: a file is missing.
    """
    out = []
    for path in paths:
        st = os.stat(path)  # follows the ..data symlink of a Secret volume
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def read_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes]:
    """The PEM private key and certificate chain, checked to match.

    Raises:
        ValueError: the files do not load as a matching pair (or cannot be read).
    """
    # ssl checks that the key matches the certificate; gRPC would only fail
    # the handshakes that follow.
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
        return Path(key_file).read_bytes(), Path(cert_file).read_bytes()
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"TLS certificate {cert_file} and key {key_file} do not load: {exc}"
        ) from exc


class ReloadingCertificates:
    """Server credentials over PEM files that may change.

    Args:
        cert_file: certificate chain, leaf first.
        key_file: the leaf's private key.
        client_ca_file: CA bundle clients' certificates must chain to; when set,
            a client certificate is required (mTLS).

    Raises:
        ValueError: at construction, when the files do not load as a matching pair.
    """

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.files = tuple(f for f in (cert_file, key_file, client_ca_file) if f)
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._stamp = stamps(self.files)
        self._initial = self._load()

    def _load(self):
        key, cert = read_pair(self.cert_file, self.key_file)
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self):
        """gRPC's fetcher: a new configuration when the files changed, else None
        (keep the current one). Runs on a gRPC core thread at each handshake."""
        try:
            stamp = stamps(self.files)
            if stamp == self._stamp:
                return None
            config = self._load()
        except (OSError, ValueError) as exc:
            logger.error("TLS certificates not reloaded, the previous ones stay in use: %s", exc)
            return None
        self._stamp = stamp
        logger.info("TLS certificates reloaded from %s", self.cert_file)
        return config

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``server.add_secure_port``; plaintext connections fail
        their handshake, and with a client CA so do clients without a certificate."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=bool(self.client_ca_file)
        )


class PeerCredentials:
    """Channel credentials for calls to the other replicas (health probes and
    forwarded RPCs), re-read when the files change.

    Args:
        ca_file: PEM bundle the peers' certificates must chain to.
        cert_file: this replica's certificate chain, presented as the client
            certificate when peers require one (mTLS; it then needs the
            ``clientAuth`` extended key usage if it lists any); "" for none.
        key_file: the private key of ``cert_file``.

    Attributes:
        credentials: the current ``grpc.ChannelCredentials``.

    Raises:
        ValueError: at construction, when the CA holds no certificate or the
            pair does not load.
    """

    def __init__(self, ca_file: str, cert_file: str = "", key_file: str = "") -> None:
        self.files = tuple(f for f in (ca_file, cert_file, key_file) if f)
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self._stamp = stamps(self.files)
        self.credentials = self._load()

    def _load(self) -> grpc.ChannelCredentials:
        try:
            ssl.create_default_context(cafile=self.ca_file)  # a file with no certificate fails
            ca = Path(self.ca_file).read_bytes()
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"peer CA file {self.ca_file} does not load: {exc}") from exc
        key, cert = read_pair(self.cert_file, self.key_file) if self.cert_file else (None, None)
        return grpc.ssl_channel_credentials(ca, key, cert)

    def refresh(self) -> bool:
        """Re-reads the files when they changed; True when :attr:`credentials`
        is new (files that do not load are logged and the old ones kept)."""
        try:
            stamp = stamps(self.files)
            if stamp == self._stamp:
                return False
            credentials = self._load()
        except (OSError, ValueError) as exc:
            logger.error("peer TLS credentials not reloaded, the previous ones stay: %s", exc)
            return False
        self._stamp, self.credentials = stamp, credentials
        logger.info("peer TLS credentials reloaded from %s", ", ".join(self.files))
        return True
