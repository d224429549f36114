"""A cluster on etcd membership for e2e tests: nodes and gates that join, leave, crash, freeze."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from goverse import wire
from tests.helpers.cluster import Cluster, joined, wait_settled
from tests.helpers.etcd import EtcdServer
from tests.helpers.objects import WITNESS_DIR
from tests.helpers.processes import ProcessGroup, ServiceProcess, serving
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
SETTLE_TIMEOUT = 30.0
"""How long the shards may take to settle after a change (a loaded 2-core machine)."""


class EtcdCluster(Cluster):
    """A :class:`Cluster` on the etcd `etcd`, under `prefix`, with this module's short lease
    (:data:`TTL`); every node records its Witness objects in `witness_dir`. It starts empty:
    the test adds nodes and gates.

    Processes start and stop in threads (:func:`asyncio.to_thread`), so that the clients a
    test runs on the event loop keep calling meanwhile. :attr:`nodes` and :attr:`gates` hold
    every process started, for the invariant check; those the test killed, stopped or froze
    are :meth:`forget`-ten until they run again, and the shards settle on the others
    (:attr:`live_nodes`).
    """

    def __init__(
        self, group: ProcessGroup, etcd: EtcdServer, prefix: str, witness_dir: Path
    ) -> None:
        scope = f"--etcd-prefix={prefix}"
        super().__init__(
            group,
            [],
            etcd.endpoint,
            node_extra=(scope, *NODE_FLAGS),
            gate_extra=(scope, *MEMBERSHIP_FLAGS),
            env={WITNESS_DIR: str(witness_dir)},
        )
        self.etcd = etcd
        self.prefix = prefix
        self.witness_dir = witness_dir
        self.down: list[ServiceProcess] = []
        """The processes not expected live (see :meth:`forget`)."""

    @property
    def live_nodes(self) -> list[ServiceProcess]:
        return [proc for proc in self.nodes if proc not in self.down]

    # -- processes ------------------------------------------------------------------------------

    async def add_nodes(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new nodes together; returns once each has joined."""
        return await asyncio.to_thread(self.start_nodes, count)

    async def add_gates(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new gates together; returns once each serves."""
        return await asyncio.to_thread(self.start_gates, count)

    async def terminate(self, proc: ServiceProcess) -> int:
        """SIGTERM and wait for the exit (bounded); the process is no longer expected live."""
        self.forget(proc)
        return await asyncio.to_thread(proc.terminate, 20.0)

    async def start_again(self, proc: ServiceProcess) -> None:
        """Starts a stopped node or gate again on its address; returns once it serves (a node:
        has joined)."""
        await asyncio.to_thread(self.start_stopped, proc)
        self.remember(proc)

    def forget(self, proc: ServiceProcess) -> None:
        """`proc` is no longer expected to be live (killed, stopped or frozen by the test)."""
        if proc not in self.down:
            self.down.append(proc)

    def remember(self, proc: ServiceProcess) -> None:
        """`proc` is expected live again (it ran again and rejoined)."""
        if proc in self.down:
            self.down.remove(proc)

    # -- what the nodes say ---------------------------------------------------------------------

    async def settled(self, timeout: float = SETTLE_TIMEOUT) -> float:
        """Waits (bounded, polling Status) until the shards have settled on the live nodes
        (:func:`tests.helpers.cluster.unsettled`); returns the wall-clock time it saw them
        settled."""
        addresses = [proc.address for proc in self.live_nodes]
        return await wait_settled(lambda: addresses, timeout)

    async def gate_ready(self, gate: ServiceProcess) -> bool:
        return await asyncio.to_thread(serving, gate.address, wire.GATE_SERVICE)

    async def node_ready(self, proc: ServiceProcess) -> bool:
        """Whether the node reports itself ready (it has joined and may serve)."""
        return await asyncio.to_thread(joined, proc.address)

    # -- the invariant --------------------------------------------------------------------------

    def lives(self) -> list[NodeLife]:
        """The life of every node process run so far, from the node logs (one run per
        ``listening`` line, which carries the pid)."""
        lives = []
        for proc in self.nodes:
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
            for node in ([proc] if proc is not None else self.nodes)
            for run, lines in _runs(node)
            if pid is None or run == pid
            for line in lines
            if str(line.get("event", "")).startswith(prefix)
        ]

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
