"""The metrics endpoint of a real node: where it listens (``--metrics-host``), that idle
connections cost it no threads and cannot lock a scraper out, and that ``off`` serves nothing."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from goverse import wire
from tests.helpers.processes import ProcessGroup, ServiceProcess, serving
from tests.helpers.telemetry import scrape

IDLE = 200
"""The probe's count: 200 idle connections held 200 threads."""
THREAD_SLACK = 4
"""Threads the node may start meanwhile for anything else (the count is grpc's and the
telemetry's; it does not grow per connection)."""


def _threads(proc: ServiceProcess) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def _listening_hosts(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp spells them) listening on `port`."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            host, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(host)
    return hosts


async def test_idle_connections_add_no_threads_and_metrics_still_answer(
    processes: ProcessGroup,
) -> None:
    """200 connections that send nothing, held open: the node's thread count stays within a
    few of what it was, and a scrape made while they are open is answered."""
    node = await asyncio.to_thread(
        processes.node, extra=["--metrics-port=0", "--metrics-host=127.0.0.1"]
    )
    before = _threads(node)
    idle = []
    try:
        for _ in range(IDLE):
            connection = socket.create_connection(("127.0.0.1", node.metrics_port), timeout=5)
            idle.append(connection)
        samples = await asyncio.to_thread(scrape, node.metrics_port)
        during = _threads(node)
    finally:
        for connection in idle:
            connection.close()
    print(f"\nthreads: {before} before, {during} with {IDLE} idle metrics connections")
    assert any(name.startswith("goverse_node_") for name, _ in samples)
    assert during <= before + THREAD_SLACK
    assert await asyncio.to_thread(serving, node.address, wire.NODE_SERVICE)


async def test_the_endpoint_listens_on_metrics_host(processes: ProcessGroup) -> None:
    """``--metrics-host=127.0.0.1``: the endpoint's one listening socket is on loopback."""
    node = await asyncio.to_thread(
        processes.node, extra=["--metrics-port=0", "--metrics-host=127.0.0.1"]
    )
    assert _listening_hosts(node.metrics_port) == {"0100007F"}


async def test_metrics_port_off_serves_no_endpoint(processes: ProcessGroup) -> None:
    """``--metrics-port=off`` (the test default): no endpoint at all (it served one on a free
    port)."""
    node = await asyncio.to_thread(processes.node)
    assert node.ready is not None
    assert node.ready.metrics_port is None
    assert not any('"serving metrics"' in line for line in node.output().splitlines())
