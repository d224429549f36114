"""Fixtures of the membership scenarios: an empty cluster on a real etcd, killed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.etcd import EtcdServer
from tests.helpers.etcd_cluster import EtcdCluster
from tests.helpers.processes import ProcessGroup


@pytest.fixture
def cluster(etcd: EtcdServer, processes: ProcessGroup, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A cluster with no process yet on the test's own etcd (prefix ``/goverse``); the test
    adds nodes and gates. Afterwards every process is killed at once (SIGKILL: the scenarios
    check their graceful stops themselves, and handing 8192 shards around at teardown only
    costs time), before etcd is (``etcd`` is set up first, so torn down last)."""
    witness = tmp_path / "witness"
    witness.mkdir()
    yield EtcdCluster(processes, etcd, "/goverse", witness)
    for proc in processes.processes:
        proc.kill()
