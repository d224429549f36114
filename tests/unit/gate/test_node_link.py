"""NodeLink: ack first, envelopes to the right proxies, reconnect with backoff, cancellable."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import structlog

from goverse import wire
from goverse.gate import ClientRegistry, LinkState, NodeLink
from goverse.server import Supervisor
from goverse.transport import Backoff, ChannelPool, channel_options
from goverse.v1 import node_pb2
from tests.helpers.fake_node import FakeNode, broadcast, to_clients
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

WAIT = 15.0  # generous: a loaded 2-core machine


class CeilingRandom(random.Random):
    """No jitter: every backoff delay is its ceiling, so delays are known in advance."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Links:
    """Builds links to fake nodes and stops them all after the test."""

    registry: ClientRegistry = field(
        default_factory=lambda: ClientRegistry(
            "g1",
            max_clients=100,
            queue_messages=100,
            queue_bytes=1 << 20,
            max_message_bytes=1 << 22,
        )
    )
    pool: ChannelPool = field(default_factory=lambda: ChannelPool(channel_options()))
    supervisor: Supervisor = field(default_factory=lambda: Supervisor("test"))

    def start(
        self,
        node: FakeNode,
        *,
        initial: float = 0.05,
        maximum: float = 0.2,
        stable_after: float = 10.0,
        heartbeat_timeout: float = 60.0,
    ) -> tuple[NodeLink, asyncio.Task[None]]:
        link = NodeLink(
            node.address,
            "g1",
            functools.partial(self.pool.get, node.address),
            self.registry,
            backoff=Backoff(
                timedelta(seconds=initial), timedelta(seconds=maximum), rng=CeilingRandom()
            ),
            stable_after=timedelta(seconds=stable_after),
            heartbeat_timeout=timedelta(seconds=heartbeat_timeout),
        )
        task = self.supervisor.spawn(f"node-link:{node.address}", link.run())
        return link, task


@pytest.fixture
async def links() -> AsyncIterator[Links]:
    made = Links()
    try:
        yield made
    finally:
        assert await made.supervisor.shutdown(5.0) == []
        await made.pool.close()


async def connected(link: NodeLink, connections: int = 1) -> None:
    await bounded(
        link.wait_for(lambda lk: lk.state is LinkState.CONNECTED and lk.connections >= connections),
        WAIT,
    )


async def test_ack_then_envelopes_reach_the_right_proxies(
    fake_node: FakeNode, links: Links
) -> None:
    """After the ack, each envelope is pushed to the clients it names; broadcasts to all."""
    a, b = links.registry.register(), links.registry.register()
    link, _ = links.start(fake_node)
    await connected(link)
    assert fake_node.registrations == ["g1"]
    fake_node.send(to_clients([a.client_id], "for a"), broadcast("for all"))
    await eventually(lambda: a.queued == 2 and b.queued == 1, WAIT, "pushes queued")
    assert link.batches == 1


async def test_first_message_must_be_the_ack(fake_node: FakeNode, links: Links) -> None:
    """A stream that starts with anything but the ack is torn down and nothing is delivered."""
    client = links.registry.register()
    fake_node.first_event = node_pb2.RegisterGateResponse(
        envelopes=node_pb2.EnvelopeBatch(envelopes=[to_clients([client.client_id], "early")])
    )
    link, _ = links.start(fake_node)
    await eventually(lambda: link.attempts >= 2, WAIT, "a retry")
    assert "before the ack" in link.last_error
    assert link.connections == 0
    assert client.queued == 0


async def test_reconnects_after_the_node_ends_the_stream(fake_node: FakeNode, links: Links) -> None:
    """A stream the node ends normally is reopened, one stream at a time."""
    link, _ = links.start(fake_node)
    await connected(link)
    fake_node.end_streams()
    await connected(link, connections=2)
    assert "ended the stream" in link.last_error
    assert fake_node.registrations == ["g1", "g1"]
    assert fake_node.max_active == 1


async def test_a_node_that_stops_ends_its_link_as_planned_not_as_a_fault(
    fake_node: FakeNode, links: Links
) -> None:
    """A stream the node ends with the close reason ``shutdown`` (a rollout) is a planned end:
    logged at INFO, and so are the failed attempts while the node is away; a stream ended with
    no reason is a WARNING, as is the first failure after it."""
    link, _ = links.start(fake_node, initial=0.05, maximum=0.1)
    await connected(link)
    with structlog.testing.capture_logs() as planned:
        fake_node.end_streams(wire.CloseReason.SHUTDOWN)
        # A grace, as a node's stop has: the stream just ended must reach the gate with its
        # trailers; stop(0) could cancel it first (then it is rightly a fault, a WARNING).
        await fake_node.stop(1.0)
        await eventually(lambda: link.attempts >= 4, WAIT, "three failed retries")
    await fake_node.start(fake_node.port)
    await connected(link, connections=2)
    with structlog.testing.capture_logs() as unplanned:
        fake_node.end_streams()
        await connected(link, connections=3)

    def levels(logs: list[MutableMapping[str, Any]], event: str) -> list[str]:
        return [line["log_level"] for line in logs if line["event"] == event]

    assert levels(planned, "node link lost") == ["info"]
    assert [line["planned"] for line in planned if line["event"] == "node link lost"] == [True]
    assert set(levels(planned, "node link failed")) == {"info"}
    assert levels(unplanned, "node link lost") == ["warning"]


async def test_a_replaced_link_resets_its_backoff_and_warns(
    fake_node: FakeNode, links: Links
) -> None:
    """A stream the node ends because another registration of this gate id replaced it
    (close reason ``replaced``) is said at WARNING, and the backoff grown by earlier
    failures is reset, so the link is back at once."""
    link, _ = links.start(fake_node, initial=0.05, maximum=60.0, stable_after=3600)
    await connected(link)
    for _ in range(10):  # as if the earlier connections had failed
        link._backoff.next_delay()
    with structlog.testing.capture_logs() as logs:
        fake_node.end_streams(wire.CloseReason.REPLACED)
        await connected(link, connections=2)
    replaced = [line for line in logs if line["event"].startswith("node link replaced")]
    assert [line["log_level"] for line in replaced] == ["warning"]
    assert link._backoff.attempt <= 1
    assert "replaced" in link.last_error


async def test_reconnects_after_the_node_restarts_on_the_same_port(
    fake_node: FakeNode, links: Links
) -> None:
    """While the node is down the link retries with growing delays (no tight loop); once the
    node is back on the same port, the link registers again by itself."""
    link, _ = links.start(fake_node, initial=0.05, maximum=0.2)
    await connected(link)
    await fake_node.stop(0)
    down_at = time.monotonic()
    await eventually(lambda: link.attempts >= 6, WAIT, "five failed retries")
    elapsed = time.monotonic() - down_at
    # Delays (no jitter) after the loss: 0.05, 0.1, 0.2, 0.2, 0.2 before attempt 6.
    assert elapsed >= 0.7, f"retried too fast: 5 attempts in {elapsed:.3f}s"
    assert link.state in (LinkState.BACKING_OFF, LinkState.CONNECTING)
    await fake_node.start(fake_node.port)
    restarted_at = time.monotonic()
    await connected(link, connections=2)
    print(f"link re-registered {time.monotonic() - restarted_at:.3f}s after the node restart")
    assert fake_node.max_active == 1


async def test_backoff_grows_without_a_stable_connection_and_resets_after_one(
    fake_node: FakeNode, links: Links
) -> None:
    """Connections shorter than stable_after keep the backoff growing; a stable one resets it."""
    fake_node.end_after_ack = True
    flapping, _ = links.start(fake_node, initial=0.01, maximum=0.05, stable_after=3600)
    await eventually(lambda: flapping.connections >= 4, WAIT, "four flapping connections")
    assert flapping._backoff.attempt >= 3

    other = await FakeNode(end_after_ack=True).start()
    try:
        stable, _ = links.start(other, initial=0.01, maximum=0.05, stable_after=0)
        await eventually(lambda: stable.connections >= 4, WAIT, "four stable connections")
        assert stable._backoff.attempt <= 1
    finally:
        await other.stop(0)


async def test_heartbeat_timeout_tears_down_a_silent_stream(
    fake_node: FakeNode, links: Links
) -> None:
    """A link that receives nothing for the heartbeat timeout reconnects, and the old call is
    cancelled on the node's side."""
    link, _ = links.start(fake_node, heartbeat_timeout=0.3)
    await connected(link)
    await connected(link, connections=2)
    assert "nothing received for 0.3s" in link.last_error
    await eventually(lambda: fake_node.active <= 1, WAIT, "the silent stream to be cancelled")


async def test_heartbeats_keep_a_quiet_link_up(fake_node: FakeNode, links: Links) -> None:
    """Heartbeats count as traffic: a link that gets them does not time out."""
    link, _ = links.start(fake_node, heartbeat_timeout=2.0)
    await connected(link)
    heartbeat = node_pb2.RegisterGateResponse(heartbeat=node_pb2.Heartbeat(sent_unix_ms=1))
    for _ in range(30):  # 3 s of heartbeats every 0.1 s: longer than the timeout
        fake_node.send_event(heartbeat)
        await asyncio.sleep(0.1)
    assert link.connections == 1
    assert link.state is LinkState.CONNECTED


async def test_stop_returns_promptly_while_the_node_stays_silent(
    fake_node: FakeNode, links: Links
) -> None:
    """The cancellation proof: the node sends nothing after the ack and the heartbeat timeout
    is a minute away, yet cancelling the link ends it at once and cancels the call."""
    link, task = links.start(fake_node, heartbeat_timeout=60)
    await connected(link)
    assert fake_node.active == 1
    started = time.monotonic()
    await cancel_and_wait(task, 5)
    assert task.cancelled()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"cancelling the link took {elapsed:.3f}s"
    assert link.state is LinkState.STOPPED
    await eventually(lambda: fake_node.active == 0, WAIT, "the node to see the call cancelled")


async def test_stop_returns_promptly_while_backing_off(links: Links) -> None:
    """Cancelling a link that waits out a long backoff delay ends it at once."""
    node = FakeNode(port=1)  # nothing listens on port 1: every attempt fails at once
    link, task = links.start(node, initial=30, maximum=30)
    await bounded(link.wait_for(lambda lk: lk.state is LinkState.BACKING_OFF), WAIT)
    started = time.monotonic()
    await cancel_and_wait(task, 5)
    assert task.cancelled()
    assert time.monotonic() - started < 1.0
    assert "UNAVAILABLE" in link.last_error


async def test_gates_reconnecting_to_a_restarted_node_do_not_arrive_in_step() -> None:
    """Twelve gates lose a node that comes back a second later: they all reconnect, spread
    over their jittered backoff rather than in one burst, each having retried a bounded
    number of times (no tight loop) while the node was down."""
    node = await FakeNode().start()
    pools = [
        ChannelPool([*channel_options(), ("grpc.use_local_subchannel_pool", 1)]) for _ in range(12)
    ]
    supervisor = Supervisor("storm")
    registry = ClientRegistry(
        "g", max_clients=1, queue_messages=1, queue_bytes=1024, max_message_bytes=1 << 22
    )
    links = [
        NodeLink(
            node.address,
            f"g{index}",
            functools.partial(pool.get, node.address),
            registry,
            backoff=Backoff(timedelta(milliseconds=100), timedelta(seconds=1)),
            stable_after=timedelta(seconds=10),
            heartbeat_timeout=timedelta(seconds=60),
        )
        for index, pool in enumerate(pools)
    ]
    try:
        for link in links:
            supervisor.spawn(f"node-link:{link.address}", link.run())
        await eventually(lambda: len(node.registrations) == 12, WAIT, "every link to connect")
        await node.stop(0)
        await eventually(
            lambda: all(link.state is not LinkState.CONNECTED for link in links), WAIT, "loss"
        )
        lost_at = time.monotonic()
        await asyncio.sleep(1.0)  # the node stays down for a second: links retry meanwhile
        node.registrations.clear()
        node.registered_at.clear()
        await node.start()
        await eventually(lambda: len(node.registrations) == 12, WAIT, "every link to return")
        arrivals = node.registered_at
        retries = [link.attempts - 1 for link in links]
        spread = max(arrivals) - min(arrivals)
        print(
            f"\n12 links came back over {spread * 1000:.0f} ms, after {min(retries)}-"
            f"{max(retries)} attempts each in {time.monotonic() - lost_at:.1f}s"
        )
        assert spread > 0.05
        assert max(retries) <= 15
    finally:
        await supervisor.shutdown(5.0)
        for pool in pools:
            await pool.close()
        await node.stop(0)
