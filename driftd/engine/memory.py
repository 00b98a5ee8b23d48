"""Handing freed heap memory back to the operating system (glibc).

Each upsert batch makes short-lived copies of its vectors: the request message,
one small array per point, the batch array, Chroma's conversions. Most are below
glibc's mmap threshold (which rises to 32 MiB after a big block is freed), so
they come from malloc's heaps, one per thread, and their pages stay resident
after they are freed. ``malloc_trim(0)`` returns the free pages of every arena:
upserting 100k points of d = 384 (154 MB of float32, batches of 10,000) grew a
server's RSS by 703 MB without it and by 545 MB with it (bench/flow/serving.py).
"""

from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")  # a CDLL call releases the GIL
    except OSError:  # not glibc (e.g. musl): nothing to do
        return None
    return getattr(libc, "malloc_trim", None)


_TRIM = _malloc_trim()


def trim() -> bool:
    """Returns the free pages of malloc's heaps to the OS (glibc ``malloc_trim(0)``).

    Takes a few milliseconds on a large heap and locks each arena meanwhile: call it
    on a worker thread, after large writes, not on the event loop. Returns False where
    it is unavailable (not Linux with glibc).
    """
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
