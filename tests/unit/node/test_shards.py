"""Shard table: admission in one step, draining that waits for calls in flight, fencing."""

from __future__ import annotations

import asyncio

import pytest

from goverse.errors import ShardNotServed, Unavailable
from goverse.node._shards import ShardState, ShardTable
from goverse.wire import ShardRefusal
from tests.helpers.tasks import bounded

WAIT = 5.0


async def test_only_an_owned_shard_admits_calls_and_says_why_otherwise() -> None:
    table = ShardTable("n1")
    with pytest.raises(ShardNotServed) as refused, table.admit(7):
        pass
    assert refused.value.reason is ShardRefusal.NOT_OWNER
    table.own(7, epoch=42)
    with table.admit(7) as epoch:
        assert epoch == 42
        assert table.in_flight(7) == 1
    assert table.in_flight(7) == 0
    table.start_draining(7)
    with pytest.raises(ShardNotServed) as refused, table.admit(7):
        pass
    assert refused.value.reason is ShardRefusal.MOVING


async def test_an_expired_lease_refuses_every_call_before_any_fencing() -> None:
    valid = [True]
    table = ShardTable("n1", lease_valid=lambda: valid[0])
    table.own(3)
    with table.admit(3):
        pass
    valid[0] = False
    with pytest.raises(ShardNotServed) as refused, table.admit(3):
        pass
    assert refused.value.reason is ShardRefusal.NOT_OWNER


async def test_an_admitted_call_may_run_only_while_the_shard_is_still_served() -> None:
    """still_admitted lets an admitted call run while its shard is owned or draining (a drain
    lets its calls finish), and refuses it as not the owner once the lease is no longer valid
    or the shard was fenced away."""
    valid = [True]
    table = ShardTable("n1", lease_valid=lambda: valid[0])
    table.own(4)
    table.still_admitted(4)
    table.start_draining(4)
    table.still_admitted(4)
    valid[0] = False
    with pytest.raises(ShardNotServed) as refused:
        table.still_admitted(4, "Witness/w-1")
    assert refused.value.reason is ShardRefusal.NOT_OWNER
    assert "Witness/w-1" in refused.value.message
    valid[0] = True
    table.fence()
    with pytest.raises(ShardNotServed):
        table.still_admitted(4)


async def test_draining_waits_for_the_calls_in_flight_and_admits_no_new_one() -> None:
    """A call admitted before the drain finishes; the drain returns once it has; a call that
    arrives meanwhile is refused as moving."""
    table = ShardTable("n1")
    table.own(1)
    release = asyncio.Event()

    async def call() -> None:
        with table.admit(1):
            await release.wait()

    running = asyncio.create_task(call())
    await asyncio.sleep(0)  # the call is admitted
    assert table.in_flight(1) == 1
    table.start_draining(1)
    assert not await table.drained(1, 0.05)  # still running: not drained within the bound
    with pytest.raises(ShardNotServed), table.admit(1):
        pass
    waiting = asyncio.create_task(table.drained(1, WAIT))
    release.set()
    assert await bounded(waiting, WAIT)
    await bounded(running, WAIT)
    table.disown(1)
    assert table.state(1) is ShardState.UNOWNED


async def test_a_handoff_that_cannot_finish_keeps_the_shard() -> None:
    table = ShardTable("n1")
    table.own(2, epoch=5)
    table.start_draining(2)
    table.keep(2)
    assert (table.state(2), table.epoch(2)) == (ShardState.OWNED, 5)


async def test_fencing_disowns_everything_and_ends_the_calls_in_flight_with_unavailable() -> None:
    """Regression: the fence cancelled the calls in flight, and a cancelled gRPC handler
    answers nothing, so their callers waited for their deadlines. They raise Unavailable,
    which the servicer answers."""
    table = ShardTable("n1")
    for shard in (1, 2):
        table.own(shard)

    async def call(shard: int) -> None:
        with table.admit(shard, f"Counter/c{shard}"):
            await asyncio.Event().wait()

    calls = [asyncio.create_task(call(shard)) for shard in (1, 2)]
    await asyncio.sleep(0)
    assert table.fence() == 2
    assert table.fence() == 0  # cancelled once
    done, _ = await asyncio.wait(calls, timeout=WAIT)
    assert len(done) == 2
    for shard, task in zip((1, 2), calls, strict=True):
        assert not task.cancelled()
        with pytest.raises(Unavailable, match=f"node n1 fenced itself while Counter/c{shard}"):
            task.result()
    assert table.count(ShardState.OWNED) == 0
    assert [table.in_flight(shard) for shard in (1, 2)] == [0, 0]


async def test_a_call_stopped_by_a_leaving_node_says_so() -> None:
    table = ShardTable("n1")
    table.own(3)

    async def call() -> None:
        with table.admit(3, "Counter/c3"):
            await asyncio.Event().wait()

    running = asyncio.create_task(call())
    await asyncio.sleep(0)
    assert table.fence("is leaving the cluster") == 1
    await asyncio.wait([running], timeout=WAIT)
    with pytest.raises(Unavailable, match="node n1 is leaving the cluster while Counter/c3 ran"):
        running.result()


async def test_a_call_cancelled_by_anything_but_the_fence_stays_cancelled() -> None:
    """A caller that went away, or a server stopping, cancels the handler: not the table's
    cancellation to end. Nor is a second one that arrives with the fence's."""
    table = ShardTable("n1")
    table.own(1)

    async def call() -> None:
        with table.admit(1):
            await asyncio.Event().wait()

    alone, both = asyncio.create_task(call()), asyncio.create_task(call())
    await asyncio.sleep(0)
    assert table.in_flight(1) == 2
    alone.cancel()
    table.fence()
    both.cancel()
    await asyncio.wait([alone, both], timeout=WAIT)
    assert alone.cancelled()
    assert both.cancelled()
