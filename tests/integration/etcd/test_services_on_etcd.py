"""Gate and node processes on etcd membership: foreign data, an etcd that is not there yet,
readiness, and the node's own view of what it owns."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2

from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.placement import SHARD_COUNT
from goverse.server import EtcdClient
from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import GATE_SERVICE, NODE_SERVICE
from tests.helpers.etcd import EtcdServer
from tests.helpers.processes import BIN, ProcessGroup, health_status
from tests.helpers.waiting import eventually

TIMING = ("--lease-ttl=3s", "--etcd-timeout=1s")
NODE_TIMING = (*TIMING, "--fence-margin=1s", "--rebalance-delay=1s")
WAIT = 20.0


def etcd_flags(etcd: EtcdServer, prefix: str = "/goverse") -> tuple[str, ...]:
    return (f"--etcd-endpoints={etcd.endpoint}", f"--etcd-prefix={prefix}")


async def status(address: str) -> node_pb2.StatusResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: node_pb2.StatusResponse = await node_pb2_grpc.NodeServiceStub(channel).Status(
            node_pb2.StatusRequest(), timeout=5
        )
    return reply


async def test_foreign_data_under_the_prefix_ends_both_services_with_one_line_and_exit_2(
    etcd: EtcdServer,
) -> None:
    """A key under the prefix that is not the cluster's: the service says so in one line on
    stderr, names the key and the flag to change, and exits with code 2, no traceback."""
    async with EtcdClient([etcd.endpoint], timedelta(seconds=5)) as client:
        await client.put("/shared/config", b"someone else's")
    for program, extra in (("goverse-node", NODE_TIMING), ("goverse-gate", TIMING)):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                str(BIN / program),
                "--listen=127.0.0.1:0",
                "--log-format=json",
                "--metrics-port=off",
                *etcd_flags(etcd, "/shared"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"{program}: ")
        assert "/shared/config" in lines[0]
        assert "--etcd-prefix" in lines[0]
        assert "Traceback" not in result.stdout + result.stderr


async def test_without_etcd_the_services_serve_unready_and_become_ready_when_it_comes(
    processes: ProcessGroup, etcd: EtcdServer
) -> None:
    """etcd down at start: node and gate run, say so, and report NOT_SERVING for their service
    (liveness, the overall status, stays SERVING); once etcd answers, both become ready without
    a restart and a call goes through."""
    await etcd.stop()
    node = processes.node(extra=(*etcd_flags(etcd), *NODE_TIMING))
    gate = processes.gate("g0", None, (*etcd_flags(etcd), *TIMING))
    assert health_status(node.address, NODE_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(gate.address, GATE_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(gate.address) == health_pb2.HealthCheckResponse.SERVING
    assert any(
        line.get("event") == "etcd does not answer: not ready until it does"
        for line in node.log_lines()
    )
    await etcd.restart()

    def ready() -> bool:
        serving = health_pb2.HealthCheckResponse.SERVING
        statuses = (
            health_status(node.address, NODE_SERVICE),
            health_status(gate.address, GATE_SERVICE),
        )
        return statuses == (serving, serving)

    await eventually(lambda: asyncio.to_thread(ready), WAIT, "node and gate to become ready")
    async with Client([gate.address]) as client:
        value = await client.call(
            "Counter", "c", "Increment", IncrementRequest(by=1), CounterValue, timeout=WAIT
        )
    assert value.value == 1


async def test_a_lone_node_owns_every_shard_and_says_so_in_status(
    processes: ProcessGroup, etcd: EtcdServer
) -> None:
    node = processes.node(extra=(*etcd_flags(etcd), *NODE_TIMING))

    async def owns_all() -> bool:
        return len((await status(node.address)).owned_shards) == SHARD_COUNT

    await eventually(owns_all, WAIT, "the node to claim every shard")
    reply = await status(node.address)
    assert reply.membership == "etcd"
    assert reply.incarnation
    assert 0 < reply.lease_valid_ms <= 3000
    assert not reply.fenced
    assert not reply.leaving
    assert list(reply.nodes) == [reply.node]


async def test_a_gate_registers_itself_for_operators_and_leaves_on_stop(
    processes: ProcessGroup, etcd: EtcdServer
) -> None:
    """``gates/<gate-id>`` holds the gate's address while it runs and is gone once it stopped
    (its lease revoked)."""
    gate = processes.gate("g7", None, (*etcd_flags(etcd), *TIMING))
    async with EtcdClient([etcd.endpoint], timedelta(seconds=5)) as client:

        async def registered() -> bool:
            return await client.get("/goverse/gates/g7") is not None

        await eventually(registered, WAIT, "the gate's key")
        assert await asyncio.to_thread(gate.terminate) == 0
        assert await client.get("/goverse/gates/g7") is None
