"""Slow clients, drain and calls in flight, on an in-process GateApp against a fake node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from goverse.client import Client
from goverse.gate import GateApp, GateConfig, LinkState
from goverse.v1 import gate_pb2
from tests.helpers.fake_node import FakeNode, text, to_clients, unpack_text
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.tasks import bounded
from tests.helpers.waiting import eventually

BIG = "x" * 60_000  # a few of these fill a stalled client's transport window


def config(*nodes: str, **overrides: Any) -> GateConfig:
    settings: dict[str, Any] = {
        "gate_id": "g1",
        "nodes": nodes,
        "listen": "127.0.0.1:0",
        "reconnect_initial": timedelta(milliseconds=50),
        "reconnect_max": timedelta(milliseconds=500),
        "client_queue_messages": 20,
    }
    settings.update(overrides)
    return GateConfig(**settings)


@pytest.fixture
async def start_gate() -> AsyncIterator[Callable[..., Any]]:
    """Starts GateApps whose node links are up; stops them and their clients afterwards."""
    apps: list[GateApp] = []
    clients: list[GateClient] = []

    async def start(cfg: GateConfig) -> tuple[GateApp, Callable[..., Any]]:
        app = GateApp(cfg)
        await app.start()
        apps.append(app)
        for link in app.links.values():
            await bounded(link.wait_for(lambda lk: lk.state is LinkState.CONNECTED), WAIT)

        async def client(stalled: bool = False) -> GateClient:
            made = GateClient.stalled(app.address) if stalled else GateClient(app.address)
            clients.append(made)
            return await made.connect()

        return app, client

    try:
        yield start
    finally:
        for app in apps:
            await app.stop()
        for client in clients:
            await client.close()


def trailing(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {key: str(value) for key, value in error.trailing_metadata() or ()}


async def test_a_client_that_stops_reading_is_disconnected_as_a_slow_consumer(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """Under the default policy an overflow frees the client's queue at once; when the client
    reads again it gets what its transport held, then RESOURCE_EXHAUSTED "slow consumer"
    (with the close reason in the trailing metadata); a client that reads gets every push."""
    app, client = await start_gate(config(fake_node.address))
    stalled = await client(stalled=True)
    reader = await client()
    for index in range(60):
        fake_node.send(
            to_clients([stalled.client_id], BIG), to_clients([reader.client_id], f"r{index}")
        )
    texts, _ = await reader.pushed_texts(60)
    assert texts == [f"r{index}" for index in range(60)]
    await eventually(lambda: app.registry.slow_consumer_disconnects == 1, WAIT, "the eviction")
    proxy = app.registry.get(stalled.client_id)
    assert proxy is None or (proxy.closed and proxy.queued == 0 and proxy.queued_bytes == 0)
    assert app.registry.dropped["slow_consumer"] >= 1

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stalled.rest_of_stream()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (ended.value.details() or "").startswith("slow consumer")
    assert trailing(ended.value).get("goverse-close-reason") == "slow_consumer"
    await eventually(
        lambda: stalled.client_id not in app.registry and len(app.registry) == 1,
        WAIT,
        "the slow consumer's registration to go",
    )
    fake_node.send(to_clients([reader.client_id], "still here"))
    assert (await reader.pushed_texts(1))[0] == ["still here"]


async def test_drop_oldest_keeps_the_stream_and_the_newest_pushes(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """With ``drop-oldest`` an overflow drops the oldest queued pushes (counted as queue_full);
    the stream stays open, and a client that reads again gets the newest pushes."""
    app, client = await start_gate(config(fake_node.address, slow_client_policy="drop-oldest"))
    stalled = await client(stalled=True)
    for index in range(100):
        fake_node.send(to_clients([stalled.client_id], f"{index:03d}{BIG}"))
    await eventually(lambda: app.registry.dropped["queue_full"] >= 50, WAIT, "the drops")
    proxy = app.registry.get(stalled.client_id)
    assert proxy is not None
    assert not proxy.closed
    assert proxy.queued <= 20
    assert app.registry.slow_consumer_disconnects == 0

    received: list[int] = []
    while not received or received[-1] != 99:
        event = await stalled.next_event()
        assert event is not None, "the stream ended"
        received.extend(int(unpack_text(m)[:3]) for m in event.messages.messages)
    assert received == sorted(received)
    assert len(received) < 100
    assert received[-20:] == list(range(80, 100))


async def test_an_sdk_client_that_falls_behind_is_disconnected_and_registers_again(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """The SDK stops reading while its buffer is full, so the gate disconnects it as a slow
    consumer. Once the application reads again, the SDK reaches the end of the stream and
    registers again by itself, with a new client id, telling the application."""
    app, _ = await start_gate(config(fake_node.address))
    reconnected = asyncio.Event()
    sdk = Client(
        [app.address],
        message_buffer=5,
        reconnect_initial=timedelta(milliseconds=20),
        on_reconnect=lambda old, new: reconnected.set(),
    )
    await sdk.connect()
    try:
        first_id = sdk.client_id
        big = "y" * 200_000
        for _ in range(100):  # 20 MB: more than the SDK's buffer and transport together
            fake_node.send(to_clients([first_id], big))
        await eventually(lambda: app.registry.slow_consumer_disconnects == 1, WAIT, "eviction")

        async def consume() -> None:
            async for _ in sdk.messages():
                pass

        consumer = asyncio.create_task(consume())
        await bounded(reconnected.wait(), WAIT)
        assert sdk.client_id != first_id
        assert sdk.registrations == 2
    finally:
        await sdk.close()
    await bounded(consumer, WAIT)


async def test_a_call_in_flight_completes_while_the_gate_stops(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """stop() lets a call that is being served finish (within the budget), although every
    client stream has ended long before."""
    app, client = await start_gate(config(fake_node.address))
    caller = await client()
    fake_node.call_delay = 1.5
    request = gate_pb2.CallObjectRequest(
        object_type="Counter", object_id="c1", method="Get", request=text("slow")
    )
    call = asyncio.ensure_future(
        caller.stub.CallObject(request, metadata=caller.metadata(), timeout=WAIT)
    )
    await eventually(lambda: len(fake_node.calls) == 1, WAIT, "the call to reach the node")
    started = time.monotonic()
    await app.stop()
    elapsed = time.monotonic() - started
    reply = await call
    assert unpack_text(reply.response) == "slow"
    assert 1.0 < elapsed < 5.0, f"stop took {elapsed:.2f}s"
    events = await caller.rest_of_stream()
    assert events[-1].WhichOneof("event") == "draining"


async def test_a_session_call_in_flight_gets_the_budget_of_a_unary_call_while_the_gate_stops(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """A call on the SDK's Session stream is a call in flight as a unary one is: stop() waits
    for it (and for its reply to be sent) for the budget less the reserve, not only for the
    streams' half of it (which cancelled the session at 2.5 s of a 5 s budget)."""
    app, _ = await start_gate(config(fake_node.address, shutdown_timeout=timedelta(seconds=5)))
    sdk = Client([app.address], reconnect_initial=timedelta(milliseconds=20))
    await sdk.connect()
    try:
        fake_node.call_delay = 3.0  # past the streams' half of the budget, within the rest
        request = StringValue(value="slow")
        call = asyncio.ensure_future(
            sdk.call("Counter", "c1", "Get", request, StringValue, timeout=2 * WAIT)
        )
        await eventually(lambda: len(fake_node.calls) == 1, WAIT, "the call to reach the node")
        started = time.monotonic()
        await app.stop()
        elapsed = time.monotonic() - started
        reply = await bounded(call, WAIT)
        assert reply.value == "slow"
        assert 2.5 < elapsed < 5.0, f"stop took {elapsed:.2f}s"
    finally:
        await sdk.close()


async def test_while_draining_open_streams_may_call_and_new_registrations_are_refused(
    fake_node: FakeNode, start_gate: Callable[..., Any]
) -> None:
    """Draining refuses Register with UNAVAILABLE; a client whose stream is still open (here
    its writer is blocked on a stalled transport) may still call; once a client's stream has
    ended, its calls are UNAUTHENTICATED and reach no node."""
    app, client = await start_gate(config(fake_node.address, client_queue_messages=1000))
    stalled = await client(stalled=True)
    done = await client()
    for _ in range(10):
        fake_node.send(to_clients([stalled.client_id], BIG))
    await eventually(lambda: app.registry.delivered == 10, WAIT, "the pushes to queue")
    app.registry.drain("test drain")

    late = GateClient(app.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.connect()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (refused.value.details() or "")
    finally:
        await late.close()

    request = gate_pb2.CallObjectRequest(
        object_type="Counter", object_id="c1", method="Get", request=text("during drain")
    )
    reply = await stalled.stub.CallObject(request, metadata=stalled.metadata(), timeout=WAIT)
    assert unpack_text(reply.response) == "during drain"

    assert (await done.rest_of_stream())[-1].WhichOneof("event") == "draining"
    await eventually(lambda: done.client_id not in app.registry, WAIT, "the ended stream to go")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await done.stub.CallObject(request, metadata=done.metadata(), timeout=WAIT)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(fake_node.calls) == 1
