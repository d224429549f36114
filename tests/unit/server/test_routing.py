"""Routing against a fake view and fake nodes: owners found late, shards moving, deadlines,
unreachable owners, and calls that may have run never sent twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from goverse import wire
from goverse.errors import CallError, ShardNotServed
from goverse.server import NotSent, Routing
from goverse.server._routing import DEADLINE_MARGIN
from goverse.transport import ChannelPool, channel_options
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.addresses import SocketDir
from tests.helpers.fake_node import FakeNode, text
from tests.helpers.fake_view import FakeView
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

SHARD = 42
WAIT = 10.0

Sender = Callable[[str, float], Awaitable[node_pb2.NodeCallObjectResponse]]


@pytest.fixture
async def pool() -> AsyncIterator[ChannelPool]:
    """The channels routing watches and sends on, with the services' options (reconnect
    backoff from 200 ms to 2 s)."""
    channels = ChannelPool(channel_options(), interceptors=[])
    try:
        yield channels
    finally:
        await channels.close()


@pytest.fixture
async def nodes() -> AsyncIterator[list[FakeNode]]:
    """Two started fake nodes; stopped after the test."""
    started = [await FakeNode().start() for _ in range(2)]
    try:
        yield started
    finally:
        for node in started:
            await node.stop(0)


def sender(pool: ChannelPool) -> Sender:
    """Sends a CallObject as gates and nodes do: wait_for_ready, the timeout routing gives."""

    def send(address: str, timeout: float) -> Awaitable[node_pb2.NodeCallObjectResponse]:
        stub = node_pb2_grpc.NodeServiceStub(pool.get(address))
        request = node_pb2.NodeCallObjectRequest(
            object_type="Counter", object_id="c1", method="Get", request=text("hi")
        )
        reply: Awaitable[node_pb2.NodeCallObjectResponse] = stub.CallObject(
            request, timeout=timeout, wait_for_ready=True
        )
        return reply

    return send


async def test_a_call_goes_to_the_owner_of_its_shard(
    pool: ChannelPool, nodes: list[FakeNode]
) -> None:
    """The view names the owner; only the owner gets the call, once, and its answer is
    returned."""
    first, second = nodes
    view = FakeView(first.address, second.address, default_owner=first.address)
    view.set_owner(SHARD, second.address)
    reply = await Routing(view, pool).call(SHARD, sender(pool), 5)
    assert reply.response == text("hi")
    assert (len(first.calls), len(second.calls)) == (0, 1)
    assert second.calls[0].deadline is not None
    assert 4 < second.calls[0].deadline <= 5.1


async def test_a_call_for_a_shard_without_owner_waits_for_one(
    pool: ChannelPool, nodes: list[FakeNode]
) -> None:
    """No owner (the shard is moving, or its owner died): the call waits, and is sent once
    the view names an owner."""
    node = nodes[0]
    view = FakeView(node.address)
    call = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    try:
        await asyncio.sleep(0.2)  # the call must be held, not failed, meanwhile
        assert not call.done()
        view.set_owner(SHARD, node.address)
        reply = await bounded(call, WAIT)
    finally:
        await cancel_and_wait(call)
    assert reply.response == text("hi")
    assert len(node.calls) == 1


@pytest.mark.parametrize("refusal", list(wire.ShardRefusal))
async def test_a_refused_call_is_sent_again_to_the_next_owner(
    pool: ChannelPool, nodes: list[FakeNode], refusal: wire.ShardRefusal
) -> None:
    """The owner refuses the shard ("moving", or "not the owner": the view was stale): the
    call is retried, and succeeds on the owner the view names next."""
    old, new = nodes
    old.refuse = refusal
    view = FakeView(old.address, new.address, default_owner=old.address)
    call = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    try:
        await eventually(lambda: len(old.calls) >= 2, WAIT, "the old owner to refuse twice")
        assert not call.done()
        view.set_owner(SHARD, new.address)
        reply = await bounded(call, WAIT)
    finally:
        await cancel_and_wait(call)
    assert reply.response == text("hi")
    assert len(new.calls) == 1


async def test_a_call_refused_until_its_deadline_answers_the_refusal_in_time(
    pool: ChannelPool, nodes: list[FakeNode]
) -> None:
    """A shard that stays refused: the call is retried with backoff (not in a tight loop)
    and answers the node's refusal a margin before its deadline, so the caller gets it
    rather than its own DEADLINE_EXCEEDED."""
    node = nodes[0]
    node.refuse = wire.ShardRefusal.MOVING
    view = FakeView(node.address, default_owner=node.address)
    started = time.monotonic()
    with pytest.raises(CallError) as failed:
        await Routing(view, pool).call(SHARD, sender(pool), 1.0)
    elapsed = time.monotonic() - started
    assert failed.value.status_code == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.message == "shard refused: moving"
    assert 1.0 - DEADLINE_MARGIN - 0.05 < elapsed < 1.0, f"answered after {elapsed:.3f}s"
    assert 3 <= len(node.calls) <= 40, f"{len(node.calls)} attempts in 1 s"


async def test_an_unreachable_owner_is_unavailable_near_the_deadline(
    pool: ChannelPool, unreachable: str
) -> None:
    """Nothing listens at the owner's address: the call waits for it within its deadline,
    never sends anything, and answers UNAVAILABLE naming the node before the deadline."""
    view = FakeView(unreachable, default_owner=unreachable)
    started = time.monotonic()
    with pytest.raises(CallError) as failed:
        await Routing(view, pool).call(SHARD, sender(pool), 1.5)
    elapsed = time.monotonic() - started
    assert failed.value.status_code == grpc.StatusCode.UNAVAILABLE
    assert unreachable in failed.value.message
    assert 1.5 - DEADLINE_MARGIN - 0.05 < elapsed < 1.5, f"answered after {elapsed:.3f}s"


async def test_an_owner_that_starts_while_its_channel_backs_off_gets_the_call(
    pool: ChannelPool, sockets: SocketDir
) -> None:
    """The bug of a gate and a node started together: the gate's channel failed to connect
    and sits in gRPC's reconnect backoff when the node comes up. The call waits for the
    channel instead of failing fast with "failed to connect to all addresses"."""
    address = sockets.address("late")
    view = FakeView(address, default_owner=address)
    channel = pool.get(address)
    channel.get_state(try_to_connect=True)
    await eventually(
        lambda: channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        WAIT,
        "the channel to fail its first connection",
    )
    call = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    node = FakeNode()
    try:
        await asyncio.sleep(0.05)
        await node.start(unix=address)
        reply = await bounded(call, WAIT)
    finally:
        await cancel_and_wait(call)
        await node.stop(0)
    assert reply.response == text("hi")
    assert len(node.calls) == 1


async def test_a_view_change_frees_a_call_waiting_for_an_unreachable_owner(
    pool: ChannelPool, nodes: list[FakeNode], unreachable: str
) -> None:
    """The owner died and the view moves its shard: a call waiting for the dead owner goes
    to the new one at once, not after a backoff or its deadline."""
    node = nodes[0]
    view = FakeView(unreachable, node.address, default_owner=unreachable)
    call = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    try:
        await asyncio.sleep(0.3)
        assert not call.done()
        moved = time.monotonic()
        view.set_owner(SHARD, node.address)
        await bounded(call, WAIT)
    finally:
        await cancel_and_wait(call)
    took = time.monotonic() - moved
    assert took < 0.5, f"the call went to the new owner {took:.3f}s after the change"
    assert len(node.calls) == 1


@pytest.mark.parametrize(
    "failure",
    [
        (grpc.StatusCode.UNAVAILABLE, "went away mid-call"),
        (grpc.StatusCode.FAILED_PRECONDITION, "calls itself"),
        (grpc.StatusCode.INTERNAL, "object raised"),
        None,
    ],
    ids=["unavailable", "failed-precondition-without-marker", "internal", "slow-node"],
)
async def test_a_call_that_failed_after_it_was_sent_is_not_sent_again(
    pool: ChannelPool, nodes: list[FakeNode], failure: tuple[grpc.StatusCode, str] | None
) -> None:
    """The node got the call and it may have run: whatever the status (UNAVAILABLE, a
    FAILED_PRECONDITION that is not a shard refusal, DEADLINE_EXCEEDED from a slow node),
    it is answered as it is, after one attempt."""
    node = nodes[0]
    if failure is None:
        node.call_delay = 2.0
    else:
        node.fail_with = failure
    code = grpc.StatusCode.DEADLINE_EXCEEDED if failure is None else failure[0]
    view = FakeView(node.address, default_owner=node.address)
    with pytest.raises(CallError) as failed:
        await Routing(view, pool).call(SHARD, sender(pool), 0.5 if failure is None else WAIT)
    assert failed.value.status_code == code
    if failure is not None and code != grpc.StatusCode.UNAVAILABLE:
        assert failed.value.message == failure[1]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert node.address in failed.value.message
    assert len(node.calls) == 1


async def test_a_call_owned_by_this_node_is_sent_without_a_channel(pool: ChannelPool) -> None:
    """On a node, a call whose owner is the node itself goes to `send` at once, with the
    node's own address; a local refusal for the shard is retried like a remote one."""
    view = FakeView("me", default_owner="me")
    sent: list[tuple[str, float]] = []

    async def send(address: str, timeout: float) -> str:
        sent.append((address, timeout))
        if len(sent) == 1:
            raise ShardNotServed(SHARD, wire.ShardRefusal.MOVING, "moving")
        return "done"

    assert await Routing(view, pool, local="me").call(SHARD, send, 5) == "done"
    assert [address for address, _ in sent] == ["me", "me"]
    assert 4 < sent[0][1] <= 5


async def test_a_call_without_time_left_is_not_sent(
    pool: ChannelPool, nodes: list[FakeNode]
) -> None:
    view = FakeView(nodes[0].address, default_owner=nodes[0].address)
    with pytest.raises(CallError) as failed:
        await Routing(view, pool).call(SHARD, sender(pool), 0)
    assert failed.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert nodes[0].calls == []


async def test_a_waiting_call_can_be_cancelled(pool: ChannelPool, unreachable: str) -> None:
    """Cancelling a call that routing holds (its caller went away) ends it at once and
    leaves no task of routing's behind."""
    before = asyncio.all_tasks()
    view = FakeView(unreachable, default_owner=unreachable)
    call = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    await asyncio.sleep(0.2)
    await cancel_and_wait(call, timeout=1.0)
    assert call.cancelled()
    left = [task for task in asyncio.all_tasks() - before if task is not asyncio.current_task()]
    assert left == [], left


async def test_a_refused_call_waits_for_its_shard_to_change_owner_not_for_any_change(
    pool: ChannelPool, nodes: list[FakeNode]
) -> None:
    """While shards move, the view changes with every key; a call its owner refused as moving
    is sent again when *its* shard has a new owner, not on each of those changes (which made
    it meet the same refusal again and again, and its backoff grow to a second)."""
    first, second = nodes
    first.refuse = wire.ShardRefusal.MOVING
    view = FakeView(first.address, second.address, default_owner=first.address)
    calling = asyncio.create_task(Routing(view, pool).call(SHARD, sender(pool), WAIT))
    await eventually(lambda: len(first.calls) >= 1, WAIT, "the first refusal")
    for other in range(30):  # other shards change owner, 30 times over 0.6 s
        view.set_owner(other + 1000, second.address)
        await asyncio.sleep(0.02)
    refusals = len(first.calls)
    view.set_owner(SHARD, second.address)
    reply = await bounded(calling, WAIT)
    assert reply.response == text("hi")
    assert refusals <= 10, f"{refusals} refusals while other shards moved"
    assert len(second.calls) == 1


# -- a call stream's errors (the gate's transport) -------------------------------------------


async def test_a_call_not_sent_by_its_stream_is_sent_again(pool: ChannelPool) -> None:
    """A send that raises NotSent (its stream could not take it) is held and tried again;
    the second attempt's answer is returned."""
    node = await FakeNode().start()
    try:
        attempts: list[str] = []

        async def send(address: str, timeout: float) -> str:
            attempts.append(address)
            if len(attempts) == 1:
                raise NotSent("the call stream has ended")
            return "answered"

        view = FakeView(node.address, default_owner=node.address)
        assert await Routing(view, pool).call(SHARD, send, WAIT) == "answered"
        assert attempts == [node.address, node.address]
    finally:
        await node.stop(0)


async def test_a_stream_reply_with_a_refusal_is_sent_again_and_one_without_is_not(
    pool: ChannelPool,
) -> None:
    """A CallError carrying a shard refusal is retried like the goverse-shard trailer; an
    UNAVAILABLE without one is answered at once, naming the node, as for a unary call."""
    node = await FakeNode().start()
    try:
        attempts = 0

        async def refused_once(address: str, timeout: float) -> str:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise CallError(
                    grpc.StatusCode.FAILED_PRECONDITION, "moving", wire.ShardRefusal.MOVING
                )
            return "answered"

        view = FakeView(node.address, default_owner=node.address)
        assert await Routing(view, pool).call(SHARD, refused_once, WAIT) == "answered"
        assert attempts == 2

        async def broken(address: str, timeout: float) -> str:
            raise CallError(grpc.StatusCode.UNAVAILABLE, "Socket closed")

        with pytest.raises(CallError) as raised:
            await Routing(view, pool).call(SHARD, broken, WAIT)
        assert raised.value.status_code == grpc.StatusCode.UNAVAILABLE
        assert raised.value.message == f"node {node.address} is unavailable: Socket closed"
    finally:
        await node.stop(0)
