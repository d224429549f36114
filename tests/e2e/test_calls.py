"""Calls through a gate to objects on two nodes: routing, object-to-object calls, bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import CLIENT_ID_KEY, CREDENTIAL_KEY
from tests.helpers.cluster import Cluster


async def test_calls_land_on_the_node_placement_chooses(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    """Objects created through the gate are active on their owner node and only there."""
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    ids = [f"routing-{i}" for i in range(40)]
    for object_id in ids:
        value = await client.call(
            "Counter", object_id, "Increment", IncrementRequest(by=2), CounterValue
        )
        assert value.value == 2
    by_node = {
        node: await shared_cluster.list_objects(node, "Counter")
        for node in shared_cluster.node_addresses
    }
    for object_id in ids:
        owner = shared_cluster.placement.node_for("Counter", object_id)
        assert object_id in by_node[owner]
        others = [n for n in shared_cluster.node_addresses if n != owner]
        assert all(object_id not in by_node[n] for n in others)
    assert all(by_node[n] & set(ids) for n in shared_cluster.node_addresses), "both nodes used"


async def test_state_persists_between_calls(shared_cluster: Cluster, clients: list[Client]) -> None:
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    for expected in (1, 2, 3):
        value = await client.call(
            "Counter", "persist", "Increment", IncrementRequest(by=1), CounterValue
        )
        assert value.value == expected
    assert (await client.call("Counter", "persist", "Get", GetRequest(), CounterValue)).value == 3


async def test_object_calls_object_on_the_other_node(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    """A Relay on one node increments a Counter owned by the other node."""
    node_a, node_b = shared_cluster.node_addresses
    relay_id = shared_cluster.ids_owned_by(node_a, "Relay", 1, "relay")[0]
    counter_id = shared_cluster.ids_owned_by(node_b, "Counter", 1, "remote-counter")[0]
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    for expected in (1, 2):
        value = await client.call(
            "Relay", relay_id, "IncrementCounter", StringValue(value=counter_id), CounterValue
        )
        assert value.value == expected
    assert counter_id in await shared_cluster.list_objects(node_b, "Counter")
    assert relay_id in await shared_cluster.list_objects(node_a, "Relay")


async def test_create_and_delete(shared_cluster: Cluster, clients: list[Client]) -> None:
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    owner = shared_cluster.placement.node_for("Counter", "lifecycle")
    assert await client.create("Counter", "lifecycle") is True
    assert await client.create("Counter", "lifecycle") is False
    assert "lifecycle" in await shared_cluster.list_objects(owner, "Counter")
    assert await client.delete("Counter", "lifecycle") is True
    assert await client.delete("Counter", "lifecycle") is False
    assert "lifecycle" not in await shared_cluster.list_objects(owner, "Counter")


async def test_the_object_sees_the_calling_client(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    who = await client.call("Pusher", "who", "WhoAmI", Empty(), StringValue)
    assert who.value == client.client_id


@pytest.mark.parametrize(
    ("object_type", "object_id", "method", "request_message", "code"),
    [
        ("Nope", "x", "Get", GetRequest(), grpc.StatusCode.NOT_FOUND),
        ("Counter", "x", "Explode", GetRequest(), grpc.StatusCode.UNIMPLEMENTED),
        ("Counter", "x", "Increment", StringValue(value="1"), grpc.StatusCode.INVALID_ARGUMENT),
        ("Counter", "", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("", "x", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("Counter", "x" * 300, "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("Counter", "x", "", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("Failing", "x", "Raise", Empty(), grpc.StatusCode.INTERNAL),
        ("Relay", "self", "CallSelf", Empty(), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
async def test_bad_calls_get_the_right_status_and_change_nothing(
    shared_cluster: Cluster,
    clients: list[Client],
    object_type: str,
    object_id: str,
    method: str,
    request_message: StringValue,
    code: grpc.StatusCode,
) -> None:
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    before = await client.call("Counter", "bystander", "Get", GetRequest(), CounterValue)
    with pytest.raises(CallError) as error:
        await client.call(object_type, object_id, method, request_message, CounterValue)
    assert error.value.status_code == code, error.value.message
    assert error.value.message
    after = await client.call(
        "Counter", "bystander", "Increment", IncrementRequest(by=1), CounterValue
    )
    assert after.value == before.value + 1


async def test_garbage_payload_is_invalid_argument(shared_cluster: Cluster) -> None:
    """An Any naming the right type but carrying bytes that do not parse as it."""
    async with grpc.aio.insecure_channel(shared_cluster.gate_addresses[0]) as channel:
        stub = gate_pb2_grpc.GateServiceStub(channel)
        stream = stub.Register(gate_pb2.RegisterRequest())
        registered = (await stream.read()).registered
        metadata = (
            (CLIENT_ID_KEY, registered.client_id),
            (CREDENTIAL_KEY, registered.credential),
        )
        garbage = any_pb2.Any(
            type_url="type.googleapis.com/goverse.examples.v1.IncrementRequest",
            value=b"\xff\xff\xff\xff",
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CallObject(
                gate_pb2.CallObjectRequest(
                    object_type="Counter", object_id="g", method="Increment", request=garbage
                ),
                metadata=metadata,
                timeout=10,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream.cancel()


async def test_oversized_payload_is_refused_and_the_gate_keeps_serving(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    # The client may send more than the gate accepts, so the gate's limit is what is tested.
    client = shared_cluster.client(max_message_bytes=16 * 1024 * 1024)
    clients.append(client)
    await client.connect()
    with pytest.raises(CallError) as error:
        await client.call(
            "Pusher", "big", "WhoAmI", StringValue(value="x" * (5 * 1024 * 1024)), StringValue
        )
    assert error.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    value = await client.call(
        "Counter", "after-big", "Increment", IncrementRequest(by=1), CounterValue
    )
    assert value.value == 1


async def test_calls_without_a_valid_credential_are_refused_and_do_nothing(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    """Missing, wrong, or another client's credential: UNAUTHENTICATED, object untouched."""
    victim = shared_cluster.client()
    clients.append(victim)
    await victim.connect()
    owner = shared_cluster.placement.node_for("Counter", "auth-target")
    async with grpc.aio.insecure_channel(shared_cluster.gate_addresses[0]) as channel:
        stub = gate_pb2_grpc.GateServiceStub(channel)
        stream = stub.Register(gate_pb2.RegisterRequest())
        mine = (await stream.read()).registered
        request = gate_pb2.CallObjectRequest(
            object_type="Counter", object_id="auth-target", method="Increment"
        )
        request.request.Pack(IncrementRequest(by=1))
        attempts = [
            (),
            ((CLIENT_ID_KEY, victim.client_id),),
            ((CLIENT_ID_KEY, victim.client_id), (CREDENTIAL_KEY, mine.credential)),
            ((CLIENT_ID_KEY, mine.client_id), (CREDENTIAL_KEY, "forged")),
            ((CLIENT_ID_KEY, "gate-0/0000"), (CREDENTIAL_KEY, mine.credential)),
        ]
        for metadata in attempts:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.CallObject(request, metadata=metadata, timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        stream.cancel()
    assert "auth-target" not in await shared_cluster.list_objects(owner, "Counter")
    assert (
        await victim.call("Counter", "bystander-2", "Get", GetRequest(), CounterValue)
    ).value == 0


async def test_register_sends_the_registration_first(shared_cluster: Cluster) -> None:
    async with grpc.aio.insecure_channel(shared_cluster.gate_addresses[0]) as channel:
        stream = gate_pb2_grpc.GateServiceStub(channel).Register(gate_pb2.RegisterRequest())
        first = await stream.read()
        assert first.WhichOneof("event") == "registered"
        assert first.registered.client_id.startswith("gate-0/")
        assert first.registered.credential
        stream.cancel()


async def test_turns_serialise_calls_to_one_object(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    """Concurrent calls to one object never overlap; Sleeper reports the peak overlap."""
    client = shared_cluster.client()
    clients.append(client)
    await client.connect()
    replies = await asyncio.gather(
        *(
            client.call("Sleeper", "turns", "Sleep", Int64Value(value=20), Int64Value)
            for _ in range(8)
        )
    )
    assert max(r.value for r in replies) == 1
