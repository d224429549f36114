"""Hostile input to real gate and node processes: undecodable bodies, huge echoed input and
input that would break the demo objects are refused with the right status, quietly, and both
services keep serving."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.empty_pb2 import Empty

from goverse import wire
from goverse.client import Client
from goverse.errors import MAX_MESSAGE_CHARS, CallError
from goverse.examples import chat
from goverse.examples.v1.chat_pb2 import JoinRequest, JoinResponse, SendRequest, SendResponse
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.v1 import gate_pb2, node_pb2
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.node_client import NodeCaller
from tests.helpers.processes import ProcessGroup, ServiceProcess, serving

GARBAGE = b"\xff\xff\xff\xff\xff"
"""Not a protobuf message of any type: a truncated varint tag."""
HUGE = 1024 * 1024
"""The probe's 1 MB type URL; echoed whole, its status broke the metadata limit."""


@dataclass
class Cluster:
    node: ServiceProcess
    gate: ServiceProcess


@pytest.fixture
async def cluster(processes: ProcessGroup) -> Cluster:
    """A node and a gate routing to it, both logging at DEBUG (to see the one quiet line)."""
    [address] = processes.node_addresses(1)
    debug = ["--log-level=debug", "--max-message-bytes=4194304"]
    node = await asyncio.to_thread(processes.node, address, [address], debug)
    gate = await asyncio.to_thread(processes.gate, "hostile", [address], debug)
    return Cluster(node, gate)


def _methods(service: ServiceDescriptor) -> list[tuple[str, bool, bool]]:
    return [
        (f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for m in service.methods
    ]


GATE_METHODS = _methods(gate_pb2.DESCRIPTOR.services_by_name["GateService"])
NODE_METHODS = _methods(node_pb2.DESCRIPTOR.services_by_name["NodeService"])


async def _send_garbage(
    address: str, method: str, client_streaming: bool, server_streaming: bool
) -> grpc.aio.AioRpcError:
    """Sends GARBAGE as the (first) request of `method` on a raw channel (identity
    serializers); returns the error the call ended with."""
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any
        if client_streaming:
            factory = (channel.stream_stream if server_streaming else channel.stream_unary)(method)
            call = factory(iter([GARBAGE]), timeout=WAIT)
        else:
            factory = (channel.unary_stream if server_streaming else channel.unary_unary)(method)
            call = factory(GARBAGE, timeout=WAIT)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _finish(call, server_streaming)
    return raised.value


async def _finish(call: Any, server_streaming: bool) -> None:
    """Reads `call` to its end."""
    if server_streaming:
        async for _ in call:
            pass
    else:
        await call


def _error_lines(proc: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in proc.log_lines() if line.get("level") in ("error", "critical")]


async def _still_serves(cluster: Cluster) -> None:
    """A real call through the gate to the node succeeds, and both report SERVING."""
    client = Client([cluster.gate.address])
    try:
        await client.connect()
        value = await client.call(
            "Counter", "probed", "Increment", IncrementRequest(by=1), CounterValue, timeout=WAIT
        )
    finally:
        await client.close()
    assert value.value >= 1
    assert await asyncio.to_thread(serving, cluster.gate.address, wire.GATE_SERVICE)
    assert await asyncio.to_thread(serving, cluster.node.address, wire.NODE_SERVICE)


async def test_undecodable_bodies_get_invalid_argument_on_every_method_of_both_services(
    cluster: Cluster,
) -> None:
    """Garbage bytes sent as the request of every gate and node method, streams included,
    answer INVALID_ARGUMENT naming the request type, before any credential is looked at; each
    is one DEBUG line, no ERROR and no traceback; both services serve afterwards."""
    targets = [(cluster.gate, m) for m in GATE_METHODS] + [(cluster.node, m) for m in NODE_METHODS]
    for proc, (method, client_streaming, server_streaming) in targets:
        error = await _send_garbage(proc.address, method, client_streaming, server_streaming)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
        assert "does not decode as goverse.v1." in (error.details() or ""), (method, error)
    await _still_serves(cluster)
    for proc, methods in ((cluster.gate, GATE_METHODS), (cluster.node, NODE_METHODS)):
        refused = [
            line for line in proc.log_lines() if line["event"] == "undecodable request refused"
        ]
        assert sorted(line["method"] for line in refused) == sorted(m for m, *_ in methods)
        assert _error_lines(proc) == []
        assert "Traceback" not in proc.output()


async def test_undecodable_health_checks_on_the_plaintext_health_port_get_invalid_argument(
    processes: ProcessGroup,
) -> None:
    """The plaintext ``--health-port`` (unauthenticated by design) refuses garbage in Check
    and Watch the same way, quietly, and keeps answering."""
    node = await asyncio.to_thread(processes.node, extra=["--health-port=0", "--log-level=debug"])
    assert node.health_address != node.address
    for method, streaming in [
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", True),
    ]:
        error = await _send_garbage(node.health_address, method, False, streaming)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error)
    assert await asyncio.to_thread(serving, node.health_address)
    assert _error_lines(node) == []
    assert "Traceback" not in node.output()


@pytest.mark.parametrize("field", ["type_url", "object_id", "method", "object_type"])
async def test_a_huge_echoed_input_comes_back_truncated(cluster: Cluster, field: str) -> None:
    """A 1 MB type URL, object id, method name or type name, sent straight to the node and
    through the gate: the status message that refuses it is at most MAX_MESSAGE_CHARS long
    (an echoed type URL is cut), and the next call still works."""
    huge = "x" * HUGE
    request: dict[str, Any] = {
        "object_type": "Counter",
        "object_id": "echo",
        "method": "Get",
        "request": AnyMessage(type_url="type.googleapis.com/google.protobuf.Empty"),
    }
    if field == "type_url":
        request["request"] = AnyMessage(type_url=f"type.googleapis.com/{huge}")
    else:
        request[field] = huge

    async with NodeCaller(cluster.node.address) as node:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await node.stub.CallObject(node_pb2.NodeCallObjectRequest(**request), timeout=WAIT)
    _assert_refused_briefly(raised.value, field)

    client = await GateClient(cluster.gate.address).connect()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.CallObject(
                gate_pb2.CallObjectRequest(**request), metadata=client.metadata(), timeout=WAIT
            )
    finally:
        await client.close()
    _assert_refused_briefly(raised.value, field)
    await _still_serves(cluster)


def _assert_refused_briefly(error: grpc.aio.AioRpcError, field: str) -> None:
    assert error.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    ), error
    details = error.details() or ""
    assert len(details) <= MAX_MESSAGE_CHARS, len(details)
    if field == "type_url":  # the one that is echoed (others are refused without echo)
        assert "truncated" in details, details


async def test_a_traceback_logged_by_a_running_service_does_not_mention_uvloop(
    cluster: Cluster,
) -> None:
    """An object method that raises makes the node log its traceback; that traceback is the
    method's own, with no chained ``ModuleNotFoundError`` for uvloop."""
    async with NodeCaller(cluster.node.address) as node:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await node.call("Failing", "f", "Raise", Empty(), Empty)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    output = cluster.node.output()
    assert "this object always fails" in output
    assert "Traceback" in output
    assert "uvloop" not in output


async def _call_error(client: Client, object_type: str, method: str, request: Any) -> CallError:
    """The CallError `method` of the object `object_type`/"probe" fails with."""
    with pytest.raises(CallError) as raised:
        await client.call(object_type, "probe", method, request, Empty, timeout=WAIT)
    return raised.value


async def test_a_chat_room_refuses_oversized_users_and_keeps_its_history_bounded(
    cluster: Cluster,
) -> None:
    """A 100 KiB user on Join or Send, or an oversized text, is refused with
    INVALID_ARGUMENT; 60 Sends of the largest user and text allowed leave a history of at most
    MAX_HISTORY_BYTES, so a later Join still succeeds (unbounded, every Join failed with
    RESOURCE_EXHAUSTED)."""
    huge_user = "u" * 100 * 1024
    async with Client([cluster.gate.address]) as client:
        for method, request in [
            ("Join", JoinRequest(user=huge_user)),
            ("Send", SendRequest(user=huge_user, text="hi")),
            ("Send", SendRequest(user="u", text="t" * (chat.MAX_TEXT_BYTES + 1))),
        ]:
            error = await _call_error(client, "ChatRoom", method, request)
            assert error.status_code == grpc.StatusCode.INVALID_ARGUMENT, (method, error)

        user, text = "u" * chat.MAX_USER_BYTES, "t" * chat.MAX_TEXT_BYTES
        for _ in range(60):
            await client.call(
                "ChatRoom", "probe", "Send", SendRequest(user=user, text=text), SendResponse
            )
        joined = await client.call(
            "ChatRoom", "probe", "Join", JoinRequest(user=user), JoinResponse, timeout=WAIT
        )
    recent = joined.recent_messages
    assert 0 < len(recent) < 60
    assert sum(message.ByteSize() for message in recent) <= chat.MAX_HISTORY_BYTES
    assert recent[-1].seq == 60
    await _still_serves(cluster)


async def test_a_counter_refuses_an_increment_past_int64_and_keeps_its_value(
    cluster: Cluster,
) -> None:
    """An increment that would overflow (or underflow) int64 answers OUT_OF_RANGE and leaves
    the value as it was; the counter keeps answering (before, it answered INTERNAL forever)."""
    top = 2**63 - 1
    async with Client([cluster.gate.address]) as client:

        async def increment(object_id: str, by: int) -> int:
            reply = await client.call(
                "Counter", object_id, "Increment", IncrementRequest(by=by), CounterValue
            )
            return reply.value

        assert await increment("top", top) == top
        assert await increment("bottom", -top) == -top
        assert await increment("bottom", -1) == -(2**63)
        for object_id, by in [("top", 1), ("top", top), ("bottom", -1)]:
            with pytest.raises(CallError) as raised:
                await increment(object_id, by)
            assert raised.value.status_code == grpc.StatusCode.OUT_OF_RANGE
        top_now = await client.call("Counter", "top", "Get", GetRequest(), CounterValue)
        assert top_now.value == top
        assert await increment("top", -top) == 0
        assert await increment("bottom", 1) == -top
