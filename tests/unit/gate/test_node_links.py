"""NodeLinks: one link per live node of the view, opened and closed as nodes join and leave,
and the gate routable only while the view is ready and a link is connected."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from goverse.gate import ClientRegistry, LinkState, NodeLink
from goverse.gate._metrics import GateMetrics
from goverse.gate._node_links import NodeLinks
from goverse.server import NodeInfo, Supervisor
from goverse.transport import Backoff, ChannelPool, channel_options
from tests.helpers.fake_node import FakeNode
from tests.helpers.fake_view import FakeView
from tests.helpers.tasks import bounded
from tests.helpers.waiting import eventually

WAIT = 15.0  # generous: a loaded 2-core machine


class Gate:
    """What a gate gives its NodeLinks: a supervisor, a pool, a registry; and what it was
    told about being routable."""

    def __init__(self, view: FakeView) -> None:
        self.view = view
        self.supervisor = Supervisor("test")
        self.pool = ChannelPool(channel_options(), interceptors=[])
        self.registry = ClientRegistry(
            "g1", max_clients=10, queue_messages=10, queue_bytes=1 << 20, max_message_bytes=1 << 22
        )
        self.reports: list[bool] = []
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
        self.reports.append(routable)

    async def connected(self, *nodes: FakeNode) -> None:
        """Waits until the links to `nodes` are connected, and they are the only links."""
        await eventually(
            lambda: sorted(self.links.links) == sorted(node.address for node in nodes),
            WAIT,
            "the links to follow the view",
        )
        for link in self.links.links.values():
            await bounded(link.wait_for(lambda lk: lk.state is LinkState.CONNECTED), WAIT)

    def link_tasks(self) -> list[str]:
        return [name for name in self.supervisor.task_names() if name.startswith("node-link:")]

    async def close(self) -> None:
        assert await self.supervisor.shutdown(WAIT) == []
        await self.pool.close()


@pytest.fixture
async def nodes() -> AsyncIterator[list[FakeNode]]:
    started = [await FakeNode().start() for _ in range(3)]
    try:
        yield started
    finally:
        for node in started:
            await node.stop(0)


@pytest.fixture
async def make_gate() -> AsyncIterator[Callable[[FakeView], Gate]]:
    made: list[Gate] = []

    def make(view: FakeView) -> Gate:
        gate = Gate(view)
        made.append(gate)
        return gate

    try:
        yield make
    finally:
        for gate in made:
            await gate.close()


async def test_a_link_is_opened_at_start_for_each_node_of_the_view(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    """start() opens the links at once (not later in the follower), one task each."""
    gate = make_gate(FakeView(nodes[0].address, nodes[1].address))
    gate.links.start()
    assert sorted(gate.links.links) == sorted([nodes[0].address, nodes[1].address])
    await gate.connected(nodes[0], nodes[1])
    assert gate.link_tasks() == sorted(f"node-link:{n.address}" for n in nodes[:2])
    assert [node.registrations for node in nodes] == [["g1"], ["g1"], []]


async def test_links_follow_the_view_as_nodes_join_and_leave(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    """A node that joins gets a link; a node that leaves has its link closed (its stream
    ends, its task goes); the links of the nodes that stay are untouched."""
    first, second, third = nodes
    view = FakeView(first.address)
    gate = make_gate(view)
    gate.links.start()
    await gate.connected(first)
    kept = gate.links.links[first.address]

    view.set_nodes(first.address, second.address, third.address)
    await gate.connected(first, second, third)
    assert gate.links.links[first.address] is kept

    view.set_nodes(second.address)
    await gate.connected(second)
    await eventually(lambda: first.active == 0 and third.active == 0, WAIT, "streams to end")
    await eventually(
        lambda: gate.link_tasks() == [f"node-link:{second.address}"], WAIT, "tasks to go"
    )
    assert kept.state is LinkState.STOPPED
    assert first.registrations == ["g1"]
    assert second.max_active == 1


async def test_a_node_that_comes_back_gets_a_new_link(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    node = nodes[0]
    view = FakeView(node.address)
    gate = make_gate(view)
    gate.links.start()
    await gate.connected(node)
    old = gate.links.links[node.address]
    view.set_nodes()
    await eventually(lambda: not gate.links.links and node.active == 0, WAIT, "the link to go")
    view.set_nodes(node.address)
    await gate.connected(node)
    assert gate.links.links[node.address] is not old
    assert node.registrations == ["g1", "g1"]


async def test_the_gate_is_routable_while_the_view_is_ready_and_a_link_is_connected(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    """Reported once at start (not routable: nothing is connected yet), then on every flip:
    a link connects; the view loses its shard map; gets it back; the only node stops."""
    node = nodes[0]
    view = FakeView(node.address)
    gate = make_gate(view)
    gate.links.start()
    await eventually(lambda: gate.reports == [False, True], WAIT, "readiness")
    assert gate.links.routable

    view.set_ready(False)
    await eventually(lambda: gate.reports[-1] is False, WAIT, "not ready without a map")
    view.set_ready(True)
    await eventually(lambda: gate.reports[-1] is True, WAIT, "ready again")
    await node.stop(0)
    await eventually(lambda: gate.reports[-1] is False, WAIT, "not ready without a link")
    assert gate.reports == [False, True, False, True, False]


async def test_a_view_with_no_node_is_not_routable(make_gate: Callable[[FakeView], Gate]) -> None:
    gate = make_gate(FakeView())
    gate.links.start()
    await eventually(lambda: gate.reports == [False], WAIT, "the first report")
    assert gate.links.links == {}


async def test_stop_cancels_every_link_and_the_follower(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    """The supervisor owns every task: its shutdown leaves none, and the links STOPPED."""
    gate = make_gate(FakeView(nodes[0].address, nodes[1].address))
    gate.links.start()
    await gate.connected(nodes[0], nodes[1])
    assert await gate.supervisor.shutdown(WAIT) == []
    assert len(gate.supervisor) == 0
    assert {link.state for link in gate.links.links.values()} == {LinkState.STOPPED}
    await eventually(lambda: nodes[0].active == nodes[1].active == 0, WAIT, "streams to end")


def link_gauges(reader: InMemoryMetricReader) -> dict[str, dict[str, int]]:
    """The node-link gauge by state and the reconnect counter by node, as scraped now."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, dict[str, int]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint) and point.attributes:
                        label = str(next(iter(point.attributes.values())))
                        found.setdefault(metric.name, {})[label] = int(point.value)
    return found


async def test_the_gates_link_metrics_follow_the_links(
    nodes: list[FakeNode], make_gate: Callable[[FakeView], Gate]
) -> None:
    """GateMetrics reads the live links: a node that joins is counted, one that left is not."""
    first, second, _ = nodes
    view = FakeView(first.address)
    gate = make_gate(view)
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    GateMetrics(meter, gate.registry, gate.links.links)
    gate.links.start()
    await gate.connected(first)
    assert link_gauges(reader)["goverse.gate.node_links"]["connected"] == 1
    view.set_nodes(first.address, second.address)
    await gate.connected(first, second)
    scraped = link_gauges(reader)
    assert scraped["goverse.gate.node_links"]["connected"] == 2
    assert set(scraped["goverse.gate.node_link.reconnects"]) == {first.address, second.address}
    view.set_nodes(second.address)
    await gate.connected(second)
    scraped = link_gauges(reader)
    assert scraped["goverse.gate.node_links"]["connected"] == 1
    assert set(scraped["goverse.gate.node_link.reconnects"]) == {second.address}
