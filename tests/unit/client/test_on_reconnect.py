"""SDK ``on_reconnect``: an async callback runs beside its registration, so the calls it makes to
resynchronise are answered; a failing one is logged; one still running when its registration
ends is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
from google.protobuf.wrappers_pb2 import StringValue

from goverse.client import Client
from tests.helpers.fake_gate import FakeGate
from tests.unit.client.test_calls import echo

WAIT = 10.0


@pytest.fixture
async def gate() -> AsyncIterator[FakeGate]:
    started = await FakeGate(answer=echo).start()
    yield started
    await started.stop()


def client_of(gate: FakeGate, on_reconnect: Callable[[str, str], Awaitable[None] | None]) -> Client:
    return Client(
        [gate.address],
        reconnect_initial=timedelta(milliseconds=10),
        on_reconnect=on_reconnect,
    )


def end_registration(gate: FakeGate) -> None:
    gate.pushes.put_nowait(None)  # the fake gate ends the stream: the client registers again


async def test_a_call_made_from_on_reconnect_is_answered(gate: FakeGate) -> None:
    """The documented use: resynchronise from the callback. Its call is answered on the new
    registration's stream, which is read while the callback runs (it used to be read only
    once the callback returned: the call waited out its whole deadline)."""
    answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def resync(old: str, new: str) -> None:
        reply = await client.call(
            "Room", "resync", "Join", StringValue(), StringValue, timeout=WAIT
        )
        answered.set_result(reply.value)

    client = client_of(gate, resync)
    await client.connect()
    try:
        end_registration(gate)
        async with asyncio.timeout(WAIT / 2):  # well before the call's own deadline
            assert await answered == "resync"
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_a_failing_callback_is_logged_and_the_registration_goes_on(
    gate: FakeGate, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is the application's bug: logged, and the new registration
    serves on (it used to end it, and the client registered again, and called it again)."""
    called = asyncio.Event()

    def plain(old: str, new: str) -> None:
        called.set()
        raise RuntimeError("resync failed")

    async def in_a_task(old: str, new: str) -> None:
        plain(old, new)

    client = client_of(gate, plain if kind == "plain" else in_a_task)
    await client.connect()
    try:
        with caplog.at_level(logging.ERROR, logger="goverse.client"):
            end_registration(gate)
            async with asyncio.timeout(WAIT):
                await called.wait()
            reply = await client.call("Counter", "c", "Get", StringValue(), StringValue)
        assert reply.value == "c"
        assert len(gate.attempts) == 2
        assert any("on_reconnect" in record.getMessage() for record in caplog.records)
    finally:
        await client.close()


async def test_a_callback_still_running_when_its_registration_ends_is_cancelled(
    gate: FakeGate,
) -> None:
    """Its calls could not be answered any more; the next registration gets a callback of
    its own."""
    started: asyncio.Queue[str] = asyncio.Queue()
    cancelled: list[str] = []

    async def waits(old: str, new: str) -> None:
        started.put_nowait(new)
        try:
            await asyncio.Event().wait()  # only a cancellation ends this wait
        except asyncio.CancelledError:
            cancelled.append(new)
            raise

    client = client_of(gate, waits)
    await client.connect()
    try:
        async with asyncio.timeout(WAIT):
            end_registration(gate)
            first = await started.get()
            end_registration(gate)
            second = await started.get()
        assert cancelled == [first]
        assert second != first
    finally:
        await client.close()
    assert cancelled == [first, second]  # close() ends the last one too
