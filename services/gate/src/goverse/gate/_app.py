"""GateApp: one gate's server, node links and client registry, started and stopped as a unit."""

from __future__ import annotations

import asyncio
import enum
import time

import structlog
from opentelemetry import metrics

from goverse import wire
from goverse.gate._clients import ClientRegistry
from goverse.gate._config import GateConfig
from goverse.gate._metrics import GateMetrics
from goverse.gate._node_link import NodeLink
from goverse.gate._router import Router
from goverse.gate._servicer import STREAM_TASK_PREFIX, GateService
from goverse.server import GrpcHost, Supervisor, Telemetry
from goverse.transport import Backoff, ChannelPool, channel_options
from goverse.v1 import gate_pb2_grpc

log = structlog.get_logger(__name__)

DRAIN_REASON = "the gate is shutting down"
# Share of the shutdown budget that client streams get to flush and end by themselves.
DRAIN_SHARE = 0.5
# Longest grace the gRPC server gets for unary calls still in flight.
MAX_SERVER_GRACE = 1.0
# Share of the shutdown budget (at most MAX_SERVER_GRACE) kept for the steps after the wait
# for calls in flight.
STOP_RESERVE_SHARE = 0.2
# Least time buffered spans get to be exported, even when the budget is spent.
MIN_TELEMETRY_FLUSH = 0.2


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class GateApp:
    """A gate: the GateService server with health, one NodeLink per node, and the registry.

    :meth:`start` binds the listen address (raising :class:`~goverse.server.ListenError` when
    it cannot), reports SERVING and starts one link task per node.

    :meth:`stop` follows the shutdown contract within ``config.shutdown_timeout``:

    1. health reports NOT_SERVING at once, for every service name;
    2. every client gets a draining notice: its proxy is closed for draining, its stream writer
       flushes what is queued, sends ``Draining`` and ends the stream; new registrations are
       refused with UNAVAILABLE; a client may still call until its stream has ended (then its
       credential is void: UNAUTHENTICATED, which the SDK re-sends on its new registration);
    3. it waits up to half the budget for the client streams to end by themselves (cancelling a
       stream's task does not end the RPC for the client, so this is the real ending);
    4. it waits for the unary calls in flight to complete, for the rest of the budget but a
       reserve (a fifth of it, at most one second) for the steps below;
    5. the supervisor cancels every task left (node links, streams that did not end) and awaits
       them for the rest of the budget, then logs the names of any still pending;
    6. the gRPC server stops with a grace of at most one second for unary calls still running;
    7. the node channels are closed; buffered spans are exported and the metrics endpoint
       stops (in what is left of the budget, at least 0.2 s); "stopped" is logged with the
       elapsed time.

    With `telemetry`, its meter holds the gate's metrics and :meth:`start` serves them on its
    metrics port; without it, metrics go to the global meter provider and nothing is served.

    A second call, a concurrent call, or a call before :meth:`start` is safe: it returns once
    the first stop has finished (at once when nothing was started).
    """

    def __init__(self, config: GateConfig, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        self.supervisor = Supervisor("gate")
        self.pool = ChannelPool(channel_options(config.max_message_bytes, config.keepalive))
        self.registry = ClientRegistry(
            config.gate_id,
            max_clients=config.max_clients,
            queue_messages=config.client_queue_messages,
            queue_bytes=config.client_queue_bytes,
            max_message_bytes=config.max_message_bytes,
            overflow=config.slow_client_policy,
        )
        self.router = Router(config.nodes, self.pool, config.call_timeout)
        self.links: dict[str, NodeLink] = {}
        self.metrics = GateMetrics(
            telemetry.meter("goverse.gate") if telemetry else metrics.get_meter("goverse.gate"),
            self.registry,
            self.links,
        )
        self._host: GrpcHost | None = None
        self._service: GateService | None = None
        self._state = _State.NEW
        self._stop_lock = asyncio.Lock()
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`start`)."""
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: where a local client reaches this gate."""
        return f"127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Binds and serves, then starts the node links. Raises ListenError on a bind failure."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"the gate cannot start: it is {self._state.value}")
        self._state = _State.STARTING
        host = GrpcHost(
            self.config.listen,
            [wire.GATE_SERVICE],
            self.config.max_message_bytes,
            interceptors=[self.metrics.interceptor],
            keepalive=self.config.keepalive,
        )
        self._service = GateService(
            self.config.gate_id, self.registry, self.router, self.supervisor
        )
        gate_pb2_grpc.add_GateServiceServicer_to_server(self._service, host.server)
        self._host = host
        self._port = await host.start()
        if self.telemetry is not None:
            self.telemetry.start_metrics_server()
        for node in self.config.nodes:
            link = NodeLink(
                node,
                self.config.gate_id,
                self.pool.get(node),
                self.registry,
                backoff=Backoff(self.config.reconnect_initial, self.config.reconnect_max),
                stable_after=self.config.stable_after,
                heartbeat_timeout=self.config.node_heartbeat_timeout,
            )
            self.links[node] = link
            self.supervisor.spawn(f"node-link:{node}", link.run())
        self._state = _State.RUNNING
        log.info(
            "started",
            listen=self.config.listen,
            port=self._port,
            nodes=list(self.config.nodes),
        )

    async def stop(self) -> None:
        """Stops the gate (see the class docstring). Idempotent; safe before start."""
        async with self._stop_lock:
            if self._state is _State.STOPPED:
                return
            self._state = _State.STOPPING
            try:
                await self._shutdown()
            finally:
                self._state = _State.STOPPED

    async def _shutdown(self) -> None:
        started = time.monotonic()
        budget = self.config.shutdown_timeout.total_seconds()

        def remaining() -> float:
            return max(budget - (time.monotonic() - started), 0.0)

        host = self._host
        if host is not None:
            await host.enter_shutdown()
        drained = self.registry.drain(DRAIN_REASON)
        streams = self.supervisor.tasks_named(STREAM_TASK_PREFIX)
        if streams:
            await self.supervisor.wait(streams, timeout=min(budget * DRAIN_SHARE, remaining()))
            left = [task for task in streams if not task.done()]
            log.info(
                "client streams drained",
                clients=drained,
                ended=len(streams) - len(left),
                still_open=len(left),
            )
        service = self._service
        if service is not None and len(service.calls):
            in_flight = len(service.calls)
            reserve = min(budget * STOP_RESERVE_SHARE, MAX_SERVER_GRACE)
            still_running = await service.calls.wait(remaining() - reserve)
            log.info(
                "calls in flight finished",
                calls=in_flight,
                completed=in_flight - still_running,
                still_running=still_running,
            )
        pending = await self.supervisor.shutdown(remaining())
        if pending:
            log.warning(
                "tasks still pending after the shutdown timeout",
                tasks=pending,
                timeout_s=budget,
            )
        if host is not None:
            await host.stop(grace=min(MAX_SERVER_GRACE, remaining()))
        await self.pool.close()
        if self.telemetry is not None:
            await self.telemetry.shutdown(max(remaining(), MIN_TELEMETRY_FLUSH))
        log.info("stopped", elapsed_s=round(time.monotonic() - started, 3))
