"""Calls over the gate's Calls stream to a node when the node dies or restarts mid-call."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.client import Client
from goverse.errors import CallError
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.cluster import Cluster
from tests.helpers.tasks import bounded
from tests.helpers.waiting import eventually

CALL_DEADLINE = 20.0
FAIL_BOUND = 5.0
"""A call in flight on a dead node's stream fails within this long of the kill: the stream
breaks at once (the socket closes); a loaded 2-core machine gets seconds of slack, still
far under the calls' 20 s deadline."""
RESUME_BOUND = 30.0


async def _active(cluster: Cluster, node: str, object_type: str, object_id: str) -> bool:
    return object_id in await cluster.list_objects(node, object_type)


async def test_a_killed_node_fails_the_gates_calls_in_flight_at_once(
    fresh_cluster: Cluster, clients: list[Client]
) -> None:
    """Three 15 s calls in flight on a node that is SIGKILLed fail with UNAVAILABLE naming
    the node within seconds, not at their 20 s deadline; they are not sent again."""
    node = fresh_cluster.nodes[0]
    sleepers = fresh_cluster.ids_owned_by(node.address, "Sleeper", 3, "killed")
    client = fresh_cluster.client([fresh_cluster.gate_addresses[0]])
    clients.append(client)
    await client.connect()
    calls = [
        asyncio.ensure_future(
            client.call(
                "Sleeper",
                sleeper,
                "Sleep",
                Int64Value(value=15_000),
                Int64Value,
                timeout=CALL_DEADLINE,
            )
        )
        for sleeper in sleepers
    ]
    for sleeper in sleepers:
        await eventually(
            lambda s=sleeper: _active(fresh_cluster, node.address, "Sleeper", s),  # type: ignore[misc]
            15,
            "the calls to run",
        )
    node.signal(signal.SIGKILL)
    killed = time.monotonic()
    results = await bounded(asyncio.gather(*calls, return_exceptions=True), CALL_DEADLINE)
    failed_after = time.monotonic() - killed
    print(f"\ncalls in flight on a killed node failed {failed_after:.2f}s after SIGKILL")
    for result in results:
        assert isinstance(result, CallError), result
        assert result.status_code == grpc.StatusCode.UNAVAILABLE
        assert f"node {node.address} is unavailable" in result.message
    assert failed_after < FAIL_BOUND


async def test_a_node_restarted_under_load_serves_again(
    fresh_cluster: Cluster, clients: list[Client]
) -> None:
    """Clients keep calling counters on a node that is SIGKILLed and started again: calls
    fail only with UNAVAILABLE meanwhile, and all succeed again once it serves."""
    node = fresh_cluster.nodes[0]
    counters = fresh_cluster.ids_owned_by(node.address, "Counter", 4, "restart")
    client = fresh_cluster.client([fresh_cluster.gate_addresses[0]])
    clients.append(client)
    await client.connect()
    codes: list[grpc.StatusCode] = []
    successes_after: list[float] = []
    restarted_at: list[float] = []
    stopping = asyncio.Event()

    async def keep_calling(counter: str) -> None:
        while not stopping.is_set():
            try:
                await client.call(
                    "Counter", counter, "Increment", IncrementRequest(by=1), CounterValue, timeout=3
                )
                if restarted_at:
                    successes_after.append(time.monotonic())
            except CallError as error:
                codes.append(error.status_code)
            await asyncio.sleep(0.02)

    loops = [asyncio.ensure_future(keep_calling(counter)) for counter in counters]
    try:
        await asyncio.sleep(0.5)
        node.signal(signal.SIGKILL)
        await asyncio.to_thread(node.process.wait, 10)  # type: ignore[union-attr]
        await asyncio.to_thread(node.start)  # waits until it serves again
        restarted_at.append(time.monotonic())
        await eventually(lambda: len(successes_after) >= 20, RESUME_BOUND, "calls to succeed")
        print(
            f"\ncalls succeeded again {successes_after[0] - restarted_at[0]:.2f}s after the "
            f"node served; {len(codes)} failed meanwhile"
        )
    finally:
        stopping.set()
        await bounded(asyncio.gather(*loops), 10)
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
