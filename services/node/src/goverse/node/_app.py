"""NodeApp: one node's objects, gate streams and server, started and stopped as a unit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.node._config import NodeConfig
from goverse.node._gate_streams import STREAM_TASK_PREFIX, GateStreams
from goverse.node._metrics import NodeMetrics
from goverse.node._object_host import ObjectHost
from goverse.node._object_types import ObjectType, load_object_types
from goverse.node._runtime import NodeRuntime
from goverse.node._servicer import NodeService
from goverse.placement import Placement
from goverse.server import (
    BoundAddress,
    ClusterView,
    ServiceApp,
    ShutdownBudget,
    StaticView,
    Telemetry,
    set_log_identity,
)
from goverse.v1 import node_pb2_grpc

log = structlog.get_logger(__name__)


class NodeApp(ServiceApp[NodeConfig]):
    """A node: its objects, its gate streams and its gRPC server.

    Construction loads the ``--objects`` modules (raising
    :class:`~goverse.node.ObjectLoadError`) and needs no event loop. It starts and stops as
    every service does (:class:`~goverse.server.ServiceApp`); its own parts: once bound, it
    knows its address (``--advertise``, or the bound address when unset) and builds its
    view of the cluster, placement, gate streams, object host and object runtime
    (:attr:`view`, :attr:`placement`, :attr:`gates`, :attr:`host`, :attr:`runtime` exist from
    then on). Its long-lived streams are the gates' RegisterGate streams, which a stop closes
    (each sends what is queued and ends with OK); once its tasks are gone, every object is
    deactivated in its turn.

    With `telemetry`, its meter holds the node's metrics, :meth:`start` serves them on
    ``telemetry``'s metrics port and :meth:`stop` flushes buffered spans last; without it,
    metrics go to the global meter provider and nothing is served.
    """

    service = "node"
    grpc_service = wire.NODE_SERVICE
    stream_task_prefix = STREAM_TASK_PREFIX

    view: ClusterView
    placement: Placement
    gates: GateStreams
    host: ObjectHost
    runtime: NodeRuntime
    metrics: NodeMetrics

    def __init__(
        self,
        config: NodeConfig,
        types: Mapping[str, ObjectType] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(config, telemetry)
        self.types = dict(load_object_types(config.objects) if types is None else types)
        self.advertise = ""
        """The address gates and other nodes reach this node at (known once bound)."""

    def live_tasks(self) -> list[str]:
        """Names of the tasks the node's supervisor holds now (gate streams)."""
        return self.supervisor.task_names()

    def assemble(self, server: grpc.aio.Server, bound: BoundAddress) -> None:
        config = self.config
        self.advertise, nodes = config.identity(bound.listen)
        set_log_identity(node=self.advertise)
        static = StaticView(nodes)
        self.view, self.placement = static, static.placement
        self.gates = GateStreams(
            self.supervisor,
            self.advertise,
            queue_size=config.gate_queue_size,
            queue_bytes=config.gate_queue_bytes,
            heartbeat_interval=config.heartbeat_interval,
            max_message_bytes=config.max_message_bytes,
        )
        self.host = ObjectHost(self.types, self.placement, self.advertise)
        self.runtime = NodeRuntime(
            self.host, self.gates, self.pool, self.view, self.advertise, config.call_timeout
        )
        self.host.attach_runtime(self.runtime)
        self.metrics = NodeMetrics(self.meter, self.host, self.gates)
        servicer = NodeService(self.advertise, self.placement, self.host, self.gates)
        node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)

    def close_streams(self) -> int:
        return self.gates.close_all(wire.CloseReason.SHUTDOWN)

    async def release(self, budget: ShutdownBudget) -> None:
        self.gates.clear()
        active = self.host.active_count
        stuck = await self.host.deactivate_all(budget.remaining())
        if stuck:
            log.warning("objects not deactivated within the shutdown timeout", objects=stuck)
        log.info("objects deactivated", objects=active - len(stuck), stuck=len(stuck))
        self.runtime.forget_channels()

    def identity(self) -> dict[str, Any]:
        return {
            "advertise": self.advertise,
            "nodes": list(self.placement.nodes),
            "object_types": sorted(self.types),
        }


__all__ = ["NodeApp"]
