"""Processes dying and stopping under load: node restart, gate and node SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import gate_pb2, gate_pb2_grpc
from tests.helpers.cluster import Cluster
from tests.helpers.pushes import Inbox
from tests.helpers.tasks import bounded

# The shutdown budget is 5 s; a loaded 2-core machine gets 3 s of slack.
EXIT_BOUND = 8.0


async def push_roundtrip(client: Client, inbox: Inbox, pusher: str, text: str) -> bool:
    """One push from `pusher` to `client`; True when it was queued and arrived."""
    accepted = await client.call(
        "Pusher", pusher, "PushToCaller", StringValue(value=text), Int64Value, timeout=5
    )
    if accepted.value != 1:
        return False
    got = await inbox.next(StringValue, timeout=5)
    while got.value != text:
        got = await inbox.next(StringValue, timeout=5)
    return True


async def test_node_killed_and_restarted_pushes_flow_again(
    fresh_cluster: Cluster, clients: list[Client]
) -> None:
    """SIGKILL a node, start it again on the same address: the gates re-register by
    themselves and pushes from objects on it reach clients again."""
    node = fresh_cluster.nodes[0]
    pusher = fresh_cluster.ids_owned_by(node.address, "Pusher", 1, "restart")[0]
    client = fresh_cluster.client([fresh_cluster.gate_addresses[0]])
    clients.append(client)
    await client.connect()
    inbox = Inbox(client)
    assert await push_roundtrip(client, inbox, pusher, "before")

    node.signal(signal.SIGKILL)
    node.process.wait(10)  # type: ignore[union-attr]
    node.start()  # waits until it serves again
    restarted = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            if await push_roundtrip(client, inbox, pusher, f"after-{attempt}"):
                break
        except Exception:  # the node may still refuse while the gate reconnects
            pass
        assert time.monotonic() - restarted < 30, "pushes did not resume within 30 s"
        await asyncio.sleep(0.05)
    resumed = time.monotonic() - restarted
    print(f"pushes resumed {resumed:.2f}s after the node served again")


async def test_gate_sigterm_moves_clients_to_the_other_gate(
    fresh_cluster: Cluster, clients: list[Client]
) -> None:
    """Clients of a gate that is stopped get its draining notice and re-register with the
    other gate; the stopping gate exits 0 within the budget."""
    doomed, survivor = fresh_cluster.gates
    on_doomed: list[tuple[Client, asyncio.Event]] = []
    for _ in range(200):  # the first gate is chosen at random: collect 5 clients on `doomed`
        if len(on_doomed) == 5:
            break
        reconnected = asyncio.Event()
        client = fresh_cluster.client(
            [doomed.address, survivor.address],
            on_reconnect=lambda old, new, event=reconnected: event.set(),
        )
        clients.append(client)
        await client.connect()
        if client.gate == doomed.address:
            on_doomed.append((client, reconnected))
    assert len(on_doomed) == 5
    doomed.signal(signal.SIGTERM)
    started = time.monotonic()
    for client, reconnected in on_doomed:
        await bounded(reconnected.wait(), 20)
        assert client.gate == survivor.address
        value = await client.call(
            "Counter", "moved", "Increment", IncrementRequest(by=1), CounterValue
        )
        assert value.value >= 1
    failover = time.monotonic() - started
    code = await asyncio.to_thread(doomed.process.wait, 15)  # type: ignore[union-attr]
    exit_seconds = time.monotonic() - started
    assert code == 0
    assert exit_seconds < EXIT_BOUND
    print(f"{len(on_doomed)} clients moved in {failover:.2f}s; gate exited in {exit_seconds:.2f}s")


async def test_gate_sigterm_with_100_streams_drains_and_exits_in_budget(
    fresh_cluster: Cluster,
) -> None:
    gate = fresh_cluster.gates[0]
    async with grpc.aio.insecure_channel(gate.address) as channel:
        stub = gate_pb2_grpc.GateServiceStub(channel)
        streams = [stub.Register(gate_pb2.RegisterRequest()) for _ in range(100)]
        for stream in streams:
            assert (await stream.read()).WhichOneof("event") == "registered"
        started = time.monotonic()
        gate.signal(signal.SIGTERM)

        async def last_event(stream: grpc.aio.UnaryStreamCall) -> str:
            last = ""
            while (event := await stream.read()) is not grpc.aio.EOF:
                last = event.WhichOneof("event")
            return last

        endings = await bounded(asyncio.gather(*(last_event(s) for s in streams)), 15)
        assert endings == ["draining"] * 100
    code = await asyncio.to_thread(gate.process.wait, 15)  # type: ignore[union-attr]
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < EXIT_BOUND
    print(f"gate with 100 streams exited with 0 in {elapsed:.2f}s")


async def test_node_sigterm_with_gates_attached_exits_in_budget(fresh_cluster: Cluster) -> None:
    node = fresh_cluster.nodes[0]
    status = await fresh_cluster.status(node.address)
    assert sorted(status.gates) == ["gate-0", "gate-1"]
    code = await asyncio.to_thread(node.terminate, 15)
    assert code == 0
    assert node.exit_seconds is not None
    assert node.exit_seconds < EXIT_BOUND
    print(f"node with 2 gates attached exited with 0 in {node.exit_seconds:.2f}s")
