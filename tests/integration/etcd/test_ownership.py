"""ShardOwnership against a real etcd while its view of etcd lags behind its own writes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
import structlog

from goverse.errors import Unavailable
from goverse.node._config import NodeConfig
from goverse.node._object_host import ObjectHost
from goverse.node._ownership import DEREGISTER_SHARE, ShardOwnership
from goverse.node._shards import ShardState, ShardTable
from goverse.placement import SHARD_COUNT, Placement
from goverse.server import ShutdownBudget
from goverse.server._cluster_keys import ClusterKeys, encode_node, encode_shard
from goverse.server._etcd import EtcdClient, WatchBatch
from goverse.server._etcd_view import EtcdView
from tests.helpers.etcd import EtcdServer
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

PREFIX = "/goverse"
KEYS = ClusterKeys(PREFIX)
NODE = "node-a"
OTHER = "node-b"
CONFIG = NodeConfig(
    lease_ttl=timedelta(seconds=10),
    fence_margin=timedelta(seconds=2),
    rebalance_delay=timedelta(milliseconds=500),
    handoff_timeout=timedelta(seconds=2),
)
WAIT = 20.0
"""Bound of every wait: claiming 8192 shards on a loaded 2-core machine included."""


class LaggingView(EtcdView):
    """An EtcdView whose watch falls behind on demand (the batches etcd sends are kept, not
    applied, while held), and that counts how often it is waited on: ShardOwnership waits on
    its view before each full reconciliation (and between them on every change, to claim what
    was freed); while the view is held nothing changes, so each wait times out into a full
    reconciliation, and :meth:`reconciled` waits for whole ones."""

    def __init__(self, client: EtcdClient) -> None:
        super().__init__(client, PREFIX, lease_ttl=CONFIG.lease_ttl)
        self._held: list[WatchBatch] | None = None
        self._hold_when: Callable[[], bool] | None = None
        self.waits = 0
        self._waited = asyncio.Event()

    def hold_when(self, condition: Callable[[], bool]) -> None:
        """Stops applying batches right after the first one after which `condition()` holds."""
        self._hold_when = condition

    @property
    def held(self) -> bool:
        return self._held is not None

    def _apply(self, batch: WatchBatch) -> None:
        if self._held is not None:
            self._held.append(batch)
            return
        super()._apply(batch)
        if self._hold_when is not None and self._hold_when():
            self._hold_when = None
            self._held = []

    async def changed(self, since: int) -> int:
        self.waits += 1
        self._waited.set()
        self._waited = asyncio.Event()
        return await super().changed(since)

    async def reconciled(self, count: int = 2) -> None:
        """Waits until the ownership has waited on this view `count` more times: at least
        `count - 1` whole reconciliations ran in between."""
        target = self.waits + count
        async with asyncio.timeout(WAIT):
            while self.waits < target:
                await self._waited.wait()


@dataclass
class Owner:
    """One node's ShardOwnership, run in this process, and what it owns."""

    ownership: ShardOwnership
    table: ShardTable
    view: LaggingView

    def owned(self) -> set[int]:
        return set(self.table.shards(ShardState.OWNED))


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd.endpoint], timedelta(seconds=2)) as client:
        yield client


def node_ownership(
    client: EtcdClient,
    view: EtcdView,
    table: ShardTable,
    config: NodeConfig,
    on_ready: Callable[[bool], None] = lambda ready: None,
) -> ShardOwnership:
    """Node `NODE`'s shard ownership on `view` and `table`, hosting no object types."""
    return ShardOwnership(
        client=client,
        view=view,
        node_id=NODE,
        address=NODE,
        table=table,
        host=ObjectHost({}, table, NODE),
        config=config,
        on_ready=on_ready,
    )


@contextlib.asynccontextmanager
async def running_owner(client: EtcdClient, config: NodeConfig = CONFIG) -> AsyncIterator[Owner]:
    """Node `NODE`'s ownership and view, running until the block ends."""
    view = LaggingView(client)
    await view.start()
    table = ShardTable(NODE)
    ownership = node_ownership(client, view, table, config)
    tasks = [
        asyncio.create_task(view.run(), name="view"),
        asyncio.create_task(ownership.run(), name="ownership"),
    ]
    try:
        yield Owner(ownership, table, view)
    finally:
        for task in tasks:
            await cancel_and_wait(task)


async def until(condition: Callable[[], bool], view: LaggingView, what: str) -> None:
    """Waits, one reconciliation at a time, until `condition()` (bounded)."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await view.reconciled(1)
    assert condition(), what


async def test_a_claim_the_view_has_not_seen_yet_is_kept(client: EtcdClient) -> None:
    """The node claims every shard while its view does not show the claims yet (the watch is
    behind). Reconciling again on that view must not take the claims for lost: the node keeps
    owning its shards, claims each once, and logs no "shard keys gone" warning."""
    async with running_owner(client) as owner:
        owner.view.hold_when(lambda: NODE in owner.view.nodes())
        with structlog.testing.capture_logs() as logs:
            await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
            assert owner.view.held
            claims = owner.ownership.stats.claims
            await owner.view.reconciled(3)
            assert len(owner.owned()) == SHARD_COUNT
            assert owner.ownership.stats.claims == claims == SHARD_COUNT
    assert [line for line in logs if "gone" in line["event"]] == []


async def test_a_shard_handed_off_is_not_taken_back_from_a_stale_view(client: EtcdClient) -> None:
    """The node owns every shard; another node joins. Once the node's view has seen the
    newcomer it falls behind, so it still shows the node's claims on the shards it hands off
    next. The newcomer claims them. The node must not take them back from its stale view (it
    would admit calls for them until it handed them off again): it hands each off once, owns
    exactly its targets, and deleted the keys it handed off in a few etcd transactions."""
    async with running_owner(client) as owner:
        await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
        lease = await client.grant(30)
        before, _ = await client.get_prefix(KEYS.shards)
        owner.view.hold_when(lambda: OTHER in owner.view.nodes())
        await client.put(KEYS.node(OTHER), encode_node(OTHER, f"{lease:x}"), lease)
        placement = Placement([NODE, OTHER])
        theirs = {s for s in range(SHARD_COUNT) if placement.node_for_shard(s) == OTHER}
        await until(
            lambda: not owner.owned() & theirs and not owner.table.shards(ShardState.DRAINING),
            owner.view,
            "the newcomer's shards handed off",
        )
        assert owner.view.held
        handed_off, _ = await client.get_prefix(KEYS.shards)
        value = encode_shard(OTHER, f"{lease:x}")
        created = await client.create_many({KEYS.shard(s): value for s in theirs}, lease)
        assert len(created) == len(theirs)
        await owner.view.reconciled(3)
        assert owner.ownership.stats.handoffs_started == len(theirs)
        assert owner.owned() == set(range(SHARD_COUNT)) - theirs
        # The newcomer's node key, then the deletes: 127 keys to a transaction, by chunks of
        # --max-handoffs (256: two transactions of 127 and one of 2), not one per shard.
        chunks = -(-len(theirs) // CONFIG.max_handoffs)
        assert handed_off - before <= 1 + 3 * chunks


async def test_a_leaving_node_serves_the_shards_it_has_not_handed_off_yet(
    client: EtcdClient,
) -> None:
    """The node owns every shard and another node is live. The node leaves while a call
    runs in a shard of its fourth chunk of handoffs (shards are handed off in order,
    ``--max-handoffs`` at a time, one chunk after the other). Its node key says leaving at
    once, so the other node is every shard's target; the three chunks before that call are
    handed off (their keys deleted) while it runs, the call's chunk drains (and waits for
    it), and the shards after it stay this node's: routing still sends
    their calls here and they are admitted. Once the call ends the rest is handed off and
    the lease revoked: no key of the node is left."""
    config = dataclasses.replace(
        CONFIG,
        rebalance_delay=timedelta(seconds=60),  # the other node takes nothing before the leave
        handoff_timeout=timedelta(seconds=WAIT),
    )
    async with running_owner(client, config) as owner:
        await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
        lease = await client.grant(30)
        await client.put(KEYS.node(OTHER), encode_node(OTHER, f"{lease:x}"), lease)
        await eventually(lambda: OTHER in owner.view.nodes(), WAIT, "the other node in the view")
        busy = 3 * config.max_handoffs
        admitted, finish = asyncio.Event(), asyncio.Event()

        async def call() -> None:
            with owner.table.admit(busy):
                admitted.set()
                await finish.wait()

        calling = asyncio.create_task(call(), name="call")
        await bounded(admitted.wait(), WAIT)
        leaving = asyncio.create_task(
            owner.ownership.leave(ShutdownBudget(timedelta(seconds=2 * WAIT))), name="leave"
        )
        try:
            handed_off = range(busy)
            await eventually(
                lambda: all(owner.view.claim(s) is None for s in handed_off),
                WAIT,
                "the chunks before the busy shard handed off",
            )
            assert owner.view.nodes()[NODE].leaving
            assert {owner.view.target(s) for s in range(SHARD_COUNT)} == {OTHER}
            assert not any(owner.table.state(s) is ShardState.OWNED for s in handed_off)
            # A chunk drains once the chunk before it is deleted, which the view may show
            # before the handoff has gone on to the busy shard's chunk.
            busy_chunk = range(busy, busy + config.max_handoffs)
            await eventually(
                lambda: all(owner.table.state(s) is ShardState.DRAINING for s in busy_chunk),
                WAIT,
                "the busy shard's chunk draining",
            )
            later = range(busy + config.max_handoffs, SHARD_COUNT)
            assert owner.owned() == set(later)
            assert {owner.view.owner_address(s) for s in later} == {NODE}
            assert owner.ownership.serving()
            with owner.table.admit(SHARD_COUNT - 1) as epoch:
                assert epoch > 0
        finally:
            finish.set()
            await bounded(calling, WAIT)
        assert await bounded(leaving, WAIT)
    _, kvs = await client.get_prefix(KEYS.root)
    assert [kv.key for kv in kvs if kv.key.startswith(KEYS.shards)] == []
    assert KEYS.node(NODE) not in {kv.key for kv in kvs}


async def test_a_leave_that_leaves_a_shard_behind_deletes_the_node_key_and_keeps_the_lease(
    client: EtcdClient,
) -> None:
    """A call outlasts the handoff timeout, so the node keeps its shard when it leaves. The
    others must not claim it before the node has surely stopped, so the lease (and that
    shard's key) is left to expire; but the node key goes at once, so that routing holds the
    shard's calls instead of sending them to a node that is stopping. Every other shard is
    handed off, and the call still running when the node stops serving is stopped and
    answers UNAVAILABLE, saying the node is leaving."""
    config = dataclasses.replace(CONFIG, handoff_timeout=timedelta(milliseconds=300))
    async with running_owner(client, config) as owner:
        await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
        busy = SHARD_COUNT - 1
        admitted, finish = asyncio.Event(), asyncio.Event()

        async def call() -> None:
            with owner.table.admit(busy):
                admitted.set()
                await finish.wait()

        calling = asyncio.create_task(call(), name="call")
        try:
            await bounded(admitted.wait(), WAIT)
            with structlog.testing.capture_logs() as logs:
                gone = await bounded(
                    owner.ownership.leave(ShutdownBudget(timedelta(seconds=WAIT))), 2 * WAIT
                )
        finally:
            finish.set()
            await asyncio.wait({calling}, timeout=WAIT)
        with pytest.raises(Unavailable, match="is leaving the cluster"):
            calling.result()
        assert gone
        _, kvs = await client.get_prefix(KEYS.root)
        assert [kv.key for kv in kvs if kv.key.startswith(KEYS.shards)] == [KEYS.shard(busy)]
        assert KEYS.node(NODE) not in {kv.key for kv in kvs}
        assert not owner.table.shards(ShardState.OWNED)
    [kept] = [line for line in logs if line["event"].startswith("leaving with shards")]
    assert kept["shards"] == 1


async def test_a_leave_still_handing_off_halfway_through_its_budget_deletes_the_node_key(
    client: EtcdClient,
) -> None:
    """A call keeps the fourth chunk of a leave draining past half the leave's budget. The
    node key goes then, while the node still holds the shards of the chunks after it (routing
    holds their calls rather than send them to a node about to stop); the handoffs go on
    until the budget runs out, and the shards left stay on the lease, left to expire."""
    config = dataclasses.replace(CONFIG, handoff_timeout=timedelta(seconds=WAIT))
    async with running_owner(client, config) as owner:
        await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
        busy = 3 * config.max_handoffs
        admitted, finish = asyncio.Event(), asyncio.Event()

        async def call() -> None:
            with owner.table.admit(busy):
                admitted.set()
                await finish.wait()

        calling = asyncio.create_task(call(), name="call")
        await bounded(admitted.wait(), WAIT)
        budget = ShutdownBudget(timedelta(seconds=4))
        leaving = asyncio.create_task(owner.ownership.leave(budget), name="leave")
        try:

            async def node_key_gone() -> bool:
                return await client.get(KEYS.node(NODE)) is None

            await eventually(node_key_gone, WAIT, "the node key to go")
            assert not leaving.done()
            assert budget.elapsed() >= 4 * DEREGISTER_SHARE
            assert owner.owned() == set(range(busy + config.max_handoffs, SHARD_COUNT))
            assert await bounded(leaving, WAIT)
        finally:
            finish.set()
            await asyncio.wait({calling, leaving}, timeout=WAIT)
        with pytest.raises(Unavailable, match="is leaving the cluster"):
            calling.result()  # stopped when the node stopped serving, its shard still held
        _, kvs = await client.get_prefix(KEYS.root)
        shard_keys = {kv.key for kv in kvs if kv.key.startswith(KEYS.shards)}
        assert shard_keys == {KEYS.shard(s) for s in range(busy, SHARD_COUNT)}


async def test_a_fenced_node_frees_its_old_shard_keys_before_it_joins_again(
    client: EtcdClient, etcd: EtcdServer
) -> None:
    """etcd is killed: the node cannot renew its lease and fences itself, and keeps trying to
    join again. etcd starts again on its port and, as it does for every lease when it starts,
    gives the fenced incarnation's lease a whole TTL again. The node revokes that lease before
    it joins, so its old shard keys go at once and it owns every shard again well before
    that TTL has passed (it would wait for the whole TTL otherwise)."""
    # Without the revoke the node could own its shards only a whole TTL after etcd is back,
    # when the old lease expires; with it, after its next join attempt (3.4-3.9 s with the
    # machine's two cores busy elsewhere). 8 s keeps the two apart on a loaded machine.
    ttl = timedelta(seconds=8)
    config = dataclasses.replace(
        CONFIG, lease_ttl=ttl, fence_margin=timedelta(seconds=1), etcd_timeout=timedelta(seconds=2)
    )
    async with running_owner(client, config) as owner:
        await until(lambda: len(owner.owned()) == SHARD_COUNT, owner.view, "every shard owned")
        fenced = owner.ownership.incarnation
        etcd.kill()
        await eventually(lambda: owner.ownership.fenced, WAIT, "the fence")
        await etcd.start()
        back = time.monotonic()
        await eventually(
            lambda: owner.ownership.incarnation != fenced and len(owner.owned()) == SHARD_COUNT,
            WAIT,
            "every shard owned by the new incarnation",
        )
        took = time.monotonic() - back
    assert took < ttl.total_seconds(), f"{took:.2f}s"


class HeldGrants(EtcdClient):
    """An EtcdClient whose lease grants wait for :attr:`release` (a join caught between its
    grant and its registration)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__([endpoint], timedelta(seconds=2))
        self.granting = asyncio.Event()
        self.release = asyncio.Event()

    async def grant(self, ttl: int) -> int:
        self.granting.set()
        await self.release.wait()
        return await super().grant(ttl)


async def test_a_node_told_to_leave_while_it_joins_does_not_register_after_its_leave(
    etcd: EtcdServer,
) -> None:
    """The stop comes while the node is joining (at start, or rejoining after a fence): its
    leave finds no lease and has nothing to hand off. The join then completes: it must not
    register the node on a lease nobody revokes, nor say it is ready: the key would name a
    live node, the target of its shards, for a whole TTL after the process stopped, and no
    node would claim them meanwhile. It revokes the lease and ends instead."""
    readiness: list[bool] = []
    async with HeldGrants(etcd.endpoint) as client:
        view = EtcdView(client, PREFIX, lease_ttl=CONFIG.lease_ttl)
        await view.start()
        ownership = node_ownership(client, view, ShardTable(NODE), CONFIG, readiness.append)
        running = asyncio.create_task(ownership.run(), name="ownership")
        try:
            await bounded(client.granting.wait(), WAIT)
            assert not await bounded(ownership.leave(ShutdownBudget(timedelta(seconds=WAIT))), WAIT)
            client.release.set()
            await bounded(asyncio.shield(running), WAIT)
        finally:
            await cancel_and_wait(running)
        assert await client.get(KEYS.node(NODE)) is None
    assert True not in readiness
