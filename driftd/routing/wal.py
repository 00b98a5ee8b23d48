"""The routing write-ahead log: routed messages are durable here first, then
moved to Chroma in batches.

Why: one Chroma ``add`` of a single record measured p50 15 ms / p99 40 ms on a
20,000-message store on 2 cores (its write pipeline does several fsyncs and an
index update per call), which alone exceeds RouteMessage's latency budget,
while an fsync'd append is ~0.3 ms and a batched add costs ~0.5 ms per record.
So RouteMessage appends its record here and answers; a background task moves
pending records to Chroma (one ``upsert`` per batch), and every read of Chroma
first drains what is pending. At start-up the log is replayed into Chroma
(upserts are idempotent), so an acknowledged message survives a crash.

Only with embedded Chroma: the log sits in the Chroma directory, on the same
volume, and the one process that owns that directory replays it. With a Chroma
server (``DRIFTD_CHROMA_URL``, several replicas) there is no log: a replica's
local file would hide acknowledged messages from the other replicas until moved,
and die with the pod, so each message is written to Chroma before it is
acknowledged (see :class:`driftd.routing.engine.RoutingEngine`).

Format: JSON lines ``{"id", "embedding" (base64 float32), "metadata",
"document"}``. A torn last line (a crash mid-append) is skipped on replay.
Blocking methods: the engine calls them on its own log thread.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from driftd.store.system import StoredRecord

log = logging.getLogger(__name__)


def encode(record: StoredRecord) -> dict:
    """A log line's JSON object for ``record`` (its embedding as base64 float32)."""
    raw = np.asarray(record.embedding, dtype=np.float32).tobytes()
    return {
        "id": record.id,
        "embedding": base64.b64encode(raw).decode("ascii"),
        "metadata": record.metadata,
        "document": record.document,
    }


def decode(line: dict) -> StoredRecord:
    """The record of a log line's JSON object; its embedding (d,) float32."""
    return StoredRecord(
        line["id"],
        line["metadata"],
        line["document"],
        np.frombuffer(base64.b64decode(line["embedding"]), dtype=np.float32),
    )


class WriteAheadLog:
    """An append-only, fsync'd file of records, truncated once all are in Chroma.

    ``appended`` counts records appended since the file was last emptied, so
    :meth:`truncate` can refuse when newer records arrived.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.appended = 0
        self._file: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
        return self._file

    def append(self, record: StoredRecord) -> int:
        """Writes and fsyncs one record; returns its 1-based number in the file."""
        f = self._open()
        f.write(json.dumps(encode(record), separators=(",", ":")).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        self.appended += 1
        return self.appended

    def read(self) -> list[StoredRecord]:
        """Every complete record in the file, in order (torn lines skipped); sets
        ``appended`` to the file's line count, so replaying them all and calling
        :meth:`truncate` with that count empties the file."""
        if not self.path.exists():
            return []
        records, n = [], 0
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    records.append(decode(json.loads(line)))
                except (ValueError, KeyError):
                    log.warning("%s: skipping unreadable line %d (torn write)", self.path, n)
        self.appended = n
        return records

    def truncate(self, flushed: int) -> bool:
        """Empties the file if its ``flushed`` first records are all it holds."""
        if flushed != self.appended:
            return False
        f = self._open()
        f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
        self.appended = 0
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
