"""GateApp in-process against a fake node: registration, pushes, verified calls, shutdown, leaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from goverse import wire
from goverse.gate import GateApp, GateConfig, LinkState
from goverse.placement import shard_of
from goverse.v1 import gate_pb2
from goverse.wire import CloseReason, close_reason_of
from tests.helpers.addresses import SocketDir
from tests.helpers.fake_node import FakeNode, broadcast, text, to_clients
from tests.helpers.fake_view import FakeView
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually


def config(*nodes: str, **overrides: Any) -> GateConfig:
    settings: dict[str, Any] = {
        "gate_id": "g1",
        "nodes": nodes,
        "listen": "127.0.0.1:0",
        "reconnect_initial": timedelta(milliseconds=50),
        "reconnect_max": timedelta(milliseconds=500),
    }
    settings.update(overrides)
    return GateConfig(**settings)


class Gate:
    """A started GateApp and the clients a test opened on it; all closed afterwards."""

    def __init__(self, app: GateApp) -> None:
        self.app = app
        self.clients: list[GateClient] = []

    async def client(self) -> GateClient:
        client = await GateClient(self.app.address).connect()
        self.clients.append(client)
        return client

    async def linked(self) -> None:
        """Waits until every node link is connected and the gate has reported itself ready."""
        for link in self.app.links.values():
            await bounded(link.wait_for(lambda lk: lk.state is LinkState.CONNECTED), WAIT)
        await eventually(lambda: self.app.node_links.reported is True, WAIT, "readiness")

    async def health(self, service: str) -> int:
        """The health status the gate reports for `service` now."""
        async with grpc.aio.insecure_channel(self.app.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        return int(reply.status)

    async def reports(self, status: int) -> bool:
        """Whether the gate's readiness (the GateService status) is `status` now."""
        return await self.health(wire.GATE_SERVICE) == status

    async def close(self) -> None:
        await self.app.stop()
        for client in self.clients:
            await client.close()


@pytest.fixture
async def make_gate() -> AsyncIterator[Callable[[GateConfig], Any]]:
    gates: list[Gate] = []

    async def make(cfg: GateConfig) -> Gate:
        app = GateApp(cfg)
        await app.start()
        gate = Gate(app)
        gates.append(gate)
        return gate

    try:
        yield make
    finally:
        for gate in gates:
            await gate.close()


@pytest.fixture
async def gate(fake_node: FakeNode, make_gate: Callable[[GateConfig], Any]) -> Gate:
    made: Gate = await make_gate(config(fake_node.address))
    await made.linked()
    return made


async def call(
    client: GateClient,
    *,
    metadata: Any = None,
    timeout: float | None = WAIT,
    fields: dict[str, str] | None = None,
) -> gate_pb2.CallObjectResponse:
    request = gate_pb2.CallObjectRequest(
        object_type=(fields or {}).get("object_type", "Counter"),
        object_id=(fields or {}).get("object_id", "c1"),
        method=(fields or {}).get("method", "Get"),
        request=text("payload"),
    )
    reply: gate_pb2.CallObjectResponse = await client.stub.CallObject(
        request, metadata=client.metadata() if metadata is None else metadata, timeout=timeout
    )
    return reply


async def test_register_first_event_carries_id_credential_and_gate(gate: Gate) -> None:
    """The first Register event is `registered`, with an id under this gate's id."""
    client = await gate.client()
    assert client.client_id.startswith("g1/")
    assert len(client.credential) >= 40
    assert client.events[0].registered.gate_id == "g1"
    assert client.client_id in gate.app.registry


async def test_one_gate_opens_exactly_one_link_per_node(gate: Gate, fake_node: FakeNode) -> None:
    """No duplicate links: one RegisterGate stream, under the gate's id, run by one link task
    (beside the task that keeps the links following the view, the one that keeps the
    Describe catalog fresh and the one that closes departed nodes' channels)."""
    assert list(gate.app.links) == [fake_node.address]
    assert fake_node.registrations == ["g1"]
    assert fake_node.max_active == 1
    assert sorted(gate.app.supervisor.task_names()) == [
        "channel-sweep",
        "describe-catalog",
        f"node-link:{fake_node.address}",
        "node-links",
    ]


async def test_every_registration_names_the_gate_process_and_reconnections_the_same(
    gate: Gate, fake_node: FakeNode, make_gate: Callable[[GateConfig], Any]
) -> None:
    """A gate's RegisterGate names its process (`instance`), the same after a reconnection
    (so the node lets the reconnection replace the old stream) and another for another
    gate process given the same gate id (which the node then refuses)."""
    fake_node.end_streams()
    await eventually(lambda: len(fake_node.instances) == 2, WAIT, "the link to reconnect")
    assert fake_node.instances == [gate.app.instance] * 2
    assert gate.app.instance
    other: Gate = await make_gate(config(fake_node.address))
    await other.linked()
    assert fake_node.instances[2:] == [other.app.instance]
    assert other.app.instance != gate.app.instance


async def test_pushes_arrive_batched(gate: Gate, fake_node: FakeNode) -> None:
    """Fifty pushes in one envelope batch reach the client in one stream message."""
    client = await gate.client()
    other = await gate.client()
    fake_node.send(*[to_clients([client.client_id], f"m{i}") for i in range(50)])
    texts, messages = await client.pushed_texts(50)
    assert texts == [f"m{i}" for i in range(50)]
    assert messages == 1
    fake_node.send(broadcast("everyone"))
    assert (await other.pushed_texts(1))[0] == ["everyone"]
    assert (await client.pushed_texts(1))[0] == ["everyone"]


async def test_call_is_forwarded_with_the_trusted_client_id(
    gate: Gate, fake_node: FakeNode
) -> None:
    """A verified call reaches the node stamped with the client id from the registration,
    with the client's deadline; the node's answer comes back."""
    client = await gate.client()
    reply = await call(client, timeout=7)
    assert reply.response == text("payload")
    [received] = fake_node.calls
    assert received.method == "CallObject"
    assert received.request.caller.client_id == client.client_id
    assert (received.request.object_type, received.request.object_id) == ("Counter", "c1")
    assert received.deadline is not None
    assert 0 < received.deadline <= 7.1  # the wire rounds timeouts up a little
    assert "goverse-credential" not in received.metadata


async def test_calls_reach_a_node_of_a_version_without_call_streams(
    gate: Gate, fake_node: FakeNode
) -> None:
    """Mid-rollout, a node without ``NodeService.Calls`` still gets every call (as unary
    RPCs), the first one included: no call fails because the node is older."""
    fake_node.streams = False
    client = await gate.client()
    for _ in range(3):
        assert (await call(client, timeout=7)).response == text("payload")
    assert [received.method for received in fake_node.calls] == ["CallObject"] * 3


async def test_call_without_client_deadline_gets_the_call_timeout(
    gate: Gate, fake_node: FakeNode
) -> None:
    client = await gate.client()
    await call(client, timeout=None)
    [received] = fake_node.calls
    assert received.deadline is not None
    assert 25 < received.deadline <= 30.1


async def test_create_and_delete_are_forwarded(gate: Gate, fake_node: FakeNode) -> None:
    client = await gate.client()
    created = await client.stub.CreateObject(
        gate_pb2.CreateObjectRequest(object_type="Counter", object_id="c2"),
        metadata=client.metadata(),
    )
    deleted = await client.stub.DeleteObject(
        gate_pb2.DeleteObjectRequest(object_type="Counter", object_id="c2"),
        metadata=client.metadata(),
    )
    assert created.created
    assert deleted.deleted
    assert [c.method for c in fake_node.calls] == ["CreateObject", "DeleteObject"]
    assert all(c.request.caller.client_id == client.client_id for c in fake_node.calls)


@pytest.mark.parametrize(
    "case", ["no metadata", "wrong credential", "another client's id", "another's credential"]
)
async def test_unverified_calls_are_refused_and_reach_no_node(
    gate: Gate, fake_node: FakeNode, case: str
) -> None:
    """Without the caller's own credential a call gets UNAUTHENTICATED and nothing is sent."""
    me = await gate.client()
    other = await gate.client()
    metadata = {
        "no metadata": (),
        "wrong credential": me.metadata(credential="not-it"),
        "another client's id": me.metadata(client_id=other.client_id),
        "another's credential": me.metadata(credential=other.credential),
    }[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(me, metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert other.credential not in (refused.value.details() or "")
    assert fake_node.calls == []


async def test_credential_stops_working_when_its_stream_ends(
    gate: Gate, fake_node: FakeNode
) -> None:
    client = await gate.client()
    client.stream.cancel()
    await eventually(lambda: len(gate.app.registry) == 0, WAIT, "the proxy to be removed")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(client)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fake_node.calls == []


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"object_type": ""}, "object_type is empty"),
        ({"object_type": "not a type"}, "not a name"),
        ({"object_id": ""}, "object_id is empty"),
        ({"object_id": "x" * 300}, "longer than 256 bytes"),
        ({"method": ""}, "method is empty"),
        ({"method": "no-dashes"}, "not a method name"),
    ],
)
async def test_bad_ids_are_invalid_argument(
    gate: Gate, fake_node: FakeNode, fields: dict[str, str], problem: str
) -> None:
    client = await gate.client()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(client, fields=fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (refused.value.details() or "")
    assert fake_node.calls == []


async def test_node_errors_keep_their_code_and_details(gate: Gate, fake_node: FakeNode) -> None:
    client = await gate.client()
    fake_node.fail_with = (grpc.StatusCode.FAILED_PRECONDITION, "not my object")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(client)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "not my object"


async def test_unreachable_node_is_unavailable_before_the_deadline(
    unreachable: str, make_gate: Callable[[GateConfig], Any]
) -> None:
    """With nothing listening at the owner's address, the call waits for the node within its
    deadline (it may be starting), then fails with UNAVAILABLE naming the node, just before
    the deadline so the client gets the gate's answer rather than DEADLINE_EXCEEDED."""
    dead = unreachable
    gate: Gate = await make_gate(config(dead))
    client = await gate.client()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(client, timeout=2)
    elapsed = time.monotonic() - started
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dead in (failed.value.details() or "")
    assert 1.5 < elapsed < 2, f"took {elapsed:.2f}s"


async def test_max_clients_refuses_register_with_resource_exhausted(
    fake_node: FakeNode, make_gate: Callable[[GateConfig], Any]
) -> None:
    gate: Gate = await make_gate(config(fake_node.address, max_clients=2))
    await gate.client()
    await gate.client()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gate.client()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(gate.app.registry) == 2


async def test_proxy_is_removed_when_the_client_cancels(gate: Gate) -> None:
    """A client that cancels its stream leaves no proxy and no stream task behind."""
    client = await gate.client()
    assert gate.app.supervisor.tasks_named("client:")
    client.stream.cancel()
    await eventually(
        lambda: len(gate.app.registry) == 0 and not gate.app.supervisor.tasks_named("client:"),
        WAIT,
        "the proxy and its stream task to go",
    )


async def test_proxy_is_removed_when_the_client_channel_closes(gate: Gate) -> None:
    client = await gate.client()
    await client.channel.close()
    await eventually(lambda: len(gate.app.registry) == 0, WAIT, "the proxy to go")


async def test_stop_sends_draining_after_queued_pushes_then_ends_streams(
    gate: Gate, fake_node: FakeNode
) -> None:
    """stop(): every client gets what was queued, then Draining, then the stream ends OK."""
    clients = [await gate.client() for _ in range(5)]
    fake_node.send(broadcast("last words"))
    await eventually(lambda: gate.app.registry.delivered == 5, WAIT, "the broadcast")
    started = time.monotonic()
    await gate.app.stop()
    elapsed = time.monotonic() - started
    for client in clients:
        events = await client.rest_of_stream()
        kinds = [event.WhichOneof("event") for event in events]
        assert kinds[-1] == "draining", kinds
        assert set(kinds[:-1]) <= {"messages"}
        assert events[-1].draining.reason == "the gate is shutting down"
        assert await client.stream.code() == grpc.StatusCode.OK
    assert elapsed < 2, f"stop took {elapsed:.2f}s with every client reading"


async def test_stop_with_a_client_that_never_reads(gate: Gate, fake_node: FakeNode) -> None:
    """A client that stopped reading cannot hold the gate beyond its shutdown budget: its
    stream is cancelled once the drain wait is over, and stop() still completes."""
    stalled = await GateClient.stalled(gate.app.address).connect()
    gate.clients.append(stalled)
    reader = await gate.client()
    for _ in range(60):
        fake_node.send(to_clients([stalled.client_id], "x" * 60_000))
    fake_node.send(broadcast("bye"))
    await eventually(lambda: gate.app.registry.delivered == 62, WAIT, "the pushes to queue")
    started = time.monotonic()
    await gate.app.stop()
    elapsed = time.monotonic() - started
    print(f"stop with a stalled client took {elapsed:.3f}s")
    assert elapsed < 5 + 1.5
    assert len(gate.app.registry) == 0
    assert gate.app.supervisor.task_names() == []
    events = await reader.rest_of_stream()
    assert events[-1].WhichOneof("event") == "draining"


async def test_stop_is_prompt_while_a_node_stays_silent(
    fake_node: FakeNode, make_gate: Callable[[GateConfig], Any]
) -> None:
    """The cancellation proof at the app level: the node sends nothing after the ack and the
    heartbeat timeout is a minute away, yet stop() returns at once and the link's call ends."""
    gate: Gate = await make_gate(
        config(fake_node.address, node_heartbeat_timeout=timedelta(seconds=60))
    )
    await gate.linked()
    assert fake_node.active == 1
    started = time.monotonic()
    await gate.app.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"stop took {elapsed:.3f}s"
    [link] = gate.app.links.values()
    assert link.state is LinkState.STOPPED
    await eventually(lambda: fake_node.active == 0, WAIT, "the node to see the link end")


async def test_stop_is_idempotent_concurrent_and_safe_before_start(fake_node: FakeNode) -> None:
    never_started = GateApp(config(fake_node.address))
    await never_started.stop()
    await never_started.stop()
    with pytest.raises(RuntimeError):
        await never_started.start()

    app = GateApp(config(fake_node.address))
    await app.start()
    await asyncio.gather(app.stop(), app.stop())
    await app.stop()
    assert not app.running


async def test_stop_leaves_no_task_behind(fake_node: FakeNode) -> None:
    """The asyncio version of the review's goroutine-leak test: with links up, clients
    registered, pushes and calls done, stop() leaves no task the gate created."""
    before = asyncio.all_tasks()
    app = GateApp(config(fake_node.address))
    await app.start()
    gate = Gate(app)
    await gate.linked()
    clients = [await gate.client() for _ in range(10)]
    fake_node.send(broadcast("hello"))
    for client in clients:
        assert (await client.pushed_texts(1))[0] == ["hello"]
    await call(clients[0])
    await app.stop()
    for client in clients:
        assert (await client.rest_of_stream())[-1].WhichOneof("event") == "draining"
        await client.close()
    # The gate is fully stopped; stop the fake node too, so its server's tasks are gone and
    # whatever is left was created by the gate (or by the test's clients).
    await eventually(lambda: fake_node.active == 0, WAIT, "the fake node to see the link end")
    await fake_node.stop(0)
    left = [task for task in asyncio.all_tasks() - before if task is not asyncio.current_task()]
    # grpc's own task per RPC ("rpc_task", its server's, not the gate's) may still need a turn
    # of the loop to finish after its server stopped (seen once under load: pending, its
    # awaited future already done). Wait for those only, bounded; the gate's tasks must
    # already be gone.
    grpc_tasks = [task for task in left if task.get_name() == "rpc_task"]
    if grpc_tasks:
        await asyncio.wait(grpc_tasks, timeout=WAIT)
    left = [task for task in left if not task.done()]
    assert left == [], [repr(task) for task in left]
    assert len(app.supervisor) == 0
    assert len(app.registry) == 0
    await app.stop()  # and a second stop is still safe


async def test_registers_while_draining_are_unavailable(gate: Gate, fake_node: FakeNode) -> None:
    """Once the gate drains, a new Register gets UNAVAILABLE ("connect to another gate"), not a
    registration that would be cut at once. (Calls while draining: test_slow_clients.py.)"""
    gate.app.registry.drain("test drain")
    late = GateClient(gate.app.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.connect()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (refused.value.details() or "")
    finally:
        await late.close()
    assert fake_node.calls == []


async def test_streams_the_draining_gate_ends_carry_close_reason_shutdown(gate: Gate) -> None:
    """A drained stream ends OK after Draining, and a registration refused while draining
    ends UNAVAILABLE; both carry goverse-close-reason: shutdown."""
    client = await gate.client()
    gate.app.registry.drain("test drain")
    assert (await client.rest_of_stream())[-1].WhichOneof("event") == "draining"
    assert await client.stream.code() == grpc.StatusCode.OK
    assert close_reason_of(await client.stream.trailing_metadata()) is CloseReason.SHUTDOWN
    late = GateClient(gate.app.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.connect()
        assert close_reason_of(refused.value.trailing_metadata()) is CloseReason.SHUTDOWN
    finally:
        await late.close()


async def test_health_reports_not_serving_once_stop_begins(gate: Gate) -> None:
    """Health flips to NOT_SERVING for the server and the GateService name as stop begins."""
    async with grpc.aio.insecure_channel(gate.app.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "goverse.v1.GateService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=service))
            for service in ("", "goverse.v1.GateService")
        ]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(gate.app.stop())
        async with asyncio.timeout(WAIT):
            for watch in watches:
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        for watch in watches:
            watch.cancel()
        await stopping


async def test_a_gate_whose_only_node_is_down_is_live_but_not_ready(
    sockets: SocketDir, make_gate: Callable[[GateConfig], Any]
) -> None:
    """Readiness is the GateService status: NOT_SERVING while no node link is connected (the
    gate could route nowhere), SERVING once one is, NOT_SERVING again when it is lost. The
    overall "" status, liveness, stays SERVING throughout."""
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    address = sockets.address("node")
    gate: Gate = await make_gate(config(address))
    [link] = gate.app.links.values()
    await bounded(link.wait_for(lambda lk: lk.attempts >= 2), WAIT)
    assert await gate.health(wire.GATE_SERVICE) == not_serving
    assert await gate.health("") == serving

    node = FakeNode()
    try:
        await node.start(unix=address)
        await eventually(lambda: gate.reports(serving), WAIT, "the gate to be ready")
        assert await gate.health("") == serving
        await node.stop(0)
        await eventually(lambda: gate.reports(not_serving), WAIT, "readiness to go")
        assert await gate.health("") == serving
    finally:
        await node.stop(0)


async def test_a_call_to_a_moving_shard_is_held_and_served_by_its_new_owner(
    make_gate: Callable[[GateConfig], Any],
) -> None:
    """With the view a gate is given (the seam the etcd view plugs into): the owner answers
    "moving", the gate holds the call, and sends it to the next owner once the view names it;
    the client sees one successful call."""
    old, new = FakeNode(), FakeNode()
    await old.start()
    await new.start()
    try:
        old.refuse = wire.ShardRefusal.MOVING
        view = FakeView(old.address, new.address, default_owner=old.address)
        app = GateApp(config(old.address, new.address), view=view)
        await app.start()
        gate = Gate(app)
        try:
            await gate.linked()
            client = await gate.client()
            calling = asyncio.create_task(call(client))
            try:
                await eventually(lambda: len(old.calls) >= 2, WAIT, "the old owner to refuse")
                assert not calling.done()
                view.set_owner(shard_of("Counter", "c1"), new.address)
                reply = await bounded(calling, WAIT)
            finally:
                await cancel_and_wait(calling)
        finally:
            await gate.close()
    finally:
        await old.stop(0)
        await new.stop(0)
    assert reply.response == text("payload")
    [received] = new.calls
    assert received.request.caller.client_id == client.client_id
