"""ClientSession: calls on a client's Session stream, started, bounded, cancelled and drained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from goverse import wire
from goverse.errors import NotFound
from goverse.gate._client_proxy import ClientProxy
from goverse.gate._router import Router
from goverse.gate._session import ClientSession
from goverse.server import (
    READ_PACE,
    REPLY_QUEUE_MESSAGES,
    CallDurations,
    CallMetricsInterceptor,
    KnownNames,
)
from goverse.v1 import gate_pb2, node_pb2
from tests.helpers.fake_node import text, unpack_text
from tests.helpers.waiting import eventually

WAIT = 5.0


BIG_REPLY = 3000
"""Bytes of the payload a ``big`` call answers."""


class FakeRouter:
    """Answers each CallObject by its method: ``echo`` at once, ``hold`` when released,
    ``missing`` with NOT_FOUND, ``big`` with BIG_REPLY bytes. Records what started and what
    was cancelled."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.time_remaining: list[float | None] = []

    async def call_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.CallObjectRequest,
        time_remaining: float | None,
    ) -> any_pb2.Any:
        self.started.append(request.object_id)
        self.time_remaining.append(time_remaining)
        if request.method == "missing":
            raise NotFound("no such object")
        if request.method == "big":
            return wire.pack(BytesValue(value=b"b" * BIG_REPLY))
        if request.method == "hold":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(request.object_id)
                raise
        return wire.pack(StringValue(value=caller.client_id))

    async def create_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.CreateObjectRequest,
        time_remaining: float | None,
    ) -> gate_pb2.CreateObjectResponse:
        return gate_pb2.CreateObjectResponse(created=True)

    async def delete_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.DeleteObjectRequest,
        time_remaining: float | None,
    ) -> gate_pb2.DeleteObjectResponse:
        return gate_pb2.DeleteObjectResponse(deleted=False)


class Frames:
    """The client's side of the request stream: frames the test sends, and its end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[gate_pb2.SessionRequest | None] = asyncio.Queue()

    def send(self, *calls: gate_pb2.SessionCall, cancelled: tuple[int, ...] = ()) -> None:
        self.queue.put_nowait(gate_pb2.SessionRequest(calls=calls, cancelled=cancelled))

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[gate_pb2.SessionRequest]:
        while (frame := await self.queue.get()) is not None:
            yield frame


def call(call_id: int, object_id: str, method: str = "echo", timeout_ms: int = 0) -> Any:
    return gate_pb2.SessionCall(
        id=call_id,
        timeout_ms=timeout_ms,
        call=gate_pb2.CallObjectRequest(object_type="T", object_id=object_id, method=method),
    )


class Harness:
    def __init__(
        self,
        max_calls: int = 100,
        clock: Any = None,
        metrics: CallMetricsInterceptor | None = None,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.proxy = ClientProxy(
            "g1/abc", "secret", max_messages=100, max_bytes=1 << 20, max_batch_bytes=1 << 20
        )
        self.router = FakeRouter()
        self.frames = Frames()
        self.session = ClientSession(
            self.proxy,
            cast(Router, self.router),
            max_calls=max_calls,
            max_message_bytes=max_message_bytes,
            clock=clock,
            metrics=metrics,
        )
        self.stream: AsyncGenerator[gate_pb2.SessionResponse, None] = self.session.stream(
            "g1", self.frames.__aiter__()
        )

    async def next(self) -> gate_pb2.SessionResponse | None:
        async with asyncio.timeout(WAIT):
            return await anext(self.stream, None)

    async def replies(self, count: int) -> dict[int, gate_pb2.CallReply]:
        """Reads events until `count` replies arrived; returns them by id."""
        got: dict[int, gate_pb2.CallReply] = {}
        while len(got) < count:
            event = await self.next()
            assert event is not None, "the stream ended"
            if event.WhichOneof("event") == "replies":
                got.update((reply.id, reply) for reply in event.replies.replies)
        return got


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness()
    first = await made.next()
    assert first is not None
    assert first.WhichOneof("event") == "registered"
    try:
        yield made
    finally:
        made.router.release.set()
        await made.stream.aclose()


def code_of(reply: gate_pb2.CallReply) -> grpc.StatusCode:
    if reply.WhichOneof("result") != "error":
        return grpc.StatusCode.OK
    return next(code for code in grpc.StatusCode if code.value[0] == reply.error.code)


async def test_many_calls_in_one_frame_are_answered_by_id_as_the_session_client(
    harness: Harness,
) -> None:
    """Ten calls in one frame: ten replies, each with its id, made as the session's client."""
    harness.frames.send(*(call(index, f"o{index}") for index in range(1, 11)))
    replies = await harness.replies(10)
    assert sorted(replies) == list(range(1, 11))
    for reply in replies.values():
        assert wire.unpack(reply.call.response, StringValue).value == "g1/abc"


async def test_a_held_call_does_not_delay_the_replies_of_other_calls(harness: Harness) -> None:
    """A call that does not end yet and two quick ones in one frame: the quick ones answer."""
    harness.frames.send(call(1, "slow", "hold"), call(2, "a"), call(3, "b"))
    assert sorted(await harness.replies(2)) == [2, 3]
    harness.router.release.set()
    assert list(await harness.replies(1)) == [1]


async def test_errors_travel_as_the_unary_status_and_garbage_fails_only_its_call(
    harness: Harness,
) -> None:
    """A routed error keeps its status; a call without an op, and one reusing the id of a call
    in flight, answer INVALID_ARGUMENT; the other calls of the frame are served."""
    harness.frames.send(
        call(1, "x", "missing"),
        gate_pb2.SessionCall(id=2),
        call(3, "held", "hold"),
        call(3, "again"),
        call(4, "fine"),
    )
    replies = await harness.replies(4)
    assert code_of(replies[1]) == grpc.StatusCode.NOT_FOUND
    assert replies[1].error.message == "no such object"
    assert code_of(replies[2]) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(replies[3]) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(replies[4]) == grpc.StatusCode.OK
    assert "again" not in harness.router.started


async def test_a_call_whose_deadline_passed_before_it_started_is_not_started() -> None:
    """A clock that moves a second each time it is read: a call of 500 ms is spent before it
    starts, answers DEADLINE_EXCEEDED and the router never sees it; a call of 10 s is routed
    with what is left of it."""
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    made = Harness(clock=clock)
    try:
        await made.next()
        made.frames.send(call(1, "late", timeout_ms=500), call(2, "in-time", timeout_ms=10_000))
        replies = await made.replies(2)
        assert code_of(replies[1]) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert code_of(replies[2]) == grpc.StatusCode.OK
        assert made.router.started == ["in-time"]
        (remaining,) = made.router.time_remaining
        assert remaining is not None
        assert 0 < remaining < 10
    finally:
        await made.stream.aclose()


async def test_calls_beyond_the_bound_answer_resource_exhausted_at_once() -> None:
    """With two calls in flight allowed and two held, a third answers RESOURCE_EXHAUSTED at
    once; once one ends, calls are taken again."""
    made = Harness(max_calls=2)
    try:
        await made.next()
        made.frames.send(call(1, "h1", "hold"), call(2, "h2", "hold"), call(3, "over"))
        replies = await made.replies(1)
        assert code_of(replies[3]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-session-calls" in replies[3].error.message
        made.router.release.set()
        assert sorted(await made.replies(2)) == [1, 2]
        made.frames.send(call(4, "after"))
        assert code_of((await made.replies(1))[4]) == grpc.StatusCode.OK
    finally:
        made.router.release.set()
        await made.stream.aclose()


async def test_a_cancelled_id_cancels_its_call_which_gets_no_reply(harness: Harness) -> None:
    """A cancellation frame cancels the call's task (the router sees the cancellation, which
    is what frees the node's part), no reply comes for it, and the session serves on."""
    harness.frames.send(call(1, "held", "hold"))
    await _eventually(lambda: harness.router.started == ["held"])
    harness.frames.send(cancelled=(1,))
    await _eventually(lambda: harness.router.cancelled == ["held"])
    harness.frames.send(call(2, "next"))
    assert list(await harness.replies(1)) == [2]
    await _eventually(lambda: harness.session.in_flight == 0)


async def test_the_end_of_the_request_stream_lets_the_calls_answer_then_ends_the_stream(
    harness: Harness,
) -> None:
    """The client half-closes with a call in flight: gRPC's half-close ends the requests,
    not the RPC, so the call runs on, its reply is sent, and then the response stream ends."""
    harness.frames.send(call(1, "held", "hold"))
    await _eventually(lambda: harness.router.started == ["held"])
    # Reading on meanwhile: a stream that ended at the half-close would end this read.
    ending = asyncio.get_running_loop().create_task(harness.next())
    harness.frames.end()
    await _eventually(lambda: harness.frames.queue.empty())  # the reader took the end
    await asyncio.sleep(0.05)  # time for a wrong stream to end; the right one cannot
    assert not ending.done()
    assert harness.router.cancelled == []
    harness.router.release.set()
    event = await asyncio.wait_for(ending, WAIT)
    assert event is not None
    assert [reply.id for reply in event.replies.replies] == [1]
    assert code_of(event.replies.replies[0]) == grpc.StatusCode.OK
    assert await harness.next() is None
    assert harness.router.cancelled == []


async def test_a_drain_lets_calls_in_flight_answer_then_sends_draining(harness: Harness) -> None:
    """The gate drains with a call in flight: a new call answers UNAVAILABLE at once, marked
    not forwarded (the client sends it to its next gate), the queued push is flushed, the held
    call's reply comes once it ends, then Draining."""
    harness.frames.send(call(1, "held", "hold"))
    await _eventually(lambda: harness.router.started == ["held"])
    harness.proxy.push(text("last push"))
    harness.proxy.close("the gate is shutting down", drain=True)
    harness.frames.send(call(2, "late"))
    kinds: list[str] = []
    replies: dict[int, gate_pb2.CallReply] = {}
    while (event := await harness.next()) is not None:
        kind = event.WhichOneof("event")
        kinds.append(kind or "")
        if kind == "replies":
            replies.update((reply.id, reply) for reply in event.replies.replies)
            if 2 in replies and 1 not in replies:
                harness.router.release.set()
    assert code_of(replies[2]) == grpc.StatusCode.UNAVAILABLE
    assert replies[2].not_forwarded
    assert not replies[1].not_forwarded
    assert code_of(replies[1]) == grpc.StatusCode.OK
    assert kinds[-1] == "draining"
    assert "messages" in kinds


async def test_a_client_that_half_closes_while_the_gate_drains_still_gets_its_pushes(
    harness: Harness,
) -> None:
    """The gate drains with pushes queued for the client, and the client half-closes (it has
    nothing more to send) before the writer has sent them: the pushes are still delivered,
    then Draining, then the stream ends, as a drain promises every client. The half-close
    used to close the proxy as if the client had gone, which discarded the queue."""
    for index in range(3):
        assert harness.proxy.push(text(f"push {index}"))
    harness.proxy.close("the gate is shutting down", drain=True)
    harness.frames.end()
    await _eventually(lambda: harness.frames.queue.empty())  # the reader took the end
    kinds: list[str] = []
    pushed: list[str] = []
    while (event := await harness.next()) is not None:
        kinds.append(event.WhichOneof("event") or "")
        pushed.extend(unpack_text(message) for message in event.messages.messages)
    assert pushed == ["push 0", "push 1", "push 2"]
    assert kinds[-1] == "draining"
    assert harness.proxy.dropped == 0


async def test_a_client_that_stops_reading_holds_back_its_frames() -> None:
    """Nobody reads the responses: once `max_calls` replies wait to be sent, the reader stops
    taking frames, so what the gate holds for the client stays bounded."""
    made = Harness(max_calls=3)
    try:
        await made.next()  # registered
        # One read starts the reader; after it, nothing is read.
        first = asyncio.get_running_loop().create_task(made.next())
        for index in range(30):
            made.frames.send(call(index + 1, f"o{index}"))
        await _eventually(lambda: len(made.session._replies) >= 3)
        await asyncio.sleep(0.05)  # the reader would take more frames now if it could
        assert len(made.session._replies) <= 3
        assert made.frames.queue.qsize() >= 20
        await first
    finally:
        await made.stream.aclose()


async def test_replies_waiting_for_a_client_that_stops_reading_are_bounded_in_bytes() -> None:
    """Forty calls answering 3 KB each, a message limit of 4 KB and a client that reads
    nothing: the replies waiting for it never take more than REPLY_QUEUE_MESSAGES messages'
    worth of bytes, beside the small statuses of the calls refused (the count bound alone let
    them take max_calls times the message limit). A call whose result would not fit answers
    RESOURCE_EXHAUSTED instead, saying why, and the reader stops taking frames; once the
    client reads again, every call is answered and the session serves on."""
    made = Harness(max_calls=100, max_message_bytes=4096)
    budget = REPLY_QUEUE_MESSAGES * made.session._batching.max_bytes
    statuses = 40 * 1100  # a status is at most 1024 characters, its reply a little more

    def queued_bytes() -> int:
        return sum(size for _, size in made.session._replies)

    try:
        await made.next()  # registered; from here on the client reads nothing
        made.frames.send(*(call(index, f"o{index}", "big") for index in range(1, 41)))
        # Every call started has answered (more than one slice of them: over the budget).
        await _eventually(
            lambda: (
                len(made.router.started) > READ_PACE
                and made.session.in_flight == len(made.router.started)
            )
        )
        assert queued_bytes() <= budget + statuses
        replies = await made.replies(40)
        codes = [code_of(reply) for reply in replies.values()]
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        for reply in replies.values():
            if code_of(reply) != grpc.StatusCode.OK:
                assert "does not read" in reply.error.message, reply.error.message
        made.frames.send(call(41, "after", "big"))
        assert code_of((await made.replies(1))[41]) == grpc.StatusCode.OK
    finally:
        await made.stream.aclose()


async def _eventually(predicate: Any) -> None:
    await eventually(predicate, WAIT)


async def test_session_calls_are_recorded_as_the_unary_calls_of_their_rpc() -> None:
    """Each call is recorded in the call histogram with the labels of the unary RPC it stands
    for: rpc CallObject, its object type and method, its status code."""
    names = KnownNames({"T": ["echo", "missing"]})
    metrics = CallMetricsInterceptor(CallDurations("t.d", "t"), [], names=names)
    made = Harness(metrics=metrics)
    try:
        await made.next()
        made.frames.send(call(1, "a"), call(2, "b", "missing"))
        await made.replies(2)
        await _eventually(lambda: made.session.in_flight == 0)
    finally:
        await made.stream.aclose()
    counts = {
        (rpc, object_type, method, code): count
        for (code, method, object_type, rpc), count in metrics.durations.counts().items()
    }
    assert counts == {
        ("CallObject", "T", "echo", "OK"): 1,
        ("CallObject", "T", "missing", "NOT_FOUND"): 1,
    }
