"""`make run`'s script: starts the local system, shows calls and pushes, leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import ROOT, free_port


def test_run_local_shows_calls_and_pushes_and_stops_cleanly(tmp_path: Path) -> None:
    node_ports = f"{free_port()},{free_port()}"
    gate_port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_local.py"),
            f"--node-ports={node_ports}",
            f"--gate-port={gate_port}",
            f"--metrics-ports={free_port()},{free_port()},{free_port()}",
            "--rounds=2",
            f"--log-dir={tmp_path}",
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
    ports = [*node_ports.split(","), str(gate_port)]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    leftovers = [
        line
        for line in ps.stdout.splitlines()
        if "goverse-" in line and any(p in line for p in ports)
    ]
    assert leftovers == []
