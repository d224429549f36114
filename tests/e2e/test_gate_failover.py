"""SDK clients when their gate is killed, frozen or stopped: they move and keep calling."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.client import CallError
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.faults import sigkill, sigstop
from tests.helpers.processes import ProcessGroup
from tests.helpers.tasks import STOP_TIMEOUT, bounded, cancel_and_wait
from tests.helpers.waiting import eventually

SLACK = 5.0
"""What a loaded 2-core machine may add to a bound."""
DEFAULTS = os.environ.get("GOVERSE_TEST_DEFAULT_TIMEOUTS") == "1"
"""Set GOVERSE_TEST_DEFAULT_TIMEOUTS=1 to run with the production defaults (slower)."""
KEEPALIVE = timedelta(seconds=10 if DEFAULTS else 1)
KEEPALIVE_TIMEOUT = timedelta(seconds=5 if DEFAULTS else 1)
EXIT_BOUND = 8.0
"""A gate's shutdown budget is 5 s; a loaded 2-core machine gets 3 s of slack."""


class Tracked:
    """An SDK client whose first gate is chosen by the test, and the moments it re-registered."""

    def __init__(self, cluster: Cluster, gates: Sequence[str], first: str, **options: Any):
        # A seed of its own whose first choice is `first`: the clients must not share one
        # random sequence, or they would all choose alike afterwards.
        start = random.randrange(1 << 30)
        seed = next(s for s in itertools.count(start) if random.Random(s).choice(gates) == first)
        self.reconnected_at: list[float] = []
        self.client = cluster.client(
            list(gates),
            rng=random.Random(seed),
            on_reconnect=lambda old, new: self.reconnected_at.append(time.time()),
            **options,
        )

    async def connect(self, expected_gate: str) -> Tracked:
        await self.client.connect()
        assert self.client.gate == expected_gate
        return self

    async def increment(self, counter: str) -> int:
        reply = await self.client.call(
            "Counter", counter, "Increment", IncrementRequest(by=1), CounterValue, timeout=10
        )
        return reply.value


async def tracked_clients(
    cluster: Cluster, per_gate: int, **options: Any
) -> dict[str, list[Tracked]]:
    """`per_gate` clients registered with each gate of the cluster, all knowing every gate."""
    by_gate: dict[str, list[Tracked]] = {}
    for gate in cluster.gate_addresses:
        by_gate[gate] = [
            await Tracked(cluster, cluster.gate_addresses, gate, **options).connect(gate)
            for _ in range(per_gate)
        ]
    return by_gate


async def close_all(by_gate: dict[str, list[Tracked]]) -> None:
    for tracked in by_gate.values():
        for item in tracked:
            await item.client.close()


async def test_clients_of_a_killed_gate_spread_over_the_others_and_call_again(
    processes: ProcessGroup,
) -> None:
    """Three gates with clients on each; SIGKILL one. Its clients notice the broken stream,
    register again (avoiding the dead gate) spread over the two others, and can call; the
    clients of the other gates keep their registration."""
    cluster = start_cluster(processes, gates=3)
    doomed_proc = cluster.gates[0]
    doomed = doomed_proc.address
    by_gate = await tracked_clients(cluster, per_gate=4)
    movers = [*by_gate[doomed]]
    for _ in range(16):  # more clients on the doomed gate, to see how they spread
        movers.append(await Tracked(cluster, cluster.gate_addresses, doomed).connect(doomed))
    try:
        killed = sigkill(doomed_proc)
        await eventually(lambda: all(m.reconnected_at for m in movers), 20, "every client to move")
        failover = [m.reconnected_at[0] - killed for m in movers]
        for mover in movers:
            assert mover.client.gate != doomed
            assert await mover.increment("after-kill") >= 1
        called = time.time() - killed
        spread = collections.Counter(m.client.gate for m in movers)
        print(
            f"\n{len(movers)} clients re-registered {min(failover):.2f}-{max(failover):.2f}s "
            f"after the kill, spread {sorted(spread.values())}; all had called again "
            f"{called:.2f}s after it"
        )
        assert len(spread) == 2, spread
        assert max(failover) < 2 + SLACK
        for gate, stayers in by_gate.items():
            if gate == doomed:
                continue
            for stayer in stayers:
                assert stayer.client.registrations == 1
                assert await stayer.increment("after-kill") >= 1
    finally:
        await close_all(by_gate)
        for mover in movers:
            await mover.client.close()


async def test_a_killed_gate_fails_the_calls_in_flight_at_once_and_the_client_calls_again(
    processes: ProcessGroup,
) -> None:
    """Two gates; a client on the first has three 10 s Sleeps in flight on its Session stream
    (30 s timeout) when the gate is SIGKILLed: the three fail with UNAVAILABLE within a few
    seconds, far from their deadline (they had been written, so they are not re-sent); the
    client registers with the other gate and calls again."""
    cluster = start_cluster(processes, gates=2)
    doomed_proc = cluster.gates[0]
    doomed = doomed_proc.address
    tracked = await Tracked(cluster, cluster.gate_addresses, doomed).connect(doomed)
    try:
        calls = [
            asyncio.get_running_loop().create_task(
                tracked.client.call(
                    "Sleeper",
                    f"kill-{n}",
                    "Sleep",
                    Int64Value(value=10_000),
                    Int64Value,
                    timeout=30,
                )
            )
            for n in range(3)
        ]
        await asyncio.sleep(1.0)  # written, forwarded and running on the node
        killed = sigkill(doomed_proc)
        results = await bounded(asyncio.gather(*calls, return_exceptions=True), 30)
        failed_after = time.time() - killed
        print(f"\nthe calls in flight failed {failed_after:.2f}s after the kill")
        for result in results:
            assert isinstance(result, CallError), result
            assert result.status_code == grpc.StatusCode.UNAVAILABLE
        assert failed_after < 1 + SLACK
        await eventually(lambda: tracked.reconnected_at, 20, "the client to move")
        assert tracked.client.gate != doomed
        assert await tracked.increment("after-kill-in-flight") >= 1
    finally:
        await tracked.client.close()


async def test_clients_of_a_frozen_gate_notice_through_keepalive_and_move(
    processes: ProcessGroup,
) -> None:
    """SIGSTOP a gate: its sockets stay open and nothing answers, so only keepalive can tell.
    SDK clients pinging every second with a 1 s timeout (the gates permit pings every 0.5 s;
    with DEFAULTS 10 s and 5 s) give up on it within keepalive time + timeout, register with
    the other gate and call again."""
    gate_flags = () if DEFAULTS else ("--keepalive-min-time=500ms",)
    cluster = start_cluster(processes, gates=2, gate_extra=gate_flags)
    doomed_proc = cluster.gates[0]
    doomed = doomed_proc.address
    keepalive = {"keepalive_time": KEEPALIVE, "keepalive_timeout": KEEPALIVE_TIMEOUT}
    bound = (KEEPALIVE + KEEPALIVE_TIMEOUT).total_seconds() + SLACK
    by_gate = await tracked_clients(cluster, per_gate=3, **keepalive)
    movers = by_gate[doomed]
    try:
        with sigstop(doomed_proc) as stopped:
            await eventually(
                lambda: all(m.reconnected_at for m in movers), bound + 3, "the clients to move"
            )
            noticed = [m.reconnected_at[0] - stopped for m in movers]
            for mover in movers:
                assert mover.client.gate != doomed
                assert await mover.increment("after-freeze") >= 1
        print(
            f"\nclients of a frozen gate re-registered {min(noticed):.2f}-{max(noticed):.2f}s "
            f"after SIGSTOP (keepalive {KEEPALIVE.total_seconds():g} s + timeout "
            f"{KEEPALIVE_TIMEOUT.total_seconds():g} s)"
        )
        assert max(noticed) < bound
        for stayer in by_gate[cluster.gate_addresses[1]]:
            assert stayer.client.registrations == 1
    finally:
        await close_all(by_gate)


async def test_gate_sigterm_lets_calls_finish_and_moves_clients_on_its_notice(
    processes: ProcessGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM a gate while its clients call in a loop and one call (2 s) is in flight: that
    call completes, no call fails, every client of the gate moves because of the draining
    notice (not a broken stream), and the gate exits 0 within its budget."""
    cluster = start_cluster(processes, gates=2)
    doomed_proc = cluster.gates[0]
    doomed = doomed_proc.address
    by_gate = await tracked_clients(cluster, per_gate=3)
    failures: list[BaseException] = []
    calls = 0
    stopping = asyncio.Event()

    async def keep_calling(tracked: Tracked) -> None:
        nonlocal calls
        while not stopping.is_set():
            try:
                await tracked.increment(f"loop-{id(tracked)}")
                calls += 1
            except Exception as error:
                failures.append(error)
            await asyncio.sleep(0.02)

    loops = [asyncio.create_task(keep_calling(t)) for tracked in by_gate.values() for t in tracked]
    sleeper_owner = cluster.placement.node_for("Sleeper", "in-flight")
    long_call = asyncio.ensure_future(
        by_gate[doomed][0].client.call(
            "Sleeper", "in-flight", "Sleep", Int64Value(value=2000), Int64Value, timeout=15
        )
    )
    try:
        await eventually(
            lambda: _active(cluster, sleeper_owner, "Sleeper", "in-flight"), 15, "the long call"
        )
        # The SDK logs with the standard library: its "gate ... is draining" records.
        with caplog.at_level(logging.INFO, logger="goverse.client"):
            doomed_proc.signal(signal.SIGTERM)
            signalled = time.monotonic()
            await eventually(
                lambda: all(t.reconnected_at for t in by_gate[doomed]), 15, "the clients to move"
            )
            moved = time.monotonic() - signalled
            assert (await long_call).value == 1
            finished = time.monotonic() - signalled
        code = await asyncio.to_thread(doomed_proc.process.wait, 15)  # type: ignore[union-attr]
        exited = time.monotonic() - signalled
        stopping.set()
        await bounded(asyncio.gather(*loops), STOP_TIMEOUT)
        draining = [r for r in caplog.records if "is draining" in r.getMessage()]
        print(
            f"\nclients moved {moved:.2f}s after SIGTERM; the 2 s call in flight finished after "
            f"{finished:.2f}s; the gate exited {exited:.2f}s after SIGTERM; {calls} calls, "
            f"{len(failures)} failed"
        )
        assert failures == []
        assert code == 0
        assert exited < EXIT_BOUND
        assert len(draining) == len(by_gate[doomed])
        assert all(getattr(record, "gate", None) == doomed for record in draining)
        for tracked in by_gate[doomed]:
            assert tracked.client.gate != doomed
    finally:
        stopping.set()
        for loop in loops:
            await cancel_and_wait(loop)
        await cancel_and_wait(long_call)
        await close_all(by_gate)


async def _active(cluster: Cluster, node: str, object_type: str, object_id: str) -> bool:
    return object_id in await cluster.list_objects(node, object_type)
