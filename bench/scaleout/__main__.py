"""``python -m bench.scaleout [--collections N] [--points N] [--dim D] [--ingest-points N]``:
see bench/scaleout/scaleout.py."""

import sys

from bench.scaleout.scaleout import main

if __name__ == "__main__":
    sys.exit(main())
