"""The local cluster with JWT on: calls, pushes and a gate rollout with authenticated clients."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from goverse.errors import CallError
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.cluster import Cluster
from tests.helpers.pushes import Inbox
from tests.helpers.waiting import eventually

WAIT = 20.0


def issuer(cluster: Cluster) -> int:
    assert cluster.tokens is not None
    return cluster.tokens.issued


async def test_authenticated_clients_call_and_receive_pushes_through_each_gate(
    jwt_cluster: Cluster, clients: list[Client]
) -> None:
    """A client on each gate registers with a token, increments counters on both nodes,
    gets a push back, and the objects see its subject."""
    for gate in jwt_cluster.gate_addresses:
        client = jwt_cluster.client([gate])
        clients.append(client)
        await client.connect()
        inbox = Inbox(client)
        for node in jwt_cluster.node_addresses:
            counter = jwt_cluster.ids_owned_by(node, "Counter", 1, f"jwt-{gate}")[0]
            value = await client.call(
                "Counter", counter, "Increment", IncrementRequest(by=2), CounterValue
            )
            assert value.value == 2
        seen = await client.call("Identity", f"jwt-{gate}", "Caller", Empty(), StringValue)
        assert json.loads(seen.value)["subject"] == "tester"
        await client.call("Pusher", "jwt", "PushToCaller", StringValue(value=gate), Int64Value)
        assert (await inbox.next(StringValue)).value == gate


async def test_a_client_moves_to_the_other_gate_with_a_fresh_token(
    jwt_cluster: Cluster, clients: list[Client]
) -> None:
    """The gate a client is on stops (SIGTERM: it drains); the client registers with the
    other gate with a token fetched again, and calls again as the same subject."""
    client = jwt_cluster.client()
    clients.append(client)
    await client.connect()
    before = issuer(jwt_cluster)
    doomed = next(proc for proc in jwt_cluster.gates if proc.address == client.gate)
    try:
        code = await asyncio.to_thread(doomed.terminate, WAIT)
        assert code == 0
        await eventually(lambda: client.registrations >= 2, WAIT, "the client to re-register")
        await client.wait_connected(WAIT)
        assert client.gate != doomed.address
        assert issuer(jwt_cluster) > before
        seen = await client.call("Identity", "moved", "Caller", Empty(), StringValue)
        assert json.loads(seen.value)["subject"] == "tester"
    finally:
        await asyncio.to_thread(jwt_cluster.start_stopped, doomed)


async def test_a_client_without_a_token_is_not_registered(jwt_cluster: Cluster) -> None:
    """A client that sends no token never registers: connect() gives up, saying how the
    gates refused it, and a gate logged why at INFO."""
    client = Client(jwt_cluster.gate_addresses, connect_timeout=timedelta(seconds=2))
    with pytest.raises(CallError) as raised:
        await client.connect()
    assert raised.value.status_code == grpc.StatusCode.UNAVAILABLE
    assert "last refusal: UNAUTHENTICATED: this gate requires a token" in raised.value.message

    def logged() -> bool:
        return any(
            line.get("event") == "client authentication failed"
            and line.get("reason") == "missing_token"
            for proc in jwt_cluster.gates
            for line in proc.log_lines()
        )

    await eventually(logged, WAIT, "a gate to log the refusal")
