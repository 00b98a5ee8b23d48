"""Scale (issue 3, section 6, measured only): fit time at 20k and 100k points in 384-d,
probe latency, a 1,000-step simulation, find_attractors(64) and the model's memory.

Data: the planted 3-well system with 50 series. Times are medians of ``repeats`` runs
with BLAS on one thread, as in the engine's workers.
"""

from __future__ import annotations

import pickle
import statistics
import time

import numpy as np

from driftd.flow import FlowField, find_attractors, simulate
from driftd.flow.planted import k_well_system

SIZES = (20_000, 100_000)
PROBES = 200


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _model_bytes(field: FlowField) -> int:
    """Bytes of the numpy arrays a fitted field holds (what stays resident per model)."""
    return sum(v.nbytes for v in vars(field).values() if isinstance(v, np.ndarray))


def scale_lines(repeats: int = 3, sizes=SIZES) -> list[str]:
    """Measurements as printable lines."""
    lines = [f"scale: 3-well system, d=384, 50 series, medians of {repeats} (BLAS 1 thread)"]
    for n in sizes:
        ps = k_well_system(n, k=3, n_series=50, random_state=0)

        def fit(ps=ps):
            return FlowField(random_state=0).fit(ps.X, ps.t, ps.series)

        secs, field = _median_seconds(fit, repeats)
        lines.append(
            f"  n={n:>7,}  fit {secs:6.2f} s  rank {field.rank_}  centres {len(field.centers_)}"
            f"  model arrays {_model_bytes(field) / 2**20:6.1f} MiB"
            f"  pickled {len(pickle.dumps(field)) / 2**20:6.1f} MiB"
        )
    x = ps.X[:1]
    probe_times = []
    for i in range(PROBES):
        t0 = time.perf_counter()
        field.probe(ps.X[i : i + 1])
        probe_times.append(time.perf_counter() - t0)
    batch, _ = _median_seconds(lambda: field.probe(ps.X[:1000]), repeats)
    sim, traj = _median_seconds(lambda: simulate(field, x[0], n_steps=1000), repeats)
    att, found = _median_seconds(lambda: find_attractors(field, n_seeds=64), repeats)
    lines += [
        f"  n={len(ps.X):,} model: probe 1 point {1e3 * statistics.median(probe_times):.2f} ms"
        f" (median of {PROBES}), 1,000 points {1e3 * batch:.0f} ms",
        f"  simulate 1,000 steps {sim:.2f} s ({len(traj.times) - 1} steps, {traj.stop_reason})",
        f"  find_attractors(n_seeds=64) {att:.2f} s"
        f" ({sum(a.stability == 'stable' for a in found)} stable of {len(found)})",
    ]
    return lines
