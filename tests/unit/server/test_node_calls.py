"""NodeCalls against a FakeNode: batching, ids, failures, deadlines, cancellation, bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from goverse import wire
from goverse.errors import CallError
from goverse.server import CALL_QUEUE_MESSAGES, NotSent, Supervisor
from goverse.server._node_calls import TASK_PREFIX, NodeCalls
from goverse.transport import ChannelPool, channel_options
from goverse.v1 import node_pb2
from tests.helpers.fake_node import FakeNode, text, unpack_text
from tests.helpers.waiting import eventually


def frame(value: str) -> node_pb2.CallFrame:
    return node_pb2.CallFrame(
        call=node_pb2.NodeCallObjectRequest(
            object_type="Counter", object_id="c", method="Get", request=text(value)
        )
    )


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    owner = Supervisor("gate")
    yield owner
    assert await owner.shutdown(5.0) == []


@pytest.fixture
async def pool() -> AsyncIterator[ChannelPool]:
    channels = ChannelPool(channel_options())
    yield channels
    await channels.close()


def node_calls(pool: ChannelPool, supervisor: Supervisor, max_calls: int = 100) -> NodeCalls:
    return NodeCalls(
        "gate gate-1",
        ((wire.GATE_ID_KEY, "gate-1"),),
        pool,
        supervisor,
        max_calls=max_calls,
        max_message_bytes=4 * 1024 * 1024,
    )


async def test_concurrent_calls_share_stream_messages_and_get_their_own_replies(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """Fifty calls made together travel in fewer stream messages than calls, on one stream
    (one supervisor task), and each gets the reply to its own request."""
    calls = node_calls(pool, supervisor)
    replies = await asyncio.gather(
        *(calls.call(fake_node.address, frame(f"v{n}"), 10) for n in range(50))
    )
    assert [unpack_text(reply.call.response) for reply in replies] == [f"v{n}" for n in range(50)]
    assert fake_node.call_messages < 50
    assert supervisor.task_names() == [TASK_PREFIX + fake_node.address]
    assert calls.in_flight == 0
    assert {call.metadata["goverse-gate-id"] for call in fake_node.calls} == {"gate-1"}
    assert all(0 < (call.deadline or 0) <= 10 for call in fake_node.calls)


async def test_a_broken_stream_fails_every_call_on_it_at_once(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """Three calls in flight (the node answers in 30 s) fail with UNAVAILABLE as soon as the
    node goes away, long before their 20 s deadline; the next call opens a new stream."""
    fake_node.call_delay = 30
    calls = node_calls(pool, supervisor)
    pending = [
        asyncio.ensure_future(calls.call(fake_node.address, frame("x"), 20)) for _ in range(3)
    ]
    await eventually(lambda: len(fake_node.calls) == 3, 5, "the calls to reach the node")
    stopped = time.monotonic()
    await fake_node.stop(0)
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
    assert time.monotonic() - stopped < 5
    for result in results:
        assert isinstance(result, CallError), result
        assert result.status_code == grpc.StatusCode.UNAVAILABLE
    assert calls.in_flight == 0

    fake_node.call_delay = 0
    await fake_node.start()
    reply = await calls.call(fake_node.address, frame("again"), 10)
    assert unpack_text(reply.call.response) == "again"


async def test_a_call_past_its_timeout_fails_and_is_cancelled_on_the_node(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """No reply within 0.3 s: DEADLINE_EXCEEDED, and the node is sent the call's id to
    cancel."""
    fake_node.call_delay = 30
    calls = node_calls(pool, supervisor)
    with pytest.raises(CallError) as raised:
        await calls.call(fake_node.address, frame("slow"), 0.3)
    assert raised.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: fake_node.cancelled_ids == [1], 5, "the cancellation")


async def test_a_caller_that_gives_up_cancels_its_call_on_the_node(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """Cancelling the caller's task sends the call's cancellation to the node."""
    fake_node.call_delay = 30
    calls = node_calls(pool, supervisor)
    task = asyncio.ensure_future(calls.call(fake_node.address, frame("gave-up"), 20))
    await eventually(lambda: len(fake_node.calls) == 1, 5, "the call to reach the node")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: fake_node.cancelled_ids == [1], 5, "the cancellation")
    assert calls.in_flight == 0


async def test_calls_past_the_bound_fail_with_resource_exhausted(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """With two calls in flight to a node and a bound of two, a third fails at once."""
    fake_node.call_delay = 1
    calls = node_calls(pool, supervisor, max_calls=2)
    first = [asyncio.ensure_future(calls.call(fake_node.address, frame("a"), 10)) for _ in "ab"]
    await asyncio.sleep(0)
    with pytest.raises(CallError) as raised:
        await calls.call(fake_node.address, frame("c"), 10)
    assert raised.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-stream-calls" in raised.value.message
    await asyncio.wait_for(asyncio.gather(*first), 10)


async def test_a_refusal_comes_back_as_a_call_error_with_its_refusal(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """A node's shard refusal is a CallError carrying the refusal, for routing to retry."""
    fake_node.refuse = wire.ShardRefusal.MOVING
    calls = node_calls(pool, supervisor)
    with pytest.raises(CallError) as raised:
        await calls.call(fake_node.address, frame("r"), 10)
    assert raised.value.status_code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.refusal is wire.ShardRefusal.MOVING


async def test_a_stopping_gate_takes_no_new_stream(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """Once the supervisor shuts down, a call to a node with no stream is not sent."""
    calls = node_calls(pool, supervisor)
    await supervisor.shutdown(1.0)
    with pytest.raises(NotSent):
        await calls.call(fake_node.address, frame("late"), 10)


HIDDEN_STATUS_ATTEMPTS = 20
"""Streams tried at most before one shows the node's UNIMPLEMENTED (each hides it rarely)."""


async def test_a_node_without_call_streams_gets_its_calls_unary(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """A node of an older version answers Calls UNIMPLEMENTED: the call on that stream did
    not run (NotSent, routing sends it again), and the next calls go as unary RPCs with the
    gate's id (and what else the caller gives for a unary call: a node's call chain), each op
    as its own RPC, with the node's errors kept."""
    fake_node.streams = False
    calls = node_calls(pool, supervisor)
    with pytest.raises(NotSent):
        await calls.call(fake_node.address, frame("first"), 10)
    chain = ((wire.CALL_CHAIN_KEY, b'[["Relay", "r"]]'),)
    # grpc may hide the node's UNIMPLEMENTED behind INTERNAL when the gate's write of the
    # call raced the node's answer (grpc/grpc#36066): that call is NotSent too, nothing ran,
    # and the next one tries the stream again, as routing does.
    for _ in range(HIDDEN_STATUS_ATTEMPTS):
        try:
            reply = await calls.call(fake_node.address, frame("again"), 10, lambda: chain)
            break
        except NotSent:
            assert not fake_node.calls
    else:
        raise AssertionError(f"no call went unary in {HIDDEN_STATUS_ATTEMPTS} attempts")
    assert unpack_text(reply.call.response) == "again"
    assert fake_node.calls[0].metadata[wire.CALL_CHAIN_KEY] == b'[["Relay", "r"]]'
    create = node_pb2.CallFrame(
        create=node_pb2.NodeCreateObjectRequest(object_type="Counter", object_id="c")
    )
    assert (await calls.call(fake_node.address, create, 10)).create.created
    assert [call.method for call in fake_node.calls] == ["CallObject", "CreateObject"]
    assert {call.metadata["goverse-gate-id"] for call in fake_node.calls} == {"gate-1"}
    fake_node.refuse = wire.ShardRefusal.MOVING
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # routing reads its trailer
        await calls.call(fake_node.address, frame("refused"), 10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert calls.in_flight == 0


FROZEN_MESSAGE_BYTES = 64 * 1024
"""The message limit of the frozen node's test: its calls take most of one message each."""
FROZEN_CALLS = 2000
"""Calls made at most to a node that reads nothing (125 MiB of frames): far more than flow
control lets the stream's writer write before it stalls."""


async def test_calls_waiting_for_a_node_that_does_not_read_are_bounded_in_bytes(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """A node that never reads its Calls stream (frozen), its stream open, and calls of
    60 KiB each made one after another: the calls waiting to be written take at most
    CALL_QUEUE_MESSAGES messages' worth of bytes, and the call that would take them over
    fails at once with RESOURCE_EXHAUSTED, not sent. By the count alone they could take
    --max-stream-calls times the message limit until their deadlines."""
    fake_node.reads = False
    calls = NodeCalls(
        "gate gate-1",
        ((wire.GATE_ID_KEY, "gate-1"),),
        pool,
        supervisor,
        max_calls=FROZEN_CALLS + 1,
        max_message_bytes=FROZEN_MESSAGE_BYTES,
    )
    budget = CALL_QUEUE_MESSAGES * calls._max_bytes
    payload = "x" * (60 * 1024)
    tasks: list[asyncio.Task[node_pb2.ReplyFrame]] = []
    refused: BaseException | None = None
    try:
        tasks.append(asyncio.ensure_future(calls.call(fake_node.address, frame(payload), 30)))

        def first_written() -> bool:
            stream = calls._streams.get(fake_node.address)
            return stream is not None and stream.pending[1].written

        await eventually(first_written, 5, "the first call handed to the open stream")
        while refused is None and len(tasks) < FROZEN_CALLS:
            task = asyncio.ensure_future(calls.call(fake_node.address, frame(payload), 30))
            tasks.append(task)
            await asyncio.sleep(0)  # its first step, and the writer's turn
            stream = calls._streams[fake_node.address]
            assert stream._outbox.nbytes <= budget
            if task.done():
                refused = task.exception()
        assert isinstance(refused, CallError), refused
        assert refused.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes of calls waiting" in refused.message, refused.message
        assert not fake_node.calls  # nothing was read, nothing ran
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)


async def test_a_stream_cancelled_before_it_ever_ran_fails_its_calls_and_is_forgotten(
    fake_node: FakeNode, pool: ChannelPool, supervisor: Supervisor
) -> None:
    """A call opens a node's stream and is queued on it; the service stops (its supervisor
    cancels the stream's task) before that task had its first turn, so its body, and the
    clean-up in its ``finally``, never run. The call fails at once with NotSent (it was never
    written), the stream is no longer NodeCalls', and a later call is not queued on it. The
    stream used to stay registered and open: its calls, and every later call to that node,
    waited until their deadlines."""
    calls = node_calls(pool, supervisor)
    call = asyncio.ensure_future(calls.call(fake_node.address, frame("early"), 20))
    # One turn: the call's task opens the stream (its task is scheduled after this one's
    # next step) and queues the call; this task then stops the supervisor first.
    await asyncio.sleep(0)
    stream = calls._streams[fake_node.address]
    assert not call.done()
    assert await supervisor.shutdown(5.0) == []
    done, _ = await asyncio.wait([call], timeout=5)
    assert done == {call}, "the call waits for a stream that never ran"
    assert isinstance(call.exception(), NotSent)
    assert stream.closed
    assert fake_node.address not in calls._streams
    assert calls.in_flight == 0
    with pytest.raises(NotSent):  # a new stream cannot open: the supervisor is closed
        await asyncio.wait_for(calls.call(fake_node.address, frame("late"), 20), 5)
    assert not fake_node.calls
