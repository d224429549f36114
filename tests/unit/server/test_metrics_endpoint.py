"""MetricsEndpoint: /metrics from the event loop, its connections bounded in number and time."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from goverse.server._metrics_endpoint import MetricsEndpoint
from tests.helpers.waiting import eventually

WAIT = 5.0


async def _get(port: int, path: str = "/metrics") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        answer = await reader.read()
    writer.close()
    return answer


async def _endpoint(
    max_connections: int = 32, request_timeout: float = WAIT
) -> tuple[MetricsEndpoint, int]:
    registry = CollectorRegistry()
    Counter("things", "Things", registry=registry).inc(3)
    endpoint = MetricsEndpoint(
        registry,
        "127.0.0.1",
        0,
        max_connections=max_connections,
        request_timeout=request_timeout,
    )
    return endpoint, await endpoint.start()


async def test_it_answers_metrics_and_404_elsewhere() -> None:
    endpoint, port = await _endpoint()
    try:
        assert b"things_total 3.0" in await _get(port)
        assert (await _get(port, "/other")).startswith(b"HTTP/1.1 404")
    finally:
        await endpoint.stop()


async def test_an_idle_connection_is_closed_after_the_request_timeout() -> None:
    """A connection that sends nothing is closed by the endpoint once its time is up."""
    endpoint, port = await _endpoint(request_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(WAIT):
            assert await reader.read() == b""
        writer.close()
        assert endpoint.connections == 0
    finally:
        await endpoint.stop()


async def test_at_the_bound_a_scrape_evicts_the_oldest_idle_connection() -> None:
    """With its connections all idle, one more (a scrape) closes the oldest and is answered;
    the connections open never exceed the bound for long."""
    endpoint, port = await _endpoint(max_connections=2, request_timeout=60)
    try:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: endpoint.connections == 2, WAIT, "both connections accepted")
        assert b"things_total 3.0" in await _get(port)
        async with asyncio.timeout(WAIT):
            assert await first[0].read() == b""  # evicted
        assert endpoint.connections == 1  # the second, still idle
        for _, writer in (first, second):
            writer.close()
    finally:
        await endpoint.stop()
