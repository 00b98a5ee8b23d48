"""Drift-detection benchmark: ``python -m bench.drift``."""
