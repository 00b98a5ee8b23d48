"""Server and engine settings: defaults, ``DRIFTD_*`` environment variables, flags.

Precedence: command-line flag > environment variable > default. Each field's
environment variable is ``DRIFTD_`` + its upper-case name (``chroma_path`` ->
``DRIFTD_CHROMA_PATH``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: The offline default text model (all-MiniLM-L6-v2, 384-d, int8 ONNX).
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"


def _default_workers() -> int:
    """One math worker per usable CPU but one, at least 1 and at most 4: the server
    process keeps a core for its event loop, Chroma and embedding. With as many
    workers as cores (2), a saturated pool put health-check p99 at 2.4-2.8x its idle
    value, as much as two busy loops outside driftd did; with one, 1.1-1.2x
    (bench/flow/serving.py, 100k points)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cpus or 1) - 1))


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Units are in the field names' suffixes."""

    address: str = field(default="127.0.0.1:50051", metadata={"help": "gRPC listen address"})
    metrics_port: int = field(
        default=9464, metadata={"help": "Prometheus metrics port (0 disables)"}
    )
    health_address: str = field(
        default="",
        metadata={
            "help": "extra plaintext listener serving only grpc.health.v1 (for kubelet "
            "probes, which cannot speak TLS); empty: none"
        },
    )
    metrics_address: str = field(
        default="", metadata={"help": "metrics bind host; empty: the gRPC address's host"}
    )
    metrics_collection_labels: bool = field(
        default=True,
        metadata={"help": "label metrics with collection names (false for multi-tenant clusters)"},
    )
    chroma_path: str = field(
        default="./driftd_data", metadata={"help": "embedded Chroma directory"}
    )
    chroma_url: str = field(
        default="", metadata={"help": "Chroma server URL (http://host:port); overrides chroma_path"}
    )
    chroma_token: str = field(
        default="",
        metadata={"help": "token for a Chroma server with token auth (Authorization: Bearer)"},
    )
    embed_model: str = field(
        default=DEFAULT_EMBED_MODEL, metadata={"help": "default embed model for new collections"}
    )
    workers: int = field(
        default_factory=_default_workers, metadata={"help": "math process-pool workers"}
    )
    max_batch_points: int = field(default=10_000, metadata={"help": "points per batch"})
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "gRPC send/receive message limit (bytes)"}
    )
    max_steps: int = field(default=10_000, metadata={"help": "SimulatePaths steps per path"})
    max_paths: int = field(default=64, metadata={"help": "SimulatePaths paths per call"})
    max_substeps_per_step: int = field(
        default=1_000,
        metadata={
            "help": "SimulatePaths RK4 sub-steps per step: step_duration / the flow's time scale"
        },
    )
    max_simulation_substeps: int = field(
        default=1_000_000,
        metadata={"help": "SimulatePaths RK4 sub-steps per call: steps x paths x per step"},
    )
    max_seeds: int = field(default=1_024, metadata={"help": "FindAttractors seeds"})
    ensemble_size: int = field(
        default=8,
        metadata={
            "help": "bootstrap refits behind ProbeFlow confidence, the SimulatePaths band "
            "and FindAttractors reproducibility (>= 2)"
        },
    )
    max_bootstrap: int = field(default=64, metadata={"help": "FindAttractors bootstrap refits"})
    max_attractor_work: int = field(
        default=16_384, metadata={"help": "FindAttractors seeds x bootstrap refits"}
    )
    max_top_k: int = field(default=1_000, metadata={"help": "SearchPoints results"})
    max_chapter_points: int = field(
        default=100_000, metadata={"help": "DetectChapters (OFFLINE) points per selection"}
    )
    storage_reserve_bytes: int = field(
        default=64 << 20,
        metadata={
            "help": "free bytes an embedded Chroma volume keeps: writes that would go "
            "below answer RESOURCE_EXHAUSTED/STORAGE_FULL"
        },
    )
    readiness_interval_seconds: float = field(
        default=5.0,
        metadata={"help": "seconds between storage heartbeats behind readiness health"},
    )
    max_dimension: int = field(
        default=8_192, metadata={"help": "dimension of a new collection (LIMIT_EXCEEDED)"}
    )
    max_text_bytes: int = field(
        default=32 * 1024,
        metadata={
            "help": "UTF-8 bytes of one text (LIMIT_EXCEEDED); the model embeds the "
            "first 256 tokens (about 1-2 KB of English) of a longer one"
        },
    )
    max_request_text_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "UTF-8 bytes of all texts of one request or batch (LIMIT_EXCEEDED)"},
    )
    max_payload_keys: int = field(
        default=256, metadata={"help": "keys of one point's payload (LIMIT_EXCEEDED)"}
    )
    max_payload_value_bytes: int = field(
        default=16 * 1024,
        metadata={"help": "UTF-8 bytes of one payload string value (LIMIT_EXCEEDED)"},
    )
    max_payload_bytes: int = field(
        default=64 * 1024,
        metadata={"help": "UTF-8 bytes of one point's payload, keys and values (LIMIT_EXCEEDED)"},
    )
    grace_seconds: float = field(
        default=10.0, metadata={"help": "drain time for in-flight RPCs on SIGTERM (seconds)"}
    )
    log_level: str = field(default="INFO", metadata={"help": "logging level"})
    tls_cert_file: str = field(
        default="",
        metadata={"help": "PEM server certificate chain; enables TLS (re-read on change)"},
    )
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of tls_cert_file"})
    tls_client_ca_file: str = field(
        default="", metadata={"help": "PEM CA bundle; requires client certificates (mTLS)"}
    )
    peer_tls_ca_file: str = field(
        default="",
        metadata={
            "help": "with peers and TLS: PEM CA bundle the peers' certificates must chain to; "
            "empty: tls_client_ca_file"
        },
    )
    peer_tls_server_name: str = field(
        default="",
        metadata={
            "help": "with peers and TLS: the name the peers' certificates are checked against "
            "(peers are dialled by address, certificates usually name the Service); empty: "
            "the peer's address"
        },
    )
    api_keys_file: str = field(
        default="",
        metadata={"help": "JSON API keys file (sha256 hashes, roles, scopes; re-read on change)"},
    )
    insecure: bool = field(
        default=False,
        metadata={"help": "allow a non-loopback address without API keys or TLS"},
    )
    max_rpcs_per_key: int = field(
        default=0, metadata={"help": "concurrent unary RPCs per key (0: unlimited)"}
    )
    max_streams_per_key: int = field(
        default=0, metadata={"help": "concurrent streaming RPCs per key (0: unlimited)"}
    )
    rate_limit_rps: float = field(
        default=0.0, metadata={"help": "RPCs per second per key, token bucket (0: unlimited)"}
    )
    rate_limit_burst: int = field(
        default=0, metadata={"help": "token bucket size (0: max(1, rate_limit_rps))"}
    )
    max_collections: int = field(default=0, metadata={"help": "collections (0: unlimited)"})
    max_points_per_collection: int = field(
        default=0, metadata={"help": "points per collection (0: unlimited)"}
    )
    read_only_disk_percent: float = field(
        default=95.0,
        metadata={"help": "disk use (percent) above which writes are refused (0: never)"},
    )
    log_format: str = field(
        default="text", metadata={"help": "log lines: text, or json (one object per line)"}
    )
    access_log: str = field(
        default="INFO",
        metadata={"help": "level of the one access line per RPC (DEBUG, INFO...), or off"},
    )
    peers: str = field(
        default="",
        metadata={
            "help": "replicas sharing a Chroma server, comma-separated host:port (a DNS name "
            "stands for every address it resolves to, e.g. a headless Service); each key "
            "is owned by one live replica and the others forward to it. Empty: alone"
        },
    )
    advertise_address: str = field(
        default="",
        metadata={
            "help": "this replica's host:port as its peers reach it (as the peers resolve, "
            "e.g. the pod IP); empty: the listen address"
        },
    )

    def __post_init__(self) -> None:
        # A spread needs two refits; a bad value should stop the server at start-up.
        for name in ("ensemble_size", "max_bootstrap"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if (self.peer_tls_ca_file or self.peer_tls_server_name) and not self.tls_cert_file:
            raise ValueError(
                "peer_tls_ca_file and peer_tls_server_name need tls_cert_file: peers are "
                "called over TLS exactly when this replica's port uses it"
            )
        if self.peers and self.tls_cert_file and not self.peer_ca_file:
            raise ValueError(
                "with peers and TLS, set peer_tls_ca_file (or tls_client_ca_file for mTLS): "
                "the CA of the peers' certificates; without it no peer can be verified and "
                "no peer would ever join the ring"
            )
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")
        if self.peers and not self.chroma_url:
            raise ValueError("peers need a shared Chroma server: set chroma_url")
        if self.peers and self.own_address.rpartition(":")[0].strip("[]") in ("", "0.0.0.0", "::"):
            raise ValueError(
                f"with peers, set advertise_address: the listen address {self.address!r} "
                "is not one the peers can reach"
            )

    @property
    def peer_list(self) -> list[str]:
        """``peers`` split: host:port entries."""
        return [p.strip() for p in self.peers.split(",") if p.strip()]

    @property
    def peer_ca_file(self) -> str:
        """The CA that peers' certificates chain to: ``peer_tls_ca_file``, else
        the mTLS client CA (the cluster's CA)."""
        return self.peer_tls_ca_file or self.tls_client_ca_file

    @property
    def own_address(self) -> str:
        """This replica's address as its peers reach it."""
        return self.advertise_address or self.address

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults overridden by ``DRIFTD_*`` variables, then by ``overrides``.

        Raises:
            ValueError: a variable does not parse as its field's type.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # each parsed to its field's type
        for f in fields(cls):
            raw = environ.get(f"DRIFTD_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, type(getattr(cls(), f.name)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds one ``--flag`` per field (defaults None: unset flags defer to env)."""
        defaults = cls()
        for f in fields(cls):
            kind = type(getattr(defaults, f.name))
            flag = "--" + f.name.replace("_", "-")
            help_text = (
                f"{f.metadata.get('help', '')} "
                f"(env DRIFTD_{f.name.upper()}, default {getattr(defaults, f.name)!r})"
            )
            if kind is bool:
                # A bare boolean flag means true ("--insecure"); "--flag=false" also parses.
                parser.add_argument(
                    flag,
                    dest=f.name,
                    type=parse_bool,
                    nargs="?",
                    const=True,
                    default=None,
                    help=help_text,
                )
            else:
                parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from parsed flags over the environment."""
        names: Sequence[str] = [f.name for f in fields(cls)]
        return cls.from_env(environ, **{n: getattr(args, n, None) for n in names})


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case).

    Raises:
        ValueError: anything else.
    """
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


def _parse(name: str, raw: str, kind: type) -> object:
    try:
        return parse_bool(raw) if kind is bool else kind(raw)
    except ValueError as exc:
        raise ValueError(f"DRIFTD_{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
