"""Storage failures as driftd errors: the one place that tells a storage outage or
a full volume from a bug.

- The Chroma server cannot be reached (connection refused or reset, timeout: the
  HTTP client's transport errors) -> :class:`Unavailable` (STORAGE_UNAVAILABLE),
  which clients retry.
- The embedded directory's volume is full -> :class:`ResourceExhausted`
  (STORAGE_FULL). Chroma does not say so (chromadb 1.5.9 on a full tmpfs: an
  ``InternalError`` "Error in compaction: Error purging logs", after which reads
  fail too until space is freed), so a write first checks the volume's free space
  against the batch (:func:`check_room`), and an error from Chroma while the volume
  is below the reserve is taken to be the full disk.

Anything else stays as it is: INTERNAL, a bug to fix.
"""

from __future__ import annotations

import errno
import functools
import os

import httpx

from driftd.errors import DriftdError, ResourceExhausted, Unavailable

#: Bytes on the volume per byte of a batch's data: Chroma writes its log, then the
#: metadata and vector segments, then compacts (measured ~2.5x on a tmpfs; with margin).
WRITE_AMPLIFICATION = 4
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the volume holding ``path``
    (its nearest existing ancestor); None when unknown."""
    while path and not os.path.exists(path):
        path = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_room(path: str | None, batch_bytes: int, reserve: int) -> None:
    """Raises ResourceExhausted(STORAGE_FULL) unless the volume of the embedded
    Chroma directory ``path`` (None: a Chroma server, unknown) keeps ``reserve``
    bytes free after a write of ``batch_bytes`` bytes of data."""
    if path is None:
        return
    free = free_bytes(path)
    required = WRITE_AMPLIFICATION * batch_bytes + reserve
    if free is not None and free < required:
        raise ResourceExhausted(
            f"the storage volume is full: {free} bytes free, a write of this size needs "
            f"{required} (with the server's reserve of {reserve})",
            reason="STORAGE_FULL",
            metadata={"free_bytes": free, "required_bytes": required},
        )


def translate(exc: BaseException, path: str | None, reserve: int) -> DriftdError | None:
    """The driftd error for a storage failure ``exc``, or None when it is not one.

    ``path``: the embedded Chroma directory (None for a Chroma server), whose
    volume below ``reserve`` free bytes marks an error as the full disk.
    """
    if isinstance(exc, DriftdError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return _full(path, str(exc))
    if isinstance(exc, httpx.TransportError | ConnectionError) or (
        isinstance(exc, ValueError) and "Could not connect to a Chroma server" in str(exc)
    ):
        return Unavailable(
            f"the storage cannot be reached: {exc or type(exc).__name__}",
            reason="STORAGE_UNAVAILABLE",
        )
    if path is not None:
        free = free_bytes(path)
        if free is not None and free < reserve:
            return _full(path, str(exc))
    return None


def _full(path: str | None, detail: str) -> ResourceExhausted:
    free = free_bytes(path) if path is not None else None
    return ResourceExhausted(
        f"the storage volume is full ({detail})",
        reason="STORAGE_FULL",
        metadata={} if free is None else {"free_bytes": free},
    )


def translated(fn, path: str | None, reserve: int):
    """``fn`` (no arguments) raising its storage failures as driftd errors."""

    @functools.wraps(fn)
    def call():
        try:
            return fn()
        except Exception as exc:
            err = translate(exc, path, reserve)
            if err is None or err is exc:
                raise
            raise err from exc

    return call
