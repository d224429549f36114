"""Test helpers for pushes: a cancelled read or flow ends, even in the tick its push arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from tests.helpers.fake_node import text
from tests.helpers.pushes import Inbox, M, PushFlow

WAIT = 10.0
"""Bound on every wait for something that should happen promptly."""


class _NotedReads(AsyncIterator[any_pb2.Any]):
    """Sets `reading` as each read begins, in the step that parks it on the buffer."""

    def __init__(self, inner: AsyncIterator[any_pb2.Any], reading: asyncio.Event) -> None:
        self._inner = inner
        self._reading = reading

    async def __anext__(self) -> any_pb2.Any:
        self._reading.set()
        return await anext(self._inner)


class ScriptedClient(Client):
    """A client that never connects. Every call is accepted at once (Int64Value 1, what
    ``Pusher.PushToCaller`` answers when it queued the push); the test hands the pushes over
    itself, into the buffer the registration loop would fill."""

    def __init__(self) -> None:
        super().__init__(["127.0.0.1:1"])
        self.reading = asyncio.Event()
        """Set when a read of :meth:`messages` begins (and waits, when nothing is buffered)."""

    def messages(self) -> AsyncIterator[any_pb2.Any]:
        return _NotedReads(super().messages(), self.reading)

    async def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        accepted = response_type()
        assert isinstance(accepted, Int64Value)
        accepted.value = 1
        return accepted

    async def deliver(self, value: str) -> None:
        """Buffers a push of StringValue(value). Returns without suspending: with room in the
        buffer, nothing else runs between this and the caller's next statement."""
        await self._messages.put([text(value)])


async def test_a_read_cancelled_in_the_tick_its_push_arrives_is_cancelled_and_loses_nothing() -> (
    None
):
    """Issue 9's lost cancellation: the push and the cancellation reach a waiting
    ``Inbox.next`` in the same tick. The read must end cancelled, and the push stays for the
    next read. (The ``asyncio.wait_for`` it used on Python 3.11 returned the push instead and
    dropped the cancellation, CPython gh-86296.)"""
    client = ScriptedClient()
    inbox = Inbox(client)
    reader = asyncio.create_task(inbox.next(StringValue))
    async with asyncio.timeout(WAIT):
        await client.reading.wait()
    await client.deliver("raced")
    reader.cancel()
    await asyncio.wait({reader}, timeout=WAIT)
    assert reader.cancelled(), f"the read returned {reader.result()}: the cancellation was lost"
    assert (await inbox.next(StringValue, timeout=WAIT)).value == "raced"


async def test_a_push_flow_stopped_in_the_tick_its_push_arrives_ends() -> None:
    """The hang of issue 9 itself: a PushFlow's call is accepted and it waits for its push;
    the push arrives in the same tick as ``stop()`` cancels the flow. The flow ends (stop()
    fails the test, naming the flow, if it is still running after its bound; before the fix
    the flow went on calling and reading for ever and the teardown hung), and the push it
    did not read is still buffered."""
    client = ScriptedClient()
    flow = PushFlow(client, "pusher").start()
    async with asyncio.timeout(WAIT):
        await client.reading.wait()  # flow-1 was accepted; the flow waits for its push
    await client.deliver("flow-1")
    await flow.stop()
    assert flow.arrived == []
    assert (await Inbox(client).next(StringValue, timeout=WAIT)).value == "flow-1"
