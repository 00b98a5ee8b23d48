"""Timeline preprocessing: tied timestamps.

Coarse clocks tie consecutive observations (all paragraphs of a speech carry the
speech's date), yet their order is real. A flow needs a positive time step per
transition, so a run of n tied points of one series is spread evenly over the
clock's resolution: offsets k·q/n, k = 0..n-1, with q the resolution (the
largest of one day, hour, minute or second that divides every timestamp) and
never past the series' next distinct time.
"""

from __future__ import annotations

import numpy as np

_RESOLUTIONS = (86_400.0, 3_600.0, 60.0, 1.0)


def clock_resolution(t: np.ndarray) -> float:
    """The largest of 1 day/hour/minute/second dividing every time (seconds); 0 if none."""
    for q in _RESOLUTIONS:
        if np.all(np.mod(t, q) == 0):
            return q
    return 0.0


def spread_ties(t, series=None, resolution: float | None = None) -> np.ndarray:
    """Times (n,) float64 seconds with ties within a series spread over the resolution.

    Args:
        t: (n,) times in seconds, in sequence order within each series.
        series: (n,) int codes, or None for one series.
        resolution: the clock's resolution in seconds; None: that of ``t``.

    Returns:
        (n,) float64; unchanged where there are no ties or the clock has sub-second
        resolution. Order within each series is preserved.
    """
    t = np.asarray(t, dtype=np.float64)
    series = np.zeros(len(t), dtype=np.int64) if series is None else np.asarray(series)
    q = clock_resolution(t) if resolution is None else resolution
    out = t.copy()
    if q == 0.0 or len(t) < 2:
        return out
    order = np.lexsort((np.arange(len(t)), series))  # by series, keeping sequence order
    ts, ss = t[order], series[order]
    new_run = np.ones(len(ts), dtype=bool)
    new_run[1:] = (ts[1:] != ts[:-1]) | (ss[1:] != ss[:-1])
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.append(starts, len(ts)))
    for start, n in zip(starts, lengths, strict=True):
        if n == 1:
            continue
        end = start + n
        room = q
        if end < len(ts) and ss[end] == ss[start]:
            room = min(q, ts[end] - ts[start])
        out[order[start:end]] = ts[start] + np.arange(n) * (room / n)
    return out


def spread_appended(t_old, series_old, t_new, series_new) -> np.ndarray | None:
    """Spread times (m,) of rows appended to a timeline, as :func:`spread_ties` gives
    them on the whole timeline, provided that leaves every old row's spread time as it
    was; None otherwise.

    Args:
        t_old: (n,) times in seconds of the timeline (n >= 1), in sequence order per
            series.
        series_old: (n,) int codes.
        t_new: (m,) times of the appended rows, in sequence order per series; they
            follow all old rows in sequence order.
        series_new: (m,) int codes.

    Old rows keep their spread times exactly when the clock resolution stays the same
    and, on a clock coarser than a second, every new row is later than its series' last
    old time (a tie would join that run and respread it; distinct multiples of the
    resolution leave a run its full room).
    """
    t_old, t_new = np.asarray(t_old, np.float64), np.asarray(t_new, np.float64)
    series_old, series_new = np.asarray(series_old), np.asarray(series_new)
    q = clock_resolution(t_old)
    if q and clock_resolution(t_new) < q:
        return None
    codes, rev = np.unique(series_old[::-1], return_index=True)
    last = t_old[::-1][rev]  # each series' last old time
    k = np.minimum(np.searchsorted(codes, series_new), len(codes) - 1)
    continued = codes[k] == series_new
    behind = t_new <= last[k] if q else t_new < last[k]
    if np.any(continued & behind):
        return None
    return spread_ties(t_new, series_new, resolution=q)
