"""Message limits compose: a request a client may send within ``--max-message-bytes`` goes
through a real gate to a real node, on the unary CallObject, on a raw Session stream and through
the SDK; one byte more is refused by the gate with RESOURCE_EXHAUSTED, and both keep serving."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value

from goverse import wire
from goverse._tracing import start_call_span
from goverse.client import Client
from goverse.client._calls import FRAME_RESERVE
from goverse.errors import CallError
from goverse.v1 import gate_pb2, gate_pb2_grpc
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.processes import ProcessGroup, ServiceProcess, serving

LIMIT = 1024 * 1024
"""The cluster's --max-message-bytes (small: the test moves a few of these)."""
OBJECT_ID = "limits"
"""The Blob every call goes to (its length counts in the request's size)."""


@dataclass
class Cluster:
    node: ServiceProcess
    gate: ServiceProcess


@pytest.fixture
async def cluster(processes: ProcessGroup) -> Cluster:
    """A node and a gate, both with --max-message-bytes=LIMIT."""
    [address] = processes.node_addresses(1)
    limit = [f"--max-message-bytes={LIMIT}"]
    node = await asyncio.to_thread(processes.node, address, [address], limit)
    gate = await asyncio.to_thread(processes.gate, "limits", [address], limit)
    return Cluster(node, gate)


def _sized(size: int, build: Any) -> tuple[Any, int]:
    """`build(payload)` with the largest payload of b"x" that keeps it at most `size` bytes
    (serialized); returns it and its payload's length."""
    length = size
    while (message := build(BytesValue(value=b"x" * length))).ByteSize() > size:
        length -= max(message.ByteSize() - size, 1)
    return message, length


def _call_request(payload: BytesValue) -> gate_pb2.CallObjectRequest:
    return gate_pb2.CallObjectRequest(
        object_type="Blob", object_id=OBJECT_ID, method="Measure", request=wire.pack(payload)
    )


def _session_request(payload: BytesValue) -> gate_pb2.SessionRequest:
    return gate_pb2.SessionRequest(
        calls=[gate_pb2.SessionCall(id=1, timeout_ms=int(WAIT * 1000), call=_call_request(payload))]
    )


@pytest.mark.parametrize("size", [LIMIT, LIMIT - 1])
async def test_a_unary_call_at_the_limit_reaches_the_node(cluster: Cluster, size: int) -> None:
    """A CallObject request of exactly --max-message-bytes (and one byte less) is answered by
    the node: the gate's forwarding envelope does not push it over the gate → node hop's limit
    (it failed with "Sent message larger than max")."""
    request, length = _sized(size, _call_request)
    assert request.ByteSize() == size
    client = await GateClient(cluster.gate.address).connect()
    try:
        reply = await client.stub.CallObject(request, metadata=client.metadata(), timeout=WAIT)
    finally:
        await client.close()
    assert wire.unpack(reply.response, Int64Value).value == length


async def test_a_unary_call_over_the_limit_is_refused_by_the_gate(cluster: Cluster) -> None:
    """One byte over --max-message-bytes: the gate refuses the request (RESOURCE_EXHAUSTED)
    and goes on serving."""
    request, _ = _sized(LIMIT + 1, _call_request)
    assert request.ByteSize() == LIMIT + 1
    client = await GateClient(cluster.gate.address).connect()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.CallObject(request, metadata=client.metadata(), timeout=WAIT)
    finally:
        await client.close()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await _serves(cluster)


@pytest.mark.parametrize("size", [LIMIT, LIMIT - 1])
async def test_a_session_frame_at_the_limit_reaches_the_node(cluster: Cluster, size: int) -> None:
    """A Session stream message of exactly --max-message-bytes (and one byte less) carrying one
    call: its reply comes back, the stream stays open."""
    request, length = _sized(size, _session_request)
    assert request.ByteSize() == size
    async with grpc.aio.insecure_channel(cluster.gate.address) as channel:
        stub: Any = gate_pb2_grpc.GateServiceStub(channel)
        session = stub.Session(timeout=WAIT)
        first = await session.read()
        assert first.WhichOneof("event") == "registered"
        await session.write(request)
        event = await session.read()
        session.cancel()
    assert event.WhichOneof("event") == "replies", event
    [reply] = event.replies.replies
    assert reply.WhichOneof("result") == "call", reply
    assert wire.unpack(reply.call.response, Int64Value).value == length


async def test_the_sdk_sends_a_payload_at_its_limit_and_refuses_one_byte_more(
    cluster: Cluster,
) -> None:
    """Through the SDK (Session stream), the largest call it lets through for a gate of
    --max-message-bytes (the limit less its frame reserve) and one a byte smaller are answered
    by the node; a byte more is refused before it is sent (RESOURCE_EXHAUSTED), and the next
    call works."""
    bound = LIMIT - FRAME_RESERVE
    largest = _sdk_largest_payload(bound)
    async with Client([cluster.gate.address]) as client:
        await client.wait_connected(WAIT)
        for length in (largest, largest - 1):
            answer = await client.call(
                "Blob",
                OBJECT_ID,
                "Measure",
                BytesValue(value=b"x" * length),
                Int64Value,
                timeout=WAIT,
            )
            assert answer.value == length
        with pytest.raises(CallError) as raised:
            await client.call(
                "Blob",
                OBJECT_ID,
                "Measure",
                BytesValue(value=b"x" * (largest + 1)),
                Int64Value,
                timeout=WAIT,
            )
        assert raised.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "CLIENT: Sent message larger than max" in raised.value.message
    await _serves(cluster)


def _sdk_largest_payload(bound: int) -> int:
    """The longest payload whose SessionCall the SDK counts as at most `bound` bytes (the
    call with its tag and length in the frame, and the trace context the SDK adds in this
    process: none, or a traceparent when an earlier test installed a tracer provider)."""
    span, carrier = start_call_span(wire.GATE_CALL_METHODS["call"])
    span.end_with(grpc.StatusCode.OK)

    def counted(length: int) -> int:
        call = _session_request(BytesValue(value=b"x" * length)).calls[0]
        call.trace_context.update(carrier)
        size = call.ByteSize()
        return size + 1 + (size.bit_length() + 6) // 7

    length = bound
    while counted(length) > bound:
        length -= counted(length) - bound
    assert counted(length) == bound
    return length


async def _serves(cluster: Cluster) -> None:
    async with Client([cluster.gate.address]) as client:
        answer = await client.call(
            "Blob", "after", "Measure", BytesValue(value=b"x"), Int64Value, timeout=WAIT
        )
    assert answer.value == 1
    assert await asyncio.to_thread(serving, cluster.gate.address, wire.GATE_SERVICE)
    assert await asyncio.to_thread(serving, cluster.node.address, wire.NODE_SERVICE)
