"""The ``driftd`` command: ``serve`` (the default), ``ingest`` and ``demo``.

``serve`` needs the ``server`` extra; ``ingest`` needs only the client (tqdm, from
the ``server`` extra, adds a progress bar when installed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from driftd import __version__
from driftd.config import DEFAULT_EMBED_MODEL, Settings
from driftd.errors import AlreadyExists, DriftdError, InvalidArgument

COMMANDS = ("serve", "ingest", "demo")
DEFAULT_TARGET = "127.0.0.1:50051"
#: Rejections listed one by one in the ingest summary; the rest are only counted.
MAX_EXAMPLES = 10

#: The batch-relative "points[i]" that starts server field paths and messages.
_BATCH_INDEX = re.compile(r"^points\[\d+\][.:]?\s*")


def main(argv: list[str] | None = None) -> int:
    """Runs the ``driftd`` command line; returns the exit status.

    With no subcommand (or only flags) it runs ``serve``. Exit status: 0 on
    success, 1 when a driftd error ends the command or ingest rejected rows,
    2 on bad usage, 130 when interrupted.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_in.insert(0, "serve")
    args = _parser().parse_args(args_in)
    try:
        return args.run(args)
    except DriftdError as exc:
        print(f"driftd {args.command}: {describe_error(exc)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"driftd {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftd",
        description="driftd: a flow-native vector database for timestamped embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"driftd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gRPC server (the default command)",
        description="Run the driftd gRPC server until SIGTERM/SIGINT.",
    )
    Settings.add_arguments(serve)
    serve.set_defaults(run=_serve)

    ingest = commands.add_parser(
        "ingest",
        help="stream a JSONL file of points into a collection",
        description=(
            "Stream rows {id, timestamp, text | vector, series?, payload?} of a JSONL file "
            "(.gz accepted; '-' reads stdin) into a collection over StreamUpsertPoints. "
            "Invalid rows are skipped and summarised; the exit status is 1 if any was rejected."
        ),
    )
    ingest.add_argument("file", help="JSONL file, optionally gzip-compressed (.gz), or -")
    ingest.add_argument("--collection", required=True, help="collection id, e.g. sotu")
    ingest.add_argument("--target", default=DEFAULT_TARGET, help="server host:port")
    _add_connection_arguments(ingest)
    ingest.add_argument("--batch-size", type=int, default=500, help="points per streamed batch")
    ingest.add_argument(
        "--create", action="store_true", help="create the collection if it does not exist"
    )
    ingest.add_argument("--dim", type=int, help="with --create: vector dimension")
    ingest.add_argument(
        "--embed-model",
        help=f"with --create: model embedding texts (default {DEFAULT_EMBED_MODEL}, "
        "or none when --dim is given: vectors only)",
    )
    ingest.set_defaults(run=_ingest)

    demo = commands.add_parser(
        "demo",
        help="State of the Union: ingest, chapters, attractors, a simulated path",
        description=(
            "Stream 6,348 State of the Union paragraphs (1945-2006) as texts, then show "
            "the timeline's chapters, the flow's attractors and a path simulated from a "
            "prompt. Without --target it runs an in-process server on a temporary directory."
        ),
    )
    demo.add_argument("--target", help="use this server (host:port) instead of an in-process one")
    demo.add_argument("--collection", default="sotu", help="collection id")
    demo.add_argument(
        "--prompt",
        default="We must strengthen our national defense",
        help="text the simulated path starts from",
    )
    demo.set_defaults(run=_demo)
    return parser


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DRIFTD_API_KEY") or None,
        help="API key, sent as 'authorization: Bearer <key>' (env DRIFTD_API_KEY)",
    )
    parser.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS, trusting this CA")
    parser.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")


def _client_security(args: argparse.Namespace) -> dict[str, Any]:
    """The client's ``api_key`` and ``tls`` arguments from the connection flags."""
    from driftd.client import TLS

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TLS(
            ca_file=args.tls_ca or "", cert_file=args.tls_cert or "", key_file=args.tls_key or ""
        )
    return {"api_key": args.api_key, "tls": tls}


def _serve(args: argparse.Namespace) -> int:
    from driftd.server.app import run

    run(Settings.from_args(args))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from driftd import demo

    return demo.main(target=args.target, collection=args.collection, prompt=args.prompt)


def _ingest(args: argparse.Namespace) -> int:
    from driftd.client import DriftClient

    with DriftClient(args.target, timeout=120.0, **_client_security(args)) as client:
        if args.create:
            embed_model = args.embed_model
            if embed_model is None and not args.dim:
                embed_model = DEFAULT_EMBED_MODEL
            try:
                client.create_collection(args.collection, dim=args.dim, embed_model=embed_model)
                print(f"created collections/{args.collection}", file=sys.stderr)
            except AlreadyExists:
                print(f"collections/{args.collection} exists; adding to it", file=sys.stderr)
        total = None if args.file == "-" else count_lines(Path(args.file))
        with _open_text(args.file) as lines:
            stats = ingest_rows(
                client,
                args.collection,
                read_jsonl(lines),
                batch_size=args.batch_size,
                total=total,
            )
    print(stats.summary(f"{args.file} -> collections/{args.collection}"))
    return 1 if stats.rejected else 0


# --- reading JSONL ---------------------------------------------------------------


def _open_text(path: str) -> IO[str]:
    if path == "-":
        return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def count_lines(path: Path) -> int:
    """Non-blank lines of a (possibly gzip-compressed) text file, for progress totals."""
    with _open_text(str(path)) as f:
        return sum(1 for line in f if line.strip())


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded JSON value)`` per non-blank line; a line that is not
    JSON gives its ``json.JSONDecodeError`` instead of a value."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc


# --- streaming with progress and a summary -----------------------------------------


@dataclass
class IngestStats:
    """Counts of one ingest. ``rejected_by_reason`` keys are ErrorReason names
    (plus ``INVALID_JSON`` for unreadable lines); ``examples`` describe the first
    rejections as ``"line N: ..."``."""

    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reject(self, line: int, reason: str, message: str) -> None:
        # Rows failing to parse are counted on gRPC's request thread, server
        # rejections on the caller's: both go through this lock.
        with self._lock:
            self.rejected += 1
            self.rejected_by_reason[reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"line {line}: {reason}: {message}")

    @property
    def points_per_second(self) -> float:
        """Accepted points per wall-clock second."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def summary(self, what: str) -> str:
        """A few lines for people: counts, wall time, rate, rejections by reason."""
        out = [
            f"ingested {what}",
            f"  accepted   {self.accepted:,} points",
            f"  rejected   {self.rejected:,} points",
            f"  wall time  {self.seconds:.1f} s ({self.points_per_second:,.0f} points/s)",
        ]
        if self.rejected_by_reason:
            out.append("  rejected by reason:")
            out += [f"    {r:<22} {n:,}" for r, n in self.rejected_by_reason.most_common()]
            out.append("  first rejections:")
            out += [f"    {e}" for e in self.examples]
        return "\n".join(out)


def describe_error(exc: DriftdError) -> str:
    """``CODE REASON: message`` plus one ``field: description`` per violation."""
    text = f"{exc.code} {exc.reason}: {exc.message}"
    return "\n".join([text, *(f"  {v.field}: {v.description}" for v in exc.field_violations)])


def _row_problem(exc: InvalidArgument) -> str:
    return "; ".join(
        f"{_BATCH_INDEX.sub('', v.field) or 'row'}: {v.description}" for v in exc.field_violations
    )


def ingest_rows(
    client,
    collection: str,
    rows: Iterable[tuple[int, Any]],
    *,
    batch_size: int = 500,
    total: int | None = None,
    desc: str = "ingest",
) -> IngestStats:
    """Streams ``(line number, row)`` pairs through ``client.stream_upsert`` with a
    progress bar (tqdm, if installed) and counts what was accepted and rejected.

    Rows are dicts ``{id, timestamp, text | vector, series?, payload?}``; a row that
    does not parse (or is an exception from the reader) is counted as rejected and
    not sent; points the server rejects are counted from its acks.

    Args:
        client: a :class:`driftd.client.DriftClient`.
        total: the number of rows, for the bar's percentage; None if unknown.

    Raises:
        DriftdError: the stream failed (e.g. NotFound: no such collection).
    """
    from driftd.client import parse_point

    stats = IngestStats()
    sent_lines: deque[int] = deque()

    def points():
        for line, row in rows:
            if isinstance(row, Exception):
                stats.reject(line, "INVALID_JSON", str(row))
                continue
            try:
                point = parse_point(row)
            except InvalidArgument as exc:
                stats.reject(line, exc.reason, _row_problem(exc))
                continue
            sent_lines.append(line)
            yield point

    bar = _progress_bar(total, desc)
    started = time.perf_counter()
    try:
        for ack in client.stream_upsert(collection, points(), batch_size=batch_size):
            # Batches are acked in order and all but the last are full, so the
            # batch's lines are the next batch_size sent.
            lines = [sent_lines.popleft() for _ in range(min(batch_size, len(sent_lines)))]
            stats.accepted += ack.accepted
            for err in ack.errors:
                stats.reject(lines[err.index], err.reason, _BATCH_INDEX.sub("", err.message))
            bar.update(stats.accepted + stats.rejected - bar.n)
    finally:
        stats.seconds = time.perf_counter() - started
        bar.close()
    return stats


class _NoBar:
    n = 0

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="pt", unit_scale=True, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
