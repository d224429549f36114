"""MetricsEndpoint: Prometheus' ``/metrics`` served from the service's event loop, with a bound
on connections and on how long an idle one is kept.

prometheus_client's ``start_http_server`` runs a thread per connection and keeps an idle one
open as long as the peer does: 200 idle connections held 200 threads. Here a connection is a
coroutine on the loop; at most :data:`MAX_CONNECTIONS` are open at once, each must send its
request within :data:`REQUEST_TIMEOUT`, and each gets one answer and is closed
(``Connection: close``, which Prometheus handles). A connection past the bound closes the
oldest one still waiting for its request, so idle connections cannot lock a scraper out; only
when every open connection is being answered is the new one closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 32
"""Connections served at once; a scraper needs one, a few more cover curious humans."""
REQUEST_TIMEOUT = 5.0
"""Seconds a connection may take to send its request head (and to take the answer)."""
MAX_REQUEST_BYTES = 8 * 1024
"""The longest request head read; a longer one is answered 431 and closed."""
METRICS_PATH = "/metrics"


class MetricsEndpoint:
    """Serves `registry` at ``http://<host>:<port>/metrics`` (port 0: any free port).

    :meth:`start` binds and returns the bound port (raises OSError when it cannot bind);
    :meth:`stop` closes the listener and every open connection and waits for their handlers;
    it is idempotent and safe before :meth:`start`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._waiting: dict[asyncio.Task[None], None] = {}
        """Connections still waiting for their request head, oldest first."""

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_REQUEST_BYTES
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self._max_connections:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                writer.close()  # every connection is being answered: this one must wait
                return
            del self._waiting[oldest]
            oldest.cancel("evicted: the oldest idle connection, at the bound")
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._waiting[task] = None
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._answer(reader, writer, task)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # an idle, slow or vanished peer: its connection is closed, nothing else
        finally:
            self._connections.discard(task)
            self._waiting.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._request_timeout):
                    await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "Request Header Fields Too Large", b"")
            return
        finally:
            self._waiting.pop(task, None)
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            await _respond(writer, 405, "Method Not Allowed", b"")
        elif path != METRICS_PATH:
            await _respond(writer, 404, "Not Found", b"")
        else:
            body = generate_latest(self._registry)
            await _respond(writer, 200, "OK", body, head_only=method == b"HEAD")


async def _respond(
    writer: asyncio.StreamWriter, status: int, reason: str, body: bytes, *, head_only: bool = False
) -> None:
    headers = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {CONTENT_TYPE_LATEST}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(headers.encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
