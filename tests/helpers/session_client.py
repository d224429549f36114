"""SessionClient: a raw GateService.Session stream: frames in, events out."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.message import Message

from goverse import wire
from goverse.v1 import gate_pb2, gate_pb2_grpc

WAIT = 15.0  # generous: a loaded 2-core machine


def object_call(
    call_id: int,
    object_type: str,
    object_id: str,
    method: str,
    request: Message,
    timeout_ms: int = 0,
) -> gate_pb2.SessionCall:
    """A SessionCall of ``object_type.method`` on `object_id`."""
    return gate_pb2.SessionCall(
        id=call_id,
        timeout_ms=timeout_ms,
        call=gate_pb2.CallObjectRequest(
            object_type=object_type, object_id=object_id, method=method, request=wire.pack(request)
        ),
    )


def status_of(reply: gate_pb2.CallReply) -> grpc.StatusCode:
    """The status a reply stands for (OK for a result)."""
    if reply.WhichOneof("result") != "error":
        return grpc.StatusCode.OK
    return next(code for code in grpc.StatusCode if code.value[0] == reply.error.code)


class SessionClient:
    """One Session stream on its own channel: :meth:`send` writes a frame; replies are kept
    by id as they are read, other events in order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel: Any = None
        self.stream: Any = None
        self.client_id = ""
        self.replies: dict[int, gate_pb2.CallReply] = {}
        self.arrival: list[int] = []
        """Reply ids in the order they arrived."""
        self.events: list[str] = []
        """The kind of every event read, in order."""

    async def connect(self) -> SessionClient:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stream = gate_pb2_grpc.GateServiceStub(self.channel).Session()
        first = await self.next_event()
        assert first is not None
        assert first.WhichOneof("event") == "registered", first
        self.client_id = first.registered.client_id
        return self

    async def send(self, *calls: gate_pb2.SessionCall, cancelled: tuple[int, ...] = ()) -> None:
        await self.stream.write(gate_pb2.SessionRequest(calls=calls, cancelled=cancelled))

    async def next_event(self, timeout: float = WAIT) -> gate_pb2.SessionResponse | None:
        """The next event (replies recorded), or None when the stream ended."""
        async with asyncio.timeout(timeout):
            event = await self.stream.read()
        if event is grpc.aio.EOF:
            return None
        assert isinstance(event, gate_pb2.SessionResponse)
        kind = event.WhichOneof("event")
        self.events.append(kind or "")
        if kind == "replies":
            for reply in event.replies.replies:
                self.replies[reply.id] = reply
                self.arrival.append(reply.id)
        return event

    async def reply(self, call_id: int, timeout: float = WAIT) -> gate_pb2.CallReply:
        """The reply of `call_id`, reading events until it arrives."""
        async with asyncio.timeout(timeout):
            while call_id not in self.replies:
                event = await self.next_event(timeout)
                assert event is not None, f"the stream ended before the reply of {call_id}"
        return self.replies[call_id]

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
        if self.channel is not None:
            await self.channel.close()
