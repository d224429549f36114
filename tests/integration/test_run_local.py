"""`make run`'s script: starts the local system, shows calls and pushes, leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import ROOT


def test_run_local_shows_calls_and_pushes_and_stops_cleanly(tmp_path: Path) -> None:
    """The gate on a free port (the default is 7100), the nodes on unix sockets, metrics on
    free ports: what `make run` starts, it reports, and stops without leftovers."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_local.py"),
            "--gate-listen=127.0.0.1:0",
            "--rounds=2",
            f"--run-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Counter/apples.Increment: 2" in out
    assert "alice <- push   lobby" in out
    assert "bob <- push   lobby" in out
    for name in ("node-0", "node-1", "gate"):
        assert f"{name} exited with code 0" in out
    assert "metrics: http://127.0.0.1:" in out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    leftovers = [line for line in ps.stdout.splitlines() if str(tmp_path) in line]
    assert leftovers == []
    assert not list(tmp_path.glob("*.ready"))
