"""EventStream: heartbeats on silence, pushes as JSON events, draining, and a stalled reader
abandoned once its proxy is closed as a slow consumer."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, cast

from aiohttp import web
from google.protobuf import any_pb2
from google.protobuf.struct_pb2 import Struct

from goverse import wire
from goverse._object_types import object_type_of
from goverse.descriptions import Descriptions, describe_types
from goverse.gate._catalog import Catalog
from goverse.gate._client_proxy import ClientProxy
from goverse.gate._http_events import (
    HEARTBEAT,
    PUSH_EVENT_KEPT_BYTES,
    EventStream,
    PushEvents,
)
from tests.helpers.fake_node import text, unpack_text
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.unit.test_descriptions import Announcer

TIMEOUT = 5.0


class FakeCatalog:
    """Converts a pushed StringValue as the real catalog would, and counts the conversions."""

    def __init__(self) -> None:
        self.converted = 0

    async def push_dict(self, packed: any_pb2.Any) -> dict[str, Any]:
        self.converted += 1
        return {"type": packed.TypeName(), "message": unpack_text(packed)}


class FakeResponse:
    """Records what is written; with `stall`, every write after the first never completes
    (a browser that stopped reading)."""

    def __init__(self, stall: bool = False) -> None:
        self.written: list[bytes] = []
        self.attempts = 0
        self.stall = stall
        self.changed = asyncio.Event()

    async def write(self, data: bytes) -> None:
        self.attempts += 1
        self.changed.set()
        if self.stall and self.written:
            await asyncio.get_running_loop().create_future()
        self.written.append(data)
        self.changed.set()

    async def wait_attempts(self, count: int) -> None:
        while self.attempts < count:
            self.changed.clear()
            await self.changed.wait()

    async def wait_for(self, wanted: bytes) -> None:
        while not any(wanted in chunk for chunk in self.written):
            self.changed.clear()
            await self.changed.wait()


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def make_proxy(max_messages: int = 100) -> ClientProxy:
    return ClientProxy(
        "g1/abc", "secret", max_messages=max_messages, max_bytes=1 << 20, max_batch_bytes=1 << 20
    )


def stream(
    proxy: ClientProxy, response: FakeResponse, transport: FakeTransport, heartbeat_s: float = 60
) -> EventStream:
    return EventStream(
        proxy,
        PushEvents(cast(Catalog, FakeCatalog())),
        cast(web.StreamResponse, response),
        cast(asyncio.Transport, transport),
        heartbeat_s=heartbeat_s,
    )


async def test_registered_then_pushes_as_json_then_heartbeats_then_draining() -> None:
    """The stream starts with ``registered``, sends each push as a ``message`` event, a
    heartbeat comment on silence, and ``draining`` once the proxy drains, then returns."""
    proxy, response = make_proxy(), FakeResponse()
    task = asyncio.create_task(stream(proxy, response, FakeTransport(), 0.05).run("g1"))
    try:
        await bounded(response.wait_for(b"event: registered"), TIMEOUT)
        first = response.written[0].decode().splitlines()[1].removeprefix("data: ")
        assert json.loads(first) == {"clientId": "g1/abc", "credential": "secret", "gateId": "g1"}
        proxy.push(text("hello"))
        await bounded(response.wait_for(b"event: message"), TIMEOUT)
        message = next(c for c in response.written if b"event: message" in c).decode()
        data = json.loads(message.splitlines()[1].removeprefix("data: "))
        assert data == {"type": "google.protobuf.StringValue", "message": "hello"}
        await bounded(response.wait_for(HEARTBEAT), TIMEOUT)
        proxy.close("the gate is shutting down", drain=True)
        await bounded(task, TIMEOUT)
        assert response.written[-1] == b"event: draining\ndata: {}\n\n"
    finally:
        await cancel_and_wait(task)


async def test_a_stalled_reader_is_abandoned_when_its_queue_overflows() -> None:
    """The writer is stuck in a write the browser never takes; pushes fill the bounded queue,
    the overflow closes the proxy as a slow consumer, and the stream aborts the connection and
    returns at once, keeping nothing queued."""
    proxy, response, transport = (
        make_proxy(max_messages=3),
        FakeResponse(stall=True),
        FakeTransport(),
    )
    task = asyncio.create_task(stream(proxy, response, transport).run("g1"))
    try:
        await bounded(response.wait_for(b"event: registered"), TIMEOUT)
        proxy.push(text("taken"))  # the writer takes it and stalls writing it
        await bounded(response.wait_attempts(2), TIMEOUT)
        for index in range(4):
            proxy.push(text(str(index)))
        assert proxy.slow_consumer
        await bounded(task, TIMEOUT)
        assert transport.aborted
        assert proxy.queued == 0
    finally:
        await cancel_and_wait(task)


async def test_a_message_pushed_to_many_sessions_is_converted_once() -> None:
    """The same message (a broadcast) gives the same event, made once, whether the object is
    the same or an equal one; only the latest `keep` messages are kept, and none too large."""
    catalog = FakeCatalog()
    events = PushEvents(cast(Catalog, catalog), keep=2)
    broadcast = text("hello")
    made = [await events.of(broadcast) for _ in range(100)]
    expected = b'event: message\ndata: {"type":"google.protobuf.StringValue","message":"hello"}'
    assert made == [expected + b"\n\n"] * 100
    assert await events.of(text("hello")) == made[0]
    assert catalog.converted == 1
    await events.of(text("other"))
    await events.of(text("third"))  # the broadcast's event is forgotten
    await events.of(broadcast)
    assert catalog.converted == 4
    large = text("x" * PUSH_EVENT_KEPT_BYTES)
    assert await events.of(large) == await events.of(large)
    assert catalog.converted == 6


class DescribedCatalog:
    """Converts pushes as the gate's catalog does, by the descriptions of `Announcer`."""

    def __init__(self) -> None:
        self.descriptions = Descriptions(
            describe_types({"Announcer": object_type_of(Announcer)}, 1)
        )

    async def push_dict(self, packed: any_pb2.Any) -> dict[str, Any]:
        return self.descriptions.push_dict(packed)


async def test_a_push_that_has_no_json_form_comes_as_base64_and_the_stream_goes_on() -> None:
    """A described message that protobuf JSON cannot write (a Struct holding NaN) comes with
    its bytes, as an undescribed one does; it ended the stream (every browser session a
    broadcast of it reached) with the conversion's error."""
    proxy, response = make_proxy(), FakeResponse()
    events = PushEvents(cast(Catalog, DescribedCatalog()))
    writer = EventStream(
        proxy, events, cast(web.StreamResponse, response), cast(asyncio.Transport, FakeTransport())
    )
    task = asyncio.create_task(writer.run("g1"))
    try:
        await bounded(response.wait_for(b"event: registered"), TIMEOUT)
        unwritable = Struct()
        unwritable.update({"mean": float("nan")})
        proxy.push(wire.pack(unwritable))
        fine = Struct()
        fine.update({"mean": 1.5})
        proxy.push(wire.pack(fine))
        await bounded(response.wait_for(b'"message":{"mean":1.5}'), TIMEOUT)
        first = next(chunk for chunk in response.written if b"event: message" in chunk)
        data = json.loads(first.decode().splitlines()[1].removeprefix("data: "))
        assert data == {
            "type": "google.protobuf.Struct",
            "base64": base64.b64encode(unwritable.SerializeToString()).decode(),
        }
        assert not task.done()
    finally:
        await cancel_and_wait(task)
