"""Starting what a scenario measures: the system (one goverse-node and one goverse-gate process)
or the baseline (one bare grpc.aio server process), with a chosen event loop and environment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.procs import PYTHON, UVLOOP_DIR, Proc, Procs
from goverse.client import ClientTLS
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.addresses import SocketDir
from tests.helpers.certs import CertFiles, TestCA

GATE_ID = "bench"
OBJECTS = "bench.objects"
CODE_SOURCES = (
    "libs/goverse/src",
    "libs/goverse-server/src",
    "services/gate/src",
    "services/node/src",
)
"""Where the goverse packages live in a checkout; put first on PYTHONPATH, they shadow the
editable installs of the work tree (goverse is a namespace package)."""
LISTEN = "--listen=127.0.0.1:0"
"""Every server of a run binds a free loopback port and reports it in its ready file."""
METRICS_PORT_ENV = "GOVERSE_METRICS_PORT"
PER_PEER_BOUNDS_ENV = {
    "GOVERSE_MAX_REGISTRATIONS_PER_PEER": "1000000",
    "GOVERSE_MAX_REGISTRATIONS_PER_CONNECTION": "1000000",
    "GOVERSE_REGISTRATION_RATE": "1000000",
}
"""The gate's per-peer registration bounds lifted: the bench process is one peer standing for
thousands of clients (scenario 4 registers 5,000 at 256 at once). Variables, not flags, so
that a version without these bounds (``--compare-code``) ignores them."""
TRACES_OFF = {"OTEL_TRACES_EXPORTER": "none"}
"""Tracing is off unless a variant turns it on: an SDK left at its default exporter (otlp)
would spend the run failing to reach a collector that is not there."""


@dataclass(frozen=True)
class BenchTLS:
    """Certificates for a run with TLS (``--tls``): node and gate certificates of one test CA,
    and one for the harness's own Status calls; clients verify the gate with the CA."""

    ca: TestCA
    node: CertFiles
    gate: CertFiles
    harness: CertFiles

    @classmethod
    def make(cls, directory: Path) -> BenchTLS:
        ca = TestCA(directory)
        return cls(
            ca, ca.issue("node", "bench"), ca.issue("gate", GATE_ID), ca.issue("node", "harness")
        )

    def flags(self, files: CertFiles) -> list[str]:
        return [*files.flags(), f"--tls-ca={self.ca.path}"]

    def client(self) -> ClientTLS:
        return ClientTLS(ca=self.ca.pem)

    def gate_credentials(self) -> grpc.ChannelCredentials:
        """A raw client's channel to the gate: the gate asks for no client certificate."""
        return grpc.ssl_channel_credentials(self.ca.pem)

    def node_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.pem, self.harness.key.read_bytes(), self.harness.cert.read_bytes()
        )


@dataclass(frozen=True)
class Variant:
    """How the services (and the bare server) run: event loop, extra environment, and TLS
    (`tls`: every hop of the system, client to gate to node; the bare server stays
    plaintext)."""

    label: str = "asyncio"
    loop: str = "asyncio"
    env: dict[str, str] = field(default_factory=dict)
    code: str = ""
    """A checkout whose libs/ and services/ run instead of the installed (work tree) code."""
    tls: BenchTLS | None = None

    def client_tls(self) -> ClientTLS | None:
        """What the SDK clients of a scenario are given."""
        return None if self.tls is None else self.tls.client()

    @property
    def gate_credentials(self) -> grpc.ChannelCredentials | None:
        return None if self.tls is None else self.tls.gate_credentials()

    def process_env(self) -> dict[str, str]:
        env = {**TRACES_OFF, **self.env}
        paths = [str(Path(self.code) / src) for src in CODE_SOURCES] if self.code else []
        if self.loop == "uvloop":
            paths.append(str(UVLOOP_DIR))
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env


@dataclass
class System:
    """A node and a gate, and how to start the node again on the same address."""

    procs: Procs
    variant: Variant
    node: Proc
    gate: Proc

    @property
    def node_address(self) -> str:
        return self.node.address

    async def node_status(self) -> node_pb2.StatusResponse:
        return await node_status(self.node_address, self.variant)

    @property
    def gate_address(self) -> str:
        return self.gate.address

    async def restart_node(self) -> Proc:
        """Starts the node again with the same flags and environment, on the address it had
        (the old process must be gone); :meth:`Proc.wait_ready` tells when it serves."""
        old = self.node
        self.node = self.procs.spawn("node-restarted", old.same_address_args(), old.env, ready=True)
        return self.node


def _launch(variant: Variant, service: str, flags: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "bench.launch", "--loop", variant.loop, service, *flags]


STATUS_TIMEOUT = 30.0
"""How long the harness waits for a node's Status: a node under a benchmark's load on a busy
2-core machine (a wave of idle deactivations, say) may take seconds to answer."""


async def node_status(address: str, variant: Variant) -> node_pb2.StatusResponse:
    """The node's own ``Status`` (gate streams, active objects, drops, store)."""
    channel = (
        grpc.aio.insecure_channel(address)
        if variant.tls is None
        else grpc.aio.secure_channel(address, variant.tls.node_credentials())
    )
    async with channel:
        reply: node_pb2.StatusResponse = await node_pb2_grpc.NodeServiceStub(channel).Status(
            node_pb2.StatusRequest(), timeout=STATUS_TIMEOUT
        )
    return reply


async def node_dropped(system: System) -> dict[str, int]:
    return dict((await system.node_status()).dropped_pushes)


async def wait_linked(node_address: str, variant: Variant, timeout: float = 30.0) -> None:
    """Waits until the gate's NodeLink to the node is registered on the node."""
    deadline = time.monotonic() + timeout
    while GATE_ID not in (await node_status(node_address, variant)).gates:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate did not register with {node_address} in {timeout}s")
        await asyncio.sleep(0.05)


@dataclass
class Pair:
    """Two nodes on one static node list (unix sockets named up front) and a gate routing to
    both."""

    nodes: list[Proc]
    gate: Proc
    addresses: list[str]


async def start_pair(procs: Procs, variant: Variant, sockets: SocketDir) -> Pair:
    """Starts two nodes listening on sockets of `sockets`, each given both addresses as the
    node list, then a gate; returns once the gate's links to both are up. Plaintext only."""
    addresses = [sockets.address(f"node-{index}") for index in range(2)]
    listed = f"--nodes={','.join(addresses)}"
    env = {**variant.process_env(), METRICS_PORT_ENV: "0"}
    nodes = [
        procs.spawn(
            f"node-{index}",
            _launch(
                variant,
                "node",
                [f"--listen={address}", listed, f"--objects={OBJECTS}", "--log-format=json"],
            ),
            env,
            ready=True,
        )
        for index, address in enumerate(addresses)
    ]
    for node in nodes:
        await node.wait_ready()
    gate = await _start_gate(procs, variant, env, [listed])
    for address in addresses:
        await wait_linked(address, variant)
    return Pair(nodes, gate, addresses)


async def _start_gate(
    procs: Procs, variant: Variant, env: Mapping[str, str], flags: Sequence[str]
) -> Proc:
    """Starts the gate (`flags`: its node list and any other flag) on a free port, its
    per-peer bounds lifted; returns once it serves."""
    args = [LISTEN, f"--gate-id={GATE_ID}", "--log-format=json", *flags]
    gate = procs.spawn(
        "gate", _launch(variant, "gate", args), {**env, **PER_PEER_BOUNDS_ENV}, ready=True
    )
    await gate.wait_ready()
    return gate


async def start_system(
    procs: Procs,
    variant: Variant,
    *,
    gate_flags: Sequence[str] = (),
    node_flags: Sequence[str] = (),
    node_env: Mapping[str, str] | None = None,
) -> System:
    """Starts a node (hosting ``bench.objects``; `node_env` added to its environment), then a
    gate; returns once the gate's link to the node is up. Both bind free ports and report them
    in their ready files."""
    # Metrics on, as deployed, each on a free port (the defaults would collide with anything
    # else running here). The variable, not the flag: a version without metrics ignores it.
    env = {**variant.process_env(), METRICS_PORT_ENV: "0"}
    # A lone node: unset --advertise and --nodes mean "the address it bound, alone".
    node_args = [f"--objects={OBJECTS}", "--log-format=json", *node_flags]
    if variant.tls is not None:
        node_args += variant.tls.flags(variant.tls.node)
        gate_flags = [*variant.tls.flags(variant.tls.gate), *gate_flags]
    node = procs.spawn(
        "node",
        _launch(variant, "node", [LISTEN, *node_args]),
        {**env, **(node_env or {})},
        ready=True,
    )
    await node.wait_ready()
    gate = await _start_gate(procs, variant, env, [f"--nodes={node.address}", *gate_flags])
    await wait_linked(node.address, variant)
    return System(procs, variant, node, gate)


async def start_bare(procs: Procs, variant: Variant, name: str = "bare") -> Proc:
    """Starts the bare grpc.aio server and waits until it serves."""
    proc = procs.spawn(
        name,
        [PYTHON, "-m", "bench.bare_server", LISTEN, f"--loop={variant.loop}"],
        variant.process_env(),
        ready=True,
    )
    await proc.wait_ready()
    return proc
