"""CallStreams in process: the node's side of a Calls stream, its calls' slots and its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value

from goverse import wire
from goverse.node._call_stream import CallStreams
from goverse.node._object_host import ObjectHost
from goverse.server import (
    READ_PACE,
    REPLY_QUEUE_MESSAGES,
    CallDurations,
    CallMetricsInterceptor,
    CallsInFlight,
    Supervisor,
)
from goverse.v1 import node_pb2
from tests.helpers.waiting import eventually

WAIT = 5.0
"""Longest a test waits for what it expects (a loaded 2-core machine included)."""


BIG_REPLY = 3000
"""Bytes of the payload a ``big`` call answers."""


class FakeHost:
    """Answers ``hold`` once released, ``big`` with BIG_REPLY bytes, anything else at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def invoke(
        self, object_type: str, object_id: str, method: str, request: Any, caller: Any
    ) -> any_pb2.Any:
        self.started.append(object_id)
        if method == "hold":
            await self.release.wait()
        if method == "big":
            return wire.pack(BytesValue(value=b"b" * BIG_REPLY))
        return wire.pack(Int64Value(value=1))


class FakeContext:
    """The parts of a gRPC servicer context the stream uses; `aborted` is the status it was
    aborted with, `done` runs its done callbacks (the RPC ended)."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.trailing: Any = ()
        self._callbacks: list[Callable[[Any], None]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((wire.GATE_ID_KEY, "g1"),)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()

    def done(self) -> None:
        for callback in self._callbacks:
            callback(self)


def frame(call_id: int, object_id: str, method: str = "echo") -> node_pb2.CallFrame:
    return node_pb2.CallFrame(
        id=call_id,
        call=node_pb2.NodeCallObjectRequest(
            object_type="T", object_id=object_id, method=method, request=wire.pack(Int64Value())
        ),
    )


class Frames:
    """The gate's side of the request stream: messages the test sends, and its end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[node_pb2.CallFrames | None] = asyncio.Queue()

    def send(self, *calls: node_pb2.CallFrame) -> None:
        self.queue.put_nowait(node_pb2.CallFrames(calls=calls))

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[node_pb2.CallFrames]:
        while (message := await self.queue.get()) is not None:
            yield message


def code_of(reply: node_pb2.ReplyFrame) -> grpc.StatusCode:
    if reply.WhichOneof("result") != "error":
        return grpc.StatusCode.OK
    return next(code for code in grpc.StatusCode if code.value[0] == reply.error.code)


class Harness:
    def __init__(self, max_calls: int = 100, max_message_bytes: int = 1 << 20) -> None:
        self.supervisor = Supervisor("test")
        self.host = FakeHost()
        self.calls = CallsInFlight([])
        self.streams = CallStreams(
            self.supervisor,
            "n1",
            cast(ObjectHost, self.host),
            self.calls,
            CallMetricsInterceptor(CallDurations("t.d", "t"), []),
            max_calls=max_calls,
            max_message_bytes=max_message_bytes,
        )
        self.context = FakeContext()

    def serve(self, frames: AsyncIterator[node_pb2.CallFrames]) -> Any:
        return self.streams.serve(frames, cast(grpc.aio.ServicerContext, self.context))

    async def close(self) -> None:
        self.host.release.set()
        self.context.done()
        await self.supervisor.shutdown(WAIT)


async def replies_until_the_end(stream: Any) -> dict[int, node_pb2.ReplyFrame]:
    """Every reply `stream` (a ``serve``) yields, by id, until it ends; bounded by WAIT."""
    replies: dict[int, node_pb2.ReplyFrame] = {}
    async with asyncio.timeout(WAIT):
        async for message in stream:
            replies.update((reply.id, reply) for reply in message.replies)
    return replies


async def test_a_call_cancelled_before_it_ever_ran_frees_its_slot_and_the_stream_ends() -> None:
    """A frame's call and, in the next message, its cancellation, read before the call's task
    had its first turn (a task cancelled then never runs its body, nor its ``finally``): the
    call holds no slot once cancelled, and the stream, half-closed, ends with OK. Its slot
    and its entry in the stream's table used to stay taken for as long as the stream lived,
    which kept a half-closed stream open for good."""
    made = Harness()
    ran_body: list[bool] = []

    async def frames() -> AsyncIterator[node_pb2.CallFrames]:
        # No await between the messages: the reader reads them in one turn of the loop.
        yield node_pb2.CallFrames(calls=[frame(1, "held", "hold")])
        yield node_pb2.CallFrames(cancelled=[1])
        ran_body.append(bool(made.host.started))

    try:
        replies = await replies_until_the_end(made.serve(frames()))
        assert ran_body == [False]  # what this test is about: the call had not started
        assert replies == {}  # a cancelled call gets no reply
        assert made.streams.in_flight == 0
        assert len(made.calls) == 0
        assert made.context.aborted is None
    finally:
        await made.close()


async def test_replies_waiting_for_a_gate_that_stops_reading_are_bounded_in_bytes() -> None:
    """Forty calls answering 3 KB each, a message limit of 4 KB, and a gate that takes one
    reply message and then reads nothing: the replies waiting for it never take more than
    REPLY_QUEUE_MESSAGES messages' worth of bytes, beside the small statuses of the calls
    refused (the count bound alone let them take max_calls times the message limit). A call
    refused for it, or whose result would not fit, answers RESOURCE_EXHAUSTED saying why;
    once the gate reads again, every call is answered and the stream serves on."""
    made = Harness(max_calls=100, max_message_bytes=4096)
    budget = REPLY_QUEUE_MESSAGES * made.streams._batching.max_bytes
    statuses = 40 * 1100  # a status is at most 1024 characters, its reply a little more
    frames = Frames()
    stream = made.serve(frames.__aiter__())
    replies: dict[int, node_pb2.ReplyFrame] = {}

    async def read(count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(replies) < count:
                message = await anext(stream)
                replies.update((reply.id, reply) for reply in message.replies)

    try:
        frames.send(*(frame(index, f"o{index}", "big") for index in range(1, 41)))
        await read(1)  # from here on, the stream's writer waits for the gate to read
        await eventually(lambda: len(made.calls) == 0 and len(made.host.started) > READ_PACE, WAIT)
        queued = sum(each.replies.nbytes for each in made.streams._streams)
        assert queued <= budget + statuses
        await read(40)
        codes = [code_of(reply) for reply in replies.values()]
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        for reply in replies.values():
            if code_of(reply) != grpc.StatusCode.OK:
                assert "does not read" in reply.error.message, reply.error.message
        frames.send(frame(41, "after", "big"))
        await read(41)
        assert code_of(replies[41]) == grpc.StatusCode.OK
        frames.end()
        async with asyncio.timeout(WAIT):
            assert [message async for message in stream] == []
        assert made.context.aborted is None
    finally:
        await stream.aclose()
        await made.close()


async def test_a_finished_calls_reply_is_never_dropped_for_a_mailbox_full_of_refusals() -> None:
    """With --max-stream-calls 2, a gate sends two calls and four more that are refused at
    once (RESOURCE_EXHAUSTED, no slot), then half-closes, all before it reads a reply; the
    two calls finish before the stream's writer runs. Each call read is answered, or the
    stream ends with a failure (so the gate fails its calls at once). The refusals used to
    fill the reply mailbox by count (twice the bound): the two results were dropped, and the
    stream ended with OK, which tells a gate that the calls without a reply never ran."""
    made = Harness(max_calls=2)
    made.host.release.set()  # the two calls end in their first turn

    async def frames() -> AsyncIterator[node_pb2.CallFrames]:
        yield node_pb2.CallFrames(
            calls=[frame(1, "a", "hold"), frame(2, "b", "hold")]
            + [frame(n, f"over-{n}") for n in range(3, 7)]
        )

    try:
        try:
            replies = await replies_until_the_end(made.serve(frames()))
        except grpc.aio.AbortError:  # the stream ended with made.context.aborted
            assert made.context.aborted is not None
            code, details = made.context.aborted
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith("slow consumer:"), details
        else:
            assert sorted(replies) == [1, 2, 3, 4, 5, 6]
        assert made.streams.in_flight == 0
    finally:
        await made.close()
