"""A real node process serving calls over a raw Calls stream: batching, ids, deadlines,
cancellation, bounds, malformed frames, the stream's end and the node's stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from goverse import wire
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.node._call_context import MAX_CHAIN_DEPTH
from goverse.placement import Placement
from goverse.server import READ_PACE
from goverse.v1 import node_pb2
from goverse.wire import unpack
from tests.helpers.call_stream import RawCallStream, call_frame, code_of
from tests.helpers.faults import rss_bytes
from tests.helpers.objects import WITNESS_DIR
from tests.helpers.processes import ProcessGroup, ServiceProcess
from tests.helpers.telemetry import sample, scrape
from tests.helpers.waiting import eventually, wait_until
from tests.helpers.witness import read_records


async def lone_node(processes: ProcessGroup, *extra: str) -> ServiceProcess:
    return await asyncio.to_thread(processes.node, extra=extra)


async def patient_count(stream: RawCallStream, object_id: str, method: str) -> int:
    reply = await stream.call("Patient", object_id, method, Empty())
    assert code_of(reply) is grpc.StatusCode.OK, reply
    return unpack(reply.call.response, Int64Value).value


async def until(expected: int, probe: Callable[[], Awaitable[int]], timeout: float = 10.0) -> None:
    """Calls `probe` until it returns `expected`, within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while await probe() != expected:  # noqa: ASYNC110 - polls the node: no event to wait on
            await asyncio.sleep(0.05)


async def test_many_calls_in_one_message_are_answered_each_by_its_id(
    processes: ProcessGroup,
) -> None:
    """Fifty calls to fifty counters in one CallFrames message: every reply carries the id
    of its call and that call's result, and they come back in fewer messages than calls."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        frames = [
            call_frame(n, "Counter", f"batch-{n}", "Increment", IncrementRequest(by=n))
            for n in range(1, 51)
        ]
        await stream.send(*frames)
        for n in range(1, 51):
            reply = await stream.reply(n)
            assert unpack(reply.call.response, CounterValue).value == n
        assert stream.messages < 50


async def test_the_first_replies_of_a_big_message_go_out_before_its_last_calls_start(
    processes: ProcessGroup,
) -> None:
    """A message of 32 x READ_PACE quick calls to one active counter: the node starts them in
    slices and sends the replies of each slice on, so they come back in several messages
    rather than one convoy held until the message's last call has run.

    Replies go on only once the stream's previous write has completed, which grpc reports
    through its poller thread. With the 4 slices this test first sent (a millisecond or two of
    work), one CI run on 2026-12-03 got every reply in one message, most likely because that
    report came later than the slices had run (not reproduced under CPU hogs here, 0 of 32).
    32 slices give the previous write tens of milliseconds to be reported."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.call("Counter", "paced", "Increment", IncrementRequest(by=1))
        before = stream.messages
        count = 32 * READ_PACE
        await stream.send(
            *(
                call_frame(n, "Counter", "paced", "Increment", IncrementRequest(by=1))
                for n in range(1, count + 1)
            )
        )
        values = [
            unpack((await stream.reply(n)).call.response, CounterValue).value
            for n in range(1, count + 1)
        ]
        assert values == list(range(2, count + 2))  # in the order sent
        assert stream.messages - before >= 2


async def test_a_slow_method_does_not_delay_the_replies_of_others(
    processes: ProcessGroup,
) -> None:
    """A call that waits 3 s and a quick call sent after it in the same message: the quick
    one's reply comes first, long before the slow one's."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        slow = call_frame(1, "Patient", "slow", "Wait", Int64Value(value=3000))
        quick = call_frame(2, "Counter", "quick", "Increment", IncrementRequest(by=1))
        sent = time.monotonic()
        await stream.send(slow, quick)
        assert code_of(await stream.reply(2)) is grpc.StatusCode.OK
        assert 1 not in stream.replies
        assert stream.arrived[2] - sent < 2.5
        assert code_of(await stream.reply(1)) is grpc.StatusCode.OK
        assert stream.arrived[2] < stream.arrived[1]


async def test_a_call_whose_deadline_passes_is_not_run(processes: ProcessGroup) -> None:
    """A call waiting for the turn of an object busy with a 2 s call, with 200 ms to live,
    answers DEADLINE_EXCEEDED before the busy call ends, and its method never runs."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        busy = call_frame(1, "Patient", "p", "Wait", Int64Value(value=2000))
        late = call_frame(2, "Patient", "p", "Wait", Int64Value(value=0), timeout_ms=200)
        await stream.send(busy, late)
        reply = await stream.reply(2)
        assert code_of(reply) is grpc.StatusCode.DEADLINE_EXCEEDED
        assert reply.error.message == "Deadline Exceeded"
        assert 1 not in stream.replies
        assert code_of(await stream.reply(1)) is grpc.StatusCode.OK
        assert await patient_count(stream, "p", "Started") == 1


async def test_a_cancelled_call_is_stopped_on_the_node(processes: ProcessGroup) -> None:
    """A call cancelled by id is cancelled in the object's method (which sees
    CancelledError), gets no reply, and frees the object's turn at once."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "c", "Wait", Int64Value(value=60_000)))
        await asyncio.sleep(0.2)  # let it start; a cancel for an unknown id is ignored anyway
        await stream.send(cancelled=(1,))
        await until(1, lambda: patient_count(stream, "c", "Cancelled"))
        assert 1 not in stream.replies


async def test_calls_past_the_bound_answer_resource_exhausted_at_once(
    processes: ProcessGroup,
) -> None:
    """With --max-stream-calls 2 and two long calls in flight, a third call answers
    RESOURCE_EXHAUSTED at once; once they are answered, calls are served again."""
    node = await lone_node(processes, "--max-stream-calls=2")
    async with RawCallStream(node.address) as stream:
        waits = [
            call_frame(n, "Patient", f"bound-{n}", "Wait", Int64Value(value=2000)) for n in (1, 2)
        ]
        over = call_frame(3, "Counter", "bound", "Increment", IncrementRequest(by=1))
        await stream.send(*waits, over)
        reply = await stream.reply(3)
        assert code_of(reply) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-stream-calls" in reply.error.message
        assert 1 not in stream.replies
        assert 2 not in stream.replies
        for n in (1, 2):
            assert code_of(await stream.reply(n)) is grpc.StatusCode.OK
        reply = await stream.call("Counter", "bound", "Increment", IncrementRequest(by=1))
        assert unpack(reply.call.response, CounterValue).value == 1


async def test_malformed_calls_get_the_status_a_unary_call_would(
    processes: ProcessGroup,
) -> None:
    """No op, id 0, an id already in flight, an unknown type or method, a wrong payload and a
    bad id each answer their own status; the stream and the node keep serving."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        cases = {
            10: (node_pb2.CallFrame(id=10), grpc.StatusCode.INVALID_ARGUMENT),
            11: (
                call_frame(11, "Nope", "x", "Get", Empty()),
                grpc.StatusCode.NOT_FOUND,
            ),
            12: (
                call_frame(12, "Counter", "x", "Nope", Empty()),
                grpc.StatusCode.UNIMPLEMENTED,
            ),
            13: (
                call_frame(13, "Counter", "x", "Increment", Int64Value(value=1)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            14: (
                call_frame(14, "Counter", "", "Get", Empty()),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        }
        await stream.send(*(frame for frame, _ in cases.values()))
        for call_id, (_, code) in cases.items():
            assert code_of(await stream.reply(call_id)) is code, call_id

        await stream.send(call_frame(20, "Patient", "dup", "Wait", Int64Value(value=1000)))
        await stream.send(call_frame(20, "Patient", "dup2", "Wait", Int64Value(value=0)))
        duplicate = await stream.reply(20)
        assert code_of(duplicate) is grpc.StatusCode.INVALID_ARGUMENT
        stream.replies.pop(20)
        assert code_of(await stream.reply(20)) is grpc.StatusCode.OK  # the first one

        zero = node_pb2.CallFrame(
            id=0, create=node_pb2.NodeCreateObjectRequest(object_type="Counter", object_id="z")
        )
        await stream.send(zero)
        assert code_of(await stream.reply(0)) is grpc.StatusCode.INVALID_ARGUMENT
        reply = await stream.call("Counter", "after", "Increment", IncrementRequest(by=2))
        assert unpack(reply.call.response, CounterValue).value == 2
    assert node.alive()


async def test_a_refused_call_carries_its_shard_refusal(processes: ProcessGroup) -> None:
    """A call for an object the node does not own answers FAILED_PRECONDITION with
    shard_refusal "not-owner", as the unary call's goverse-shard trailer says."""
    nodes = processes.node_addresses(2)
    node = await asyncio.to_thread(processes.node, nodes[0], nodes)
    foreign = next(
        f"f-{n}" for n in range(1000) if Placement(nodes).node_for("Counter", f"f-{n}") != nodes[0]
    )
    async with RawCallStream(node.address) as stream:
        reply = await stream.call("Counter", foreign, "Increment", IncrementRequest(by=1))
        assert code_of(reply) is grpc.StatusCode.FAILED_PRECONDITION
        assert reply.error.shard_refusal == "not-owner"


async def test_the_end_of_the_stream_cancels_its_calls(processes: ProcessGroup) -> None:
    """A stream the gate cancels (it went away) cancels the calls still running on it."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "gone", "Wait", Int64Value(value=60_000)))
        await asyncio.sleep(0.2)
        await stream.cancel()
    async with RawCallStream(node.address) as other:
        await until(1, lambda: patient_count(other, "gone", "Cancelled"))


async def test_a_half_closed_stream_ends_once_its_calls_are_answered(
    processes: ProcessGroup,
) -> None:
    """The gate half-closes with a call in flight: the call is answered, then the stream ends
    with OK."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "h", "Wait", Int64Value(value=500)))
        await stream.half_close()
        assert code_of(await stream.reply(1)) is grpc.StatusCode.OK
        assert stream.ended is not None
        assert await asyncio.wait_for(stream.ended, 10) is grpc.StatusCode.OK


async def test_a_stopping_node_lets_stream_calls_in_flight_finish(
    processes: ProcessGroup,
) -> None:
    """SIGTERM while a 1.5 s call runs on a stream: the call is answered OK and the node
    exits 0 within its shutdown budget."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "s", "Wait", Int64Value(value=1500)))
        await asyncio.sleep(0.3)
        exited = asyncio.create_task(asyncio.to_thread(node.terminate, 15.0))
        reply = await stream.reply(1)
        assert code_of(reply) is grpc.StatusCode.OK, reply
        assert await exited == 0


async def test_a_half_closed_stream_whose_last_call_was_cancelled_ends(
    processes: ProcessGroup,
) -> None:
    """A call cancelled just before the gate half-closes: no reply, and the stream ends with
    OK as soon as the cancelled call is gone."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "hc", "Wait", Int64Value(value=60_000)))
        await stream.send(cancelled=(1,))
        await stream.half_close()
        assert stream.ended is not None
        assert await asyncio.wait_for(stream.ended, 10) is grpc.StatusCode.OK
        assert 1 not in stream.replies


async def test_a_stopping_node_answers_what_it_could_not_finish_and_ends_the_stream_ok(
    processes: ProcessGroup,
) -> None:
    """SIGTERM while a 60 s call runs on a stream: once the shutdown budget (5 s) has let it
    run as long as it may, the call is answered UNAVAILABLE ("node … is stopping") and the
    stream ends with OK, so that a gate knows every call it left unanswered never ran."""
    node = await lone_node(processes)
    async with RawCallStream(node.address) as stream:
        await stream.send(call_frame(1, "Patient", "long", "Wait", Int64Value(value=60_000)))
        await asyncio.sleep(0.3)
        exited = asyncio.create_task(asyncio.to_thread(node.terminate, 15.0))
        reply = await stream.reply(1)
        assert code_of(reply) is grpc.StatusCode.UNAVAILABLE
        assert reply.error.message == f"node {node.address} is stopping"
        assert stream.ended is not None
        assert await asyncio.wait_for(stream.ended, 10) is grpc.StatusCode.OK
        assert await exited == 0


async def test_a_frames_call_chain_is_the_chain_its_call_runs_in(
    processes: ProcessGroup,
) -> None:
    """A node's frame carries the objects already serving its call chain: the called object's
    call to one of them is refused (it would wait for its own turn), a call to another runs,
    and a chain longer than any node sends is refused before anything runs."""
    node = await lone_node(processes)

    def relay(call_id: int, counter: str, *chain: tuple[str, str]) -> node_pb2.CallFrame:
        frame = call_frame(call_id, "Relay", "r", "IncrementCounter", StringValue(value=counter))
        frame.chain.extend(node_pb2.ObjectRef(object_type=t, object_id=i) for t, i in chain)
        return frame

    async with RawCallStream(node.address) as stream:
        too_long = [("Relay", f"r{n}") for n in range(MAX_CHAIN_DEPTH + 1)]
        await stream.send(
            relay(1, "c", ("Room", "x"), ("Counter", "c")),
            relay(2, "c", ("Room", "x"), ("Counter", "other")),
            relay(3, "c", *too_long),
        )
        refused = await stream.reply(1)
        assert code_of(refused) is grpc.StatusCode.FAILED_PRECONDITION, refused
        assert "Room/x -> Counter/c -> Relay/r" in refused.error.message
        served = await stream.reply(2)
        assert unpack(served.call.response, CounterValue).value == 1
        assert code_of(await stream.reply(3)) is grpc.StatusCode.INVALID_ARGUMENT
        reply = await stream.call("Counter", "c", "Get", GetRequest())
        assert unpack(reply.call.response, CounterValue).value == 1  # only call 2 counted


BIG_CALLS = 160
"""Calls of BIG_REPLY bytes each sent on a stream that reads nothing: 160 MiB of replies."""
BIG_REPLY = 1024 * 1024


async def test_a_gate_that_stops_reading_cannot_make_the_node_hold_its_replies_past_the_bound(
    processes: ProcessGroup,
) -> None:
    """A Calls stream that reads nothing sends 160 calls answering 1 MiB each: the node holds
    at most REPLY_QUEUE_MESSAGES messages' worth of them (32 MiB) and answers the others
    RESOURCE_EXHAUSTED, so its memory grows by far less than the 160 MiB the replies take (by
    the count bound alone it held them all); once the stream reads, every call is answered,
    some with their result."""
    node = await lone_node(processes, "--metrics-port=0")

    def handled() -> float:
        samples = scrape(node.metrics_port)
        return sample(samples, "goverse_node_call_duration_seconds_count", method="Make")

    async with RawCallStream(node.address, reading=False) as stream:
        await stream.send(call_frame(1, "Blob", "warm", "Make", Int64Value(value=1)))
        await asyncio.to_thread(wait_until, lambda: handled() == 1, 15.0, what="the first call")
        before = rss_bytes(node.pid)
        await stream.send(
            *(
                call_frame(n, "Blob", "big", "Make", Int64Value(value=BIG_REPLY))
                for n in range(2, BIG_CALLS + 2)
            )
        )
        # Every call runs: the statuses of the results dropped (a few hundred bytes each)
        # cannot fill the last MiB below the bound, so none is refused before it runs.
        await asyncio.to_thread(
            wait_until, lambda: handled() == BIG_CALLS + 1, 60.0, what="every call handled"
        )
        grown = rss_bytes(node.pid) - before
        print(f"node RSS grew by {grown / 2**20:.1f} MiB for {BIG_CALLS} MiB of replies")
        assert grown < 96 * 2**20
        stream.start_reading()
        replies = [await stream.reply(n, 60.0) for n in range(1, BIG_CALLS + 2)]
        codes = {code_of(reply) for reply in replies}
        assert codes == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        fitted = [reply for reply in replies[1:] if code_of(reply) is grpc.StatusCode.OK]
        assert all(len(unpack(r.call.response, BytesValue).value) == BIG_REPLY for r in fitted)


GARBAGE = b"\xff\xff\xff\xff\xff"
"""Not a ``CallFrames`` message: a truncated varint tag."""


async def read_to_the_end(call: Any) -> None:
    """Reads the responses of `call` until it ends (raising its status when not OK)."""
    async for _ in call:
        pass


async def test_a_garbage_frame_mid_stream_ends_the_stream_and_cancels_its_calls(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """A Calls stream sends a 60 s call, then, once the call runs, bytes that do not decode
    as ``CallFrames``: the stream ends with INVALID_ARGUMENT and the call still running on it
    is cancelled, so its object takes calls again at once, as for a gate that goes away.
    Before, only the stream's reader stopped: the call ran on, holding its object's turn,
    until its deadline."""
    witness = tmp_path / "witness"
    witness.mkdir()
    node = await asyncio.to_thread(processes.node, env={WITNESS_DIR: str(witness)})
    held = node_pb2.CallFrames(
        calls=[call_frame(1, "Witness", "garbled", "Hold", Int64Value(value=60_000))]
    )
    async with grpc.aio.insecure_channel(node.address) as channel:
        raw = channel.stream_stream("/goverse.v1.NodeService/Calls")(
            metadata=((wire.GATE_ID_KEY, "garbage-gate"),)
        )
        try:
            await raw.write(held.SerializeToString())
            await eventually(
                lambda: any(r.event == "call" for r in read_records(witness)),
                10.0,
                "the call to reach the object",
            )
            await raw.write(GARBAGE)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(read_to_the_end(raw), 10)
            assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.value
        finally:
            raw.cancel()
    async with RawCallStream(node.address) as probe:
        # Answered only once the held call has let go of the object's turn.
        reply = await probe.call("Witness", "garbled", "Touch", Empty())
        assert code_of(reply) is grpc.StatusCode.OK, reply
