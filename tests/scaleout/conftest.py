"""Fixtures of the scale-out tests: a real Chroma server (``chroma run``, the
chromadb package's CLI) on a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import free_port


class ChromaServer:
    """``chroma run`` (the chromadb package's CLI) on a loopback port."""

    def __init__(self, path: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        chroma = Path(sys.executable).parent / "chroma"
        exe = str(chroma) if chroma.exists() else shutil.which("chroma")
        assert exe, "the chroma CLI (chromadb package) is not installed"
        self._log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def wait_ready(self, timeout: float = 60.0) -> ChromaServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"chroma not answering after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


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
