"""driftd.flow: the pure-math core (numpy, scipy, scikit-learn, ruptures; no I/O).

Everything here is picklable and deterministic under ``random_state``, so it can run
in a forkserver process pool: fit a :class:`FlowField` on a collection's vectors,
refresh it with appended points (:meth:`FlowField.update`), probe it,
:func:`simulate` paths, :func:`find_attractors`, :func:`detect_chapters`; a
:class:`FlowEnsemble` of bootstrap refits measures their uncertainty.

The heavy steps are BLAS bound. Cap BLAS threads in worker processes to the cores each
worker owns (``threadpoolctl.threadpool_limits(1)`` or ``OPENBLAS_NUM_THREADS=1`` in the
pool initializer): on a busy 2-core machine multi-threaded OpenBLAS spin-waits and the
flow tests ran ~10x slower (100 s vs 10 s).
"""

from driftd.flow.attractors import Attractor, find_attractors
from driftd.flow.chapters import Chapter, detect_chapters
from driftd.flow.ensemble import FlowEnsemble
from driftd.flow.field import MIN_POINTS, FlowField, InsufficientDataError, Probe, RefitRequired
from driftd.flow.simulate import Trajectory, simulate

__all__ = [
    "MIN_POINTS",
    "Attractor",
    "Chapter",
    "FlowEnsemble",
    "FlowField",
    "InsufficientDataError",
    "Probe",
    "RefitRequired",
    "Trajectory",
    "detect_chapters",
    "find_attractors",
    "simulate",
]
