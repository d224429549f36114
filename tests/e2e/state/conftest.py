"""Fixtures of the durable-state scenarios: a database of the test's own on the run's shared
PostgreSQL, and an etcd cluster whose nodes keep their state there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.etcd import EtcdServer
from tests.helpers.etcd_cluster import EtcdCluster
from tests.helpers.ledgers import PostgresStore, postgres_store
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import ProcessGroup


@pytest.fixture
async def database(postgres_session: PostgresServer, tmp_path: Path) -> PostgresStore:
    """An empty database of the test's own on the run's shared PostgreSQL, with the flags
    that give it to a node (password in a file)."""
    return await postgres_store(postgres_session, tmp_path)


@pytest.fixture
def cluster(
    etcd: EtcdServer, processes: ProcessGroup, tmp_path: Path, database: PostgresStore
) -> Iterator[EtcdCluster]:
    """A cluster with no process yet on the test's own etcd (prefix ``/goverse``) whose nodes
    keep object state in `database`; the test adds nodes and gates. Afterwards every process
    is killed at once, as in the membership scenarios (tests/e2e/membership/conftest.py)."""
    witness = tmp_path / "witness"
    witness.mkdir()
    cluster = EtcdCluster(processes, etcd, "/goverse", witness)
    cluster.node_extra = (*cluster.node_extra, *database.flags)
    yield cluster
    for proc in processes.processes:
        proc.kill()
