"""Pushed messages: the client's bounded buffer of them and the iterators that read it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from google.protobuf import any_pb2

_END = any_pb2.Any(type_url="goverse.client/end-of-messages")
"""Put in the buffer by :meth:`MessageBuffer.end`; compared by identity, never delivered."""


class MessageBuffer:
    """The pushed messages a client received and the application has not read yet, in order.

    Bounded by `maxsize` messages: when it is full :meth:`put` waits, so the registration loop
    stops reading its stream and the gate sees a slow consumer. :meth:`end` (at close) makes
    every reader end after the messages already buffered.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:  # asyncio.Queue takes 0 and below for no bound at all
            raise ValueError(f"message_buffer must be at least 1, not {maxsize}")
        self._queue: asyncio.Queue[any_pb2.Any] = asyncio.Queue(maxsize=maxsize)

    async def put(self, items: Sequence[any_pb2.Any]) -> None:
        """Buffers `items`; waits (so stops reading the stream) only when full."""
        queue = self._queue
        for item in items:
            try:
                queue.put_nowait(item)  # the common case, without a coroutine per message
            except asyncio.QueueFull:
                await queue.put(item)

    def end(self) -> None:
        """Ends every reader once it has read what is buffered (called once, at close). When the
        buffer is full the oldest message makes room for the end marker."""
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def reader(self) -> Messages:
        return Messages(self._queue)


class Messages(AsyncIterator[any_pb2.Any]):
    """Reads pushed messages from a client's buffer (what ``Client.messages()`` returns).

    Each read is one plain coroutine that waits on the buffer and takes a message out only when
    it resumes: a read cancelled by its caller (``asyncio.timeout`` around ``anext``, a task
    being stopped) takes nothing, so no message is lost, and the iterator stays usable. (An
    async generator would not: cancelling its ``__anext__`` finalizes it, and every later read
    raises StopAsyncIteration.) Readers of one client share its buffer: each message goes to one
    of them. Raises StopAsyncIteration once the client is closed and the buffer is read.
    """

    def __init__(self, queue: asyncio.Queue[any_pb2.Any]) -> None:
        self._queue = queue

    async def __anext__(self) -> any_pb2.Any:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # for the next read, and for the other readers
            raise StopAsyncIteration
        return item
