"""Benchmark of CompareWindows' statistics on planted Gaussian data in 384-d.

    python -m bench.drift [--trials 200] [--power-trials 100] [--workers 2]

Prints (1) the false-positive rate of the verdict over same-distribution trials,
(2) the power curve: the share of trials that flag drift when window B's mean
moves by s σ along 5 of the 384 dimensions, 500 points per window, and (3) the
time of one comparison and of its parts. Every trial has its own seed, so the
numbers are reproducible. Targets (issue 5): FPR <= 5 %, power >= 0.9 at 0.5 σ.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from driftd.monitor import drift

DIM = 384
SHIFTED_DIMS = 5
POINTS = 500
SHIFTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def windows(shift: float, seed: int, points: int = POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Two windows of standard Gaussian points; B's mean moved by ``shift`` σ in 5 dims."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((points, DIM))
    B = rng.standard_normal((points, DIM))
    B[:, :SHIFTED_DIMS] += shift
    return A, B


def trial(args: tuple[float, int]) -> tuple[float, bool]:
    """(MMD² p-value, verdict is drift) of one trial; runs in a worker process."""
    shift, seed = args
    r = drift.compare_windows(*windows(shift, seed), cosine=False, seed=seed)
    return r.p_value, r.verdict != "no_drift"


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@threadpool_limits.wrap(limits=1)
def timings(points: int, repeats: int) -> dict[str, float]:
    """Median seconds of one comparison and of its parts at ``points`` per window."""
    out: dict[str, list[float]] = {k: [] for k in ("total", "pca", "mmd", "ks", "classifier")}
    for seed in range(repeats):
        A, B = windows(0.0, 10_000 + seed, points)
        t = time.perf_counter()
        drift.compare_windows(A, B, cosine=False, seed=seed)
        out["total"].append(time.perf_counter() - t)
        t = time.perf_counter()
        Z, _ = drift.reduce_pooled(np.vstack([A, B]))
        out["pca"].append(time.perf_counter() - t)
        t = time.perf_counter()
        drift.mmd_permutation_test(Z, points, 500, seed)
        out["mmd"].append(time.perf_counter() - t)
        t = time.perf_counter()
        stats.ks_2samp(Z[:points], Z[points:], axis=0)
        out["ks"].append(time.perf_counter() - t)
        t = time.perf_counter()
        drift.domain_auc(Z, np.r_[np.zeros(points, bool), np.ones(points, bool)], seed)
        out["classifier"].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="same-distribution trials")
    parser.add_argument("--power-trials", type=int, default=100, help="trials per shift")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    args = parser.parse_args()
    print(
        f"drift bench: {DIM}-d standard Gaussian, {POINTS} points per window, defaults "
        f"(RBF median heuristic on PCA <= 128 dims, 500 permutations, alpha 0.01)"
    )
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        null = list(pool.map(trial, [(0.0, s) for s in range(args.trials)], chunksize=4))
        p = np.array([r[0] for r in null])
        k = sum(r[1] for r in null)
        lo, hi = wilson(k, args.trials)
        print(
            f"false-positive rate: {k}/{args.trials} = {k / args.trials:.3f} "
            f"(95 % CI {lo:.3f}-{hi:.3f}); at alpha 0.05 it would be "
            f"{(p <= 0.05).mean():.3f}; KS test of p-value uniformity p = "
            f"{stats.kstest(p, 'uniform').pvalue:.2f}"
        )
        print(
            f"power curve (mean shift along {SHIFTED_DIMS} dims, {args.power_trials} trials each):"
        )
        for shift in SHIFTS:
            seeds = range(
                1_000_000 * (1 + SHIFTS.index(shift)),
                1_000_000 * (1 + SHIFTS.index(shift)) + args.power_trials,
            )
            hits = sum(r[1] for r in pool.map(trial, [(shift, s) for s in seeds], chunksize=4))
            lo, hi = wilson(hits, args.power_trials)
            print(
                f"  {shift:.2f} σ: power {hits / args.power_trials:.2f} (95 % CI {lo:.2f}-{hi:.2f})"
            )
    print(f"trials took {time.perf_counter() - t0:.0f} s on {args.workers} processes")
    for points in (500, 2000):
        t = timings(points, 3 if points == 500 else 2)
        parts = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items() if k != "total")
        print(f"one comparison at {points} points per window: {t['total']:.2f} s ({parts})")


if __name__ == "__main__":
    main()
