"""Session streams on a real gate and node: calls in frames, by id, bounded, cancelled, drained."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse import wire
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import gate_pb2
from tests.helpers.gate_client import GateClient
from tests.helpers.objects import WITNESS_DIR
from tests.helpers.processes import ProcessGroup, ServiceProcess, process_group, serving
from tests.helpers.session_client import WAIT, SessionClient, object_call, status_of
from tests.helpers.telemetry import sample, scrape
from tests.helpers.waiting import eventually, wait_until
from tests.helpers.witness import read_records

MAX_SESSION_CALLS = 8


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A node and a gate with --max-session-calls=8, shared by the tests that do not stop it."""
    with process_group(tmp_path_factory.mktemp("session")) as group:
        yield start_gate(group)


def start_gate(group: ProcessGroup) -> ServiceProcess:
    return start_gate_on(group, group.node())


def start_gate_on(group: ProcessGroup, node: ServiceProcess) -> ServiceProcess:
    gate = group.gate("session", [node.address], extra=[f"--max-session-calls={MAX_SESSION_CALLS}"])
    wait_until(lambda: serving(gate.address, wire.GATE_SERVICE), WAIT, what="the gate ready")
    return gate


@pytest.fixture
async def session(gate: ServiceProcess) -> AsyncIterator[SessionClient]:
    client = await SessionClient(gate.address).connect()
    try:
        yield client
    finally:
        await client.close()


async def test_calls_in_one_frame_are_answered_by_id_as_the_session_client(
    session: SessionClient,
) -> None:
    """Eight Counter increments (by 1 … 8) in one frame: each reply, found by its id, holds
    its own counter's value; WhoAmI answers the session's client id."""
    await session.send(
        *(
            object_call(n, "Counter", f"frame-{n}", "Increment", IncrementRequest(by=n))
            for n in range(1, MAX_SESSION_CALLS)
        ),
        object_call(100, "Pusher", "who", "WhoAmI", Empty()),
    )
    for n in range(1, MAX_SESSION_CALLS):
        reply = await session.reply(n)
        assert wire.unpack(reply.call.response, CounterValue).value == n
    who = await session.reply(100)
    assert wire.unpack(who.call.response, StringValue).value == session.client_id


async def test_a_slow_method_does_not_delay_the_replies_of_other_objects(
    session: SessionClient,
) -> None:
    """A 3 s Sleep and five Counter calls in one frame: the five replies all arrive before
    the Sleep's."""
    await session.send(
        object_call(1, "Sleeper", "slow-hol", "Sleep", Int64Value(value=3000)),
        *(
            object_call(n, "Counter", f"hol-{n}", "Increment", IncrementRequest(by=1))
            for n in range(2, 7)
        ),
    )
    await session.reply(1, timeout=WAIT + 3)
    assert session.arrival[-1] == 1
    assert sorted(session.arrival) == [1, 2, 3, 4, 5, 6]


async def test_a_cancelled_call_frees_its_object_on_the_node(session: SessionClient) -> None:
    """A 60 s Sleep cancelled by id: no reply comes for it, and the next call to the same
    (turn-based) Sleeper answers at once rather than after the 60 s."""
    await session.send(object_call(1, "Sleeper", "cancelled", "Sleep", Int64Value(value=60_000)))
    await asyncio.sleep(0.5)  # let it reach the node: cancelling a call still in the gate is easy
    await session.send(cancelled=(1,))
    started = time.monotonic()
    await session.send(object_call(2, "Sleeper", "cancelled", "Sleep", Int64Value(value=0)))
    reply = await session.reply(2, timeout=WAIT)
    assert status_of(reply) == grpc.StatusCode.OK
    assert time.monotonic() - started < WAIT
    assert 1 not in session.replies


async def test_calls_beyond_the_bound_answer_resource_exhausted_at_once(
    session: SessionClient,
) -> None:
    """Eight 2 s Sleeps fill the session's bound: a ninth call answers RESOURCE_EXHAUSTED
    before any of them ends."""
    await session.send(
        *(
            object_call(n, "Sleeper", f"bound-{n}", "Sleep", Int64Value(value=2000))
            for n in range(1, MAX_SESSION_CALLS + 1)
        ),
        object_call(99, "Counter", "bound-over", "Increment", IncrementRequest(by=1)),
    )
    reply = await session.reply(99)
    assert status_of(reply) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert session.arrival[0] == 99
    for n in range(1, MAX_SESSION_CALLS + 1):
        assert status_of(await session.reply(n, timeout=WAIT + 2)) == grpc.StatusCode.OK


async def test_garbage_calls_answer_exactly_what_the_unary_call_answers(
    gate: ServiceProcess, session: SessionClient
) -> None:
    """An unknown type, an empty object id, an unknown method and a call without an op each
    answer their own status in a frame whose good call is served; the first three answer
    the code and message the same unary call answers."""
    bad = [
        gate_pb2.CallObjectRequest(object_type="NoSuchType", object_id="x", method="Get"),
        gate_pb2.CallObjectRequest(object_type="Counter", object_id="", method="Get"),
        gate_pb2.CallObjectRequest(object_type="Counter", object_id="x", method="Nope"),
    ]
    await session.send(
        *(gate_pb2.SessionCall(id=n, call=request) for n, request in enumerate(bad, 1)),
        gate_pb2.SessionCall(id=4),
        object_call(5, "Counter", "garbage-ok", "Increment", IncrementRequest(by=1)),
    )
    assert status_of(await session.reply(4)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(await session.reply(5)) == grpc.StatusCode.OK
    unary = await GateClient(gate.address).connect()
    try:
        for n, request in enumerate(bad, 1):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary.stub.CallObject(request, metadata=unary.metadata(), timeout=WAIT)
            reply = await session.reply(n)
            assert status_of(reply) == failed.value.code(), request
            assert reply.error.message == failed.value.details(), request
    finally:
        await unary.close()


async def test_a_drain_lets_the_calls_in_flight_answer_before_draining(
    processes: ProcessGroup,
) -> None:
    """SIGTERM with a 1.5 s Sleep in flight on a session: its reply arrives (OK), then
    Draining, and the stream ends with OK."""
    gate = start_gate(processes)
    client = await SessionClient(gate.address).connect()
    try:
        await client.send(object_call(1, "Sleeper", "drain", "Sleep", Int64Value(value=1500)))
        await asyncio.sleep(0.3)
        gate.signal(signal.SIGTERM)
        while await client.next_event(WAIT) is not None:
            pass
        assert status_of(client.replies[1]) == grpc.StatusCode.OK
        assert client.events[-1] == "draining"
        assert client.events.index("replies") < client.events.index("draining")
        assert await client.stream.code() == grpc.StatusCode.OK
    finally:
        await client.close()


DRAIN_PUSHES = 320
"""Pushes of DRAIN_PUSH_BYTES queued for a client that does not read: 20 MiB, over three times
what its connection's transport took (about 6 MiB), so that most of them wait on the gate."""
DRAIN_PUSH_BYTES = 64 * 1024


def _logged(process: ServiceProcess, event: str) -> bool:
    return any(line["event"] == event for line in process.log_lines())


async def test_a_client_that_half_closes_during_a_drain_still_gets_every_push_queued_for_it(
    processes: ProcessGroup,
) -> None:
    """A session whose client does not read has 320 pushes of 64 KiB queued for it; the gate
    gets SIGTERM and drains, then the client half-closes (it has nothing more to send) and
    reads: it gets every push, then Draining, and the stream ends with OK. The half-close
    used to close the client as gone, which discarded the pushes still queued on the gate."""
    node = processes.node()
    gate = processes.gate(
        "halfclose",
        [node.address],
        extra=[
            "--client-queue-bytes=64MiB",
            "--shutdown-timeout=60s",  # reading 20 MiB on a loaded machine fits, whatever
            "--metrics-port=0",
            "--log-level=debug",
        ],
    )
    await asyncio.to_thread(
        wait_until, lambda: serving(gate.address, wire.GATE_SERVICE), WAIT, what="gate ready"
    )
    client = await SessionClient(gate.address).connect()
    try:
        push = Int64Value(value=DRAIN_PUSH_BYTES)
        await client.send(
            *(
                object_call(n, "Blob", "halfclose", "PushToCaller", push)
                for n in range(1, DRAIN_PUSHES + 1)
            )
        )

        def queued() -> tuple[float, float]:
            samples = scrape(gate.metrics_port)
            return (
                sample(samples, "goverse_gate_pushes_delivered_total"),
                sample(samples, "goverse_gate_client_queue_depth"),
            )

        await asyncio.to_thread(
            wait_until, lambda: queued()[0] == DRAIN_PUSHES, WAIT, what="every push queued"
        )
        assert queued()[1] > 0, "every push left the gate: the test shows nothing"
        gate.signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_until, lambda: _logged(gate, "draining clients"), WAIT, what="the drain"
        )
        await client.stream.done_writing()
        # The gate's reader has taken the half-close (the writer cannot have run since).
        await asyncio.to_thread(
            wait_until,
            lambda: _logged(gate, "client ended its requests"),
            WAIT,
            what="the half-close taken",
        )
        pushed = 0
        while (event := await client.next_event(WAIT)) is not None:
            pushed += len(event.messages.messages)
        assert pushed == DRAIN_PUSHES
        assert client.events[-1] == "draining"
        assert await client.stream.code() == grpc.StatusCode.OK
        assert sorted(client.replies) == list(range(1, DRAIN_PUSHES + 1))
        assert all(status_of(reply) == grpc.StatusCode.OK for reply in client.replies.values())
    finally:
        await client.close()


GARBAGE = b"\xff\xff\xff\xff\xff"
"""Not a ``SessionRequest``: a truncated varint tag."""


async def read_to_the_end(call: Any) -> None:
    """Reads the responses of `call` until it ends (raising its status when not OK)."""
    async for _ in call:
        pass


async def test_a_garbage_frame_mid_session_ends_it_and_cancels_its_calls(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """A Session sends a 60 s call, then, once the call runs on its node, bytes that do not
    decode as ``SessionRequest``: the stream ends with INVALID_ARGUMENT, and the call still
    running is cancelled down to its object, which takes calls again at once."""
    witness = tmp_path / "witness"
    witness.mkdir()
    node = processes.node(env={WITNESS_DIR: str(witness)})
    gate = start_gate_on(processes, node)
    held = gate_pb2.SessionRequest(
        calls=[object_call(1, "Witness", "garbled", "Hold", Int64Value(value=60_000))]
    )
    async with grpc.aio.insecure_channel(gate.address) as channel:
        raw = channel.stream_stream("/goverse.v1.GateService/Session")()
        try:
            await raw.write(held.SerializeToString())
            await eventually(
                lambda: any(r.event == "call" for r in read_records(witness)),
                WAIT,
                "the call to reach the object",
            )
            await raw.write(GARBAGE)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(read_to_the_end(raw), WAIT)
            assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.value
        finally:
            raw.cancel()
    client = await SessionClient(gate.address).connect()
    try:
        # Answered only once the held call has let go of the object's turn.
        await client.send(object_call(1, "Witness", "garbled", "Touch", Empty()))
        assert status_of(await client.reply(1)) == grpc.StatusCode.OK
    finally:
        await client.close()
