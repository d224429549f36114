"""Reading pushed messages in tests, with a bound on how long to wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse.client import Client

M = TypeVar("M", bound=Message)


class Inbox:
    """One reader over a client's pushed messages."""

    def __init__(self, client: Client) -> None:
        self._iterator: AsyncIterator[any_pb2.Any] = client.messages()

    async def next(self, message_type: type[M], timeout: float = 10.0) -> M:
        """The next pushed message, which must be of `message_type`."""
        item = await asyncio.wait_for(anext(self._iterator), timeout)
        message = message_type()
        assert item.Unpack(message), f"pushed {item.TypeName()}, expected {message_type}"
        return message

    async def nothing_before(self, marker: Message, timeout: float = 10.0) -> None:
        """Asserts the next push is `marker` (so nothing else arrived before it)."""
        got = await self.next(type(marker), timeout)
        assert got == marker, f"received {got} before the marker {marker}"
