"""SDK calls over the Session stream: batching, matching by id, deadlines, cancellation, breaks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from goverse import wire
from goverse.client import CallError, Client
from goverse.client._calls import CallStream, NotSent
from goverse.v1 import calls_pb2, describe_pb2, gate_pb2
from tests.helpers.fake_gate import FakeGate
from tests.helpers.waiting import eventually

WAIT = 10.0


async def echo(call: gate_pb2.SessionCall) -> gate_pb2.CallReply:
    """Answers a call with its object id; ``hold`` methods never answer."""
    if call.call.method == "hold":
        await asyncio.Event().wait()
    return gate_pb2.CallReply(
        id=call.id,
        call=gate_pb2.CallObjectResponse(
            response=wire.pack(StringValue(value=call.call.object_id))
        ),
    )


@pytest.fixture
async def gates() -> AsyncIterator[list[FakeGate]]:
    started: list[FakeGate] = []
    yield started
    for gate in started:
        await gate.stop()


async def connected(gates: list[FakeGate], **options: Any) -> tuple[FakeGate, Client]:
    gate = await FakeGate(answer=echo, **options).start()
    gates.append(gate)
    client = Client([gate.address], connect_timeout=timedelta(seconds=WAIT))
    await client.connect()
    return gate, client


async def test_calls_made_together_travel_in_few_frames_and_each_gets_its_own_reply(
    gates: list[FakeGate],
) -> None:
    """Fifty calls started at once: each answers with its own object id (replies matched by
    call id), and they reach the gate in fewer frames than calls."""
    gate, client = await connected(gates)
    try:
        names = [f"o{index}" for index in range(50)]
        replies = await asyncio.gather(
            *(client.call("T", name, "m", StringValue(), StringValue) for name in names)
        )
        assert [reply.value for reply in replies] == names
        frames = [frame for frame in gate.frames if frame.calls]
        assert len(frames) < 50
        assert max(len(frame.calls) for frame in frames) > 1
        assert len({call.id for frame in frames for call in frame.calls}) == 50
    finally:
        await client.close()


async def test_a_timeout_travels_with_the_call_and_its_expiry_sends_a_cancellation(
    gates: list[FakeGate],
) -> None:
    """A call with a 300 ms timeout that never answers: the gate sees about 300 ms as
    timeout_ms, the caller gets DEADLINE_EXCEEDED, and the gate receives its id as
    cancelled."""
    gate, client = await connected(gates)
    try:
        with pytest.raises(CallError) as failed:
            await client.call("T", "x", "hold", StringValue(), StringValue, timeout=0.3)
        assert failed.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
        (sent,) = [call for frame in gate.frames for call in frame.calls]
        assert 0 < sent.timeout_ms <= 300
        await eventually(lambda: gate.cancelled == [sent.id], WAIT, "the cancellation")
    finally:
        await client.close()


async def test_a_cancelled_caller_sends_a_cancellation(gates: list[FakeGate]) -> None:
    """The task of a caller is cancelled mid-call: the gate receives its id as cancelled."""
    gate, client = await connected(gates)
    try:
        task = asyncio.get_running_loop().create_task(
            client.call("T", "x", "hold", StringValue(), StringValue)
        )
        await eventually(lambda: any(frame.calls for frame in gate.frames), WAIT, "the call")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (sent,) = [call for frame in gate.frames for call in frame.calls]
        await eventually(lambda: gate.cancelled == [sent.id], WAIT, "the cancellation")
    finally:
        await client.close()


async def test_a_broken_stream_fails_the_calls_in_flight_at_once_with_unavailable(
    gates: list[FakeGate],
) -> None:
    """The gate ends the stream while calls with a 30 s timeout wait: they fail with
    UNAVAILABLE at once, not at their deadline."""
    gate, client = await connected(gates)
    try:
        calls = [
            asyncio.get_running_loop().create_task(
                client.call("T", f"x{index}", "hold", StringValue(), StringValue, timeout=30)
            )
            for index in range(3)
        ]
        await eventually(
            lambda: sum(len(frame.calls) for frame in gate.frames) == 3, WAIT, "the calls"
        )
        started = time.monotonic()
        gate.pushes.put_nowait(None)  # ends the stream
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT)
        elapsed = time.monotonic() - started
        for result in results:
            assert isinstance(result, CallError)
            assert result.status_code == grpc.StatusCode.UNAVAILABLE
        assert elapsed < 5.0
    finally:
        await client.close()


async def test_an_error_reply_raises_its_status(gates: list[FakeGate]) -> None:
    """A reply carrying a CallStatus raises CallError with its code and message."""

    async def refuse(call: gate_pb2.SessionCall) -> gate_pb2.CallReply:
        return gate_pb2.CallReply(
            id=call.id,
            error=calls_pb2.CallStatus(code=grpc.StatusCode.NOT_FOUND.value[0], message="gone"),
        )

    gate = await FakeGate(answer=refuse).start()
    gates.append(gate)
    async with Client([gate.address], connect_timeout=timedelta(seconds=WAIT)) as client:
        with pytest.raises(CallError) as failed:
            await client.call("T", "x", "m", StringValue(), StringValue)
    assert failed.value.status_code == grpc.StatusCode.NOT_FOUND
    assert failed.value.message == "gone"


async def test_a_gate_without_session_is_used_with_register_and_unary_calls(
    gates: list[FakeGate],
) -> None:
    """A gate that answers Session with UNIMPLEMENTED (an older gate): the client registers
    with Register and its calls go as unary RPCs (which this fake answers UNIMPLEMENTED)."""
    gate = await FakeGate(session=False).start()
    gates.append(gate)
    async with Client([gate.address], connect_timeout=timedelta(seconds=WAIT)) as client:
        assert client.client_id == "fake/1"
        with pytest.raises(CallError) as failed:
            await client.call("T", "x", "m", StringValue(), StringValue)
    assert failed.value.status_code == grpc.StatusCode.UNIMPLEMENTED
    assert "takes no calls" in failed.value.message
    assert gate.frames == []


class Writes:
    """A stand-in for the stream: records frames, and can hold or fail the next write."""

    def __init__(self) -> None:
        self.frames: list[gate_pb2.SessionRequest] = []
        self.started = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, request: gate_pb2.SessionRequest) -> None:
        self.started += 1
        await self.gate.wait()
        self.frames.append(request)


async def test_a_failed_stream_fails_unwritten_calls_as_not_sent_and_written_ones_unavailable() -> (
    None
):
    """The writer is held inside the write of a first call; a second call waits in the
    outbox. When the stream fails, the call being written fails with the stream's error (the
    gate may have read it) and the unwritten one with NotSent (the caller may send it again);
    later calls are NotSent."""
    writes = Writes()
    writes.gate.clear()
    stream = CallStream(writes, 1 << 20)
    writer = asyncio.get_running_loop().create_task(stream.run_writer())
    try:
        request = gate_pb2.CallObjectRequest(object_type="T", object_id="a", method="m")

        def call() -> Coroutine[Any, Any, Any]:
            return stream.call(gate_pb2.SessionCall(call=request), 30, {})

        first = asyncio.get_running_loop().create_task(call())
        await eventually(lambda: writes.started == 1, WAIT, "the first write")
        second = asyncio.get_running_loop().create_task(call())
        await eventually(lambda: len(stream) == 2, WAIT, "the second call")
        stream.fail(CallError(grpc.StatusCode.UNAVAILABLE, "broken"))
        with pytest.raises(CallError) as written:
            await first
        assert written.value.status_code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(NotSent):
            await second
        with pytest.raises(NotSent):
            await call()
        assert len(stream) == 0
    finally:
        writes.gate.set()
        writer.cancel()
        await asyncio.wait({writer}, timeout=WAIT)


async def test_a_call_larger_than_the_gate_receives_fails_alone_with_resource_exhausted() -> None:
    """The gate receives 100 kB messages: a 200 kB call fails with RESOURCE_EXHAUSTED before
    it is written; nothing goes to the stream."""
    writes = Writes()
    stream = CallStream(writes, 4 << 20)
    stream.limit(100_000)
    request = gate_pb2.CallObjectRequest(
        object_type="T",
        object_id="a",
        method="m",
        request=wire.pack(StringValue(value="x" * 200_000)),
    )
    with pytest.raises(CallError) as failed:
        await stream.call(gate_pb2.SessionCall(call=request), 30, {})
    assert failed.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in failed.value.message
    assert len(stream) == 0
    assert writes.frames == []


async def test_a_call_the_draining_gate_did_not_forward_is_sent_on_the_next_registration(
    gates: list[FakeGate],
) -> None:
    """The first registration's gate refuses the call as not forwarded (it drains) and ends
    the stream: the client registers again and the call is answered there."""
    gate: FakeGate

    async def drain_first(call: gate_pb2.SessionCall) -> gate_pb2.CallReply:
        if gate.registrations == 1:
            gate.pushes.put_nowait(None)  # the stream ends after this reply
            return gate_pb2.CallReply(
                id=call.id,
                error=calls_pb2.CallStatus(
                    code=grpc.StatusCode.UNAVAILABLE.value[0], message="draining"
                ),
                not_forwarded=True,
            )
        return await echo(call)

    gate = await FakeGate(answer=drain_first).start()
    gates.append(gate)
    async with Client(
        [gate.address],
        connect_timeout=timedelta(seconds=WAIT),
        reconnect_initial=timedelta(milliseconds=10),
    ) as client:
        reply = await client.call("T", "resent", "m", StringValue(), StringValue, timeout=WAIT)
        assert reply.value == "resent"
        assert client.registrations == 2


async def test_calls_still_waiting_when_the_gate_drains_are_sent_on_the_next_registration(
    gates: list[FakeGate],
) -> None:
    """A gate answers every call it started before its draining notice: a call still waiting
    when the notice comes was never started, so the client sends it to its next registration,
    where it is answered."""
    gate: FakeGate

    async def hold_first(call: gate_pb2.SessionCall) -> gate_pb2.CallReply:
        if gate.registrations == 1:
            gate.pushes.put_nowait(None)  # Draining, then the end of the stream
            await asyncio.Event().wait()
        return await echo(call)

    gate = await FakeGate(answer=hold_first, drain_at_end=True).start()
    gates.append(gate)
    async with Client(
        [gate.address],
        connect_timeout=timedelta(seconds=WAIT),
        reconnect_initial=timedelta(milliseconds=10),
    ) as client:
        reply = await client.call("T", "drained", "m", StringValue(), StringValue, timeout=WAIT)
        assert reply.value == "drained"
        assert client.registrations == 2


async def test_an_infinite_timeout_is_the_longest_a_call_carries_and_nan_is_refused(
    gates: list[FakeGate],
) -> None:
    """timeout=inf is answered, carried as the longest timeout_ms (49 days); timeout=NaN is a
    ValueError. Neither leaves a call behind in the stream's table (an OverflowError and a
    ValueError from inside it did)."""
    gate, client = await connected(gates)
    try:
        reply = await client.call("T", "forever", "m", StringValue(), StringValue, timeout=math.inf)
        assert reply.value == "forever"
        (sent,) = [call for frame in gate.frames for call in frame.calls]
        assert sent.timeout_ms > 2**32 - 1 - 1000  # less the time it took to send
        with pytest.raises(ValueError, match="NaN"):
            await client.call("T", "never", "m", StringValue(), StringValue, timeout=math.nan)
        session = client._session
        assert session is not None
        assert session.calls is not None
        assert len(session.calls) == 0
    finally:
        await client.close()


@dataclass
class EndingGate(FakeGate):
    """Refuses the first registration's Describe as a stopping gate does (UNAUTHENTICATED: the
    registration is over) and ends that registration; answers Describe on later ones. Records
    the client id of every Describe."""

    described_as: list[str] = field(default_factory=list)

    async def Describe(
        self, request: describe_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> describe_pb2.DescribeResponse:
        metadata = dict(context.invocation_metadata() or ())
        self.described_as.append(str(metadata.get(wire.CLIENT_ID_KEY)))
        if self.registrations == 1:
            self.pushes.put_nowait(None)  # the stream ends
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "unknown client id or wrong credential"
            )
        return describe_pb2.DescribeResponse(
            types=[describe_pb2.ObjectTypeDescription(name="Counter")]
        )


async def test_a_describe_refused_as_its_registration_ended_is_asked_again_on_the_next(
    gates: list[FakeGate],
) -> None:
    """As a call refused UNAUTHENTICATED by a registration that had just ended: Describe is
    asked once more, as the next registration (``goverse watch`` exited 1 when its gate
    stopped as it started)."""
    gate = EndingGate(answer=echo)
    await gate.start()
    gates.append(gate)
    async with Client(
        [gate.address],
        connect_timeout=timedelta(seconds=WAIT),
        reconnect_initial=timedelta(milliseconds=10),
    ) as client:
        described = await client.describe(timeout=WAIT)
        assert [t.name for t in described.types] == ["Counter"]
        assert gate.described_as == ["fake/1", "fake/2"]
        assert client.client_id == "fake/2"
