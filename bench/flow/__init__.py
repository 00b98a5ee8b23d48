"""Flow benchmark (issue 3): planted systems, the SOTU paragraphs and scale.

``python -m bench.flow`` (``make bench-flow``) prints one table: for each planted
system (a) K wells, (b) toggle switch, (c) limit cycle, (d) Lorenz, (e) regime
switches, and for the SOTU paragraphs, driftd next to the original DriftDB method and
ruptures, with the metric, the issue's target, the time and the ratio; then the
attractor robustness sweep of issue 16 (bench/flow/sweep.py: K-well systems with
embedding-like isotropic noise, success rates per regime for driftd, the original
DriftDB method and a GMM-by-BIC baseline, and the issue's own K = 3 / K = 5 setup);
then the scale measurements; then a real server's resident memory at 100k points and
its health-check latency while the process pool is saturated (bench/flow/serving.py).
Everything is seeded; BLAS runs on one thread.
"""
