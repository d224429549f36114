"""Tests of NodeService over gRPC on loopback: status codes for bad input, Status, ListObjects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue

from goverse import wire
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.placement import Placement
from goverse.v1 import node_pb2
from goverse.wire import pack
from tests.unit.node.conftest import NODE, Node, id_owned_by

OTHER = "127.0.0.1:7999"


def garbage(type_name: str) -> any_pb2.Any:
    """An Any that names `type_name` but holds bytes that do not parse."""
    return any_pb2.Any(type_url=f"type.googleapis.com/{type_name}", value=b"\x0a\xff\xff")


BAD_CALLS = {
    "empty type": ("", "c", "Increment", pack(IncrementRequest()), "INVALID_ARGUMENT"),
    "empty id": ("Counter", "", "Increment", pack(IncrementRequest()), "INVALID_ARGUMENT"),
    "oversized id": ("Counter", "x" * 257, "Get", pack(GetRequest()), "INVALID_ARGUMENT"),
    "control character in id": ("Counter", "a\nb", "Get", pack(GetRequest()), "INVALID_ARGUMENT"),
    "malformed type": ("Not A Type", "c", "Get", pack(GetRequest()), "INVALID_ARGUMENT"),
    "unknown type": ("Nope", "c", "Get", pack(GetRequest()), "NOT_FOUND"),
    "unknown method": ("Counter", "c", "Reset", pack(GetRequest()), "UNIMPLEMENTED"),
    "malformed method": ("Counter", "c", "no such", pack(GetRequest()), "INVALID_ARGUMENT"),
    "wrong request type": ("Counter", "c", "Increment", pack(GetRequest()), "INVALID_ARGUMENT"),
    "missing request": ("Counter", "c", "Increment", any_pb2.Any(), "INVALID_ARGUMENT"),
    "garbage bytes": (
        "Counter",
        "c",
        "Increment",
        garbage("goverse.examples.v1.IncrementRequest"),
        "INVALID_ARGUMENT",
    ),
    "method raises": ("Failing", "f", "Raise", pack(Empty()), "INTERNAL"),
    "wrong return type": ("Misbehaving", "m", "WrongType", pack(Empty()), "INTERNAL"),
    "method raises a GoverseError": (
        "Misbehaving",
        "m",
        "Refuse",
        pack(Empty()),
        "RESOURCE_EXHAUSTED",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
async def test_bad_calls_get_the_right_status_and_the_node_keeps_serving(
    node: Node, case: str
) -> None:
    """Each malformed or failing call answers its status code; a good call works after it."""
    object_type, object_id, method, request, code = BAD_CALLS[case]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type=object_type, object_id=object_id, method=method, request=request
            ),
            timeout=10,
        )
    assert raised.value.code() == getattr(grpc.StatusCode, code), raised.value.details()
    assert raised.value.details()
    value = await node.call("Counter", "after", "Increment", IncrementRequest(by=2), CounterValue)
    assert value.value == 2


async def test_wrong_request_type_says_expected_and_got(node: Node) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Counter", "c", "Increment", GetRequest(), CounterValue)
    details = raised.value.details()
    assert "goverse.examples.v1.IncrementRequest" in details
    assert "goverse.examples.v1.GetRequest" in details


async def test_internal_errors_do_not_leak_the_exception_message(node: Node) -> None:
    """A method's unexpected exception answers INTERNAL with a short message only."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Failing", "f", "Raise", Empty(), Empty)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "always fails" not in raised.value.details()
    assert "ValueError" in raised.value.details()


async def test_objects_owned_by_another_node_are_refused(
    start_node: Callable[..., Any],
) -> None:
    """A call, create or delete for an object placed on another node is FAILED_PRECONDITION
    naming the owner, and nothing is activated."""
    node: Node = await start_node(nodes=(NODE, OTHER))
    foreign = id_owned_by(Placement((NODE, OTHER)), "Counter", OTHER)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Counter", foreign, "Get", GetRequest(), CounterValue)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert OTHER in raised.value.details()
    for rpc, message in (
        (node.stub.CreateObject, node_pb2.NodeCreateObjectRequest),
        (node.stub.DeleteObject, node_pb2.NodeDeleteObjectRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rpc(message(object_type="Counter", object_id=foreign), timeout=5)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await node.status()).active_objects == 0


async def test_a_refusal_for_another_nodes_object_says_the_call_did_not_run(
    start_node: Callable[..., Any],
) -> None:
    """The refusal carries ``goverse-shard: not-owner`` in its trailing metadata, on every
    entry point: routing (a gate, another node) may send the call again to the owner; a call
    that failed for another reason carries no such marker."""
    node: Node = await start_node(nodes=(NODE, OTHER))
    foreign = id_owned_by(Placement((NODE, OTHER)), "Counter", OTHER)
    for rpc, request in (
        (
            node.stub.CallObject,
            node_pb2.NodeCallObjectRequest(object_type="Counter", object_id=foreign, method="Get"),
        ),
        (
            node.stub.CreateObject,
            node_pb2.NodeCreateObjectRequest(object_type="Counter", object_id=foreign),
        ),
        (
            node.stub.DeleteObject,
            node_pb2.NodeDeleteObjectRequest(object_type="Counter", object_id=foreign),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rpc(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        refusal = wire.shard_refusal_of(raised.value.trailing_metadata())
        assert refusal is wire.ShardRefusal.NOT_OWNER
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await node.call("Relay", "r", "CallSelf", Empty(), Empty)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert wire.shard_refusal_of(raised.value.trailing_metadata()) is None


async def test_create_delete_and_list_objects(node: Node) -> None:
    """CreateObject and DeleteObject report whether they changed anything; ListObjects
    shows the active objects, filtered by type when asked."""
    create = node_pb2.NodeCreateObjectRequest(object_type="Counter", object_id="c1")
    assert (await node.stub.CreateObject(create, timeout=5)).created is True
    assert (await node.stub.CreateObject(create, timeout=5)).created is False
    await node.call("Pusher", "p1", "WhoAmI", Empty(), StringValue)
    listed = await node.stub.ListObjects(node_pb2.ListObjectsRequest(), timeout=5)
    assert [(o.object_type, o.object_id) for o in listed.objects] == [
        ("Counter", "c1"),
        ("Pusher", "p1"),
    ]
    only = await node.stub.ListObjects(node_pb2.ListObjectsRequest(object_type="Pusher"), timeout=5)
    assert [o.object_id for o in only.objects] == ["p1"]
    delete = node_pb2.NodeDeleteObjectRequest(object_type="Counter", object_id="c1")
    assert (await node.stub.DeleteObject(delete, timeout=5)).deleted is True
    assert (await node.stub.DeleteObject(delete, timeout=5)).deleted is False
    assert (await node.status()).active_objects == 1


async def test_status_reports_identity_types_and_load(node: Node) -> None:
    status = await node.status()
    assert status.node == NODE
    assert list(status.nodes) == [NODE]
    assert {"Counter", "ChatRoom", "Pusher", "Relay", "Sleeper", "Tally"} <= set(
        status.object_types
    )
    assert status.active_objects == 0
    assert list(status.gates) == []
    assert dict(status.dropped_pushes) == {}


async def test_the_caller_client_id_reaches_the_object(node: Node) -> None:
    """The client id the gate stamps on the call is what the object sees as its caller."""
    who = await node.call("Pusher", "p", "WhoAmI", Empty(), StringValue, client_id="g1/abc")
    assert who.value == "g1/abc"
