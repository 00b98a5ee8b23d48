"""Shared planted systems and fitted fields for the flow tests (fitted once per session).

BLAS runs single-threaded here: on a shared 2-core machine, multi-threaded OpenBLAS
spin-waits and made the suite ~10x slower (measured 100 s vs 10 s). The engine's
worker processes should do the same (see driftd.flow's package docstring).
"""

import pytest
from threadpoolctl import threadpool_limits

from driftd.flow import FlowField
from driftd.flow.planted import k_well_system, toggle_switch


@pytest.fixture(autouse=True)
def single_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def wells():
    """Three wells in a 4-d subspace of R^384, 6000 points in 10 series."""
    return k_well_system(6000, k=3, dim=384, random_state=0)


@pytest.fixture(scope="session")
def wells_field(wells):
    with threadpool_limits(limits=1, user_api="blas"):
        return FlowField(random_state=0).fit(wells.X, wells.t, wells.series)


@pytest.fixture(scope="session")
def toggle():
    """The genetic toggle switch lifted into R^384, 4000 points."""
    return toggle_switch(4000, dim=384, random_state=0)


@pytest.fixture(scope="session")
def toggle_field(toggle):
    with threadpool_limits(limits=1, user_api="blas"):
        return FlowField(random_state=0).fit(toggle.X, toggle.t, toggle.series)
