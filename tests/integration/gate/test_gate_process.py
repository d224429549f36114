"""The goverse-gate process: flags, SIGTERM with open client streams, listen failures."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import grpc
import pytest

from tests.helpers.addresses import dead_address
from tests.helpers.fake_node import FakeNode, broadcast
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.processes import BIN, ProcessGroup
from tests.helpers.waiting import eventually

GATE = str(BIN / "goverse-gate")
FLAGS = [
    "listen",
    "gate-id",
    "nodes",
    "shutdown-timeout",
    "reconnect-initial",
    "reconnect-max",
    "stable-after",
    "node-heartbeat-timeout",
    "client-queue-messages",
    "client-queue-bytes",
    "max-clients",
    "call-timeout",
    "max-message-bytes",
    "log-level",
    "log-format",
]


def run_gate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATE, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.slow
async def test_sigterm_with_100_open_streams_drains_every_client_and_exits_0(
    processes: ProcessGroup, fake_node: FakeNode
) -> None:
    """SIGTERM to a gate holding 100 Register streams: every client receives Draining, the
    streams end with OK, and the process exits with code 0 well within the 5 s budget."""
    gate = await asyncio.to_thread(processes.gate, "sigterm-gate", [fake_node.address])
    await eventually(lambda: fake_node.active == 1, WAIT, "the gate's link to the node")
    clients = list(await asyncio.gather(*(GateClient(gate.address).connect() for _ in range(100))))
    try:
        assert len({client.client_id for client in clients}) == 100
        fake_node.send(broadcast("before shutdown"))
        for client in clients:
            assert (await client.pushed_texts(1))[0] == ["before shutdown"]

        started = time.monotonic()
        gate.signal(signal.SIGTERM)
        streams = await asyncio.gather(*(client.rest_of_stream() for client in clients))
        drained_after = time.monotonic() - started
        code = await asyncio.to_thread(gate.process.wait, 15)  # type: ignore[union-attr]
        exit_seconds = time.monotonic() - started
    finally:
        for client in clients:
            await client.close()
    print(
        f"\nSIGTERM with 100 open streams: all drained after {drained_after:.3f}s, "
        f"exit code {code} after {exit_seconds:.3f}s"
    )
    for events in streams:
        assert events[-1].WhichOneof("event") == "draining"
    for client in clients:
        assert await client.stream.code() == grpc.StatusCode.OK
    assert code == 0
    assert exit_seconds < 8.0
    lines = gate.log_lines()
    events = [line["event"] for line in lines]
    assert "stopped" in events
    assert "tasks still pending after the shutdown timeout" not in events
    assert all(line.get("service") == "gate" for line in lines)
    assert all(line.get("gate_id") == "sigterm-gate" for line in lines)


async def test_sigterm_while_the_node_is_down_exits_0_quickly(processes: ProcessGroup) -> None:
    """A gate whose only node never answers still stops at once on SIGTERM."""
    with dead_address() as node:
        gate = await asyncio.to_thread(processes.gate, "lonely", [node])
        code = await asyncio.to_thread(gate.terminate, 15)
    print(f"\nSIGTERM with the node down: exit code {code} after {gate.exit_seconds:.3f}s")
    assert code == 0
    assert gate.exit_seconds is not None
    assert gate.exit_seconds < 8.0


def test_help_documents_every_flag_and_its_variable() -> None:
    result = run_gate("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert f"--{flag}" in result.stdout, flag
        assert "GOVERSE_" + flag.upper().replace("-", "_") in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gate-id=bad id"], "argument --gate-id: the gate id 'bad id'"),
        (["--nodes=localhost"], "argument --nodes: 'localhost' is not host:port"),
        (["--shutdown-timeout=forever"], "is not a duration"),
        (["--reconnect-initial=1s", "--reconnect-max=100ms"], "--reconnect-max"),
        (["--max-clients=-3"], "argument --max-clients"),
        (["--log-format=xml"], "invalid choice"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_invalid_flags_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = run_gate(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_invalid_environment_variable_exits_2() -> None:
    import os

    result = run_gate(env={**os.environ, "GOVERSE_CLIENT_QUEUE_BYTES": "huge"})
    assert result.returncode == 2
    assert "--client-queue-bytes" in result.stderr


def test_listen_address_in_use_exits_1_with_a_clear_message() -> None:
    # The port is held (listening) for the whole run of the gate: it is busy, not released.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken, dead_address() as node:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gate(f"--listen=127.0.0.1:{port}", "--gate-id=busy", f"--nodes={node}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
