"""A cluster on etcd membership for e2e tests: nodes and gates that join, leave, crash, freeze."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from goverse.placement import SHARD_COUNT, Placement
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.etcd import EtcdServer
from tests.helpers.objects import WITNESS_DIR
from tests.helpers.processes import ProcessGroup, ServiceProcess, health_status
from tests.helpers.witness import NodeLife, Verdict, check, read_records

TTL = 6.0
"""The lease TTL of these clusters (the default is 10 s): a crash, a pause or a lost etcd
plays out in a few seconds. Keep-alives go every TTL/3 and a node stops serving
`FENCE_MARGIN` before its lease could expire, which leaves TTL - TTL/3 - margin, 3.5 s, for a
keep-alive to be acknowledged. Shorter TTLs fenced healthy nodes on this 2-core machine when
other suites loaded it (CPU pressure 80 %: etcd answered nothing for 2-3 s): 3 s with a 1 s
margin, 4 s and 5 s with 1.5 s and 2 s requests."""
ETCD_TIMEOUT = 2.0
FENCE_MARGIN = 0.5
"""Half a second: etcd and the nodes share one clock here, so the margin covers scheduling
delays only (the default, 2 s, also covers the drift between machines' clocks)."""
MEMBERSHIP_FLAGS = (f"--lease-ttl={TTL:g}s", f"--etcd-timeout={ETCD_TIMEOUT:g}s")
NODE_FLAGS = (
    *MEMBERSHIP_FLAGS,
    f"--fence-margin={FENCE_MARGIN:g}s",
    "--rebalance-delay=1s",
    "--handoff-timeout=2s",
)
GATE_SERVICE = "goverse.v1.GateService"
"""The health service whose status is the gate's readiness."""
NODE_SERVICE = "goverse.v1.NodeService"
"""The health service whose status is the node's readiness."""
POLL = 0.1
"""Seconds between two looks at the nodes' Status while waiting for a state."""
SETTLE_TIMEOUT = 30.0
"""How long the shards may take to settle after a change (a loaded 2-core machine)."""


@dataclass
class EtcdCluster:
    """Nodes on unix sockets and gates on loopback ports, all on etcd membership under
    `prefix`; every node records its Witness objects in `witness_dir`.

    Processes start and stop in threads (:func:`asyncio.to_thread`), so that the clients a
    test runs on the event loop keep calling meanwhile. `nodes` are the node processes that
    should be live (a killed or stopped one is removed with :meth:`forget`).
    """

    group: ProcessGroup
    etcd: EtcdServer
    prefix: str
    witness_dir: Path
    nodes: list[ServiceProcess] = field(default_factory=list)
    gates: list[ServiceProcess] = field(default_factory=list)
    every_node: list[ServiceProcess] = field(default_factory=list)
    """Every node process ever started, live or not, for the invariant check."""

    @property
    def etcd_flags(self) -> tuple[str, ...]:
        return (f"--etcd-endpoints={self.etcd.endpoint}", f"--etcd-prefix={self.prefix}")

    @property
    def gate_addresses(self) -> list[str]:
        return [gate.address for gate in self.gates]

    # -- processes ------------------------------------------------------------------------------

    async def add_nodes(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new nodes together; returns once each serves (it has joined)."""
        env = {WITNESS_DIR: str(self.witness_dir)}
        added = [
            self.group.node(address, None, (*self.etcd_flags, *NODE_FLAGS), wait=False, env=env)
            for address in self.group.node_addresses(count)
        ]
        for proc in added:
            await asyncio.to_thread(proc.wait_ready)
        self.nodes.extend(added)
        self.every_node.extend(added)
        return added

    async def add_gates(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new gates together; returns once each is ready (it has a shard map
        and a link to a node)."""
        first = len(self.gates)
        added = [
            self.group.gate(
                f"gate-{first + n}", None, (*self.etcd_flags, *MEMBERSHIP_FLAGS), wait=False
            )
            for n in range(count)
        ]
        for proc in added:
            await asyncio.to_thread(proc.wait_ready)
        self.gates.extend(added)
        return added

    async def terminate(self, proc: ServiceProcess) -> int:
        """SIGTERM and wait for the exit (bounded); the process is no longer expected live."""
        self.forget(proc)
        return await asyncio.to_thread(proc.terminate, 20.0)

    async def start_again(self, proc: ServiceProcess) -> None:
        """Starts a stopped node or gate again on its address; returns once it serves."""
        await asyncio.to_thread(proc.start)
        (self.nodes if proc in self.every_node else self.gates).append(proc)

    def forget(self, proc: ServiceProcess) -> None:
        """`proc` is no longer expected to be live (killed, stopped or frozen by the test)."""
        for live in (self.nodes, self.gates):
            if proc in live:
                live.remove(proc)

    # -- what the nodes say ---------------------------------------------------------------------

    async def status(self, proc: ServiceProcess, timeout: float = 5.0) -> node_pb2.StatusResponse:
        async with grpc.aio.insecure_channel(proc.address) as channel:
            reply: node_pb2.StatusResponse = await node_pb2_grpc.NodeServiceStub(channel).Status(
                node_pb2.StatusRequest(), timeout=timeout
            )
        return reply

    async def unsettled(self) -> str | None:
        """None when the shards have settled on the live nodes: every live node sees exactly
        the live nodes, is not fenced, drains nothing and owns exactly the shards whose
        target it is (so together they own each shard once); else what is not so yet."""
        statuses = await asyncio.gather(*(self.status(proc) for proc in self.nodes))
        ids = sorted(status.node for status in statuses)
        targets: dict[str, set[int]] = {node: set() for node in ids}
        placement = Placement(ids)
        for shard in range(SHARD_COUNT):
            targets[placement.node_for_shard(shard)].add(shard)
        for status in statuses:
            if sorted(status.nodes) != ids:
                return f"{status.node} sees {sorted(status.nodes)}, not {ids}"
            if status.fenced:
                return f"{status.node} is fenced"
            if status.draining_shards:
                return f"{status.node} drains {len(status.draining_shards)} shards"
            owned = set(status.owned_shards)
            if owned != targets[status.node]:
                return (
                    f"{status.node} owns {len(owned)} shards, "
                    f"{len(owned & targets[status.node])} of its {len(targets[status.node])}"
                )
        return None

    async def settled(self, timeout: float = SETTLE_TIMEOUT) -> float:
        """Waits (bounded, polling Status) until the shards have settled on the live nodes
        (:meth:`unsettled`); returns the wall-clock time it saw them settled."""
        deadline = time.monotonic() + timeout
        while (why := await self.unsettled()) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the shards did not settle within {timeout}s: {why}")
            await asyncio.sleep(POLL)
        return time.time()

    async def gate_ready(self, gate: ServiceProcess) -> bool:
        status = await asyncio.to_thread(health_status, gate.address, GATE_SERVICE)
        return status == 1  # SERVING

    # -- the invariant --------------------------------------------------------------------------

    def lives(self) -> list[NodeLife]:
        """The life of every node process run so far, from the node logs (one run per
        ``listening`` line, which carries the pid)."""
        lives = []
        for proc in self.every_node:
            for pid, lines in _runs(proc):
                lives.append(NodeLife.from_log(pid, proc.name, lines))
        return lives

    def node_events(
        self, prefix: str, proc: ServiceProcess | None = None, pid: int | None = None
    ) -> list[dict[str, Any]]:
        """The log lines whose event starts with `prefix`, of every node process run (or of
        `proc`'s runs, or of the run with `pid` only)."""
        return [
            line
            for node in ([proc] if proc is not None else self.every_node)
            for run, lines in _runs(node)
            if pid is None or run == pid
            for line in lines
            if str(line.get("event", "")).startswith(prefix)
        ]

    async def node_ready(self, proc: ServiceProcess) -> bool:
        """Whether the node reports itself ready (it has joined and may serve)."""
        status = await asyncio.to_thread(health_status, proc.address, NODE_SERVICE)
        return status == 1  # SERVING

    def verdict(self) -> Verdict:
        """The one-activation invariant over everything the Witness objects recorded."""
        return check(read_records(self.witness_dir), self.lives())

    # -- etcd -----------------------------------------------------------------------------------

    async def etcd_keys(self) -> tuple[int, int]:
        """How many keys there are under the prefix, and etcd's revision."""
        root = f"{self.prefix}/".encode()
        end = root[:-1] + bytes([root[-1] + 1])
        async with grpc.aio.insecure_channel(self.etcd.endpoint) as channel:
            reply = await rpc.KVStub(channel).Range(
                rpc.RangeRequest(key=root, range_end=end, count_only=True), timeout=5
            )
        return int(reply.count), int(reply.header.revision)


def _runs(proc: ServiceProcess) -> list[tuple[int, list[dict[str, Any]]]]:
    """The JSON log lines of each run of `proc`, with the run's pid."""
    runs: list[tuple[int, list[dict[str, Any]]]] = []
    for raw in proc.output().splitlines():
        if not raw.startswith("{"):
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:  # the last line of a killed process may be cut short
            continue
        if line.get("event") == "listening":
            runs.append((int(line["pid"]), []))
        if runs:
            runs[-1][1].append(line)
    return runs


__all__ = [
    "ETCD_TIMEOUT",
    "FENCE_MARGIN",
    "NODE_FLAGS",
    "TTL",
    "EtcdCluster",
]
