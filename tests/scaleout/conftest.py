"""Fixtures of the scale-out tests: a real Chroma server (``chroma run``, the
chromadb package's CLI) on a loopback port (:class:`support.ChromaServer`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ChromaServer


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    """One Chroma server for the module, on a fresh directory."""
    root = tmp_path_factory.mktemp("chroma-server")
    srv = ChromaServer(root / "data", root / "chroma.log").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture
def chroma_factory(tmp_path):
    """Starts Chroma servers on given directories; stops them after the test."""
    started: list[ChromaServer] = []

    def start(path: Path) -> ChromaServer:
        srv = ChromaServer(path, tmp_path / f"chroma-{len(started)}.log")
        started.append(srv)
        return srv.wait_ready()

    yield start
    for srv in started:
        srv.stop()
