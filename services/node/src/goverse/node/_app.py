"""NodeApp: one node's objects, gate streams and server, started and stopped as a unit."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.descriptions import describe_types
from goverse.node._call_stream import CallStreams
from goverse.node._config import NodeConfig
from goverse.node._gate_streams import STREAM_TASK_PREFIX, GateStreams
from goverse.node._metrics import NodeMetrics
from goverse.node._object_host import ObjectHost
from goverse.node._object_state import ObjectState
from goverse.node._object_types import ObjectType, load_object_types
from goverse.node._ownership import ShardOwnership
from goverse.node._runtime import NodeRuntime
from goverse.node._servicer import NodeService
from goverse.node._shards import ShardState, ShardTable
from goverse.node._store import StoreError, open_store
from goverse.node._upkeep import run_upkeep
from goverse.placement import SHARD_COUNT
from goverse.server import (
    AccessGuard,
    BoundAddress,
    ClusterView,
    EtcdMembership,
    NodeCalls,
    PeerCheck,
    ServiceApp,
    ShutdownBudget,
    StartupError,
    StaticView,
    SupervisorClosed,
    Telemetry,
    access_rules,
    membership_metrics,
    set_log_identity,
    sweep_departed_channels,
)
from goverse.v1 import node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

SERVER_GRACE = 1.0
"""Longest a stop waits for the Calls streams to send their last answers and end."""


class NodeApp(ServiceApp[NodeConfig]):
    """A node: its objects, its gate streams and its gRPC server.

    Construction loads the ``--objects`` modules (raising
    :class:`~goverse.node.ObjectLoadError`) and needs no event loop. It starts and stops as
    every service does (:class:`~goverse.server.ServiceApp`); its own parts: once bound, it
    knows its address (``--advertise``, or the bound address when unset) and builds its
    view of the cluster, placement, gate streams, object host and object runtime
    (:attr:`view`, :attr:`placement`, :attr:`gates`, :attr:`host`, :attr:`runtime` exist from
    then on). Its long-lived streams are the gates' RegisterGate streams, which a stop closes
    (each sends what is queued and ends with OK) — or, once the node has left its etcd
    cluster, leaves to the gates to end as they see it go — and the gates' Calls streams
    (:class:`CallStreams`), whose calls count as calls in flight, which a stop lets finish;
    their readers are the supervisor's tasks, so its shutdown ends them. Once its tasks are
    gone, every object is deactivated in its turn. Its objects' calls to objects on other
    nodes go over one Calls stream per node (:attr:`node_calls`, from
    :meth:`~goverse.server.ServiceApp.open_node_calls`: its streams are shut down once the
    server has stopped, so that an object deactivated during the stop can still call out).

    With `telemetry`, its meter holds the node's metrics, :meth:`start` serves them on
    ``telemetry``'s metrics port and :meth:`stop` flushes buffered spans last; without it,
    metrics go to the global meter provider and nothing is served.
    """

    service = "node"
    grpc_service = wire.NODE_SERVICE
    stream_task_prefix = STREAM_TASK_PREFIX

    view: ClusterView
    shards: ShardTable
    gates: GateStreams
    call_streams: CallStreams
    host: ObjectHost
    state: ObjectState
    runtime: NodeRuntime
    node_calls: NodeCalls
    metrics: NodeMetrics

    def __init__(
        self,
        config: NodeConfig,
        types: Mapping[str, ObjectType] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__(config, telemetry)
        self.types = dict(load_object_types(config.objects) if types is None else types)
        self.description = describe_types(self.types, int(time.time() * 1000))
        """What ``Describe`` answers: made once, from the types loaded at start."""
        self.known_names.add({name: found.methods for name, found in self.types.items()})
        self.access = AccessGuard(
            access_rules(config.access_rules), self.meter, "node", self.known_names
        )
        try:
            # Now, not once serving: a password file that cannot be read is told like a
            # flag that cannot be used (one line, exit code 2), not as a crash.
            self._store = (
                None
                if config.store is None
                else open_store(config.store, config.store_password_file, config.store_pool_size)
            )
        except StoreError as error:
            raise StartupError(f"--store: {error}") from None
        self.advertise = ""
        """The address gates and other nodes reach this node at (known once bound)."""
        self.etcd: EtcdMembership | None = None
        self.ownership: ShardOwnership | None = None
        """The node's claims and handoffs, with etcd membership (None: static)."""
        self._deregistered = False
        """Whether the node key is gone (etcd: the node left the cluster)."""

    def live_tasks(self) -> list[str]:
        """Names of the gate stream tasks the node's supervisor holds now."""
        return [
            name for name in self.supervisor.task_names() if name.startswith(STREAM_TASK_PREFIX)
        ]

    @property
    def starts_ready(self) -> bool:
        # With etcd, a node is ready once it has joined (it may serve only on a valid lease).
        return self.config.membership == "static"

    def assemble(self, server: grpc.aio.Server, bound: BoundAddress) -> None:
        config = self.config
        self.advertise, nodes = config.identity(bound.listen)
        set_log_identity(node=self.advertise)
        if config.membership == "etcd":
            self._join_etcd()
        else:
            static = StaticView(nodes)
            self.view = static
            self.shards = ShardTable(self.advertise, owner_of=static.target)
            for shard in range(SHARD_COUNT):
                if static.target(shard) == self.advertise:
                    self.shards.own(shard)
        self.gates = GateStreams(
            self.supervisor,
            self.advertise,
            queue_size=config.gate_queue_size,
            queue_bytes=config.gate_queue_bytes,
            heartbeat_interval=config.heartbeat_interval,
            max_message_bytes=config.max_message_bytes,
            max_gates=config.max_gates,
        )
        self.state = ObjectState(
            self._store, self.shards, self.advertise, static=config.membership == "static"
        )
        self.host = ObjectHost(
            self.types, self.shards, self.advertise, self.state, config.max_objects, self.access
        )
        self.node_calls = self.open_node_calls(
            f"node {self.advertise}", ((wire.NODE_ID_KEY, self.advertise),)
        )
        self.runtime = NodeRuntime(
            self.host,
            self.gates,
            self.pool,
            self.node_calls,
            self.view,
            self.advertise,
            config.call_timeout,
        )
        self.host.attach_runtime(self.runtime)
        if self.etcd is not None:
            self.ownership = ShardOwnership(
                client=self.etcd.client,
                view=self.etcd.view,
                node_id=self.advertise,
                address=self.advertise,
                table=self.shards,
                host=self.host,
                config=config,
                on_ready=self._report_ready_soon,
            )
        self.metrics = NodeMetrics(
            self.meter, self.host, self.gates, self.shards, self.ownership, self.state
        )
        membership_metrics(self.meter, self.service, self.view)
        self.call_streams = CallStreams(
            self.supervisor,
            self.advertise,
            self.host,
            self.calls,
            self.call_metrics,
            max_calls=config.max_stream_calls,
            max_message_bytes=config.max_message_bytes,
        )
        servicer = NodeService(
            self.advertise,
            self.view,
            self.host,
            self.gates,
            self.call_streams,
            self.membership_status,
            PeerCheck(enabled=self.tls is not None),
            self.description,
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)

    def _join_etcd(self) -> None:
        self.etcd = EtcdMembership(self.config)
        self.view = self.etcd.view
        # Calls are admitted only while the lease is valid beyond the fence margin.
        self.shards = ShardTable(
            self.advertise,
            lease_valid=lambda: self.ownership is not None and self.ownership.serving(),
            owner_of=self.etcd.view.owner_address,
        )

    def membership_status(self) -> node_pb2.StatusResponse:
        """The membership part of Status: mode, shards owned and draining, lease, fence,
        leaving."""
        status = node_pb2.StatusResponse(
            membership=self.config.membership,
            owned_shards=self.shards.shards(ShardState.OWNED),
            draining_shards=self.shards.shards(ShardState.DRAINING),
            store=self.state.description,
            store_available=self.state.available,
        )
        if self.ownership is not None:
            status.incarnation = self.ownership.incarnation
            status.lease_valid_ms = int(self.ownership.lease_valid_for() * 1000)
            status.fenced = self.ownership.fenced
            status.leaving = self.ownership.leaving
        return status

    def _report_ready_soon(self, ready: bool) -> None:
        """Readiness follows the ownership (joined, fenced); health is set by an owned task."""
        with contextlib.suppress(SupervisorClosed):
            self.supervisor.spawn(f"readiness:{ready}", self.report_ready(ready))

    async def on_serving(self) -> None:
        if self.state.store is not None:
            self.supervisor.spawn("store", self.state.open(self.fail), vital=True)
        self.supervisor.spawn(
            "upkeep",
            run_upkeep(self.host, self.config.save_interval, self.config.idle_timeout),
            vital=True,
        )
        self.supervisor.spawn(
            "channel-sweep",
            sweep_departed_channels(self.view, self.pool, self.node_calls.forget),
            vital=True,
        )
        if self.etcd is not None and self.ownership is not None:
            await self.etcd.open()
            self.supervisor.spawn("etcd-view", self.etcd.watch(self.fail), vital=True)
            self.supervisor.spawn("shard-ownership", self.ownership.run(), vital=True)

    async def leave(self, budget: ShutdownBudget) -> None:
        """Hands the shards off (:meth:`ShardOwnership.leave`) and notes whether the node
        key is gone."""
        if self.ownership is not None:
            self._deregistered = await self.ownership.leave(budget)

    def close_streams(self) -> int:
        if self._deregistered:
            # The gates end their streams once their views have lost this node's key, and
            # they route by those same views: waiting for that (the stop's wait for streams)
            # keeps the server up until no gate sends it anything more. Ending the streams
            # here instead let the server stop while a gate whose view lagged (by a second
            # and more at a load average of 14) still sent it calls, which failed.
            return self.gates.refuse_new()
        return self.gates.close_all(wire.CloseReason.SHUTDOWN)

    async def release(self, budget: ShutdownBudget) -> None:
        # The supervisor's shutdown made every Calls stream answer its calls; let each send
        # those answers and end with OK before the server stops, which would cut it off (the
        # gate would take an error for a stream whose unanswered calls never ran).
        left = await self.call_streams.wait_ended(min(budget.remaining(), SERVER_GRACE))
        if left:
            log.warning("call streams still sending after the shutdown timeout", streams=left)
        self.gates.clear()
        active = self.host.active_count
        stuck = await self.host.deactivate_all(budget.remaining())
        if stuck:
            log.warning("objects not deactivated within the shutdown timeout", objects=stuck)
        log.info("objects deactivated", objects=active - len(stuck), stuck=len(stuck))
        await self.state.close()
        if self.etcd is not None:
            await self.etcd.close()

    def identity(self) -> dict[str, Any]:
        return {
            "advertise": self.advertise,
            "nodes": sorted(self.view.nodes()),
            "membership": self.config.membership,
            "object_types": sorted(self.types),
        }


__all__ = ["NodeApp"]
