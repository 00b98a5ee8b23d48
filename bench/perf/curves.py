"""The flow's cost curves (issue 18): at each size n (d = 384, the planted 3-well
system with 50 series, generated and cached under bench/.cache, not embedded),
the FlowField fit, the incremental refresh after a 1k-point append, one-point
probe p50/p99, a 1,000-step simulation, find_attractors(64), detect_chapters on
the whole time-ordered series, and the fitted model's arrays as a multiple of the
raw vectors (n x d x 4 bytes). In-process math with BLAS on one thread, as in the
engine's pool workers; no gRPC (that overhead is the table's business).

Each curve's growth is the log-log slope between consecutive sizes ("grows as
n^1.05"); it "stops being linear" at the first size where that slope exceeds 1.2.
Targets (issue 18) are checked at 1M points only: fit <= 60 s, refresh <= 1 s,
probe p99 <= 5 ms, attractors <= 5 s, chapters <= 30 s. Table on stdout and in
bench/results/perf_curves.txt, plot in bench/results/perf_curves.png.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from driftd.flow import FlowField, detect_chapters, find_attractors, simulate
from driftd.flow.planted import k_well_system

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
DEFAULT_SIZES = (10_000, 100_000)
APPEND = 1_000
PROBES = 300
LINEAR = 1.2
#: name -> (target at 1M points, unit); None: reported only.
TARGETS = {
    "fit": (60.0, "s"),
    "refresh": (1.0, "s"),
    "probe p50": (None, "ms"),
    "probe p99": (5.0, "ms"),
    "simulate 1,000": (None, "s"),
    "attractors": (5.0, "s"),
    "chapters": (30.0, "s"),
    "model / raw": (None, "x"),
}


def planted(n: int):
    """(X (n + APPEND, 384) float32, t, series) of the 3-well system, cached."""
    path = CACHE / f"perf-wells-{n}.npz"
    if path.exists():
        z = np.load(path)
        return z["X"], z["t"], z["series"]
    ps = k_well_system(n + APPEND, k=3, n_series=50, random_state=0)
    X = np.asarray(ps.X, dtype=np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, X=X, t=ps.t, series=ps.series)
    tmp.replace(path)
    return X, ps.t, ps.series


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(n: int) -> dict[str, float]:
    """One size's measurements, keyed as TARGETS."""
    X, t, series = planted(n)
    order = np.lexsort((np.arange(n), t[:n]))  # time order, as the engine feeds chapters
    with threadpool_limits(1):
        fit_s, field = _seconds(lambda: FlowField(random_state=0).fit(X[:n], t[:n], series[:n]))
        refresh_s, _ = _seconds(lambda: field.update(X[n:], t[n:], series[n:]))
        probes = []
        for i in range(PROBES):
            t0 = time.perf_counter()
            field.probe(X[i : i + 1])
            probes.append(time.perf_counter() - t0)
        probes.sort()
        sim_s, _ = _seconds(lambda: simulate(field, X[0], n_steps=1000))
        att_s, _ = _seconds(lambda: find_attractors(field, n_seeds=64))
        chap_s, _ = _seconds(lambda: detect_chapters(X[:n][order]))
    model = sum(v.nbytes for v in vars(field).values() if isinstance(v, np.ndarray))
    return {
        "fit": fit_s,
        "refresh": refresh_s,
        "probe p50": 1e3 * statistics.median(probes),
        "probe p99": 1e3 * probes[int(0.99 * (PROBES - 1))],
        "simulate 1,000": sim_s,
        "attractors": att_s,
        "chapters": chap_s,
        "model / raw": model / (n * X.shape[1] * 4),
    }


def growth(sizes: list[int], values: list[float]) -> list[float]:
    """Log-log slopes between consecutive sizes."""
    return [
        float(np.log(values[i + 1] / values[i]) / np.log(sizes[i + 1] / sizes[i]))
        for i in range(len(sizes) - 1)
    ]


def run(sizes: list[int]) -> list[str]:
    """Prints the table, saves the plot; returns the targets missed at 1M."""
    rows = {}
    for n in sizes:
        print(f"cost curves: n = {n:,} ...", flush=True)
        rows[n] = measure(n)
    lines = [
        "flow cost curves (d = 384, 3-well system, 50 series, BLAS 1 thread; targets at 1M):",
        "  "
        + f"{'':16s}"
        + "".join(f"{n:>12,}" for n in sizes)
        + "   growth (n^k per step)   target",
    ]
    missed = []
    for name, (target, unit) in TARGETS.items():
        vals = [rows[n][name] for n in sizes]
        k = growth(sizes, vals) if name != "model / raw" else []
        bend = next((sizes[i + 1] for i, s in enumerate(k) if s > LINEAR), None)
        mark = ""
        if target is not None:
            mark = f"<= {target:g} {unit}"
            if 1_000_000 in rows:
                ok = rows[1_000_000][name] <= target
                mark += " ok" if ok else " MISSED"
                if not ok:
                    missed.append(f"{name} at 1M")
        slopes = ", ".join(f"{s:.2f}" for s in k)
        if bend:
            slopes += f" (superlinear from {bend:,})"
        lines.append(
            f"  {name + ' (' + unit + ')':16s}"
            + "".join(f"{v:12.3f}" for v in vals)
            + f"   {slopes:22s}  {mark}"
        )
    print("\n" + "\n".join(lines), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf_curves.txt").write_text("\n".join(lines) + "\n")
    _plot(sizes, rows)
    return missed


def _plot(sizes: list[int], rows: dict[int, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, (_, unit) in TARGETS.items():
        if unit == "x":
            continue
        scale = 1e-3 if unit == "ms" else 1.0
        ax.loglog(sizes, [rows[n][name] * scale for n in sizes], marker="o", label=name)
    ax.set_xlabel("points (d = 384)")
    ax.set_ylabel("seconds")
    ax.set_title("driftd flow cost curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(RESULTS / "perf_curves.png", dpi=100, bbox_inches="tight")
    print(f"  plot: {RESULTS / 'perf_curves.png'}", flush=True)
