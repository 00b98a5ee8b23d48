"""Performance at scale (issue 18): driftd over gRPC against raw Chroma and
fastembed measured by the same process, ghz load at concurrency 1/8/32, and the
flow's cost curves from 10k to 1M points (``python -m bench.perf --help``)."""
