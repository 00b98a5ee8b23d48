"""``python -m bench [name ...]``: run every benchmark package (or the named ones).

Each runs as ``python -m bench.<name>`` in its own process (its own BLAS settings and
memory), in alphabetical order; the exit status is non-zero if any of them failed.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def packages() -> list[str]:
    """Names of the subpackages of bench that can run as ``python -m bench.<name>``."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(ROOT)])
        if info.ispkg and importlib.util.find_spec(f"bench.{info.name}.__main__") is not None
    )


def main(argv: list[str]) -> int:
    available = packages()
    unknown = sorted(set(argv) - set(available))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    failed = []
    for name in argv or available:
        print(f"\n=== bench.{name} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT.parent).returncode
        print(f"=== bench.{name}: exit {code}, {time.perf_counter() - t0:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
