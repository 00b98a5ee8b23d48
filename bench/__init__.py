"""driftd benchmarks: one package per capability, each runnable on its own.

``python -m bench`` (``make bench``) runs every package under ``bench/`` that has a
``__main__`` (``python -m bench.flow``, ``python -m bench.drift``, ...) in turn, each
in its own process, and prints their tables. Benchmarks measure driftd next to named
baselines in the same run and quote ratios; they are bench code, not the product.
"""
