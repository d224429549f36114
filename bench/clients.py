"""The bench side of every scenario: a closed-loop call generator, stubs of the bare server,
and sets of raw Register (or bare Hold) streams that record what reaches them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from bench import wire
from bench.bare_server import SERVICE
from bench.cpu import CpuMeter
from goverse.transport import channel_options
from goverse.v1 import gate_pb2, gate_pb2_grpc

CALL_TIMEOUT = 30.0
MAX_ERRORS = 100


def raw_channel(
    address: str,
    *,
    own_connection: bool = True,
    credentials: grpc.ChannelCredentials | None = None,
) -> Any:
    """A channel with the options the SDK uses; with `own_connection`, its own TCP connection
    (grpc shares a connection between channels with equal options otherwise); TLS with
    `credentials`."""
    options = channel_options()
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


# -- closed-loop calls -------------------------------------------------------------------------


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    calls: int
    errors: int
    latencies_ns: list[int] = field(repr=False)
    completed: int = 0
    """Calls that ended inside the measured window, wherever they started."""
    cpu: CpuMeter | None = None
    """The CPU the measured processes used inside the window, when asked for."""

    @property
    def calls_per_second(self) -> float:
        """Calls that started and ended inside the window, per second (scenario 1's figure:
        it undercounts when a call's latency nears the window's length)."""
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def completions_per_second(self) -> float:
        """Calls that ended inside the window, per second: the throughput, however long each
        call waited (64 callers of one object that saves before each reply wait long)."""
        return self.completed / self.seconds if self.seconds else 0.0


async def closed_loop(
    call: Callable[[int], Awaitable[None]],
    concurrency: int,
    *,
    warmup: float,
    duration: float,
    max_calls: int = 5_000_000,
    cpu: CpuMeter | None = None,
) -> LoadResult:
    """`concurrency` workers call ``call(worker)`` back to back for ``warmup + duration``
    seconds; counts the calls that completed inside the measured window, and their latency,
    and with `cpu` the CPU its processes used in the window. Stops early after `max_calls`
    calls or MAX_ERRORS errors (then raises)."""
    latencies: list[int] = []
    errors: list[BaseException] = []
    started = time.perf_counter_ns()
    window_start = started + int(warmup * 1e9)
    window_end = window_start + int(duration * 1e9)
    issued = completed = 0

    async def worker(index: int) -> None:
        nonlocal issued, completed
        while issued < max_calls and len(errors) < MAX_ERRORS:
            t0 = time.perf_counter_ns()
            if t0 >= window_end:
                return
            issued += 1
            try:
                await call(index)
            except Exception as error:
                errors.append(error)
                continue
            t1 = time.perf_counter_ns()
            if window_start <= t1 <= window_end:
                completed += 1
                if t0 >= window_start:
                    latencies.append(t1 - t0)

    timers = []
    if cpu is not None:
        loop = asyncio.get_running_loop()
        timers = [loop.call_later(warmup, cpu.start), loop.call_later(warmup + duration, cpu.stop)]
    try:
        await asyncio.gather(*(worker(index) for index in range(concurrency)))
    finally:
        for timer in timers:
            timer.cancel()
    if len(errors) >= MAX_ERRORS:
        raise RuntimeError(f"{len(errors)} calls failed; the first: {errors[0]!r}")
    return LoadResult(concurrency, duration, len(latencies), len(errors), latencies, completed, cpu)


# -- the bare server ---------------------------------------------------------------------------


class BareStubs:
    """Callables for the bare server's methods on one channel."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.echo = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=gate_pb2.CallObjectRequest.SerializeToString,
            response_deserializer=gate_pb2.CallObjectResponse.FromString,
        )
        self.push = channel.unary_stream(
            f"/{SERVICE}/Push",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=gate_pb2.RegisterResponse.FromString,
        )
        self.hold = channel.unary_stream(
            f"/{SERVICE}/Hold",
            request_serializer=gate_pb2.RegisterRequest.SerializeToString,
            response_deserializer=gate_pb2.RegisterResponse.FromString,
        )
        self.fanout = channel.unary_unary(
            f"/{SERVICE}/Fanout",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=Int64Value.FromString,
        )


def echo_request(object_id: str, payload: bytes) -> gate_pb2.CallObjectRequest:
    """What the SDK sends for ``call("Echo", object_id, "Echo", BytesValue(payload))``."""
    packed = any_pb2.Any()
    packed.Pack(BytesValue(value=payload))
    return gate_pb2.CallObjectRequest(
        object_type="Echo", object_id=object_id, method="Echo", request=packed
    )


# -- many streams ------------------------------------------------------------------------------

OpenStream = Callable[[Any], Any]
"""Opens one stream (Register or Hold) on a channel; returns the call."""


@dataclass
class Arrivals:
    """Messages of one fan-out round: how many are expected and when each arrived."""

    expected: int
    sent_ns: int = 0
    received_ns: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class StreamSet:
    """Many server streams (raw ``GateService.Register`` or the bare ``Hold``) spread over
    channels, each read by its own task that records stamped messages by sequence number."""

    def __init__(self, channels: list[Any], open_stream: OpenStream) -> None:
        self.channels = channels
        self._open_stream = open_stream
        self.calls: list[Any] = []
        self.registered: list[gate_pb2.Registered] = []
        self.rounds: dict[int, Arrivals] = {}
        self.ended: list[int] = []
        """monotonic ns at which each stream ended (EOF or error)."""
        self.draining = 0
        self.all_ended = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self.calls)

    async def open(self, count: int, parallel: int = 256) -> float:
        """Opens `count` more streams, at most `parallel` registering at once; returns the
        seconds until every one of them had its ``registered`` event. Starts their readers."""
        gate = asyncio.Semaphore(parallel)
        started = time.perf_counter()

        async def one(index: int) -> None:
            async with gate:
                call = self._open_stream(self.channels[index % len(self.channels)])
                async with asyncio.timeout(CALL_TIMEOUT):
                    first = await call.read()
                if first is grpc.aio.EOF or first.WhichOneof("event") != "registered":
                    raise RuntimeError(f"stream {index} did not register: {first!r}")
                self.calls.append(call)
                self.registered.append(first.registered)
                self._readers.append(asyncio.create_task(self._read(call), name="bench-reader"))

        base = len(self.calls)
        # A task group, not gather: a stream that fails to register cancels the others before
        # the caller closes the channels (a stub made on a closed grpc.aio channel crashes
        # the process with SIGSEGV).
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                group.create_task(one(base + index))
        return time.perf_counter() - started

    async def _read(self, call: Any) -> None:
        try:
            while True:
                event = await call.read()
                if event is grpc.aio.EOF:
                    return
                kind = event.WhichOneof("event")
                if kind == "draining":
                    self.draining += 1
                elif kind == "messages":
                    now = time.monotonic_ns()
                    for message in event.messages.messages:
                        seq, sent = wire.unpack_stamp(message)
                        arrivals = self.rounds.get(seq)
                        if arrivals is None:
                            continue
                        arrivals.sent_ns = sent
                        arrivals.received_ns.append(now)
                        if len(arrivals.received_ns) >= arrivals.expected:
                            arrivals.done.set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return
        finally:
            self.ended.append(time.monotonic_ns())
            if len(self.ended) >= len(self.calls):
                self.all_ended.set()

    def expect(self, seq: int) -> Arrivals:
        arrivals = Arrivals(len(self.calls))
        self.rounds[seq] = arrivals
        return arrivals

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


def gate_register(channel: Any) -> Any:
    return gate_pb2_grpc.GateServiceStub(channel).Register(gate_pb2.RegisterRequest())


def bare_hold(channel: Any) -> Any:
    return BareStubs(channel).hold(gate_pb2.RegisterRequest())
