"""A gate's node links on a real etcd view: a leaving node keeps its link until its key goes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from goverse.gate import ClientRegistry, LinkState, NodeLink
from goverse.gate._node_links import NodeLinks
from goverse.server import NodeInfo, Supervisor
from goverse.server._cluster_keys import ClusterKeys, encode_node
from goverse.server._etcd import EtcdClient
from goverse.server._etcd_view import EtcdView
from goverse.transport import Backoff, ChannelPool, channel_options
from tests.helpers.fake_node import FakeNode, broadcast
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

PREFIX = "/goverse"
KEYS = ClusterKeys(PREFIX)
WAIT = 15.0  # generous: a loaded 2-core machine


class Gate:
    """What a gate gives its NodeLinks — a supervisor, a pool, a registry — over `view`."""

    def __init__(self, view: EtcdView) -> None:
        self.supervisor = Supervisor("test")
        self.pool = ChannelPool(channel_options(), interceptors=[])
        self.registry = ClientRegistry(
            "g1", max_clients=10, queue_messages=10, queue_bytes=1 << 20, max_message_bytes=1 << 22
        )
        self.links = NodeLinks(view, self.supervisor, self.open_link, self.report, recheck=0.2)

    def open_link(self, node: NodeInfo, on_state: Callable[[NodeLink], None]) -> NodeLink:
        return NodeLink(
            node.address,
            "g1",
            functools.partial(self.pool.get, node.address),
            self.registry,
            backoff=Backoff(timedelta(milliseconds=20), timedelta(milliseconds=100)),
            stable_after=timedelta(seconds=10),
            heartbeat_timeout=timedelta(seconds=60),
            on_state=on_state,
        )

    async def report(self, routable: bool) -> None:
        pass

    async def connected(self, node: FakeNode) -> NodeLink:
        """Waits until the link to `node` is open and connected; returns it."""
        await eventually(lambda: node.address in self.links.links, WAIT, "a link to the node")
        link = self.links.links[node.address]
        await bounded(link.wait_for(lambda lk: lk.state is LinkState.CONNECTED), WAIT)
        return link

    async def close(self) -> None:
        assert await self.supervisor.shutdown(WAIT) == []
        await self.pool.close()


@pytest.fixture
async def view(client: EtcdClient) -> AsyncIterator[EtcdView]:
    """A started EtcdView of the test's etcd, its watch running; cancelled after."""
    view = EtcdView(client, PREFIX, lease_ttl=timedelta(seconds=10))
    await view.start()
    run = asyncio.get_running_loop().create_task(view.run(), name="view")
    try:
        yield view
    finally:
        await cancel_and_wait(run)


@pytest.fixture
async def gate(view: EtcdView) -> AsyncIterator[Gate]:
    gate = Gate(view)
    try:
        yield gate
    finally:
        await gate.close()


@pytest.fixture
async def nodes() -> AsyncIterator[list[FakeNode]]:
    started = [await FakeNode().start() for _ in range(2)]
    try:
        yield started
    finally:
        for node in started:
            await node.stop(0)


async def register(
    client: EtcdClient, node: FakeNode, lease: int, *, leaving: bool = False
) -> None:
    """Puts `node`'s key (its id is its address) on `lease`, as the node itself does."""
    value = encode_node(node.address, f"{lease:x}", leaving=leaving)
    await client.put(KEYS.node(node.address), value, lease)


async def test_a_gate_keeps_its_link_to_a_leaving_node_until_its_key_is_deleted(
    client: EtcdClient, view: EtcdView, gate: Gate, nodes: list[FakeNode]
) -> None:
    """A node marks its key leaving: the gate keeps the same link and stream to it, and what
    the node pushes meanwhile (its objects deactivating as it hands its shards off) reaches
    the gate. Only once the node's key is deleted does the gate close the link and end the
    stream."""
    leaver, other = nodes
    lease = await client.grant(30)
    await register(client, leaver, lease)
    gate.links.start()
    link = await gate.connected(leaver)

    await register(client, leaver, lease, leaving=True)
    await eventually(lambda: view.nodes()[leaver.address].leaving, WAIT, "the view to see it")
    # Another node joins after the leave: once the gate links it, it has followed the view
    # past the leave.
    await register(client, other, lease)
    await gate.connected(other)
    assert gate.links.links[leaver.address] is link
    assert (link.connections, link.attempts) == (1, 1)  # up since it connected
    assert (leaver.registrations, leaver.active) == (["g1"], 1)
    batches = link.batches
    assert leaver.send(broadcast("deactivated")) == 1
    await eventually(lambda: link.batches == batches + 1, WAIT, "the push to reach the gate")

    await client.delete(KEYS.node(leaver.address))
    await eventually(lambda: leaver.active == 0, WAIT, "the stream to end")
    assert leaver.address not in gate.links.links
    assert link.state is LinkState.STOPPED
    assert leaver.registrations == ["g1"]
