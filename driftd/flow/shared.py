"""Big NumPy arrays for the math workers, through POSIX shared memory.

ProcessPoolExecutor pickles a task's arguments in a thread of the server process
that holds the GIL throughout the copies: a 100k x 384 float32 array (154 MB)
stalled the event loop for ~100 ms per task (measured with a 1 ms ticker), and so
every health check and RPC waiting behind it. Instead the server copies such an
array into a shared-memory block on a thread, a chunk of rows at a time so the
GIL is released in between (:func:`share`), and the task carries only a
:class:`SharedArray` naming the block; :func:`call`, run in the worker, hands the
task a private copy. The server unlinks the block once the task is done.

Results travel back the same way. A fitted model and its ensemble are ~25 MB at
100k points, and a result that size took 0.14-0.24 s through the executor's pipe
(pickled, sent in 64 KiB writes, unpickled on the server's result thread).
:func:`call` pickles the result with protocol 5 (PEP 574), its big buffers out of
band in one shared-memory block, and returns a :class:`SharedResult`;
:func:`unpack`, on a server thread, copies the buffers out, unlinks the block and
unpickles.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

#: Bytes copied per step: small enough that the GIL is never held for long.
CHUNK_BYTES = 1 << 20
#: Results whose out-of-band buffers reach this many bytes come back through shared memory.
RESULT_BYTES = 1 << 20


@dataclass(frozen=True)
class SharedArray:
    """A NumPy array in the shared-memory block ``name``: shape, dtype string."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def share(source: np.ndarray, index: np.ndarray | None = None) -> tuple[SharedArray, SharedMemory]:
    """Copies ``source`` (n, ...), or its rows ``source[index]`` (``index`` (m,) int),
    into a new shared-memory block, CHUNK_BYTES at a time. Run it on a thread.

    Returns the block's descriptor and the block; the caller closes and unlinks the
    block once the task that reads it has finished.

    Raises:
        OSError: no room for the block (ENOSPC: a container's /dev/shm is 64 MiB
            unless enlarged); the space is reserved up front, so a full tmpfs
            fails here instead of killing the process with SIGBUS on a write.
    """
    n = len(source) if index is None else len(index)
    shape = (n, *source.shape[1:])
    dtype = source.dtype
    size = max(1, int(np.prod(shape)) * dtype.itemsize)
    block = SharedMemory(create=True, size=size)
    try:
        _reserve(block, size)
        out = np.ndarray(shape, dtype, buffer=_view(block))
        row_bytes = max(1, out[0].nbytes) if n else 1
        step = max(1, CHUNK_BYTES // row_bytes)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            if index is None:
                out[lo:hi] = source[lo:hi]
            else:  # take releases the GIL while it gathers
                np.take(source, index[lo:hi], axis=0, out=out[lo:hi])
        del out  # the block cannot close while a view exports its buffer
    except BaseException:
        block.close()
        block.unlink()
        raise
    return SharedArray(block.name, shape, dtype.str), block


def _load(value):
    if not isinstance(value, SharedArray):
        return value
    block = SharedMemory(name=value.name)
    try:
        view = np.ndarray(value.shape, np.dtype(value.dtype), buffer=_view(block))
        array = view.copy()  # the task may keep it; the block goes when the task ends
        del view
    finally:
        block.close()
    return array


@dataclass(frozen=True)
class SharedResult:
    """A task's result: ``data`` its protocol-5 pickle, whose out-of-band buffers of
    ``sizes`` bytes lie back to back in the shared-memory block ``name``."""

    data: bytes
    name: str
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class Ran:
    """What :func:`call` returns: the task's result (or its :class:`SharedResult`)
    and when the worker started and finished it (``time.time_ns()``, one clock for
    every process of the host), so the server can tell queue wait from run time."""

    result: Any
    started_ns: int
    ended_ns: int


def call(fn, args: tuple, kwargs: dict) -> Ran:
    """Runs ``fn(*args, **kwargs)`` (in a worker) with every :class:`SharedArray`
    argument replaced by a private copy of its array. Returns the result, or a
    :class:`SharedResult` when its buffers reach RESULT_BYTES and shared memory has
    room for them (the caller passes it to :func:`unpack` or :func:`release`), in a
    :class:`Ran` with the worker's start and end times."""
    started = time.time_ns()
    result = fn(*(_load(a) for a in args), **{k: _load(v) for k, v in kwargs.items()})
    return Ran(_pack(result), started, time.time_ns())


def _pack(result: Any) -> Any:
    """``result``, or a :class:`SharedResult` holding its big buffers."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    total = sum(r.nbytes for r in raws)
    if total < RESULT_BYTES:
        return result
    try:
        block = SharedMemory(create=True, size=total)
    except OSError:  # no room in /dev/shm: the executor pickles it
        return result
    try:
        _reserve(block, total)
        view, offset = _view(block), 0
        for raw in raws:
            view[offset : offset + raw.nbytes] = raw
            offset += raw.nbytes
    except OSError:
        block.close()
        block.unlink()
        return result
    block.close()
    return SharedResult(data, block.name, tuple(r.nbytes for r in raws))


def unpack(result):
    """The object a task returned: ``result`` itself, or for a :class:`SharedResult`
    its unpickled object, with private copies of the buffers (the block is unlinked).
    Run it on a thread: it copies the buffers."""
    if not isinstance(result, SharedResult):
        return result
    block = SharedMemory(name=result.name)
    try:
        buffers, offset, view = [], 0, _view(block)
        for size in result.sizes:
            buffers.append(bytearray(view[offset : offset + size]))
            offset += size
    finally:
        block.close()
        block.unlink()
    return pickle.loads(result.data, buffers=buffers)


def release(result) -> None:
    """Frees the block of a :class:`SharedResult` that nobody will unpack."""
    if isinstance(result, SharedResult):
        block = SharedMemory(name=result.name)
        block.close()
        block.unlink()


def _view(block: SharedMemory) -> memoryview:
    """The block's memory (None only once the block is closed)."""
    if block.buf is None:
        raise ValueError(f"shared memory block {block.name} is closed")
    return block.buf


def _reserve(block: SharedMemory, size: int) -> None:
    """Allocates the block's ``size`` bytes now where the OS can (posix_fallocate),
    so a full /dev/shm fails here with OSError rather than with SIGBUS on a write.
    The descriptor is CPython's private ``_fd`` of a POSIX SharedMemory."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(block._fd, 0, size)  # type: ignore[attr-defined]
