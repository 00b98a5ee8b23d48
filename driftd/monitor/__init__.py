"""driftd.monitor: distribution drift, embedding health and live events.

Pure math, picklable for the engine's process pool (numpy, scipy, scikit-learn;
no grpc, no chromadb): :mod:`~driftd.monitor.drift` (two-sample tests between
time windows), :mod:`~driftd.monitor.health` (outliers, duplicates, norms,
rank, model mixing), :mod:`~driftd.monitor.bocpd` (online change points).
:mod:`~driftd.monitor.events` is the per-collection event ring buffer behind
WatchCollection, and :mod:`~driftd.monitor.monitor` runs all of it against an
engine. Nothing is imported here, so the engine can import the events hub
without loading scikit-learn.
"""
