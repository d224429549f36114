"""A cluster with TLS on every hop: calls and pushes through gates and nodes, object calls
between nodes, and nothing in plaintext."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    JoinRequest,
    JoinResponse,
    SendRequest,
    SendResponse,
)
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.cluster import Cluster
from tests.helpers.pushes import Inbox


async def connected(cluster: Cluster, clients: list[Client], gates: list[str]) -> list[Client]:
    new = [cluster.client([gate]) for gate in gates]
    clients.extend(new)
    for client in new:
        await client.connect()
    return new


async def test_calls_reach_objects_on_every_node_over_tls(
    tls_cluster: Cluster, clients: list[Client]
) -> None:
    """Each gate forwards calls over mutual TLS to objects on both nodes."""
    for client in await connected(tls_cluster, clients, tls_cluster.gate_addresses):
        for node in tls_cluster.node_addresses:
            (counter,) = tls_cluster.ids_owned_by(node, "Counter", 1, f"tls-{client.client_id}")
            value = await client.call(
                "Counter", counter, "Increment", IncrementRequest(by=3), CounterValue
            )
            assert value.value == 3


async def test_object_calls_between_nodes_over_tls(
    tls_cluster: Cluster, clients: list[Client]
) -> None:
    """A Relay on one node increments a Counter owned by the other: node to node mTLS."""
    (client,) = await connected(tls_cluster, clients, tls_cluster.gate_addresses[:1])
    first, second = tls_cluster.node_addresses
    (relay,) = tls_cluster.ids_owned_by(first, "Relay", 1, "tls-relay")
    (counter,) = tls_cluster.ids_owned_by(second, "Counter", 1, "tls-relayed")
    for expected in (1, 2):
        value = await client.call(
            "Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue
        )
        assert value.value == expected


async def test_pushes_reach_clients_of_both_gates_over_tls(
    tls_cluster: Cluster, clients: list[Client]
) -> None:
    """A push to the caller, and chat between clients of different gates: node -> gate
    streams and gate -> client streams under TLS."""
    alice, bob = await connected(tls_cluster, clients, tls_cluster.gate_addresses)
    inbox = Inbox(alice)
    accepted = await alice.call(
        "Pusher", "tls-p", "PushToCaller", StringValue(value="hi"), Int64Value
    )
    assert accepted.value == 1
    assert (await inbox.next(StringValue)).value == "hi"
    for client, user in ((alice, "alice"), (bob, "bob")):
        await client.call("ChatRoom", "tls-room", "Join", JoinRequest(user=user), JoinResponse)
    bob_inbox = Inbox(bob)
    sent = await alice.call(
        "ChatRoom", "tls-room", "Send", SendRequest(user="alice", text="over tls"), SendResponse
    )
    assert await bob_inbox.next(ChatMessage) == ChatMessage(
        room="tls-room", user="alice", text="over tls", seq=sent.seq
    )


def test_the_cluster_refuses_plaintext(tls_cluster: Cluster) -> None:
    """Neither a node nor a gate of the TLS cluster answers a plaintext connection."""
    for address in [*tls_cluster.node_addresses, *tls_cluster.gate_addresses]:
        with grpc.insecure_channel(address) as channel:
            stub = node_pb2_grpc.NodeServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.Status(node_pb2.StatusRequest(), timeout=3)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
