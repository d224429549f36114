"""The local target: a cluster of real goverse-node and goverse-gate processes on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from goverse.client import Client
from tests.helpers.cluster import Cluster, ClusterTLS, start_cluster
from tests.helpers.processes import ProcessGroup, process_group
from tests.helpers.tokens import TokenIssuer


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests of a module that do not break it."""
    with process_group(tmp_path_factory.mktemp("cluster")) as group:
        yield start_cluster(group)


@pytest.fixture
def fresh_cluster(processes: ProcessGroup) -> Cluster:
    """A cluster of two nodes and two gates for one test that kills or restarts processes."""
    return start_cluster(processes, gates=2)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster of two nodes and two gates with TLS on every hop (mutual between gates
    and nodes, certificates of a test CA) for the tests of a module that do not break it."""
    directory = tmp_path_factory.mktemp("tls-cluster")
    with process_group(directory / "logs") as group:
        yield start_cluster(group, gates=2, tls=ClusterTLS.make(directory / "pki"))


@pytest.fixture(scope="module")
def jwt_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of two nodes and two gates that require JWTs (HS256, audience and issuer
    checked); its :meth:`Cluster.client` sends tokens from its :attr:`Cluster.tokens`."""
    with process_group(tmp_path_factory.mktemp("jwt-cluster")) as group:
        yield start_cluster(group, gates=2, tokens=TokenIssuer())


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Collects the clients a test opens and closes them afterwards."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--target",
        default=os.environ.get("GOVERSE_E2E_TARGET", "local"),
        choices=("local", "docker", "kind"),
        help="where tests/e2e/test_scenarios.py runs (tests/e2e/targets): local processes, "
        "containers from the chart on Docker, or a kind cluster (env GOVERSE_E2E_TARGET)",
    )
    parser.addoption(
        "--membership",
        default=os.environ.get("GOVERSE_E2E_MEMBERSHIP", "etcd"),
        choices=("etcd", "static"),
        help="membership of the local and docker targets' services: etcd (an etcd the target "
        "starts; nodes scale) or the static node list (env GOVERSE_E2E_MEMBERSHIP); the kind "
        "target runs what the release installed",
    )
    parser.addoption(
        "--security",
        default=os.environ.get("GOVERSE_E2E_SECURITY"),
        choices=("on", "off"),
        help="whether the target's services run with TLS on every hop and JWT client "
        "authentication (on) or in plaintext (off) (env GOVERSE_E2E_SECURITY); default: on "
        "where the target supports it (local, docker), off elsewhere (kind)",
    )
