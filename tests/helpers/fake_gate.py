"""FakeGate: a GateService on loopback for SDK tests — refuses, or registers and pushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from goverse.v1 import gate_pb2, gate_pb2_grpc
from tests.helpers.fake_node import text

STOP_BOUND = 10.0
"""How long stopping the fake gate may take."""


@dataclass
class FakeGate(gate_pb2_grpc.GateServiceServicer):
    """A GateService that refuses every Register (`refuse`), or registers the client and then
    pushes each text the test puts in :attr:`pushes`; None there, or `lifetime` seconds, end
    the stream (and the client registers again). It takes no calls (UNIMPLEMENTED)."""

    refuse: bool = False
    lifetime: float | None = None
    attempts: list[float] = field(default_factory=list)
    """When each Register arrived (time.monotonic)."""
    pushes: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    port: int = 0
    _server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def registrations(self) -> int:
        return len(self.attempts)

    async def start(self) -> FakeGate:
        self._server = grpc.aio.server()
        gate_pb2_grpc.add_GateServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        async with asyncio.timeout(STOP_BOUND):
            await self._server.stop(0)

    async def Register(
        self, request: gate_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gate_pb2.RegisterResponse]:
        self.attempts.append(time.monotonic())
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not today")
        yield gate_pb2.RegisterResponse(
            registered=gate_pb2.Registered(
                client_id=f"fake/{self.registrations}", credential="c", gate_id="fake"
            )
        )
        loop = asyncio.get_running_loop()
        ends = None if self.lifetime is None else loop.time() + self.lifetime
        while True:
            try:
                async with asyncio.timeout_at(ends):
                    value = await self.pushes.get()
            except TimeoutError:
                return
            if value is None:
                return
            yield gate_pb2.RegisterResponse(
                messages=gate_pb2.PushedMessages(messages=[text(value)])
            )

    async def _unimplemented(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a fake gate takes no calls")
        raise AssertionError("abort returned")

    async def CallObject(
        self, request: gate_pb2.CallObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CallObjectResponse:
        await self._unimplemented(context)

    async def CreateObject(
        self, request: gate_pb2.CreateObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CreateObjectResponse:
        await self._unimplemented(context)

    async def DeleteObject(
        self, request: gate_pb2.DeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.DeleteObjectResponse:
        await self._unimplemented(context)
