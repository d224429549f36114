"""A node killed, frozen (half-open) or restarted while clients receive pushes from it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.faults import json_lines, log_events, logged_at, restart, sigkill, sigstop
from tests.helpers.processes import ProcessGroup, ServiceProcess
from tests.helpers.pushes import PushFlow
from tests.helpers.tasks import STOP_TIMEOUT
from tests.helpers.waiting import eventually

DEFAULTS = os.environ.get("GOVERSE_TEST_DEFAULT_TIMEOUTS") == "1"
"""Set GOVERSE_TEST_DEFAULT_TIMEOUTS=1 to run with the production defaults (slower)."""
HEARTBEAT_TIMEOUT = 15.0 if DEFAULTS else 3.0
"""The gates' --node-heartbeat-timeout (default 15 s; 3 s here unless DEFAULTS)."""
GATE_FLAGS = () if DEFAULTS else (f"--node-heartbeat-timeout={HEARTBEAT_TIMEOUT:g}s",)
NODE_FLAGS = () if DEFAULTS else ("--heartbeat-interval=1s",)
SLACK = 5.0
"""What a loaded 2-core machine may add to a bound."""
LINK_EVENTS = ("node link connected", "node link lost", "node link failed")


@pytest.fixture
async def flows() -> AsyncIterator[list[PushFlow]]:
    """The push flows a test starts; each is stopped and its client closed afterwards."""
    started: list[PushFlow] = []
    yield started
    try:
        for flow in started:
            await flow.stop()
    finally:
        for flow in started:
            async with asyncio.timeout(STOP_TIMEOUT):
                await flow.client.close()


def link_events(gate: ServiceProcess, node: str, since: float) -> list[dict[str, object]]:
    """The gate's log lines about its link to `node`, written at `since` or later."""
    lines = [line for event in LINK_EVENTS for line in log_events(gate, event, node=node)]
    return sorted(
        (line for line in lines if logged_at(line) >= since), key=lambda line: logged_at(line)
    )


def open_gate_streams(node: ServiceProcess) -> int:
    """Gate streams the node's current process has open, by its log: registrations (a
    replacing one included) minus streams that ended."""
    lines = json_lines(node)
    starts = [index for index, line in enumerate(lines) if line.get("event") == "listening"]
    current = lines[starts[-1] :] if starts else lines
    opening = ("gate registered", "gate re-registered, replacing its stream")
    opened = sum(1 for line in current if line.get("event") in opening)
    ended = sum(1 for line in current if line.get("event") == "gate stream ended")
    return opened - ended


async def assert_one_link_per_gate(cluster: Cluster, node: ServiceProcess) -> None:
    """No duplicate or stuck link: the node holds exactly one stream per gate, and each gate's
    last word on its link to the node is that it is connected."""

    async def settled() -> bool:
        status = await cluster.status(node.address)
        return sorted(status.gates) == ["gate-0", "gate-1"] and open_gate_streams(node) == 2

    deadline = time.monotonic() + 15
    while not await settled():
        assert time.monotonic() < deadline, (
            f"node streams: {open_gate_streams(node)}, "
            f"gates: {sorted((await cluster.status(node.address)).gates)}"
        )
        await asyncio.sleep(0.1)
    for gate in cluster.gates:
        events = link_events(gate, node.address, 0.0)
        assert events[-1]["event"] == "node link connected", events[-3:]


@pytest.mark.parametrize("fault", ["sigkill", "sigstop", "restart"])
async def test_gates_detect_a_node_fault_and_pushes_resume(
    processes: ProcessGroup, flows: list[PushFlow], fault: str
) -> None:
    """While a client on each gate receives pushes from an object on the node: SIGKILL (then a
    new process), SIGSTOP (half-open: sockets open, nothing answers; then SIGCONT), or SIGTERM
    and a new process. Each gate notices within its bound (at once for a closed connection,
    --node-heartbeat-timeout for a frozen node), reconnects, and pushes resume; afterwards
    there is one link per gate and node, no duplicate and none stuck."""
    cluster = start_cluster(processes, gates=2, gate_extra=GATE_FLAGS, node_extra=NODE_FLAGS)
    node = cluster.nodes[0]
    pusher = cluster.ids_owned_by(node.address, "Pusher", 1, fault)[0]
    for address in cluster.gate_addresses:
        client = cluster.client([address])
        await client.connect()
        flows.append(PushFlow(client, pusher).start())
    began = time.time()
    await eventually(lambda: all(f.arrived_since(began) for f in flows), 30, "pushes to flow")

    def detected(since: float) -> list[float]:
        """When each gate noticed (its first lost or failed link event since `since`)."""
        found = []
        for gate in cluster.gates:
            lost = [
                e for e in link_events(gate, node.address, since) if e["event"] != LINK_EVENTS[0]
            ]
            if lost:
                found.append(logged_at(lost[0]) - since)
        return found

    bound = SLACK if fault != "sigstop" else HEARTBEAT_TIMEOUT + SLACK
    if fault == "sigstop":
        with sigstop(node) as stopped:
            await eventually(lambda: len(detected(stopped)) == 2, bound, "both gates to notice")
            detection = detected(stopped)
        recovered = time.time()
    else:
        stopped = sigkill(node) if fault == "sigkill" else time.time()
        if fault == "restart":
            restart(node)
        await eventually(lambda: len(detected(stopped)) == 2, bound, "both gates to notice")
        detection = detected(stopped)
        if fault == "sigkill":
            node.start()
        recovered = time.time()
    await eventually(lambda: all(f.arrived_since(recovered) for f in flows), 30, "pushes to resume")
    resumed = max(min(a for a in f.arrived if a >= recovered) for f in flows) - recovered
    print(
        f"\n{fault}: gates noticed after {', '.join(f'{d:.2f}s' for d in detection)}; "
        f"pushes resumed {resumed:.2f}s after the node was back"
    )
    assert max(detection) < bound
    await assert_one_link_per_gate(cluster, node)
