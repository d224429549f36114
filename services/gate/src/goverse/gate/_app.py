"""GateApp: one gate's server, node links and client registry, started and stopped as a unit."""

from __future__ import annotations

from typing import Any

import grpc

from goverse import wire
from goverse.gate._clients import ClientRegistry
from goverse.gate._config import GateConfig
from goverse.gate._metrics import GateMetrics
from goverse.gate._node_link import NodeLink
from goverse.gate._router import Router
from goverse.gate._servicer import STREAM_TASK_PREFIX, GateService
from goverse.server import BoundAddress, ServiceApp, Telemetry
from goverse.transport import Backoff
from goverse.v1 import gate_pb2_grpc

DRAIN_REASON = "the gate is shutting down"


class GateApp(ServiceApp[GateConfig]):
    """A gate: the GateService server with health, one NodeLink per node, and the registry.

    Starts and stops as every service does (:class:`~goverse.server.ServiceApp`). Its own
    parts: once serving it starts one link task per node; its long-lived streams are the
    clients' Register streams, which a stop closes for draining — each flushes what is queued,
    sends ``Draining`` and ends, new registrations are refused with UNAVAILABLE, and a client
    may still call until its stream has ended (then its credential is void: UNAUTHENTICATED,
    which the SDK re-sends on its new registration).

    With `telemetry`, its meter holds the gate's metrics and :meth:`start` serves them on its
    metrics port; without it, metrics go to the global meter provider and nothing is served.
    """

    service = "gate"
    grpc_service = wire.GATE_SERVICE
    stream_task_prefix = STREAM_TASK_PREFIX

    def __init__(self, config: GateConfig, telemetry: Telemetry | None = None) -> None:
        super().__init__(config, telemetry)
        self.registry = ClientRegistry(
            config.gate_id,
            max_clients=config.max_clients,
            queue_messages=config.client_queue_messages,
            queue_bytes=config.client_queue_bytes,
            max_message_bytes=config.max_message_bytes,
            overflow=config.slow_client_policy,
        )
        self.router = Router(config.static_nodes, self.pool, config.call_timeout)
        self.links: dict[str, NodeLink] = {}
        self.metrics = GateMetrics(self.meter, self.registry, self.links)

    def assemble(self, server: grpc.aio.Server, bound: BoundAddress) -> None:
        servicer = GateService(self.config.gate_id, self.registry, self.router, self.supervisor)
        gate_pb2_grpc.add_GateServiceServicer_to_server(servicer, server)

    async def on_serving(self) -> None:
        for node in self.config.static_nodes:
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

    def close_streams(self) -> int:
        return self.registry.drain(DRAIN_REASON)

    def identity(self) -> dict[str, Any]:
        return {"gate_id": self.config.gate_id, "nodes": list(self.config.static_nodes)}


__all__ = ["GateApp"]
