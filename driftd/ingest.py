"""Ingesting JSONL points through the client, for ``driftd ingest`` and the demo:
reading (possibly gzip-compressed) JSONL, batching, progress and a summary of
what was accepted and rejected. Needs only the client (tqdm, from the ``server``
extra, adds a progress bar when installed)."""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from driftd.errors import DriftdError, InvalidArgument

#: Rejections listed one by one in the ingest summary; the rest are only counted.
MAX_EXAMPLES = 10

#: The batch-relative "points[i]" that starts server field paths and messages.
_BATCH_INDEX = re.compile(r"^points\[\d+\][.:]?\s*")


# --- reading JSONL ---------------------------------------------------------------


def open_text(path: str) -> IO[str]:
    """A text file for reading: ``-`` is stdin, ``*.gz`` is decompressed."""
    if path == "-":
        return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def count_lines(path: Path) -> int:
    """Non-blank lines of a (possibly gzip-compressed) text file, for progress totals."""
    with open_text(str(path)) as f:
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
    """Writes ``(line number, row)`` pairs through ``client.writer`` (the resumable
    writer: a server restart is ridden out, unacknowledged batches are re-sent)
    with a progress bar (tqdm, if installed), and counts what was accepted and
    rejected.

    Rows are dicts ``{id, timestamp, text | vector, series?, payload?}``; a row that
    does not parse (or is an exception from the reader) is counted as rejected and
    not sent; points the server rejects are counted from its acks.

    Args:
        client: a :class:`driftd.client.DriftClient`; its ``timeout`` bounds how
            long a restart may take.
        total: the number of rows, for the bar's percentage; None if unknown.

    Raises:
        DriftdError: the stream failed (e.g. NotFound: no such collection).
    """
    from driftd.client import parse_point

    stats = IngestStats()
    sent_lines: list[int] = []  # the line of each point given to the writer
    bar = progress_bar(total, desc)
    started = time.perf_counter()
    try:
        with client.writer(
            collection,
            batch_size=batch_size,
            on_ack=lambda ack: bar.update(ack.accepted + ack.rejected),
        ) as writer:
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
                writer.add(point)
        stats.accepted = writer.progress.accepted
        for err in writer.progress.errors:
            stats.reject(sent_lines[err.index], err.reason, _BATCH_INDEX.sub("", err.message))
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


def progress_bar(total: int | None, desc: str):
    """A tqdm bar on stderr (``update(n)``, ``close()``), or a silent stand-in
    when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="pt", unit_scale=True, file=sys.stderr)
