"""Tests of RegisterGate streams: ack first, batching, heartbeats, replacement, drops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from goverse.node._metrics import NodeMetrics
from goverse.v1 import node_pb2
from goverse.wire import CLOSE_REASON_KEY
from tests.helpers.waiting import eventually
from tests.unit.node.conftest import NODE, Node


async def register(node: Node, gate_id: str, instance: str = "") -> Any:
    """Opens a RegisterGate stream (from gate process `instance`) and reads its
    acknowledgement."""
    request = node_pb2.RegisterGateRequest(gate_id=gate_id, instance=instance)
    call = node.stub.RegisterGate(request, timeout=30)
    first = await call.read()
    assert first.WhichOneof("event") == "ack", first
    return call


async def read(call: Any, timeout: float = 10.0) -> node_pb2.RegisterGateResponse:
    async with asyncio.timeout(timeout):
        message: node_pb2.RegisterGateResponse = await call.read()
    return message


def texts(envelope: node_pb2.Envelope) -> str:
    target = envelope.WhichOneof("target")
    packed = (
        envelope.client_message.message
        if target == "client_message"
        else (envelope.broadcast.message)
    )
    value = StringValue()
    assert packed.Unpack(value)
    return value.value


async def test_the_ack_comes_first_and_names_the_node(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(heartbeat_interval=timedelta(seconds=2))
    call = node.stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="g1"), timeout=30)
    first = await read(call)
    assert first.ack.node == NODE
    assert first.ack.heartbeat_interval_ms == 2000
    assert list((await node.status()).gates) == ["g1"]
    call.cancel()


async def test_pushes_queued_together_arrive_in_one_stream_message(node: Node) -> None:
    """Several pushes made before the stream runs again travel as one envelope batch."""
    call = await register(node, "g1")
    runtime = node.app.runtime
    for n in range(5):
        assert runtime.push([f"g1/c{n}"], StringValue(value=f"m{n}")) == 1
    message = await read(call)
    batch = message.envelopes.envelopes
    assert [texts(envelope) for envelope in batch] == [f"m{n}" for n in range(5)]
    assert [list(envelope.client_message.client_ids) for envelope in batch] == [
        [f"g1/c{n}"] for n in range(5)
    ]
    call.cancel()


async def test_one_push_to_many_clients_is_one_envelope_per_gate(node: Node) -> None:
    """Client ids are grouped by gate; each gate gets one envelope naming its clients."""
    first = await register(node, "g1")
    second = await register(node, "g2")
    accepted = node.app.runtime.push(["g1/a", "g2/b", "g1/c", "g1/a"], StringValue(value="hi"))
    assert accepted == 3
    one = (await read(first)).envelopes.envelopes
    two = (await read(second)).envelopes.envelopes
    assert [list(e.client_message.client_ids) for e in one] == [["g1/a", "g1/c"]]
    assert [list(e.client_message.client_ids) for e in two] == [["g2/b"]]
    first.cancel()
    second.cancel()


async def test_an_object_push_reaches_the_gate_stream(node: Node) -> None:
    """Pusher.PushTo, called over gRPC, puts the message on the stream of the clients' gate."""
    call = await register(node, "g1")
    count = await node.call("Pusher", "p", "PushTo", StringValue(value="g1/x,g1/y"), Int64Value)
    assert count.value == 2
    batch = (await read(call)).envelopes.envelopes
    assert list(batch[0].client_message.client_ids) == ["g1/x", "g1/y"]
    assert texts(batch[0]) == "p"
    call.cancel()


async def test_broadcast_reaches_every_gate(node: Node) -> None:
    calls = [await register(node, gate) for gate in ("g1", "g2", "g3")]
    assert node.app.runtime.broadcast(StringValue(value="all")) == 3
    for call in calls:
        envelope = (await read(call)).envelopes.envelopes[0]
        assert envelope.WhichOneof("target") == "broadcast"
        assert texts(envelope) == "all"
        call.cancel()


async def test_an_idle_stream_carries_heartbeats(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(heartbeat_interval=timedelta(milliseconds=100))
    call = await register(node, "g1")
    for _ in range(2):
        message = await read(call)
        assert message.WhichOneof("event") == "heartbeat"
        assert message.heartbeat.sent_unix_ms > 0
    call.cancel()


async def test_re_registration_replaces_the_old_stream_which_ends_cleanly(node: Node) -> None:
    """A second RegisterGate with the same gate id ends the first stream with OK (reason
    "replaced") and takes over its pushes, including those still queued."""
    old = await register(node, "g1")
    node.app.runtime.push(["g1/a"], StringValue(value="queued"))
    new = await register(node, "g1")
    received: list[str] = []
    async with asyncio.timeout(10):
        while (message := await old.read()) is not grpc.aio.EOF:
            received += [texts(e) for e in message.envelopes.envelopes]
    assert await old.code() == grpc.StatusCode.OK
    assert dict(await old.trailing_metadata())[CLOSE_REASON_KEY] == "replaced"
    assert node.app.runtime.push(["g1/b"], StringValue(value="after")) == 1
    while "after" not in received:
        received += [texts(e) for e in (await read(new)).envelopes.envelopes]
    assert received == ["queued", "after"]
    assert list((await node.status()).gates) == ["g1"]
    assert node.app.live_tasks() == ["gate-stream:g1"]
    new.cancel()


async def test_another_process_registering_the_same_gate_id_is_refused(node: Node) -> None:
    """A RegisterGate for an open gate id from another gate process (another instance, same
    identity) is refused with ALREADY_EXISTS: the owner's stream stays and keeps its
    pushes, instead of the two taking the stream from each other in turn."""
    owner = await register(node, "g1", instance="first")
    other = node.stub.RegisterGate(
        node_pb2.RegisterGateRequest(gate_id="g1", instance="second"), timeout=30
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read(other)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "gate id 'g1' is registered by another gate process" in (raised.value.details() or "")
    assert node.app.runtime.push(["g1/a"], StringValue(value="still mine")) == 1
    message = await read(owner)
    while message.WhichOneof("event") == "heartbeat":
        message = await read(owner)
    assert [texts(e) for e in message.envelopes.envelopes] == ["still mine"]
    assert list((await node.status()).gates) == ["g1"]
    owner.cancel()


async def test_registrations_beyond_max_gates_are_refused_but_logged_once_per_interval(
    start_node: Callable[..., Any],
) -> None:
    """A peer that repeats RegisterGate beyond --max-gates sets the rate of refusals: each is
    refused with RESOURCE_EXHAUSTED, and ``gate registration refused`` (WARNING) is written
    once per refusal kind and interval, not once per refusal."""
    node: Node = await start_node(max_gates=1)
    owner = await register(node, "g1")
    with structlog.testing.capture_logs() as logs:
        for n in range(20):  # well within the 10 s interval, however loaded the machine
            other = node.stub.RegisterGate(
                node_pb2.RegisterGateRequest(gate_id=f"extra{n}"), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await read(other)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = [line for line in logs if line["event"] == "gate registration refused"]
    assert len(refused) == 1, refused
    assert (refused[0]["gate_id"], refused[0]["log_level"]) == ("extra0", "warning")
    assert refused[0]["unlogged_before"] == 0
    owner.cancel()


async def test_a_full_queue_drops_and_counts(start_node: Callable[..., Any]) -> None:
    """Pushes beyond --gate-queue-size are dropped, counted as queue_full, never blocking."""
    node: Node = await start_node(gate_queue_size=2)
    call = await register(node, "g1")
    results = [node.app.runtime.push(["g1/a"], StringValue(value=str(n))) for n in range(5)]
    assert results == [1, 1, 0, 0, 0]
    assert dict((await node.status()).dropped_pushes) == {"queue_full": 3}
    batch = (await read(call)).envelopes.envelopes
    assert [texts(e) for e in batch] == ["0", "1"]
    call.cancel()


async def test_drops_are_all_counted_but_logged_once_per_interval(
    start_node: Callable[..., Any],
) -> None:
    """A gate that stopped reading does not flood the log: a thousand drops for one reason and
    gate are counted, and logged once (the next line, an interval later, says how many were
    not logged)."""
    node: Node = await start_node(gate_queue_size=1)
    call = await register(node, "g1")
    with structlog.testing.capture_logs() as logs:
        results = [node.app.runtime.push(["g1/a"], StringValue(value="x")) for _ in range(1001)]
    assert results.count(0) == 1000
    assert dict((await node.status()).dropped_pushes) == {"queue_full": 1000}
    dropped = [line for line in logs if line["event"] == "push dropped"]
    assert len(dropped) == 1
    assert dropped[0]["gate_id"] == "g1"
    call.cancel()


async def test_pushes_to_unregistered_gates_and_malformed_ids_are_dropped(node: Node) -> None:
    runtime = node.app.runtime
    assert runtime.push(["nogate/a", "nogate/b"], StringValue(value="x")) == 0
    assert runtime.push(["no-slash", "/x", "bad gate/x"], StringValue(value="x")) == 0
    assert runtime.broadcast(StringValue(value="nobody")) == 0
    assert dict((await node.status()).dropped_pushes) == {
        "gate_not_registered": 2,
        "malformed_client_id": 3,
    }


async def test_pushes_to_many_unregistered_gates_keep_nothing_per_gate(node: Node) -> None:
    """An object may push to any well-formed client id (ids its clients sent it): pushes to
    ids of ten thousand gates that never registered are counted and logged by reason, with
    the gate id empty as for malformed ids, not kept and logged once per gate id, which
    would grow the node's memory and its log without bound."""
    ids = [f"fake{n}/a" for n in range(10_000)]
    with structlog.testing.capture_logs() as logs:
        assert node.app.runtime.push(ids, StringValue(value="x")) == 0
        for client_id in ids[:100]:
            assert node.app.runtime.push(client_id, StringValue(value="x")) == 0
    assert node.app.gates.dropped_by_gate() == {("gate_not_registered", ""): 10_100}
    dropped = [line for line in logs if line["event"] == "push dropped"]
    assert len(dropped) == 1
    assert dropped[0]["unregistered_gate_id"] == "fake0"


async def test_a_message_larger_than_a_stream_message_is_dropped(
    start_node: Callable[..., Any],
) -> None:
    node: Node = await start_node(max_message_bytes=64 * 1024)
    call = await register(node, "g1")
    assert node.app.runtime.push(["g1/a"], StringValue(value="x" * 70_000)) == 0
    assert dict((await node.status()).dropped_pushes) == {"message_too_large": 1}
    call.cancel()


async def test_a_big_batch_is_split_below_the_message_size_limit(
    start_node: Callable[..., Any],
) -> None:
    """Queued envelopes that together exceed --max-message-bytes go in several messages."""
    node: Node = await start_node(max_message_bytes=64 * 1024)
    call = await register(node, "g1")
    for n in range(6):
        assert node.app.runtime.push(["g1/a"], StringValue(value=str(n) * 20_000)) == 1
    received: list[str] = []
    messages = 0
    while len(received) < 6:
        message = await read(call)
        messages += 1
        received += [texts(e)[0] for e in message.envelopes.envelopes]
    assert received == [str(n) for n in range(6)]
    assert messages >= 2
    call.cancel()


async def test_an_invalid_gate_id_is_refused(node: Node) -> None:
    for gate_id in ("", "has space", "x" * 64, "-leading"):
        call = node.stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id=gate_id), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert node.app.live_tasks() == []


async def test_a_disconnected_gate_is_forgotten(node: Node) -> None:
    """When the gate cancels its stream, the node removes the gate and its stream task."""
    call = await register(node, "g1")
    call.cancel()
    await eventually(lambda: node.app.gates.gate_ids() == [] and node.app.live_tasks() == [])
    assert node.app.runtime.push(["g1/a"], StringValue(value="late")) == 0
    assert dict((await node.status()).dropped_pushes) == {"gate_not_registered": 1}


async def test_close_all_flushes_then_ends_the_stream_with_close_reason_shutdown(
    node: Node,
) -> None:
    """What is queued still goes out; then the stream ends OK with goverse-close-reason:
    shutdown, and the node logs that reason for it."""
    call = await register(node, "g1")
    node.app.runtime.push(["g1/a"], StringValue(value="last"))
    with structlog.testing.capture_logs() as logs:
        assert node.app.gates.close_all() == 1
        received: list[str] = []
        async with asyncio.timeout(10):
            while (message := await call.read()) is not grpc.aio.EOF:
                received += [texts(e) for e in message.envelopes.envelopes]
        assert await call.code() == grpc.StatusCode.OK
    assert received == ["last"]
    assert dict(await call.trailing_metadata())[CLOSE_REASON_KEY] == "shutdown"
    [ended] = [line for line in logs if line["event"] == "gate stream ended"]
    assert (ended["reason"], ended["cancelled"]) == ("shutdown", False)


async def test_refuse_new_keeps_the_open_streams_until_their_gates_end_them(node: Node) -> None:
    """What a node that has left its etcd cluster does on its stop: no new registration is
    taken, and the open streams go on carrying pushes until their gates end them."""
    call = await register(node, "g1")
    assert node.app.gates.refuse_new() == 1
    refused = node.stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="g2"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await refused.read()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert node.app.runtime.push(["g1/a"], StringValue(value="still")) == 1
    message = await read(call)
    while message.WhichOneof("event") != "envelopes":
        message = await read(call)
    assert [texts(e) for e in message.envelopes.envelopes] == ["still"]
    call.cancel()
    await eventually(lambda: node.app.gates.gate_ids() == [])


async def test_a_gate_that_goes_away_is_logged_as_peer_gone(node: Node) -> None:
    call = await register(node, "g1")
    with structlog.testing.capture_logs() as logs:
        call.cancel()
        await eventually(lambda: node.app.live_tasks() == [])
    [ended] = [line for line in logs if line["event"] == "gate stream ended"]
    assert (ended["reason"], ended["cancelled"]) == ("peer_gone", True)


def _gate_points(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, ...], int]:
    """The points of the node metric `name`, by their attribute values (sorted by key)."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        tuple(str(point.attributes[key]) for key in sorted(point.attributes)): int(point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint) and point.attributes is not None
    }


GATES_GONE = 210
"""Gates that register, have a push dropped and leave: more than the 200 gate ids the node's
metrics used to label by name (a Deployment's gate pods get new names at every rollout)."""


async def test_a_gate_that_left_keeps_nothing_and_the_gates_registered_are_labelled_by_id(
    start_node: Callable[..., Any],
) -> None:
    """Each of many gates registers, is scraped, has a push dropped (too large) and leaves:
    the node keeps no drop count or log throttle of theirs, and the gate registered after them
    is reported under its own gate id, in the queue depth and the drops alike."""
    node: Node = await start_node(max_message_bytes=64 * 1024)
    reader = InMemoryMetricReader()
    app = node.app
    NodeMetrics(
        MeterProvider(metric_readers=[reader]).get_meter("test"), app.host, app.gates, app.shards
    )
    too_large = StringValue(value="x" * 70_000)
    for n in range(GATES_GONE):
        call = await register(node, f"gone-{n}")
        assert app.runtime.push([f"gone-{n}/a"], too_large) == 0
        assert (f"gone-{n}",) in _gate_points(reader, "goverse.node.gate_queue.depth")  # scraped
        call.cancel()
        await eventually(lambda: app.gates.gate_ids() == [], what="the gate forgotten")
    live = await register(node, "live")
    assert app.runtime.push(["live/a"], too_large) == 0
    assert app.gates.dropped_by_gate() == {("message_too_large", "live"): 1}
    assert app.gates.dropped() == {"message_too_large": GATES_GONE + 1}
    assert app.gates._drop_log.keys() == [("message_too_large", "live")]
    assert _gate_points(reader, "goverse.node.gate_queue.depth") == {("live",): 0}
    assert _gate_points(reader, "goverse.node.pushes.dropped") == {("live", "message_too_large"): 1}
    live.cancel()
