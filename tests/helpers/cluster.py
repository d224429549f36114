"""A local cluster for e2e tests: real goverse-node and goverse-gate processes, started ready."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from goverse import wire
from goverse.client import Client
from goverse.placement import Placement
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.processes import START_TIMEOUT, ProcessGroup, ServiceProcess, health_status
from tests.helpers.waiting import wait_until


@dataclass
class Cluster:
    """Nodes and gates, as real processes."""

    group: ProcessGroup
    node_addresses: list[str]
    """The nodes' unix addresses, exactly as every node and gate was given them in --nodes
    (so placement's names for the nodes)."""
    nodes: list[ServiceProcess] = field(default_factory=list)
    gates: list[ServiceProcess] = field(default_factory=list)

    @property
    def gate_addresses(self) -> list[str]:
        """Where the gates listen (each on a loopback port it bound, from its ready file)."""
        return [proc.address for proc in self.gates]

    @property
    def placement(self) -> Placement:
        return Placement(self.node_addresses)

    def ids_owned_by(self, node: str, object_type: str, count: int, prefix: str) -> list[str]:
        """`count` object ids of `object_type` that placement puts on `node`."""
        ids: list[str] = []
        n = 0
        while len(ids) < count:
            candidate = f"{prefix}-{n}"
            if self.placement.node_for(object_type, candidate) == node:
                ids.append(candidate)
            n += 1
        return ids

    def client(self, gates: list[str] | None = None, **options: Any) -> Client:
        return Client(gates or self.gate_addresses, **options)

    async def list_objects(self, node: str, object_type: str = "") -> set[str]:
        async with grpc.aio.insecure_channel(node) as channel:
            reply = await node_pb2_grpc.NodeServiceStub(channel).ListObjects(
                node_pb2.ListObjectsRequest(object_type=object_type), timeout=10
            )
        return {ref.object_id for ref in reply.objects}

    async def status(self, node: str) -> node_pb2.StatusResponse:
        async with grpc.aio.insecure_channel(node) as channel:
            reply: node_pb2.StatusResponse = await node_pb2_grpc.NodeServiceStub(channel).Status(
                node_pb2.StatusRequest(), timeout=10
            )
        return reply


def start_cluster(
    group: ProcessGroup,
    gates: int = 1,
    gate_extra: tuple[str, ...] = (),
    node_extra: tuple[str, ...] = (),
    *,
    nodes: int = 2,
    env: dict[str, str] | None = None,
    etcd: str | None = None,
) -> Cluster:
    """`nodes` nodes on unix sockets named up front and `gates` gates (``gate-0`` …) on
    loopback ports they bind; returns once all of them serve and every gate's link to every
    node is up (a gate serves before its links connect: they are its background tasks).

    With `etcd` (an endpoint), membership is etcd's: nobody gets ``--nodes``, each node
    registers its unix address; it returns once every node has joined, too."""
    cluster = Cluster(group, group.node_addresses(nodes))
    membership = () if etcd is None else (f"--etcd-endpoints={etcd}",)
    listed = None if etcd is not None else cluster.node_addresses
    # Nodes first: a gate that starts before its nodes serve routes its first calls into a
    # channel still backing off from "connection refused", and those fail with UNAVAILABLE.
    for address in cluster.node_addresses:
        extra = (*membership, *node_extra)
        cluster.nodes.append(group.node(address, listed, extra, wait=False, env=env))
    for proc in cluster.nodes:
        proc.wait_ready()
    if etcd is not None:
        wait_until(
            lambda: all(joined(node) for node in cluster.node_addresses),
            START_TIMEOUT,
            what="every node to join the cluster in etcd",
        )
    for index in range(gates):
        extra = (*membership, *gate_extra)
        cluster.gates.append(group.gate(f"gate-{index}", listed, extra, wait=False, env=env))
    for proc in cluster.gates:
        proc.wait_ready()
    expected = [f"gate-{index}" for index in range(gates)]
    wait_until(
        lambda: all(linked_gates(node) == expected for node in cluster.node_addresses),
        START_TIMEOUT,
        what="every gate to link to every node",
    )
    return cluster


def joined(node: str) -> bool:
    """Whether `node` is ready (health of its NodeService): in etcd membership, it joined."""
    return bool(health_status(node, wire.NODE_SERVICE) == health_pb2.HealthCheckResponse.SERVING)


def linked_gates(node: str) -> list[str]:
    """The gate ids with an open RegisterGate stream on `node`, sorted."""
    with grpc.insecure_channel(node) as channel:
        reply = node_pb2_grpc.NodeServiceStub(channel).Status(node_pb2.StatusRequest(), timeout=5)
    return sorted(reply.gates)
