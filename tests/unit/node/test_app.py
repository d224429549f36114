"""Tests of the node's lifecycle: start, stop within the budget, no task left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc

from goverse.node import NodeApp
from goverse.server import ListenError
from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import pack
from tests.helpers.waiting import eventually
from tests.unit.node.conftest import node_config


async def test_stop_leaves_no_task_behind() -> None:
    """After stop(), with gate streams open, objects active and calls made (the review's
    leak test for asyncio tasks), the set of tasks is what it was before start()."""
    before = asyncio.all_tasks()
    app = NodeApp(node_config())
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    stub = node_pb2_grpc.NodeServiceStub(channel)
    streams = []
    for gate in ("g1", "g2", "g3"):
        call = stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id=gate))
        assert (await call.read()).WhichOneof("event") == "ack"
        streams.append(call)
    for n in range(5):
        await stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type="Pusher",
                object_id=f"p{n}",
                method="PushTo",
                request=pack(StringValue(value="g1/a,g2/b")),
            ),
            timeout=10,
        )
    assert len(app.live_tasks()) == 3

    started = time.monotonic()
    await app.stop()
    stop_seconds = time.monotonic() - started

    # Every stream was ended by the node, with OK, after delivering what was queued.
    for call in streams:
        async with asyncio.timeout(5):
            while await call.read() is not grpc.aio.EOF:
                pass
        assert await call.code() == grpc.StatusCode.OK
    await channel.close()
    assert app.live_tasks() == []
    assert app.gates.gate_ids() == []
    assert app.host.list() == []
    leftover = asyncio.all_tasks() - before
    assert not leftover, leftover
    assert stop_seconds < 4.0, stop_seconds


async def test_stop_twice_and_concurrently_is_safe() -> None:
    """A second stop() and a concurrent stop() wait for the first and return."""
    app = NodeApp(node_config())
    await app.start()
    await asyncio.gather(app.stop(), app.stop())
    await app.stop()
    assert app.live_tasks() == []


async def test_stop_before_start_is_safe_and_start_after_stop_is_refused() -> None:
    app = NodeApp(node_config())
    await app.stop()
    await app.stop()
    with pytest.raises(RuntimeError):
        await app.start()


async def test_health_reports_not_serving_once_stop_begins() -> None:
    """Health flips to NOT_SERVING at the start of stop(), while streams still drain."""
    app = NodeApp(node_config())
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "goverse.v1.NodeService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = node_pb2_grpc.NodeServiceStub(channel)
    stream = stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="g1"))
    await stream.read()
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(app.stop())
    async with asyncio.timeout(5):
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping
    watch.cancel()
    await channel.close()


async def test_stop_lets_an_in_flight_call_finish_and_deactivates_after_it() -> None:
    app = NodeApp(node_config())
    await app.start()
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        call = stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type="Sleeper",
                object_id="s",
                method="Sleep",
                request=pack(Int64Value(value=200)),
            ),
            timeout=10,
        )
        await eventually(lambda: app.host.is_active("Sleeper", "s"))
        await app.stop()
        reply = await call
        assert reply.response.TypeName() == "google.protobuf.Int64Value"


async def test_a_busy_listen_address_fails_start_with_listen_error() -> None:
    first = NodeApp(node_config())
    await first.start()
    second = NodeApp(node_config(listen=first.address))
    try:
        with pytest.raises(ListenError, match=first.address):
            await second.start()
    finally:
        await second.stop()
        await first.stop()


async def test_stop_is_bounded_when_a_gate_does_not_read() -> None:
    """A gate that stops reading blocks its stream's writes: stop() ends that stream by
    cancellation after the short drain and still finishes well within the budget."""
    before = asyncio.all_tasks()
    app = NodeApp(node_config())
    await app.start()
    channel = grpc.aio.insecure_channel(app.address)
    stub = node_pb2_grpc.NodeServiceStub(channel)
    stream = stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="slow"))
    await stream.read()
    big = StringValue(value="x" * 1_000_000)
    for _ in range(40):
        app.runtime.push(["slow/a"], big)
        await asyncio.sleep(0)
    await eventually(lambda: app.gates.queued("slow") > 0, what="the stream to back up")

    started = time.monotonic()
    await app.stop()
    stop_seconds = time.monotonic() - started
    print(f"stop with a stalled gate took {stop_seconds:.3f}s")

    with contextlib.suppress(grpc.aio.AioRpcError):
        async with asyncio.timeout(5):
            while await stream.read() is not grpc.aio.EOF:
                pass
    await channel.close()
    assert stop_seconds < 4.5
    assert app.live_tasks() == []
    assert not asyncio.all_tasks() - before
