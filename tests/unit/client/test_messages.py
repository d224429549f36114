"""SDK pushed messages: reads that can be cancelled without losing a message, and their end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from goverse.client import Client
from goverse.client import _client as client_module
from goverse.client._messages import MessageBuffer
from tests.helpers.fake_gate import FakeGate
from tests.helpers.fake_node import text, unpack_text

WAIT = 10.0
"""Bound on every wait for something that should happen promptly."""


@pytest.fixture
async def gate() -> AsyncIterator[FakeGate]:
    gate = await FakeGate().start()
    yield gate
    await gate.stop()


@pytest.fixture
async def client(gate: FakeGate) -> AsyncIterator[Client]:
    """A client registered with `gate`; closed after the test."""
    client = Client([gate.address])
    await client.connect()
    yield client
    async with asyncio.timeout(WAIT):
        await client.close()


async def test_a_read_cancelled_by_a_timeout_leaves_the_iterator_usable_and_loses_no_message(
    gate: FakeGate, client: Client
) -> None:
    """A read of ``client.messages()`` that times out (nothing was pushed yet) does not end the
    iterator: the same iterator then yields every message pushed afterwards, in order."""
    messages = client.messages()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # expires: nothing has been pushed
            await anext(messages)
    for value in ("first", "second"):
        gate.pushes.put_nowait(value)
    async with asyncio.timeout(WAIT):
        assert [unpack_text(await anext(messages)) for _ in range(2)] == ["first", "second"]


async def test_a_read_cancelled_in_the_tick_its_message_arrives_leaves_it_for_the_next_read() -> (
    None
):
    """The hardest moment to cancel a read: its message has been handed to it but it has not
    resumed yet. The cancellation wins (the read raises CancelledError) and the message stays
    buffered, so the next read of the same iterator returns it."""
    buffer = MessageBuffer(maxsize=10)
    messages = buffer.reader()
    reading = asyncio.Event()

    async def read() -> str:
        reading.set()
        return unpack_text(await anext(messages))

    reader = asyncio.create_task(read())
    async with asyncio.timeout(WAIT):
        await reading.wait()  # set in the step that parks the read on the empty buffer
    # The same step, no await in between that could suspend (put does not wait with room):
    # the read is woken with the message and cancelled before it can resume.
    await buffer.put([text("kept")])
    reader.cancel()
    done, _ = await asyncio.wait({reader}, timeout=WAIT)
    assert done
    assert reader.cancelled()
    async with asyncio.timeout(WAIT):
        assert unpack_text(await anext(messages)) == "kept"


async def test_every_reader_ends_at_close_after_the_messages_already_received() -> None:
    """``end()`` (what close does) lets each reader read what was buffered and then stop;
    a reader that comes later stops at once."""
    buffer = MessageBuffer(maxsize=10)
    first = buffer.reader()
    await buffer.put([text("a"), text("b")])
    buffer.end()
    async with asyncio.timeout(WAIT):
        assert [unpack_text(item) async for item in first] == ["a", "b"]
        assert [item async for item in buffer.reader()] == []
        assert [item async for item in first] == []


async def test_async_for_over_messages_ends_when_the_client_closes(
    gate: FakeGate, client: Client
) -> None:
    """A consumer in ``async for pushed in client.messages()`` receives the pushes and its loop
    ends, without error, when the client is closed."""
    received: list[str] = []
    arrived = asyncio.Event()

    async def consume() -> None:
        async for pushed in client.messages():
            received.append(unpack_text(pushed))
            arrived.set()

    consumer = asyncio.create_task(consume())
    gate.pushes.put_nowait("hello")
    async with asyncio.timeout(WAIT):
        await arrived.wait()
        await client.close()
        await consumer
    assert received == ["hello"]


async def test_close_returns_within_its_bound_when_a_callback_holds_up_the_cancellation(
    gate: FakeGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() cancels the registration task and waits for it for ``CLOSE_TIMEOUT`` at most:
    an ``on_reconnect`` callback that does not let the task end in time (here: until the test
    releases it) delays close() by that bound, not for ever, and the message iterators end."""
    monkeypatch.setattr(client_module, "CLOSE_TIMEOUT", 0.2)
    in_callback = asyncio.Event()
    release = asyncio.Event()

    async def holds_up_cancellation(old: str, new: str) -> None:
        in_callback.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends this wait
        except asyncio.CancelledError:
            await release.wait()  # misbehaving on purpose: a slow cleanup
            raise

    client = Client([gate.address], on_reconnect=holds_up_cancellation)
    await client.connect()
    messages = client.messages()
    gate.pushes.put_nowait(None)  # ends the registration: the client registers again
    try:
        async with asyncio.timeout(WAIT):
            await in_callback.wait()
            started = time.monotonic()
            await client.close()
        assert time.monotonic() - started < WAIT / 2
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(WAIT):
                await anext(messages)
    finally:
        release.set()


@pytest.mark.parametrize("size", [0, -1])
def test_a_buffer_without_room_is_refused(size: int) -> None:
    """asyncio.Queue reads 0 and below as no bound: a client asking for that would buffer
    every push of a gate it does not read, without limit."""
    with pytest.raises(ValueError, match="message_buffer must be at least 1"):
        MessageBuffer(size)
