"""Ready file: written whole, read back, stale files and dead processes noticed, waits bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from goverse.server import Ready, StartupError, wait_ready, write_ready

READY = Ready(
    service="gate",
    pid=os.getpid(),
    address="127.0.0.1:4242",
    listen="0.0.0.0:4242",
    port=4242,
    metrics_port=None,
    identity={"gate_id": "g1", "nodes": ["unix:/tmp/n.sock"]},
)


def test_what_is_written_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    write_ready(path, READY)
    assert wait_ready(path, 1.0, pid=os.getpid()) == READY
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no partial file left


def test_a_file_of_another_process_is_stale_and_waited_past(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    write_ready(path, READY)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_ready(path, 0.2, pid=os.getpid() + 1)
    assert time.monotonic() - started >= 0.2


def test_waiting_ends_at_once_when_the_process_has_exited(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        wait_ready(tmp_path / "never.json", 60.0, alive=lambda: False)


@pytest.mark.parametrize("name", ["a-directory", "missing/ready.json"])
def test_a_ready_file_that_cannot_be_written_is_a_startup_error(tmp_path: Path, name: str) -> None:
    """--ready-file naming a directory, or a file in a directory that does not exist: a
    StartupError (exit status 2, one line), not an OSError traceback; no partial file left."""
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StartupError, match="--ready-file: cannot write"):
        write_ready(tmp_path / name, READY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]
    assert list((tmp_path / "a-directory").iterdir()) == []
