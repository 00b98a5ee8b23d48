"""Shared fixtures: a real driftd server process on loopback over a real embedded
Chroma directory, with the real offline embedding model."""

from __future__ import annotations

import pytest
from support import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One driftd server for the session (tests use distinct collection names)."""
    root = tmp_path_factory.mktemp("driftd")
    srv = ServerProcess(root / "chroma", root / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    from driftd.client import DriftClient

    with DriftClient(server.target, timeout=120.0) as c:
        yield c
