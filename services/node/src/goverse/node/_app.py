"""Node app: assembles the node's parts, starts them, and stops them within the shutdown budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import metrics

from goverse import wire
from goverse.node._config import NodeConfig
from goverse.node._gate_streams import STREAM_TASK_PREFIX, GateStreams
from goverse.node._metrics import NodeMetrics
from goverse.node._object_host import ObjectHost
from goverse.node._object_types import ObjectType, load_object_types
from goverse.node._runtime import NodeRuntime
from goverse.node._servicer import NodeService
from goverse.placement import Placement
from goverse.server import GrpcHost, Supervisor, Telemetry
from goverse.transport import ChannelPool, channel_options
from goverse.v1 import node_pb2_grpc

log = structlog.get_logger(__name__)

STREAM_DRAIN_SECONDS = 1.0
"""How long stop() lets gate streams send what is queued and end by themselves."""
SERVER_GRACE_SECONDS = 1.0
"""How long stop() lets in-flight unary calls finish once the server stops."""
MIN_TELEMETRY_FLUSH_SECONDS = 0.2
"""Least time stop() gives buffered spans to be exported, even when the budget is spent."""


class NodeApp:
    """One node: its objects, its gate streams and its gRPC server.

    Construction loads the ``--objects`` modules (raising
    :class:`~goverse.node.ObjectLoadError`) and needs no event loop; :meth:`start` binds and
    serves; :meth:`stop` shuts everything down within ``config.shutdown_timeout``.

    With `telemetry`, its meter holds the node's metrics, :meth:`start` serves them on
    ``telemetry``'s metrics port and :meth:`stop` flushes buffered spans last; without it,
    metrics go to the global meter provider and nothing is served.
    """

    def __init__(
        self,
        config: NodeConfig,
        types: Mapping[str, ObjectType] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.types = dict(load_object_types(config.objects) if types is None else types)
        self.placement = Placement(config.nodes)
        self.supervisor = Supervisor("node")
        self.gates = GateStreams(
            self.supervisor,
            config.advertise,
            queue_size=config.gate_queue_size,
            queue_bytes=config.gate_queue_bytes,
            heartbeat_interval=config.heartbeat_interval,
            max_message_bytes=config.max_message_bytes,
        )
        self.host = ObjectHost(self.types, self.placement, config.advertise)
        self.pool = ChannelPool(channel_options(config.max_message_bytes, config.keepalive))
        self.runtime = NodeRuntime(
            self.host, self.gates, self.pool, self.placement, config.advertise, config.call_timeout
        )
        self.host.attach_runtime(self.runtime)
        self.metrics = NodeMetrics(
            telemetry.meter("goverse.node") if telemetry else metrics.get_meter("goverse.node"),
            self.host,
            self.gates,
        )
        self._grpc: GrpcHost | None = None
        self._started = False
        self._stopped: asyncio.Event | None = None
        self.port = 0
        """The port the server is bound to, once started."""

    @property
    def address(self) -> str:
        """``127.0.0.1:<bound port>``: where a test on this machine reaches the server."""
        return f"127.0.0.1:{self.port}"

    def live_tasks(self) -> list[str]:
        """Names of the tasks the node's supervisor holds now (gate streams)."""
        return self.supervisor.task_names()

    async def start(self) -> None:
        """Binds ``config.listen``, starts serving and reports SERVING on the health service.

        Raises :class:`goverse.server.ListenError` when the address cannot be bound, and
        RuntimeError when called twice or after :meth:`stop`.
        """
        if self._started or self._stopped is not None:
            raise RuntimeError("NodeApp.start() called twice or after stop()")
        self._started = True
        host = GrpcHost(
            self.config.listen,
            [wire.NODE_SERVICE],
            self.config.max_message_bytes,
            interceptors=[self.metrics.interceptor],
            keepalive=self.config.keepalive,
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeService(self.config.advertise, self.placement, self.host, self.gates), host.server
        )
        self._grpc = host
        self.port = await host.start()
        if self.telemetry is not None:
            self.telemetry.start_metrics_server()
        log.info(
            "listening",
            listen=self.config.listen,
            port=self.port,
            advertise=self.config.advertise,
            nodes=list(self.placement.nodes),
            object_types=sorted(self.types),
        )

    async def stop(self) -> None:
        """Stops the node within ``config.shutdown_timeout``; returns when it is stopped.

        In order: the health service reports NOT_SERVING (at once, permanently); every gate
        mailbox is closed so each stream sends what is queued and ends with status OK; the
        streams get up to 1 s to end by themselves; whatever the supervisor still holds is
        cancelled and awaited for the rest of the budget, and the names of tasks still pending
        are logged; every object is deactivated in its turn; the server stops, giving
        in-flight unary calls up to 1 s; node-to-node channels are closed; buffered spans are
        exported and the metrics endpoint stops (in what is left of the budget, at least
        0.2 s).

        Safe before :meth:`start` (nothing to stop) and safe to call again or concurrently:
        later callers wait for the first one to finish.
        """
        if self._stopped is not None:
            await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        try:
            if self._started:
                await self._stop()
        finally:
            self._stopped.set()

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + self.config.shutdown_timeout.total_seconds()

        def left() -> float:
            return max(0.0, deadline - loop.time())

        log.info("stopping", timeout_seconds=self.config.shutdown_timeout.total_seconds())
        if self._grpc is not None:
            await self._grpc.enter_shutdown()
        streams = self.gates.close_all("shutdown")
        await self.supervisor.wait(
            self.supervisor.tasks_named(STREAM_TASK_PREFIX), min(STREAM_DRAIN_SECONDS, left())
        )
        pending = await self.supervisor.shutdown(left())
        if pending:
            log.warning("tasks still running after the shutdown timeout", tasks=pending)
        self.gates.clear()
        objects = self.host.active_count
        stuck = await self.host.deactivate_all(left())
        if stuck:
            log.warning("objects not deactivated within the shutdown timeout", objects=stuck)
        if self._grpc is not None:
            await self._grpc.stop(grace=min(SERVER_GRACE_SECONDS, left()))
        self.runtime.forget_channels()
        await self.pool.close()
        if self.telemetry is not None:
            await self.telemetry.shutdown(max(left(), MIN_TELEMETRY_FLUSH_SECONDS))
        log.info(
            "stopped",
            seconds=round(time.monotonic() - started, 3),
            gate_streams=streams,
            objects_deactivated=objects - len(stuck),
        )

    async def __aenter__(self) -> NodeApp:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()


__all__ = ["NodeApp"]
