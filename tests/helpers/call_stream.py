"""RawCallStream: a NodeService.Calls stream driven by hand, as a gate would, for node tests."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
from google.protobuf.message import Message

from goverse import wire
from goverse.v1 import node_pb2, node_pb2_grpc

FIRST_AUTO_ID = 1_000_000
"""Ids :meth:`RawCallStream.call` picks start here, clear of the ids tests choose."""
REPLY_TIMEOUT = 15.0
"""Longest a test waits for a reply it expects."""


def call_frame(
    call_id: int,
    object_type: str,
    object_id: str,
    method: str,
    request: Message,
    *,
    timeout_ms: int = 0,
) -> node_pb2.CallFrame:
    """A CallObject frame."""
    return node_pb2.CallFrame(
        id=call_id,
        timeout_ms=timeout_ms,
        call=node_pb2.NodeCallObjectRequest(
            object_type=object_type,
            object_id=object_id,
            method=method,
            request=wire.pack(request),
            caller=node_pb2.Caller(client_id="test-gate/client"),
        ),
    )


class RawCallStream:
    """One Calls stream to the node at `address`: :meth:`send` writes a CallFrames message,
    a reader task collects every reply by id (and how many stream messages carried them), and
    :meth:`reply` waits for one. ``async with`` opens it and always cancels it. With
    `reading` False the stream is not read until :meth:`start_reading` (a gate that stopped
    reading its replies)."""

    def __init__(self, address: str, gate_id: str = "test-gate", *, reading: bool = True) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub: Any = node_pb2_grpc.NodeServiceStub(self._channel)
        self._gate_id = gate_id
        self._ids = itertools.count(FIRST_AUTO_ID)
        self.replies: dict[int, node_pb2.ReplyFrame] = {}
        self.arrived: dict[int, float] = {}
        self.messages = 0
        self.ended: asyncio.Future[grpc.StatusCode] | None = None
        self._changed = asyncio.Event()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._reading = reading

    def next_id(self) -> int:
        return next(self._ids)

    async def __aenter__(self) -> RawCallStream:
        self._call = self._stub.Calls(metadata=((wire.GATE_ID_KEY, self._gate_id),))
        self.ended = asyncio.get_running_loop().create_future()
        if self._reading:
            self.start_reading()
        return self

    def start_reading(self) -> None:
        """Starts the task that reads the replies (once)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()
        await self._channel.close()

    async def cancel(self) -> None:
        """Cancels the stream (the gate went away) and waits for the reader to end."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)

    async def send(self, *frames: node_pb2.CallFrame, cancelled: tuple[int, ...] = ()) -> None:
        await self._call.write(node_pb2.CallFrames(calls=frames, cancelled=cancelled))

    async def half_close(self) -> None:
        await self._call.done_writing()

    async def _read(self) -> None:
        assert self.ended is not None
        try:
            async for message in self._call:
                self.messages += 1
                now = time.monotonic()
                for reply in message.replies:
                    self.replies[reply.id] = reply
                    self.arrived[reply.id] = now
                self._changed.set()
            self.ended.set_result(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            self.ended.set_result(error.code())
        finally:
            self._changed.set()

    async def reply(self, call_id: int, timeout: float = REPLY_TIMEOUT) -> node_pb2.ReplyFrame:
        """The reply to `call_id`, once it arrives (TimeoutError after `timeout`)."""
        async with asyncio.timeout(timeout):
            while call_id not in self.replies:
                self._changed.clear()
                await self._changed.wait()
        return self.replies[call_id]

    async def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        *,
        timeout_ms: int = 0,
    ) -> node_pb2.ReplyFrame:
        """Sends one call and waits for its reply."""
        call_id = self.next_id()
        await self.send(
            call_frame(call_id, object_type, object_id, method, request, timeout_ms=timeout_ms)
        )
        return await self.reply(call_id)


def code_of(reply: node_pb2.ReplyFrame) -> grpc.StatusCode:
    """The status code a reply stands for (OK for a result)."""
    if reply.WhichOneof("result") != "error":
        return grpc.StatusCode.OK
    return next(code for code in grpc.StatusCode if code.value[0] == reply.error.code)
