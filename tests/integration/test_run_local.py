"""`make run`'s script: starts the local system, shows calls and pushes, leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import ROOT


def run_local(run_dir: Path) -> str:
    """Runs `make run`'s script for two demo rounds; its output."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_local.py"),
            "--gate-listen=127.0.0.1:0",
            "--http-listen=127.0.0.1:0",
            "--rounds=2",
            f"--run-dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_run_local_shows_calls_and_pushes_and_stops_cleanly(tmp_path: Path) -> None:
    """The gate on a free port (the default is 7100), the node on a unix socket, metrics on
    free ports: what `make run` starts, it reports, and stops without leftovers; its state
    (SQLite in the run directory) survives into the next run."""
    out = run_local(tmp_path)
    assert "Counter/apples.Increment: 2" in out
    assert "alice <- push   lobby" in out
    assert "bob <- push   lobby" in out
    assert f"object state: sqlite:{tmp_path / 'state.db'}" in out
    for name in ("node-0", "gate"):
        assert f"{name} exited with code 0" in out
    assert "metrics: http://127.0.0.1:" in out
    assert "/web/chat.html" in out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    leftovers = [line for line in ps.stdout.splitlines() if str(tmp_path) in line]
    assert leftovers == []
    assert not list(tmp_path.glob("*.ready"))
    again = run_local(tmp_path)
    assert "Counter/apples.Increment: 4" in again, again
