"""Describe on real node and gate processes: types, methods, descriptors that decode the demo
messages, the gate's credential check, and its cache following the nodes."""

from __future__ import annotations

import grpc
import pytest

from goverse import wire
from goverse.client import Client
from goverse.descriptions import Descriptions
from goverse.examples.v1.chat_pb2 import ChatMessage, JoinResponse
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import describe_pb2, gate_pb2_grpc, node_pb2_grpc
from tests.helpers.etcd import EtcdServer
from tests.helpers.processes import ProcessGroup
from tests.helpers.tokens import TokenIssuer
from tests.helpers.waiting import eventually

TIMEOUT = 10.0
ETCD_TIMING = ("--lease-ttl=3s", "--etcd-timeout=1s")
NODE_ETCD_TIMING = (*ETCD_TIMING, "--fence-margin=1s", "--rebalance-delay=1s")


async def node_describe(address: str) -> describe_pb2.DescribeResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        response: describe_pb2.DescribeResponse = await node_pb2_grpc.NodeServiceStub(
            channel
        ).Describe(describe_pb2.DescribeRequest(), timeout=TIMEOUT)
    return response


async def gate_describe(
    address: str, metadata: tuple[tuple[str, str], ...] = ()
) -> describe_pb2.DescribeResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        response: describe_pb2.DescribeResponse = await gate_pb2_grpc.GateServiceStub(
            channel
        ).Describe(describe_pb2.DescribeRequest(), timeout=TIMEOUT, metadata=metadata)
    return response


def check_demo_types(response: describe_pb2.DescribeResponse) -> None:
    """Counter and ChatRoom are described with their methods, and the descriptors decode
    their messages and ChatRoom's pushed ChatMessage."""
    descriptions = Descriptions(response)
    counter = descriptions.types["Counter"]
    assert {m.name: m.request_type for m in counter.methods}["Increment"] == (
        "goverse.examples.v1.IncrementRequest"
    )
    chat = descriptions.types["ChatRoom"]
    assert [m.name for m in chat.methods] == ["Join", "Leave", "Send"]
    assert list(chat.push_types) == ["goverse.examples.v1.ChatMessage"]

    increment = descriptions.method("Counter", "Increment")
    request = descriptions.from_json(increment.request, '{"by": 5}')
    assert IncrementRequest.FromString(request.SerializeToString()).by == 5
    reply = descriptions.unpack(wire.pack(CounterValue(value=7)))
    assert descriptions.to_dict(reply) == {"value": "7"}
    join = descriptions.method("ChatRoom", "Join")
    assert join.response.DESCRIPTOR.full_name == JoinResponse.DESCRIPTOR.full_name
    pushed = descriptions.unpack(wire.pack(ChatMessage(room="lobby", user="bob", text="hi")))
    assert descriptions.to_dict(pushed) == {
        "room": "lobby",
        "user": "bob",
        "text": "hi",
        "seq": "0",
    }


async def test_a_node_describes_its_types_methods_and_messages(processes: ProcessGroup) -> None:
    """A node's Describe lists every loaded type and method, and its files decode the demo
    Counter and ChatRoom messages, ChatRoom's pushed ChatMessage included."""
    node = processes.node()
    response = await node_describe(node.address)
    check_demo_types(response)
    assert response.described_unix_ms > 0


async def test_a_gate_describes_its_nodes_to_a_registered_client_and_a_one_shot_caller(
    processes: ProcessGroup,
) -> None:
    """Through a gate without authentication: a registered client (its id and credential)
    and a caller without a registration both get the node's description."""
    node = processes.node()
    gate = processes.gate("g0", [node.address])
    async with Client([gate.address]) as client:
        check_demo_types(await client.describe(timeout=TIMEOUT))
    check_demo_types(await gate_describe(gate.address))


async def test_a_gate_with_jwt_refuses_describe_without_credentials(
    processes: ProcessGroup,
) -> None:
    """A gate with ``--authenticator jwt``: Describe with no token, a bad token, or a client id
    and credential that are not a registration's is UNAUTHENTICATED; with a valid token, or
    as a registered client, it is answered."""
    issuer = TokenIssuer()
    node = processes.node()
    gate = processes.gate("g0", [node.address], issuer.gate_flags(processes.log_dir / "jwt"))
    for metadata in (
        (),
        ((wire.AUTHORIZATION_KEY, "Bearer not-a-token"),),
        ((wire.CLIENT_ID_KEY, "g0/forged"), (wire.CREDENTIAL_KEY, "guess")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gate_describe(gate.address, metadata)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, metadata
    bearer = ((wire.AUTHORIZATION_KEY, f"Bearer {issuer.token()}"),)
    check_demo_types(await gate_describe(gate.address, bearer))
    async with Client([gate.address], token=issuer.token()) as client:
        check_demo_types(await client.describe(timeout=TIMEOUT))


async def test_the_gate_cache_takes_in_a_node_with_another_type_when_it_joins(
    processes: ProcessGroup, etcd: EtcdServer
) -> None:
    """etcd membership: a gate whose only node hosts Counter describes Counter alone; once a
    second node hosting only ChatRoom joins, the gate describes both (the view change
    refreshes the cache, long before the periodic refresh)."""
    flags = (f"--etcd-endpoints={etcd.endpoint}", "--etcd-prefix=/describe")
    processes.node(extra=(*flags, *NODE_ETCD_TIMING, "--objects=goverse.examples.counter"))
    gate = processes.gate("g0", None, (*flags, *ETCD_TIMING, "--describe-refresh=10m"))

    await eventually(lambda: describes(gate.address, {"Counter"}), TIMEOUT, "Counter")
    processes.node(extra=(*flags, *NODE_ETCD_TIMING, "--objects=goverse.examples.chat"))
    await eventually(
        lambda: describes(gate.address, {"Counter", "ChatRoom"}), 20.0, "ChatRoom joining"
    )
    check_demo_types(await gate_describe(gate.address))


async def describes(address: str, types: set[str]) -> bool:
    """Whether the gate at `address` describes exactly `types`."""
    return {t.name for t in (await gate_describe(address)).types} == types
