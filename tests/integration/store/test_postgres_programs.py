"""The test PostgreSQL's programs run as their system user wherever the checkout lives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.postgres import PostgresServer, _open_to_others, _shared_copy, postgres_bin


def test_a_private_directory_is_not_open_to_others(tmp_path: Path) -> None:
    private = tmp_path / "checkout"
    private.mkdir(mode=0o700)
    (private / "bin").mkdir()
    assert not _open_to_others(private / "bin")
    assert _open_to_others(Path("/usr/bin"))


@pytest.mark.skipif(os.geteuid() != 0, reason="the programs run as their own user only as root")
def test_the_shared_copy_runs_as_the_system_user() -> None:
    """A checkout in ``mktemp -d`` (0700) kept the system user from the programs (initdb
    exited 127); the copy they run from instead, with its bundled libraries, works."""
    copied = _shared_copy(postgres_bin().parent)
    assert _open_to_others(copied / "bin")
    server = PostgresServer()
    try:
        done = subprocess.run(
            [*server._as_owner(), str(copied / "bin" / "initdb"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert "PostgreSQL" in done.stdout
