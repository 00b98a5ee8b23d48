"""Logging of the server: text or JSON lines, and the per-RPC access line.

``--log-format json`` (``DRIFTD_LOG_FORMAT=json``) writes one JSON object per line
with python-json-logger: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, ``trace_id`` inside a traced RPC, the exception's traceback as
``exc_info``, and any ``extra`` fields of the call. Each RPC ends with one line on
the ``driftd.access`` logger.

Records are handed to a thread through a queue (logging's QueueHandler and
QueueListener), which formats and writes them: the event loop never waits for
stderr (a full pipe to a log collector would stall every RPC).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

from driftd import tracing

#: The per-RPC access lines.
ACCESS = logging.getLogger("driftd.access")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Handoff(logging.handlers.QueueHandler):
    """Queues records as they are (exception info included, for the JSON
    formatter's ``exc_info``), their message resolved now."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        return record


class _TraceContext(logging.Filter):
    """Adds ``trace_id`` to records logged inside a traced span."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            trace_id = tracing.trace_id()
            if trace_id:
                record.trace_id = trace_id
        return True


def configure(level: str, fmt: str) -> Callable[[], None]:
    """Sends every log record at ``level`` or above to stderr as ``fmt`` ("json",
    else text), through a queue and a writer thread, replacing the root logger's
    handlers. Returns the function that flushes and stops the writer.

    Raises:
        ValueError: unknown level.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                ["levelname", "name", "message"],
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    records: queue.SimpleQueue = queue.SimpleQueue()
    handoff = _Handoff(records)
    handoff.addFilter(_TraceContext())  # runs in the caller's thread, where the span is current
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.setLevel(level.upper())
    root.addHandler(handoff)
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()

    def stop() -> None:
        listener.stop()
        root.removeHandler(handoff)

    return stop


def access_level(name: str) -> int | None:
    """The level of the access lines for setting ``access_log`` (a level name, or
    ``off``: None).

    Raises:
        ValueError: not a level name.
    """
    if name.strip().lower() == "off":
        return None
    level = logging.getLevelName(name.strip().upper())
    if not isinstance(level, int):
        raise ValueError(f"access_log must be a logging level or off, got {name!r}")
    return level
