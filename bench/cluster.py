"""Starting what a scenario measures: the system (one goverse-node and one goverse-gate process)
or the baseline (one bare grpc.aio server process), with a chosen event loop and environment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.procs import PYTHON, UVLOOP_DIR, Proc, Procs, free_port
from goverse.v1 import node_pb2, node_pb2_grpc

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
METRICS_PORT_ENV = "GOVERSE_METRICS_PORT"
TRACES_OFF = {"OTEL_TRACES_EXPORTER": "none"}
"""Tracing is off unless a variant turns it on: an SDK left at its default exporter (otlp)
would spend the run failing to reach a collector that is not there."""


@dataclass(frozen=True)
class Variant:
    """How the services (and the bare server) run: event loop and extra environment."""

    label: str = "asyncio"
    loop: str = "asyncio"
    env: dict[str, str] = field(default_factory=dict)
    code: str = ""
    """A checkout whose libs/ and services/ run instead of the installed (work tree) code."""

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
    node_address: str
    gate_address: str
    node_args: list[str]

    async def restart_node(self) -> Proc:
        """Starts the node again with the same flags and environment (the old process must be
        gone)."""
        self.node = self.procs.spawn(
            "node-restarted", self.node_args, self.node_address, self.node.env
        )
        return self.node


def _launch(variant: Variant, service: str, flags: Sequence[str]) -> list[str]:
    return [PYTHON, "-m", "bench.launch", "--loop", variant.loop, service, *flags]


async def node_gates(address: str) -> list[str]:
    """The gate ids with an open RegisterGate stream on the node at `address`."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await node_pb2_grpc.NodeServiceStub(channel).Status(
            node_pb2.StatusRequest(), timeout=5
        )
    return list(reply.gates)


async def node_dropped(address: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await node_pb2_grpc.NodeServiceStub(channel).Status(
            node_pb2.StatusRequest(), timeout=5
        )
    return dict(reply.dropped_pushes)


async def wait_linked(node_address: str, timeout: float = 30.0) -> None:
    """Waits until the gate's NodeLink to the node is registered on the node."""
    deadline = time.monotonic() + timeout
    while GATE_ID not in await node_gates(node_address):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate did not register with {node_address} in {timeout}s")
        await asyncio.sleep(0.05)


async def start_system(
    procs: Procs,
    variant: Variant,
    *,
    gate_flags: Sequence[str] = (),
    node_flags: Sequence[str] = (),
) -> System:
    """Starts a node (hosting ``bench.objects``), then a gate; returns once the gate's link to
    the node is up."""
    node_address = f"127.0.0.1:{free_port()}"
    gate_address = f"127.0.0.1:{free_port()}"
    env = variant.process_env()
    # Metrics on, as deployed, each on a free port (the defaults would collide with anything
    # else running here). The variable, not the flag: a version without metrics ignores it.
    node_env = {**env, METRICS_PORT_ENV: str(free_port())}
    gate_env = {**env, METRICS_PORT_ENV: str(free_port())}
    node_args = _launch(
        variant,
        "node",
        [
            f"--listen={node_address}",
            f"--advertise={node_address}",
            f"--nodes={node_address}",
            f"--objects={OBJECTS}",
            "--log-format=json",
            *node_flags,
        ],
    )
    node = procs.spawn("node", node_args, node_address, node_env)
    await node.wait_healthy()
    gate = procs.spawn(
        "gate",
        _launch(
            variant,
            "gate",
            [
                f"--listen={gate_address}",
                f"--gate-id={GATE_ID}",
                f"--nodes={node_address}",
                "--log-format=json",
                *gate_flags,
            ],
        ),
        gate_address,
        gate_env,
    )
    await gate.wait_healthy()
    await wait_linked(node_address)
    return System(procs, variant, node, gate, node_address, gate_address, node_args)


async def start_bare(procs: Procs, variant: Variant, name: str = "bare") -> Proc:
    """Starts the bare grpc.aio server and waits until it serves."""
    address = f"127.0.0.1:{free_port()}"
    proc = procs.spawn(
        name,
        [PYTHON, "-m", "bench.bare_server", f"--listen={address}", f"--loop={variant.loop}"],
        address,
        variant.process_env(),
    )
    await proc.wait_healthy()
    return proc
