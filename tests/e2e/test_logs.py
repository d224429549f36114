"""Logs: JSON lines on stdout that say which service and which gate or node wrote them."""

from __future__ import annotations

from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.cluster import Cluster


async def test_every_line_is_json_naming_service_and_instance(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    await client.call("Counter", "logs", "Increment", IncrementRequest(by=1), CounterValue)
    for node in shared_cluster.nodes:
        lines = node.log_lines()
        assert lines, f"{node.name} logged nothing"
        for line in lines:
            assert line["service"] == "node"
            assert line["node"] == node.address
            assert {"event", "level", "timestamp"} <= line.keys()
    for gate in shared_cluster.gates:
        lines = gate.log_lines()
        assert lines, f"{gate.name} logged nothing"
        for line in lines:
            assert line["service"] == "gate"
            assert line["gate_id"] == "gate-0"
