"""The library from a plain script with top-level calls (no ``__main__`` guard),
``python -c``, ``python -m``, stdin and an interactive shell (issue 13, defect 11):
the math workers must not re-run the user's main module. Each case is a real
Python subprocess that fits a flow in the pool."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from driftd import DriftDB

    print("main module ran")
    db = DriftDB({path!r}, workers=1, metrics_port=0)
    db.create_collection("plain", dim=4, embed_model="")
    rng = np.random.default_rng(0)
    db.upsert("plain", [
        {{"id": str(i), "timestamp": f"2024-01-01T{{i // 60:02d}}:{{i % 60:02d}}:00Z",
          "vector": rng.normal(size=4).tolist()}}
        for i in range(60)
    ])
    print("speed", db.flow_vector("plain", point_id="3").speed > 0)
    db.close()
    """
)


def _check(result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "speed True" in result.stdout, out[-3000:]
    # Exactly once: no worker re-ran the user's code.
    assert result.stdout.count("main module ran") == 1, out[-3000:]


@pytest.mark.parametrize("how", ["script", "module", "-c", "stdin", "interactive"])
def test_top_level_calls_work(tmp_path, how):
    code = SCRIPT.format(path=str(tmp_path / "data"))
    (tmp_path / "user_script.py").write_text(code)
    args, stdin = {
        "script": ([str(tmp_path / "user_script.py")], None),
        "module": (["-m", "user_script"], None),
        "-c": (["-c", code], None),
        "stdin": (["-"], code),
        "interactive": (["-i", "-q"], code + "\nexit()\n"),
    }[how]
    result = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(result)
