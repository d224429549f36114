"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.addresses import SocketDir, dead_address, socket_dir
from tests.helpers.etcd import EtcdServer
from tests.helpers.fake_node import FakeNode
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import ProcessGroup, process_group
from tests.helpers.telemetry import SpanCapture, span_capture


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessGroup]:
    """Starts real service processes for one test; stops them all afterwards and, when the
    test failed, prints their logs."""
    with process_group(tmp_path / "logs") as group:
        yield group
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for proc in group.processes:
                print(f"----- {proc.name} -----\n{proc.output()[-20000:]}")


@pytest.fixture
async def etcd(request: pytest.FixtureRequest) -> AsyncIterator[EtcdServer]:
    """A real etcd for one test: a single member on loopback with a fresh data directory
    (:class:`tests.helpers.etcd.EtcdServer`); killed and removed afterwards, its log printed
    when the test failed."""
    server = EtcdServer()
    try:
        await server.start()
        yield server
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"----- etcd -----\n{server.output()[-20000:]}")
    finally:
        server.close()


@pytest.fixture(scope="module")
def etcd_module() -> Iterator[EtcdServer]:
    """One real etcd shared by the tests of a module (each test uses its own key prefix);
    started once, killed and removed after the module. Tests that kill, pause or restart
    etcd use the function-scoped ``etcd`` fixture instead."""
    server = EtcdServer()
    try:
        yield server.start_blocking()
    finally:
        server.close()


@pytest.fixture
async def postgres(request: pytest.FixtureRequest) -> AsyncIterator[PostgresServer]:
    """A real PostgreSQL for one test, which may stop, kill and restart it: its own cluster
    on a loopback port (:class:`tests.helpers.postgres.PostgresServer`); killed and removed
    afterwards, its log printed when the test failed."""
    server = PostgresServer()
    try:
        await server.start()
        yield server
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"----- postgres -----\n{server.output()[-20000:]}")
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[PostgresServer]:
    """One real PostgreSQL shared by every test of the run that asks for it (each uses a
    database of its own: :meth:`PostgresServer.create_database`); started on first use,
    killed and removed at the end of the run. Tests that stop or kill the server use the
    function-scoped ``postgres`` fixture instead."""
    server = PostgresServer()
    try:
        yield server.start_blocking()
    finally:
        server.close()


@pytest.fixture
async def postgres_restored(postgres_session: PostgresServer) -> AsyncIterator[PostgresServer]:
    """The run's shared PostgreSQL for a test that stops or freezes it (cheaper than a
    cluster of its own): resumed and started again after the test, whatever it did."""
    yield postgres_session
    postgres_session.resume()
    if not postgres_session.alive():
        await postgres_session.start()


@pytest.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    """A started FakeNode on loopback (gate tests, in process or against a gate process);
    stopped after the test."""
    node = await FakeNode().start()
    try:
        yield node
    finally:
        await node.stop(0)


@pytest.fixture
def unreachable() -> Iterator[str]:
    """``127.0.0.1:<port>`` where nothing listens, nor can, during the test (a connection is
    refused): :func:`tests.helpers.addresses.dead_address`."""
    with dead_address() as address:
        yield address


@pytest.fixture
def sockets() -> Iterator[SocketDir]:
    """A short private directory for unix sockets named before anything listens on them;
    removed after the test."""
    with socket_dir() as directory:
        yield directory


@pytest.fixture
def captured_spans() -> Iterator[SpanCapture]:
    """The spans this test process ends during the test (an SDK tracer provider is made the
    global one the first time)."""
    capture = span_capture()
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
