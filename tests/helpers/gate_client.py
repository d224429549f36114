"""GateClient: a bare grpc.aio client of GateService for gate tests (no SDK, no reconnects)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc

from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import AUTHORIZATION_KEY, CLIENT_ID_KEY, CREDENTIAL_KEY
from tests.helpers.fake_node import unpack_text

WAIT = 15.0  # generous: a loaded 2-core machine


@dataclass
class GateClient:
    """One Register stream on its own channel, and calls that carry its credential."""

    address: str
    channel: Any = None
    stub: Any = None
    stream: Any = None
    client_id: str = ""
    credential: str = ""
    events: list[gate_pb2.RegisterResponse] = field(default_factory=list)
    options: list[tuple[str, Any]] = field(default_factory=list)
    token: str | None = None
    """Sent as ``authorization: Bearer <token>`` with the registration when set."""

    async def connect(self) -> GateClient:
        """Opens Register (on `channel` when given: another registration's connection) and
        reads the first event, which must be `registered`."""
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.address, options=self.options)
        self.stub = gate_pb2_grpc.GateServiceStub(self.channel)
        metadata = () if self.token is None else ((AUTHORIZATION_KEY, f"Bearer {self.token}"),)
        self.stream = self.stub.Register(gate_pb2.RegisterRequest(), metadata=metadata)
        first = await self.next_event()
        assert first is not None
        assert first.WhichOneof("event") == "registered", first
        self.client_id = first.registered.client_id
        self.credential = first.registered.credential
        return self

    async def next_event(self, timeout: float = WAIT) -> gate_pb2.RegisterResponse | None:
        """The next stream event, or None when the stream ended with OK."""
        event = await _read(self.stream, timeout)
        if event is not None:
            self.events.append(event)
        return event

    async def rest_of_stream(self, timeout: float = WAIT) -> list[gate_pb2.RegisterResponse]:
        """Every event until the stream ends."""
        events = []
        while (event := await self.next_event(timeout)) is not None:
            events.append(event)
        return events

    async def pushed_texts(self, count: int, timeout: float = WAIT) -> tuple[list[str], int]:
        """Reads pushes until `count` arrived; returns them and how many stream messages
        carried them."""
        texts: list[str] = []
        messages = 0
        while len(texts) < count:
            event = await self.next_event(timeout)
            assert event is not None, "the stream ended"
            assert event.WhichOneof("event") == "messages", event
            messages += 1
            texts.extend(unpack_text(m) for m in event.messages.messages)
        return texts, messages

    def metadata(
        self, client_id: str | None = None, credential: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        return (
            (CLIENT_ID_KEY, self.client_id if client_id is None else client_id),
            (CREDENTIAL_KEY, self.credential if credential is None else credential),
        )

    @classmethod
    def stalled(cls, address: str) -> GateClient:
        """A client whose transport takes in little unread data: once it stops reading, the
        gate's writes to it block (HTTP/2 flow control), like a stuck mobile client's."""
        return cls(
            address,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)],
        )

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


async def _read(stream: Any, timeout: float) -> gate_pb2.RegisterResponse | None:
    async with asyncio.timeout(timeout):
        event = await stream.read()
    if event is grpc.aio.EOF:
        return None
    assert isinstance(event, gate_pb2.RegisterResponse)
    return event
