"""Load on real processes: a slow client among readers, 2,000 clients, admission limits.

Each test prints what it measured (run with ``-s`` to see it); docs/resilience.md collects the
figures. Every wait is on a condition with a generous bound for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import gate_pb2, gate_pb2_grpc, node_pb2, node_pb2_grpc
from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.faults import rss_bytes
from tests.helpers.load_objects import stamp_of
from tests.helpers.processes import ProcessGroup
from tests.helpers.pushes import Inbox
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

MiB = 1024 * 1024
CLIENTS = 2000
EXIT_BOUND = 8.0
"""The shutdown budget is 5 s; a loaded 2-core machine gets 3 s of slack."""
ROUNDS = 3
ROUND_SECONDS = 1.5


@dataclass
class RawClient:
    """One Register stream on its own connection, read (or not) by the test, with the
    latency of every push it read (milliseconds, by the push's CLOCK_MONOTONIC stamp)."""

    address: str
    stalled: bool = False
    client_id: str = ""
    credential: str = ""
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    drained: bool = False
    error: grpc.aio.AioRpcError | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _channel: Any = None
    _stream: Any = None
    _reader: asyncio.Task[None] | None = None

    async def connect(self) -> RawClient:
        options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if self.stalled:  # little unread data is taken in: the gate's writes block soon
            options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
        self._channel = grpc.aio.insecure_channel(self.address, options=options)
        self._stream = gate_pb2_grpc.GateServiceStub(self._channel).Register(
            gate_pb2.RegisterRequest()
        )
        first = await bounded(self._stream.read(), 30)
        assert first.WhichOneof("event") == "registered", first
        self.client_id = first.registered.client_id
        self.credential = first.registered.credential
        return self

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (event := await self._stream.read()) is not grpc.aio.EOF:
                if event.WhichOneof("event") == "draining":
                    self.drained = True
                if event.WhichOneof("event") != "messages":
                    continue
                now = time.monotonic_ns()
                for message in event.messages.messages:
                    self.latencies.append((now - stamp_of(message.value)) / 1e6)
                self.received += len(event.messages.messages)
        except grpc.aio.AioRpcError as error:
            self.error = error
        finally:
            self.ended.set()

    async def close(self) -> None:
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        if self._channel is not None:
            await self._channel.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    await asyncio.gather(*(client.close() for client in opened))


async def ticker_run(
    cluster: Cluster,
    ids: list[str],
    rate: int,
    seconds: float,
    padding: int,
    ticker: str = "t",
) -> dict[str, float]:
    """Runs Ticker `ticker` on its node (called directly, as another object would): `rate`
    pushes a second to all of `ids`, for `seconds`; returns its counts."""
    request = Struct()
    request.update({"ids": ids, "rate": rate, "seconds": seconds, "padding": padding})
    node = cluster.placement.node_for("Ticker", ticker)
    async with grpc.aio.insecure_channel(node) as channel:
        call = node_pb2.NodeCallObjectRequest(object_type="Ticker", object_id=ticker, method="Run")
        call.request.Pack(request)
        reply = await node_pb2_grpc.NodeServiceStub(channel).CallObject(call, timeout=seconds + 30)
    result = Struct()
    assert reply.response.Unpack(result)
    return {key: value.number_value for key, value in result.fields.items()}


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50, p99


async def test_a_slow_client_does_not_slow_the_others_or_grow_the_gate(
    processes: ProcessGroup, raw_clients: list[RawClient]
) -> None:
    """1,000 pushes a second, each to 50 reading clients and one that never reads: the
    readers get every push with a latency close to rounds without the slow client, each slow
    client is disconnected as a slow consumer, and the gate's memory stays bounded while a
    stalled client is sent far more than its queue may hold."""
    cluster = start_cluster(processes)
    gate = cluster.gates[0]
    address = gate.address
    readers = [await RawClient(address).connect() for _ in range(50)]
    raw_clients.extend(readers)
    for reader in readers:
        reader.start_reading()
    ids = [reader.client_id for reader in readers]
    rate, padding = 1000, 200

    async def run(targets: list[str], run_seconds: float) -> list[float]:
        """One ticker run; waits until every reader has every push; their latencies."""
        marks = [len(reader.latencies) for reader in readers]
        await ticker_run(cluster, targets, rate, run_seconds, padding)
        expected = [mark + int(rate * run_seconds) for mark in marks]
        await eventually(
            lambda: all(len(r.latencies) >= n for r, n in zip(readers, expected, strict=True)),
            30,
            "every reader to receive every push",
        )
        assert [len(r.latencies) for r in readers] == expected
        return [ms for r, mark in zip(readers, marks, strict=True) for ms in r.latencies[mark:]]

    await run(ids, 1.0)  # warm up: connections, activation, allocator
    # Rounds alternate, so that a machine busy with other work slows both kinds alike: a
    # round without a slow client, then one with a new client that never reads.
    baseline: list[float] = []
    loaded: list[float] = []
    slow_clients: list[RawClient] = []
    for _ in range(ROUNDS):
        baseline += await run(ids, ROUND_SECONDS)
        slow = await RawClient(address, stalled=True).connect()
        raw_clients.append(slow)
        slow_clients.append(slow)
        loaded += await run([*ids, slow.client_id], ROUND_SECONDS)

    base50, base99 = percentiles(baseline)
    slow50, slow99 = percentiles(loaded)
    print(
        f"\nreaders' latency without a slow client: p50 {base50:.1f} ms, p99 {base99:.1f} ms"
        f" ({len(baseline)} pushes)\n"
        f"readers' latency with a slow client:    p50 {slow50:.1f} ms, p99 {slow99:.1f} ms"
        f" ({len(loaded)} pushes)"
    )
    assert slow50 <= 3 * base50 + 250
    assert slow99 <= 3 * base99 + 500
    for slow in slow_clients:
        slow.start_reading()
        await bounded(slow.ended.wait(), 30)
        assert slow.error is not None
        assert slow.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (slow.error.details() or "").startswith("slow consumer")
    print(f"slow clients read {[slow.received for slow in slow_clients]} pushes, then ended")

    # Memory: a stalled client is sent 64 KiB pushes, 200 a second for 3 s (38 MiB), far more
    # than its queue holds (4 MiB): it is disconnected and the gate does not keep the rest.
    rss_before = rss_bytes(gate.pid)
    stalled = await RawClient(address, stalled=True).connect()
    raw_clients.append(stalled)
    sent = await ticker_run(cluster, [stalled.client_id], 200, 3.0, 64 * 1024, ticker="big")
    rss_after = rss_bytes(gate.pid)
    print(
        f"gate RSS {rss_before / MiB:.1f} MiB -> {rss_after / MiB:.1f} MiB while "
        f"{sent['queued'] * 64 / 1024:.0f} MiB were pushed to a client that does not read"
    )
    assert sent["queued"] > 500
    assert rss_after - rss_before < 24 * MiB


async def test_2000_clients_register_get_a_push_each_and_the_gate_stops_in_budget(
    processes: ProcessGroup, raw_clients: list[RawClient]
) -> None:
    """2,000 client streams on one gate, each on its own connection: all register, a push
    addressed to every one of them reaches each, and SIGTERM drains them all (Draining, then
    the end of the stream) with the gate exiting 0 within its budget. Prints the gate's
    memory per idle client."""
    cluster = start_cluster(processes)
    gate = cluster.gates[0]
    rss_before = rss_bytes(gate.pid)
    started = time.monotonic()
    for _ in range(CLIENTS // 100):
        raw_clients.extend(
            await asyncio.gather(*(RawClient(gate.address).connect() for _ in range(100)))
        )
    registered = time.monotonic() - started
    rss_after = rss_bytes(gate.pid)
    for client in raw_clients:
        client.start_reading()
    ids = [client.client_id for client in raw_clients]
    assert len(set(ids)) == CLIENTS
    await ticker_run(cluster, ids, 1, 1.0, 0)  # one push, addressed to all of them
    await eventually(lambda: all(c.received == 1 for c in raw_clients), 60, "every push")
    p50, p99 = percentiles([ms for client in raw_clients for ms in client.latencies])

    signalled = time.monotonic()
    gate.signal(signal.SIGTERM)
    await eventually(lambda: all(c.ended.is_set() for c in raw_clients), 30, "every stream end")
    code = await asyncio.to_thread(gate.process.wait, 15)  # type: ignore[union-attr]
    exited = time.monotonic() - signalled
    per_client = (rss_after - rss_before) / CLIENTS
    print(
        f"\n{CLIENTS} clients registered in {registered:.2f}s; gate RSS "
        f"{rss_before / MiB:.1f} -> {rss_after / MiB:.1f} MiB, {per_client / 1024:.1f} KiB per "
        f"idle client; one push to all: p50 {p50:.0f} ms, p99 {p99:.0f} ms; SIGTERM to exit "
        f"{exited:.2f}s"
    )
    assert all(client.drained and client.error is None for client in raw_clients)
    assert code == 0
    assert exited < EXIT_BOUND
    assert per_client < 64 * 1024


async def test_beyond_the_client_limit_register_is_refused_and_the_others_are_served(
    processes: ProcessGroup, raw_clients: list[RawClient]
) -> None:
    """A gate at --max-clients refuses the next Register with RESOURCE_EXHAUSTED naming the
    limit; its clients still get pushes and calls, and an SDK client that knows another gate
    registers there instead."""
    cluster = start_cluster(processes, gates=2, gate_extra=("--max-clients=20",))
    full = cluster.gates[0].address
    raw_clients.extend([await RawClient(full).connect() for _ in range(20)])
    late = RawClient(full)
    raw_clients.append(late)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await late.connect()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "maximum of 20 clients" in (refused.value.details() or "")

    for client in raw_clients[:20]:
        client.start_reading()
    await ticker_run(cluster, [c.client_id for c in raw_clients[:20]], 1, 1.0, 0)
    await eventually(lambda: all(c.received == 1 for c in raw_clients[:20]), 30, "the pushes")

    seed = next(s for s in range(1000) if random.Random(s).choice(cluster.gate_addresses) == full)
    sdk = cluster.client(rng=random.Random(seed))
    await sdk.connect()
    try:
        assert sdk.gate == cluster.gate_addresses[1]
        value = await sdk.call(
            "Counter", "admitted", "Increment", IncrementRequest(by=1), CounterValue
        )
        assert value.value == 1
    finally:
        await sdk.close()


async def test_messages_over_the_size_limit_get_resource_exhausted_and_change_nothing_else(
    processes: ProcessGroup, clients: list[Client]
) -> None:
    """With the 4 MiB default everywhere: a request over it fails in the client, an answer over
    it fails at the node, both with RESOURCE_EXHAUSTED saying so; a push over it is dropped
    (push() returns 0). The same client keeps calling and receiving pushes."""
    cluster = start_cluster(processes)
    client = cluster.client()
    clients.append(client)
    await client.connect()
    inbox = Inbox(client)
    big = 5 * MiB

    with pytest.raises(CallError) as request_error:
        await client.call("Blob", "b", "Make", BytesValue(value=b"x" * big), BytesValue)
    assert request_error.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in request_error.value.message

    with pytest.raises(CallError) as answer_error:
        await client.call("Blob", "b", "Make", Int64Value(value=big), BytesValue)
    assert answer_error.value.status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in answer_error.value.message

    pushed = await client.call("Blob", "b", "PushToCaller", Int64Value(value=big), Int64Value)
    assert pushed.value == 0
    status = await cluster.status(cluster.placement.node_for("Blob", "b"))
    assert status.dropped_pushes["message_too_large"] == 1

    assert (
        len((await client.call("Blob", "b", "Make", Int64Value(value=MiB), BytesValue)).value)
        == MiB
    )
    assert (
        await client.call("Blob", "b", "PushToCaller", Int64Value(value=MiB), Int64Value)
    ).value == 1
    assert len((await inbox.next(BytesValue)).value) == MiB
