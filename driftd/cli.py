"""The ``driftd`` command: ``serve`` (the default), ``ingest``, ``backup``,
``restore`` and ``demo``.

``serve`` needs the ``server`` extra; ``ingest``, ``backup`` and ``restore`` need
only the client (tqdm, from the ``server`` extra, adds progress bars when installed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from driftd import __version__
from driftd.config import DEFAULT_EMBED_MODEL, Settings
from driftd.errors import AlreadyExists, DriftdError
from driftd.ingest import (
    count_lines,
    describe_error,
    ingest_rows,
    open_text,
    progress_bar,
    read_jsonl,
)

COMMANDS = ("serve", "ingest", "backup", "restore", "demo")
DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_STATUSES = """exit status:
  0    every row was written
  1    a row was rejected (see the summary), or a driftd error ended the command
  2    bad usage
  130  interrupted (Ctrl-C)"""


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
            "timestamp is RFC 3339 or epoch seconds. A server restart is ridden out: "
            "unacknowledged batches are sent again once it is back. Invalid rows are "
            "skipped and summarised."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    backup = commands.add_parser(
        "backup",
        help="write an online backup of collections to a file",
        description=(
            "Export collections (points with vectors, settings, drift rules) from a running "
            "server into one file while writes go on; each collection is a consistent snapshot. "
            "The format (a tar, gzip-compressed for names ending in .gz, with a manifest of "
            "counts and SHA-256 checksums) is described in docs/operations.md."
        ),
    )
    backup.add_argument("--output", "-o", required=True, help="backup file (.tar or .tar.gz)")
    backup.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="ID",
        help="a collection to back up (repeatable; default: every collection)",
    )
    backup.add_argument("--target", default=DEFAULT_TARGET, help="server host:port")
    backup.set_defaults(run=_backup)

    restore = commands.add_parser(
        "restore",
        help="restore collections from a backup file",
        description=(
            "Verify a backup file's checksums and counts, then import its collections into a "
            "server, each all or nothing. A collection id already taken fails (exit status 1)."
        ),
    )
    restore.add_argument("file", help="backup file written by driftd backup")
    restore.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="ID",
        help="a collection to restore (repeatable; default: every collection in the file)",
    )
    restore.add_argument(
        "--as", dest="rename", default="", metavar="NEW_ID", help="restore the one collection as"
    )
    restore.add_argument("--target", default=DEFAULT_TARGET, help="server host:port")
    restore.set_defaults(run=_restore)

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


def _backup(args: argparse.Namespace) -> int:
    from driftd import backup
    from driftd.client import DriftClient

    with DriftClient(args.target, timeout=120.0) as client:
        saved = backup.backup(client, Path(args.output), args.collection, progress=progress_bar)
    for s in saved:
        print(f"{s.id}: {s.point_count} points, {s.drift_rule_count} drift rules")
    print(f"wrote {args.output} ({len(saved)} collections)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from driftd import backup
    from driftd.client import DriftClient

    with DriftClient(args.target, timeout=120.0) as client:
        done = backup.restore(
            client,
            Path(args.file),
            collections=args.collection,
            rename=args.rename,
            progress=progress_bar,
        )
    for r in done:
        print(
            f"{r.collection.name.removeprefix('collections/')}: {r.imported_point_count} points, "
            f"{r.imported_drift_rule_count} drift rules"
        )
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
        with open_text(args.file) as lines:
            stats = ingest_rows(
                client,
                args.collection,
                read_jsonl(lines),
                batch_size=args.batch_size,
                total=total,
            )
    print(stats.summary(f"{args.file} -> collections/{args.collection}"))
    return 1 if stats.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
