"""Test support importable from any test module (``tests`` is on pytest's pythonpath):
a real ``driftd serve`` process on loopback, free ports, rich-error parsing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from driftd.server.security import hash_key

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``driftd serve`` in a subprocess; restartable on the same data directory.
    ``credentials`` and ``channel_options`` are those of its health checks (for
    a TLS server, e.g. ``grpc.ssl_target_name_override``)."""

    def __init__(
        self,
        chroma_path: Path,
        log_path: Path,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, str]] = (),
        **env: str,
    ) -> None:
        self.credentials = credentials
        self.channel_options = list(channel_options)
        self.chroma_path = chroma_path
        self.log_path = log_path
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.extra_env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = {
            **os.environ,
            "DRIFTD_ADDRESS": self.target,
            "DRIFTD_METRICS_PORT": str(self.metrics_port),
            "DRIFTD_CHROMA_PATH": str(self.chroma_path),
            "DRIFTD_WORKERS": "2",
            **self.extra_env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "driftd"), "serve"], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"driftd exited with {self.proc.returncode}:\n{self.log()}")
            if self.health() == "SERVING":
                return self
            time.sleep(0.2)
        raise TimeoutError(f"driftd not SERVING after {timeout} s:\n{self.log()}")

    def health(self, service: str = "") -> str | None:
        try:
            with (
                grpc.secure_channel(self.target, self.credentials, options=self.channel_options)
                if self.credentials
                else grpc.insecure_channel(self.target)
            ) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


def error_details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict, list[str]]:
    """(code, ErrorInfo reason, ErrorInfo metadata, BadRequest fields) of a failed RPC."""
    status = rpc_status.from_call(err)
    reason, metadata, fields = "", {}, []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "driftd"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields = [v.field for v in br.field_violations]
    return err.code(), reason, metadata, fields


@dataclass(frozen=True)
class Pki:
    """PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and
    localhost, and a client certificate (CN ``client``), all signed by the CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, name: str = "test", server_dns: str = "") -> Pki:
    """Generates a fresh PKI (EC P-256 keys, one-day certificates) in ``directory``
    with the ``cryptography`` package; ``name`` goes into the CA's common name.
    With ``server_dns`` the server certificate names only that DNS name (as a
    Service's certificate does; peers then need the name override) and also
    serves as a client certificate (``clientAuth``: replicas under mTLS)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    def cert(subject: str, key, issuer_name, issuer_key, *, ca=False, san=None, usage=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, *pems: bytes) -> Path:
        path.write_bytes(b"".join(pems))
        return path

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = cert(f"{name} CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert(
        "driftd",
        server_key,
        ca_name,
        ca_key,
        san=[x509.DNSName(server_dns)]
        if server_dns
        else [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH]
        + ([ExtendedKeyUsageOID.CLIENT_AUTH] if server_dns else []),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert(
        "client", client_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return Pki(
        ca=write(directory / "ca.pem", ca_cert.public_bytes(pem)),
        server_cert=write(directory / "server.pem", server_cert.public_bytes(pem)),
        server_key=write(directory / "server-key.pem", key_pem(server_key)),
        client_cert=write(directory / "client.pem", client_cert.public_bytes(pem)),
        client_key=write(directory / "client-key.pem", key_pem(client_key)),
    )


class ChromaServer:
    """``chroma run`` (the chromadb package's CLI) on a loopback port (``port``,
    to restart one where its clients expect it; default a free one)."""

    def __init__(self, path: Path, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        chroma = Path(sys.executable).parent / "chroma"
        exe = str(chroma) if chroma.exists() else shutil.which("chroma")
        assert exe, "the chroma CLI (chromadb package) is not installed"
        self._log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def wait_ready(self, timeout: float = 60.0) -> ChromaServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"chroma not answering after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def start_all(servers: list[ServerProcess]) -> None:
    """Starts the servers in parallel; returns when all are SERVING."""
    errors: list[BaseException] = []

    def start(s: ServerProcess) -> None:
        try:
            s.start()
        except BaseException as exc:  # reported on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def wait_for(check: Callable[[], bool], timeout: float = 60.0, what: str = "") -> float:
    """Seconds until ``check()`` holds; fails after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - t0


def write_keys(path: Path, keys: dict) -> None:
    """An API keys file of ``{name: (key, role, collection globs or None)}``."""
    entries = []
    for name, (key, role, scopes) in keys.items():
        entry = {"name": name, "sha256": hash_key(key), "role": role}
        if scopes is not None:
            entry["collections"] = scopes
        entries.append(entry)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": entries}))
    tmp.replace(path)  # atomic, as a Secret volume update is
