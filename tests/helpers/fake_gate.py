"""FakeGate: a GateService on loopback for SDK tests: refuses, or registers, pushes, answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from goverse.v1 import calls_pb2, describe_pb2, gate_pb2, gate_pb2_grpc
from tests.helpers.fake_node import text

STOP_BOUND = 10.0
"""How long stopping the fake gate may take."""


@dataclass
class FakeGate(gate_pb2_grpc.GateServiceServicer):
    """A GateService that refuses every registration (`refuse`), or registers the client and
    then pushes each text the test puts in :attr:`pushes`; None there, or `lifetime` seconds,
    end the stream (and the client registers again).

    Over Session (unless `session` is False: then Session answers UNIMPLEMENTED, as an older
    gate does), each call is answered by `answer` in its own task (by default UNIMPLEMENTED),
    frames are recorded in :attr:`frames` and cancelled ids in :attr:`cancelled`. It takes no
    unary calls (UNIMPLEMENTED)."""

    refuse: bool = False
    refusal: str = "not today"
    """The details of a refusal (UNAVAILABLE)."""
    lifetime: float | None = None
    session: bool = True
    drain_at_end: bool = False
    """A Session stream ended by None in :attr:`pushes` sends Draining first."""
    answer: Callable[[gate_pb2.SessionCall], Awaitable[gate_pb2.CallReply]] | None = None
    attempts: list[float] = field(default_factory=list)
    """When each registration arrived (time.monotonic)."""
    pushes: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    frames: list[gate_pb2.SessionRequest] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
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
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.refusal)
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

    async def Session(
        self,
        request_iterator: AsyncIterator[gate_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gate_pb2.SessionResponse]:
        if not self.session:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.attempts.append(time.monotonic())
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.refusal)
        yield gate_pb2.SessionResponse(
            registered=gate_pb2.Registered(
                client_id=f"fake/{self.registrations}", credential="c", gate_id="fake"
            )
        )
        out: asyncio.Queue[gate_pb2.SessionResponse | None] = asyncio.Queue()
        calls: dict[int, asyncio.Task[None]] = {}

        async def answer(call: gate_pb2.SessionCall) -> None:
            if self.answer is None:
                reply = gate_pb2.CallReply(
                    id=call.id,
                    error=calls_pb2.CallStatus(
                        code=grpc.StatusCode.UNIMPLEMENTED.value[0], message="a fake gate"
                    ),
                )
            else:
                reply = await self.answer(call)
            out.put_nowait(gate_pb2.SessionResponse(replies=gate_pb2.CallReplies(replies=[reply])))

        async def read() -> None:
            async for frame in request_iterator:
                self.frames.append(frame)
                for call in frame.calls:
                    calls[call.id] = asyncio.create_task(answer(call))
                for call_id in frame.cancelled:
                    self.cancelled.append(call_id)
                    if call_id in calls:
                        calls[call_id].cancel()

        async def pump() -> None:
            while (value := await self.pushes.get()) is not None:
                out.put_nowait(
                    gate_pb2.SessionResponse(
                        messages=gate_pb2.PushedMessages(messages=[text(value)])
                    )
                )
            out.put_nowait(None)

        tasks = [asyncio.create_task(read()), asyncio.create_task(pump())]
        loop = asyncio.get_running_loop()
        ends = None if self.lifetime is None else loop.time() + self.lifetime
        try:
            while True:
                try:
                    async with asyncio.timeout_at(ends):
                        item = await out.get()
                except TimeoutError:
                    return
                if item is None:
                    if self.drain_at_end:
                        yield gate_pb2.SessionResponse(
                            draining=gate_pb2.Draining(reason="the fake gate drains")
                        )
                    return
                yield item
        finally:
            for task in [*tasks, *calls.values()]:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_BOUND):
                    await asyncio.gather(*tasks, *calls.values(), return_exceptions=True)

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

    async def Describe(
        self, request: describe_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> describe_pb2.DescribeResponse:
        await self._unimplemented(context)
