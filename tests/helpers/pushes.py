"""Reading pushed messages in tests, with a bound on how long to wait; flows of pushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import CallError, Client
from tests.helpers.tasks import cancel_and_wait

M = TypeVar("M", bound=Message)


class Inbox:
    """One reader over a client's pushed messages."""

    def __init__(self, client: Client) -> None:
        self._iterator: AsyncIterator[any_pb2.Any] = client.messages()

    async def next(self, message_type: type[M], timeout: float = 10.0) -> M:
        """The next pushed message, which must be of `message_type`; TimeoutError after
        `timeout` seconds (the message, when it comes, is left for the next read)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the message and drops
        # a cancellation that lands in the tick the message arrives (CPython gh-86296), which
        # left a cancelled PushFlow looping for ever (issue 9).
        async with asyncio.timeout(timeout):
            item = await anext(self._iterator)
        message = message_type()
        assert item.Unpack(message), f"pushed {item.TypeName()}, expected {message_type}"
        return message

    async def nothing_before(self, marker: Message, timeout: float = 10.0) -> None:
        """Asserts the next push is `marker` (so nothing else arrived before it)."""
        got = await self.next(type(marker), timeout)
        assert got == marker, f"received {got} before the marker {marker}"


class PushFlow:
    """A client that keeps asking a ``Pusher`` object to push to it, and notes when a push
    came back. Calls that fail and pushes that do not come (the node is down or frozen) are
    tried again; anything else ends the flow, and :meth:`stop` raises it."""

    def __init__(self, client: Client, pusher: str) -> None:
        self.client = client
        self.pusher = pusher
        self.inbox = Inbox(client)
        self.arrived: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> PushFlow:
        self._task = asyncio.create_task(self._run(), name=f"push flow from {self.pusher}")
        return self

    async def stop(self) -> None:
        """Ends the flow; fails the test when it does not end within a bound."""
        # The flag ends the loop at its next turn even if the cancellation were lost.
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    def arrived_since(self, moment: float) -> bool:
        return any(arrival >= moment for arrival in self.arrived)

    async def _run(self) -> None:
        sequence = 0
        while not self._stopping:
            sequence += 1
            text = f"flow-{sequence}"
            try:
                accepted = await self.client.call(
                    "Pusher",
                    self.pusher,
                    "PushToCaller",
                    StringValue(value=text),
                    Int64Value,
                    timeout=2,
                )
                if accepted.value == 1:
                    while (await self.inbox.next(StringValue, timeout=2)).value != text:
                        pass  # a push from an attempt that timed out earlier
                    self.arrived.append(time.time())
            except (CallError, TimeoutError):  # the node is down or frozen: try again
                pass
            await asyncio.sleep(0.05)
