"""Tests of what objects can do while serving a call: call other objects, here or on
another in-process node, under deadlines, without deadlocking on their own turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest
from goverse.placement import Placement
from goverse.server._node_calls import TASK_PREFIX
from tests.helpers.addresses import SocketDir
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.unit.node.conftest import Node, id_owned_by


async def two_nodes(
    start_node: Callable[..., Any], sockets: SocketDir, **overrides: Any
) -> tuple[Node, Node]:
    """Two in-process nodes that know each other, on unix sockets named before they start."""
    addresses = [sockets.address(f"node-{index}") for index in range(2)]
    nodes = []
    for address in addresses:
        nodes.append(
            await start_node(listen=address, advertise=address, nodes=tuple(addresses), **overrides)
        )
    return nodes[0], nodes[1]


def active(node: Node, object_type: str) -> list[str]:
    return [object_id for kind, object_id in node.app.host.list() if kind == object_type]


async def test_an_object_calls_a_local_object(node: Node) -> None:
    """Relay increments a Counter on the same node, without going through gRPC."""
    reply = await node.call("Relay", "r", "IncrementCounter", StringValue(value="c"), CounterValue)
    assert reply.value == 1
    assert (await node.call("Counter", "c", "Get", GetRequest(), CounterValue)).value == 1


async def test_an_object_calling_itself_is_refused_not_deadlocked(node: Node) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Relay", "r", "CallSelf", Empty(), Empty)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "its own turn" in raised.value.details()


async def test_a_call_cycle_is_refused(node: Node) -> None:
    """a -> b -> a: the second call to a would wait for a's turn forever."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Forwarder", "a", "Forward", StringValue(value="b,a"), StringValue)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    chain = await node.call("Forwarder", "a", "Forward", StringValue(value="b,c"), StringValue)
    assert chain.value == "a,b,c"


async def test_the_client_id_travels_with_object_calls(node: Node) -> None:
    who = await node.call(
        "Forwarder", "f", "WhoCalls", StringValue(value="p"), StringValue, client_id="g/1"
    )
    assert who.value == "g/1"


async def test_a_local_call_times_out_after_the_call_timeout(
    start_node: Callable[..., Any],
) -> None:
    """Without an inherited deadline, an object call waits at most --call-timeout."""
    node: Node = await start_node(call_timeout=timedelta(milliseconds=200))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call(
            "Forwarder", "f", "SleepOn", Int64Value(value=5_000), Int64Value, timeout=None
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer" in raised.value.details()
    reply = await node.call("Forwarder", "f", "SleepOn", Int64Value(value=1), Int64Value)
    assert reply.value == 1


async def test_an_object_calls_an_object_on_another_node(
    sockets: SocketDir, start_node: Callable[..., Any]
) -> None:
    """The call is routed by placement to the owner, where the callee is activated; both
    calls travel on the one Calls stream the first node keeps to the second."""
    first, second = await two_nodes(start_node, sockets)
    placement = Placement([first.app.advertise, second.app.advertise])
    relay = id_owned_by(placement, "Relay", first.app.advertise, "relay")
    counter = id_owned_by(placement, "Counter", second.app.advertise, "counter")
    for expected in (1, 2):
        reply = await first.call(
            "Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue
        )
        assert reply.value == expected
    assert active(first, "Counter") == []
    assert active(second, "Counter") == [counter]
    assert active(first, "Relay") == [relay]
    assert first.app.outbound.task_names() == [TASK_PREFIX + second.app.advertise]
    assert second.app.outbound.task_names() == []


async def test_an_object_calling_a_node_that_starts_later_waits_for_it(
    sockets: SocketDir, start_node: Callable[..., Any]
) -> None:
    """The callee's node is not up yet (nodes started together): the call waits for it within
    its deadline, as a gate's does, instead of failing fast while the channel backs off."""
    addresses = [sockets.address("first"), sockets.address("late")]
    first: Node = await start_node(listen=addresses[0], advertise=addresses[0], nodes=addresses)
    placement = Placement(addresses)
    relay = id_owned_by(placement, "Relay", addresses[0], "relay")
    counter = id_owned_by(placement, "Counter", addresses[1], "counter")
    call = asyncio.create_task(
        first.call("Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue)
    )
    try:
        await asyncio.sleep(0.5)  # the first connection is refused; the channel backs off
        assert not call.done()
        late: Node = await start_node(listen=addresses[1], advertise=addresses[1], nodes=addresses)
        reply = await bounded(call, 10)
    finally:
        await cancel_and_wait(call)
    assert reply.value == 1
    assert active(late, "Counter") == [counter]


async def test_remote_calls_carry_the_client_id_and_the_call_chain(
    sockets: SocketDir, start_node: Callable[..., Any]
) -> None:
    """x (first node) -> y (second node) -> x is refused by the chain the call carries."""
    first, second = await two_nodes(start_node, sockets)
    placement = Placement([first.app.advertise, second.app.advertise])
    x = id_owned_by(placement, "Forwarder", first.app.advertise, "x")
    y = id_owned_by(placement, "Forwarder", second.app.advertise, "y")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await first.call("Forwarder", x, "Forward", StringValue(value=f"{y},{x}"), StringValue)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    pusher = id_owned_by(placement, "Pusher", second.app.advertise, "p")
    who = await first.call(
        "Forwarder", x, "WhoCalls", StringValue(value=pusher), StringValue, client_id="g/7"
    )
    assert who.value == "g/7"


async def test_a_remote_call_times_out_and_reports_deadline_exceeded(
    sockets: SocketDir, start_node: Callable[..., Any]
) -> None:
    """Forwarder (first node) calls a Sleeper on the second node that answers too late."""
    first, second = await two_nodes(start_node, sockets, call_timeout=timedelta(milliseconds=200))
    placement = Placement([first.app.advertise, second.app.advertise])
    forwarder = next(
        f"f-{n}"
        for n in range(10_000)
        if placement.node_for("Forwarder", f"f-{n}") == first.app.advertise
        and placement.node_for("Sleeper", f"s-f-{n}") == second.app.advertise
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await first.call(
            "Forwarder", forwarder, "SleepOn", Int64Value(value=5_000), Int64Value, timeout=None
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_inherited_deadline_bounds_object_calls(node: Node) -> None:
    """The deadline of the call being served, not --call-timeout (30 s), bounds the
    object-to-object call it makes: the callee's node gives up too."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call(
            "Forwarder", "f", "SleepOn", Int64Value(value=5_000), Int64Value, timeout=0.3
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The Sleeper's turn was released: a short call to it is served at once.
    reply = await node.call("Sleeper", "s-f", "Sleep", Int64Value(value=1), Int64Value, timeout=3)
    assert reply.value == 1


async def test_a_call_to_an_unreachable_node_fails_with_its_status(
    unreachable: str, start_node: Callable[..., Any]
) -> None:
    """The callee's node is down: the call waits for it within the deadline of the call being
    served, then the calling object gets UNAVAILABLE naming the node, before that deadline."""
    down = unreachable
    node: Node = await start_node(
        nodes=("127.0.0.1:7000", down), call_timeout=timedelta(seconds=20)
    )
    placement = Placement(["127.0.0.1:7000", down])
    relay = id_owned_by(placement, "Relay", "127.0.0.1:7000", "relay")
    counter = id_owned_by(placement, "Counter", down, "counter")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call(
            "Relay",
            relay,
            "IncrementCounter",
            StringValue(value=counter),
            CounterValue,
            timeout=1.5,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert down in raised.value.details()
