"""Scale (issue 3, section 6, measured only): fit time at 20k and 100k points in 384-d,
probe latency, a 1,000-step simulation, find_attractors(64) and the model's memory;
the incremental refresh after a 1k-point upsert (target <= 0.5 s), in the flow math
and end to end through the engine.

Data: the planted 3-well system with 50 series; the 1k upserted points are the next
ones of every series. Times are medians of ``repeats`` runs with BLAS on one thread,
as in the engine's workers.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import tempfile
import time
from datetime import UTC, datetime
from functools import partial

import numpy as np
from prometheus_client import REGISTRY

from driftd.config import Settings
from driftd.engine.db import AsyncDriftDB
from driftd.flow import FlowEnsemble, FlowField, find_attractors, simulate
from driftd.flow.planted import k_well_system

SIZES = (20_000, 100_000)
PROBES = 200
UPSERT = 1_000
AFTER_PROBES = 10
_ENGINE_BATCH = 10_000


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
        # UPSERT more points than fitted: the last ones are the refresh's upsert.
        ps = k_well_system(n + UPSERT, k=3, n_series=50, random_state=0)

        def fit(ps=ps, n=n):
            return FlowField(random_state=0).fit(ps.X[:n], ps.t[:n], ps.series[:n])

        secs, field = _median_seconds(fit, repeats)
        lines.append(
            f"  n={n:>7,}  fit {secs:6.2f} s  rank {field.rank_}  centres {len(field.centers_)}"
            f"  model arrays {_model_bytes(field) / 2**20:6.1f} MiB"
            f"  pickled {len(pickle.dumps(field)) / 2**20:6.1f} MiB"
        )
    lines.append(_refresh_line(field, ps, repeats, secs))
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
        f"  n={len(field.Z_):,} model: probe 1 point {1e3 * statistics.median(probe_times):.2f} ms"
        f" (median of {PROBES}), 1,000 points {1e3 * batch:.0f} ms",
        f"  simulate 1,000 steps {sim:.2f} s ({len(traj.times) - 1} steps, {traj.stop_reason})",
        f"  find_attractors(n_seeds=64) {att:.2f} s"
        f" ({sum(a.stability == 'stable' for a in found)} stable of {len(found)})",
    ]
    return lines


def _refresh_line(field: FlowField, ps, repeats: int, fit_seconds: float) -> str:
    """FlowField.update with the UPSERT points after ``field``'s data, against a full
    refit on all of them."""
    n = len(field.Z_)
    new = ps.X[n:], ps.t[n:], ps.series[n:]
    secs, updated = _median_seconds(lambda: field.update(*new), repeats)
    full = FlowField(random_state=0).fit(ps.X, ps.t, ps.series)
    V, V_full = updated.predict(ps.X), full.predict(ps.X)
    cosine = np.mean(
        np.einsum("ij,ij->i", V, V_full)
        / np.linalg.norm(V, axis=1)
        / np.linalg.norm(V_full, axis=1)
    )
    return (
        f"  n={n:,} + {UPSERT:,} upserted: incremental refresh {secs:.3f} s"
        f" ({fit_seconds / secs:.0f}x faster than the full fit), velocity cosine"
        f" {cosine:.4f} vs a full refit on all {len(ps.X):,}"
    )


def _fit_metric(kind: str) -> tuple[float, float]:
    """(count, total seconds) of the engine's flow fits of one kind so far."""
    count, total = (
        REGISTRY.get_sample_value(f"driftd_flow_fit_seconds_{part}", {"kind": kind}) or 0.0
        for part in ("count", "sum")
    )
    return count, total


def engine_refresh_lines(n: int = 100_000, repeats: int = 3) -> list[str]:
    """End to end through AsyncDriftDB in-process (embedded Chroma in a temporary
    directory, default pool): upsert n points, ProbeFlow (the full fit), then
    ``repeats`` times: upsert UPSERT points after every series' end and time the next
    ProbeFlow, which pays the refresh (with the ensemble carried over); the refresh's
    own time is the engine's driftd_flow_fit_seconds{kind="incremental"}. Then
    AFTER_PROBES more ProbeFlows on the refreshed model: the slowest shows whether a
    worker that did not refresh still had to build an ensemble."""
    ps = k_well_system(n + repeats * UPSERT, k=3, n_series=50, random_state=0)
    points = [
        {
            "id": f"p{i}",
            "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
            "vector": ps.X[i],
            "series": f"s{ps.series[i]}",
        }
        for i in range(len(ps.X))
    ]

    async def run() -> tuple[float, list[float], list[float], list[float], int]:
        with tempfile.TemporaryDirectory() as path:
            db = await AsyncDriftDB.open(Settings.from_env(chroma_path=path))
            try:
                await db.create_collection("scale", dim=ps.X.shape[1])
                for lo in range(0, n, _ENGINE_BATCH):
                    await db.upsert("scale", points[lo : min(lo + _ENGINE_BATCH, n)])
                t0 = time.perf_counter()
                await db.flow_vector("scale", vector=ps.X[0])
                fit = time.perf_counter() - t0
                probe, refresh, later = [], [], []
                for lo in range(n, len(points), UPSERT):
                    await db.upsert("scale", points[lo : lo + UPSERT])
                    count, total = _fit_metric("incremental")
                    t0 = time.perf_counter()
                    await db.flow_vector("scale", vector=ps.X[0])
                    probe.append(time.perf_counter() - t0)
                    after = _fit_metric("incremental")
                    if after[0] != count + 1:
                        raise RuntimeError("the engine refitted instead of refreshing")
                    refresh.append(after[1] - total)
                    for i in range(1, AFTER_PROBES + 1):
                        t0 = time.perf_counter()
                        await db.flow_vector("scale", vector=ps.X[i])
                        later.append(time.perf_counter() - t0)
                return fit, probe, refresh, later, db.settings.workers
            finally:
                await db.close()

    fit, probe, refresh, later, workers = asyncio.run(run())
    return [
        f"  engine (in-process, embedded Chroma, {workers} pool workers), n={n:,}:"
        f" first ProbeFlow (full fit + ensemble) {fit:.2f} s; after a {UPSERT:,}-point"
        f" upsert the model refresh takes {statistics.median(refresh):.3f} s and the"
        f" whole ProbeFlow {statistics.median(probe):.3f} s (medians of {len(refresh)},"
        f" max {max(probe):.3f} s); the next {AFTER_PROBES} ProbeFlows"
        f" p50 {1e3 * statistics.median(later):.0f} ms, max {1e3 * max(later):.0f} ms"
    ]


def uncertainty_lines(repeats: int = 3, sizes=SIZES, replicates: int = 8) -> list[str]:
    """The bootstrap ensemble (issue 3, section 4) in the flow math, per size: its build
    (what the first uncertainty request on a worker pays), a 1-point probe with
    confidence (median and p99 of PROBES), the engine's first SimulatePaths chunk
    (50 steps: the first step's latency) and 1,000 steps with the band, and
    find_attractors(64) measuring reproducibility on the built ensemble."""
    lines = [f"uncertainty: ensemble of {replicates} refits, same systems, medians of {repeats}"]
    for n in sizes:
        ps = k_well_system(n, k=3, n_series=50, random_state=0)
        field = FlowField(random_state=0).fit(ps.X, ps.t, ps.series)
        build, ens = _median_seconds(
            partial(FlowEnsemble(replicates, random_state=0).fit, field), repeats
        )
        probe_times = []
        for i in range(PROBES):
            t0 = time.perf_counter()
            ens.probe(ps.X[i : i + 1])
            probe_times.append(time.perf_counter() - t0)
        x0 = ps.X[0]
        first, _ = _median_seconds(partial(simulate, field, x0, n_steps=50, ensemble=ens), repeats)
        sim, traj = _median_seconds(
            partial(simulate, field, x0, n_steps=1000, ensemble=ens), repeats
        )
        att, found = _median_seconds(
            partial(find_attractors, field, n_seeds=64, ensemble=ens), repeats
        )
        lines += [
            f"  n={n:>7,}  ensemble build {build:5.2f} s"
            f"  probe+confidence p50 {1e3 * statistics.median(probe_times):.2f} ms"
            f" p99 {1e3 * np.quantile(probe_times, 0.99):.2f} ms",
            f"  {'':>9}  simulate with band: 50 steps {1e3 * first:.0f} ms,"
            f" 1,000 steps {sim:.2f} s ({len(traj.times) - 1} steps, {traj.stop_reason},"
            f" final band radius {traj.band_radius[-1]:.4f})",
            f"  {'':>9}  find_attractors(64) with reproducibility {att:.2f} s ("
            + ", ".join(f"{a.stability} {a.reproducibility:.2f}" for a in found)
            + ")",
        ]
    return lines


def engine_uncertainty_lines(n: int = 100_000, probes: int = PROBES) -> list[str]:
    """End to end through AsyncDriftDB in-process (embedded Chroma in a temporary
    directory, default pool): the first ProbeFlow (fit, then the ensemble build on
    the worker that runs it), ``probes`` more ProbeFlows (each worker builds its own
    ensemble on first use: the max shows that cold start), SimulatePaths' first step
    and 1,000 steps with the band, FindAttractors(64) uncached (seed 1, built
    ensembles) and cached (the default call, again)."""
    ps = k_well_system(n, k=3, n_series=50, random_state=0)
    points = [
        {
            "id": f"p{i}",
            "timestamp": datetime.fromtimestamp(float(ps.t[i]), UTC),
            "vector": ps.X[i],
            "series": f"s{ps.series[i]}",
        }
        for i in range(n)
    ]

    async def timed(coro) -> tuple[float, object]:
        t0 = time.perf_counter()
        out = await coro
        return time.perf_counter() - t0, out

    async def run() -> list[str]:
        with tempfile.TemporaryDirectory() as path:
            db = await AsyncDriftDB.open(Settings.from_env(chroma_path=path))
            try:
                await db.create_collection("scale", dim=ps.X.shape[1])
                for lo in range(0, n, _ENGINE_BATCH):
                    await db.upsert("scale", points[lo : lo + _ENGINE_BATCH])
                cold, _ = await timed(db.flow_vector("scale", vector=ps.X[0]))
                warm = [
                    (await timed(db.flow_vector("scale", vector=ps.X[i])))[0]
                    for i in range(1, probes + 1)
                ]
                steps = db.flow_simulate("scale", point_id="p0", steps=1000)
                t0 = time.perf_counter()
                await anext(steps)
                first = time.perf_counter() - t0
                count = 1 + len([s async for s in steps])
                sim = time.perf_counter() - t0
                att, _ = await timed(db.flow_attractors("scale", seeds=64, seed=1))
                att_default, _ = await timed(db.flow_attractors("scale", seeds=64))
                cached, _ = await timed(db.flow_attractors("scale", seeds=64))
                workers, size = db.settings.workers, db.settings.ensemble_size
            finally:
                await db.close()
        return [
            f"  engine (in-process, embedded Chroma, {workers} pool workers, ensemble of"
            f" {size}), n={n:,}: first ProbeFlow (fit + ensemble) {cold:.2f} s;"
            f" next {probes}: p50 {1e3 * statistics.median(warm):.1f} ms,"
            f" p99 {1e3 * np.quantile(warm, 0.99):.1f} ms, max {1e3 * max(warm):.0f} ms",
            f"    SimulatePaths first step {1e3 * first:.0f} ms, {count} steps {sim:.2f} s;"
            f" FindAttractors(64) seed 1 {att:.2f} s, default {att_default:.2f} s,"
            f" cached {1e3 * cached:.0f} ms",
        ]

    return asyncio.run(run())
