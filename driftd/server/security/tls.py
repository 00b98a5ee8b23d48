"""TLS and mutual TLS on the gRPC port, with certificates re-read on change.

gRPC's ``dynamic_ssl_server_credentials`` asks a fetcher for a new certificate
configuration at each new connection's handshake; ours compares the files'
modification stamps and re-reads them when they changed, so certificates that
cert-manager (or kubelet's Secret volume swap) rotates in place apply to new
connections without a restart. A pair that does not load (a half-written file, a
key not matching the certificate) is logged and skipped: the previous pair stays
in use and the next handshake tries again.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)


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
        self._stamp = self._stamps()
        self._initial = self._load()

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self.files:
            st = os.stat(path)  # follows the ..data symlink of a Secret volume
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self):
        # ssl checks that the key matches the certificate; gRPC would only fail
        # the handshakes that follow.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.cert_file, self.key_file
            )
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"TLS certificate {self.cert_file} and key {self.key_file} do not load: {exc}"
            ) from exc
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())],
            root_certificates=ca,
        )

    def fetch(self):
        """gRPC's fetcher: a new configuration when the files changed, else None
        (keep the current one). Runs on a gRPC core thread at each handshake."""
        try:
            stamp = self._stamps()
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
