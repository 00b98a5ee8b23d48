"""``python -m bench.flow [--quick] [--no-sotu] [--no-scale] [--no-serving]
[--serving-points N] [--sweep N]``: see bench/flow/__init__.py."""

from __future__ import annotations

import argparse
import sys
import time

from threadpoolctl import threadpool_limits

from bench.flow import scale, serving, sweep, systems
from bench.flow.table import render

WELLS = range(3, 9)
WELLS_QUICK = (3, 5)
# Points per well, per system: enough that every well is visited a few hundred times.
FULL = {"per_well": 3000, "toggle": 8000, "cycle": 12000, "lorenz": 12000}
QUICK = {"per_well": 2000, "toggle": 4000, "cycle": 4000, "lorenz": 4000}
REGIMES_FULL = ((5000, 25, 0), (20000, 50, 1))
REGIMES_QUICK = ((2000, 10, 0),)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small instances (a smoke run)")
    parser.add_argument("--no-sotu", action="store_true", help="skip the SOTU paragraphs")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale measurements")
    parser.add_argument(
        "--no-serving", action="store_true", help="skip the server memory and health measurements"
    )
    parser.add_argument(
        "--serving-points",
        type=int,
        default=None,
        help="points in the server measurements (default 100,000; 20,000 with --quick)",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        default=None,
        help="systems in the attractor robustness sweep (default 60; 12 with --quick; 0: none)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        rows = []
        for k in WELLS_QUICK if args.quick else WELLS:
            rows += systems.wells_rows(k, sizes["per_well"])
        rows += systems.toggle_rows(sizes["toggle"])
        rows += systems.cycle_rows(sizes["cycle"])
        rows += systems.lorenz_rows(sizes["lorenz"])
        for n, n_regimes, seed in REGIMES_QUICK if args.quick else REGIMES_FULL:
            rows += systems.regime_rows(n, n_regimes, seed)
        rows.append(systems.determinism_row())
        if not args.no_sotu:
            from bench.flow.sotu import sotu_rows

            rows += sotu_rows()
        print(render(rows), flush=True)
        checked = [r for r in rows if r.ok is not None]
        print(f"targets met: {sum(r.ok for r in checked)} of {len(checked)}")
        for r in checked:
            if not r.ok:
                print(f"  missed: {r.system}: {r.metric}")
        n_sweep = args.sweep if args.sweep is not None else (12 if args.quick else 60)
        if n_sweep:
            print()
            print("\n".join(sweep.sweep_lines(n_sweep)), flush=True)
        if not args.no_scale:
            print()
            sizes_scale = (5_000, 20_000) if args.quick else scale.SIZES
            print("\n".join(scale.scale_lines(repeats=1 if args.quick else 3, sizes=sizes_scale)))
            print("\n".join(scale.engine_refresh_lines(n=sizes_scale[-1])), flush=True)
            print("\n".join(scale.engine_uncertainty_lines(n=sizes_scale[-1])), flush=True)
            lines = scale.uncertainty_lines(repeats=1 if args.quick else 3, sizes=sizes_scale)
            print("\n".join(lines), flush=True)
    if not args.no_serving:  # a server process: BLAS as it configures it
        n = args.serving_points or (20_000 if args.quick else 100_000)
        print()
        print("\n".join(serving.serving_lines(n)), flush=True)
    print(f"\nbench.flow: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
