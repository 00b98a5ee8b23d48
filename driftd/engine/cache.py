"""The in-memory trajectory of one collection: what the flow math is fed from.

Reading a collection back from Chroma for every request is far too slow (about
2 s per 20k points at d = 384), so each collection's vectors, times, series and
ids live here once loaded, and every write updates them in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from driftd.store.chroma import Columns


@dataclass(frozen=True)
class Snapshot:
    """An immutable time-ordered view of the cache at one version.

    ``rows`` (n,) int64 maps time-ordered position -> cache row (ties by
    insertion sequence); ``times`` (n,) float64 epoch seconds, ``series`` (n,)
    int32 codes into ``series_names``, ``ids`` (n,) object, all in time order.
    """

    version: int
    rows: np.ndarray
    times: np.ndarray
    series: np.ndarray
    series_names: tuple[str, ...]
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, start: datetime | None, end: datetime | None, series: str) -> np.ndarray:
        """Time-ordered positions in ``[start, end)`` and of ``series`` ("" = all)."""
        mask = np.ones(len(self.rows), dtype=bool)
        if start is not None:
            mask &= self.times >= start.timestamp()
        if end is not None:
            mask &= self.times < end.timestamp()
        if series:
            code = self.series_names.index(series) if series in self.series_names else -1
            mask &= self.series == code
        return np.flatnonzero(mask)


class TrajectoryCache:
    """Growable column store of one collection's points, keyed by id.

    Not thread-safe: the engine mutates it only from the event loop, after the
    corresponding Chroma write has returned.
    """

    def __init__(self, dimension: int, version: int) -> None:
        self.dimension = dimension
        self.version = version
        self._n = 0
        self._vectors = np.empty((0, dimension), dtype=np.float32)
        self._times = np.empty(0, dtype=np.float64)
        self._seqs = np.empty(0, dtype=np.int64)
        self._series = np.empty(0, dtype=np.int32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self.series_names: list[str] = []
        self._series_code: dict[str, int] = {}
        self._snapshot: Snapshot | None = None
        #: The last version that overwrote or removed rows present before it: a model
        #: fitted at a version >= this one saw rows that are all still unchanged, and
        #: rows after them have only been appended.
        self.rewrite_version = version

    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> np.ndarray:
        """(n, d) float32 rows in cache order (index with Snapshot.rows)."""
        return self._vectors[: self._n]

    def row_of(self, point_id: str) -> int | None:
        return self._row.get(point_id)

    def id_of_row(self, row: int) -> str:
        return self._ids[row]

    def time_of_row(self, row: int) -> float:
        return float(self._times[row])

    def nbytes(self) -> int:
        return int(
            self._vectors.nbytes + self._times.nbytes + self._seqs.nbytes + self._series.nbytes
        )

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        if need <= len(self._times):
            return
        cap = max(need, int(len(self._times) * 1.5) + 1024)
        for name in ("_vectors", "_times", "_seqs", "_series"):
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), dtype=old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _code(self, series: str) -> int:
        code = self._series_code.get(series)
        if code is None:
            code = self._series_code[series] = len(self.series_names)
            self.series_names.append(series)
        return code

    def upsert(self, cols: Columns, version: int) -> None:
        """Inserts new ids and overwrites existing ones."""
        self._grow(len(cols.ids))
        n_before = self._n
        for i, pid in enumerate(cols.ids):
            row = self._row.get(pid)
            if row is not None and row < n_before:
                self.rewrite_version = version
            if row is None:
                row = self._row[pid] = self._n
                self._ids.append(pid)
                self._n += 1
            self._vectors[row] = cols.vectors[i]
            self._times[row] = cols.times[i]
            self._seqs[row] = cols.seqs[i]
            self._series[row] = self._code(cols.series[i])
        self.version = version
        self._snapshot = None

    def delete(self, ids: list[str], version: int) -> int:
        """Removes ids (absent ones ignored) by moving the last row into each hole."""
        removed = 0
        for pid in ids:
            row = self._row.pop(pid, None)
            if row is None:
                continue
            last = self._n - 1
            if row != last:
                moved = self._ids[last]
                self._ids[row] = moved
                self._row[moved] = row
                for arr in (self._vectors, self._times, self._seqs, self._series):
                    arr[row] = arr[last]
            self._ids.pop()
            self._n -= 1
            removed += 1
        if removed:
            self.rewrite_version = version
        self.version = version
        self._snapshot = None
        return removed

    def snapshot(self) -> Snapshot:
        """The time-ordered view at the current version (computed once per version)."""
        if self._snapshot is None:
            n = self._n
            rows = np.lexsort((self._seqs[:n], self._times[:n])).astype(np.int64)
            ids = np.empty(n, dtype=object)
            ids[:] = self._ids
            self._snapshot = Snapshot(
                version=self.version,
                rows=rows,
                times=self._times[:n][rows].copy(),
                series=self._series[:n][rows].copy(),
                series_names=tuple(self.series_names),
                ids=ids[rows],
            )
        return self._snapshot

    def span(self) -> tuple[float, float] | None:
        """(earliest, latest) epoch seconds, None when empty."""
        if self._n == 0:
            return None
        t = self._times[: self._n]
        return float(t.min()), float(t.max())

    def series_count(self) -> int:
        if self._n == 0:
            return 0
        return int(np.unique(self._series[: self._n]).size)

    def series_size(self, series: str) -> int:
        """Number of points of ``series`` (0 for an unknown one)."""
        code = self._series_code.get(series)
        if code is None:
            return 0
        return int(np.count_nonzero(self._series[: self._n] == code))
