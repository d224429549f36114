"""Shard ownership in etcd: a node's registration, its claims and handoffs, and its fencing.

The rules are those of ``docs/membership.md``: a node registers on its lease, claims at once
the unowned shards whose target it is, releases a shard to its new target only once the node
set has been stable for ``--rebalance-delay`` (draining its calls, deactivating its objects,
then deleting the key if it still holds this node's value), and fences itself when its lease
can no longer be trusted — then rejoins as a new incarnation that owns nothing. A node that
stops marks its node key *leaving* (no shard targets it from then on) and hands off every
shard it holds, serving each until its turn comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from goverse.node._config import NodeConfig
from goverse.node._object_host import ObjectHost
from goverse.node._shards import ShardState, ShardTable
from goverse.placement import SHARD_COUNT
from goverse.server import ShutdownBudget
from goverse.server._cluster_keys import encode_node, encode_shard
from goverse.server._etcd import EtcdClient, EtcdClosed, EtcdError
from goverse.server._etcd_view import EtcdView
from goverse.server._lease import Lease
from goverse.transport import Backoff

log = structlog.get_logger(__name__)

RECONCILE_INTERVAL = 1.0
"""Seconds between two reconciliations when the view does not change."""
LEAVING = "is leaving the cluster"
"""Why the calls still running when a leaving node stops serving are stopped (what their
callers are told)."""
DELETES_IN_FLIGHT = 4
"""Most chunks of a handoff whose keys are being deleted while the next chunk drains, used
only by a leave that would not finish within its budget one chunk at a time. A chunk's
shards refuse calls from their drain to their delete, and a chunk drained while others'
deletes were still on their way waited for them: one chunk at a time, the calls held during
a scale-in from 4 to 2 nodes waited 0.64-0.86 s at p99 against 0.99-1.25 s with four
chunks in flight (four alternated runs each), for a leave of 0.9-1.5 s instead of 0.6-1.0 s."""
LEAVE_RESERVE = 0.5
LEAVE_RESERVE_SHARE = 0.2
"""What a leave keeps of its budget after the handoffs (half a second, at most a fifth): to
revoke the lease, or delete the node key."""
DEREGISTER_SHARE = 0.5
"""Share of its budget after which a leave still handing off deletes the node key (and goes
on handing off). A leave that ran out of budget with the node key still there (twice, at a
load average of 6-17) left the gates too little time to see the key go before the node
stopped: a call sent to it then failed with CANCELLED."""
RECONCILE_SPACING = 0.5
"""Seconds at least between the starts of two reconciliations. Each one scans the 8192 shards
(tens of milliseconds of CPU on a loaded machine); while other nodes hand shards off, the view
changes with every shard key deleted, and reconciling on each change kept the event loop so
busy that the view fell seconds behind etcd and each pass claimed one or two shards: a scale
from 2 to 4 nodes took 40 s to settle, with shards unowned for over 10 s. Changes that arrive
during the spacing are handled together. The shards freed meanwhile are claimed on each change
without a scan (:meth:`ShardOwnership._claim_freed`), so the full pass can be rare: at 0.1 s
it took 25-55 ms of a core every 100 ms in each node during a scale, and the views of the
nodes that had to claim fell 0.4-0.6 s behind the gates'. (A/B over five alternated 2 -> 4 -> 2
runs: scale-out p99 651 -> 343 ms, scale-in within the noise.)"""


@dataclass
class OwnershipStats:
    """Counters of a node's ownership, for metrics and Status."""

    claims: int = 0
    """Shards claimed since start."""
    handoffs_started: int = 0
    handoffs_finished: int = 0
    handoffs_timed_out: int = 0
    """Handoffs given up because calls or deactivations did not finish in time (kept)."""
    fences: int = 0
    """Times this node fenced itself."""


class ShardOwnership:
    """Keeps this node's share of the shards in etcd (see the module docstring).

    :meth:`run` (owned by the node's supervisor) joins, reconciles on every change of the view
    and every second, and after a fence rejoins, until cancelled; etcd being unreachable only
    delays it. :meth:`leave` is the graceful stop: it marks the node key leaving, hands off
    every shard within the budget while serving those not handed off yet, and revokes the
    lease (deleting the node key) when nothing was left behind; otherwise it deletes the node
    key and lets the lease expire.
    `on_ready(bool)` is told whenever the node starts or stops being able to serve.
    """

    def __init__(
        self,
        *,
        client: EtcdClient,
        view: EtcdView,
        node_id: str,
        address: str,
        table: ShardTable,
        host: ObjectHost,
        config: NodeConfig,
        on_ready: Callable[[bool], None],
    ) -> None:
        self._client = client
        self._view = view
        self._keys = view.keys
        self._node = node_id
        self._address = address
        self._table = table
        self._host = host
        self._ttl = config.lease_ttl
        self._margin = config.fence_margin
        self._rebalance_delay = config.rebalance_delay.total_seconds()
        self._handoff_timeout = config.handoff_timeout.total_seconds()
        self._max_handoffs = config.max_handoffs
        self._on_ready = on_ready
        self._lease: Lease | None = None
        self._nodes_signature: frozenset[tuple[str, str, bool]] = frozenset()
        self._stable_since = time.monotonic()
        self._releasing: set[int] = set()
        self._undeleted: set[int] = set()
        """Shards handed off whose key could not be deleted yet (etcd unreachable)."""
        self._released: dict[int, int] = {}
        """Shards this incarnation handed off, with the epoch (create revision) of the key it
        deleted, until the view no longer shows that key: a view that still does is behind."""
        self._leaving = False
        self._fenced_lease: int | None = None
        """The lease of the incarnation that fenced itself, until it is revoked."""
        self.fenced = False
        """Whether the node fenced itself and has not rejoined yet."""
        self._reconciler: asyncio.Task[None] | None = None
        self.stats = OwnershipStats()

    # -- what others read ---------------------------------------------------------------------

    def serving(self) -> bool:
        """Whether this node may serve now: registered on a lease valid beyond the margin.
        Leaving does not change it: the shards not handed off yet are served until theirs
        drain (:meth:`leave` makes every shard unowned at its end)."""
        lease = self._lease
        return lease is not None and lease.valid(self._margin)

    @property
    def leaving(self) -> bool:
        """Whether :meth:`leave` has begun (the node is stopping)."""
        return self._leaving

    @property
    def incarnation(self) -> str:
        lease = self._lease
        return "" if lease is None else lease.incarnation

    def lease_valid_for(self) -> float:
        """Seconds this node may still serve (0 when it may not)."""
        lease = self._lease
        if lease is None or not lease.valid(self._margin):
            return 0.0
        return max(lease.remaining() - self._margin.total_seconds(), 0.0)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Joins and keeps this node's share until cancelled; rejoins after every fence."""
        retry = Backoff(timedelta(milliseconds=200), timedelta(seconds=2))
        while not self._leaving:
            try:
                await self._incarnation()
                retry.reset()
            except EtcdClosed:
                raise
            except EtcdError as error:
                if retry.attempt == 0:
                    log.warning("cannot join the cluster in etcd yet", error=str(error))
                await asyncio.sleep(retry.next_delay())

    async def _incarnation(self) -> None:
        """One lease's life: grant, register, reconcile until the lease is lost, fence."""
        await self._revoke_fenced()
        lost = asyncio.Event()
        lease = Lease(self._client, self._ttl, on_lost=lost.set)
        await lease.grant()
        try:
            await self._client.put(
                self._keys.node(self._node),
                encode_node(self._address, lease.incarnation),
                lease.id,
            )
        except BaseException:
            await lease.revoke()
            raise
        if self._leaving:
            # leave() came while this joined: it found no lease, so nothing will revoke
            # this one, and the key would name a live node (its shards' target) for a TTL
            # after the process stopped.
            await lease.revoke()
            return
        self._lease = lease
        self.fenced = False
        self._on_ready(True)
        log.info("joined the cluster", incarnation=lease.incarnation)
        # Three children of this task, cancelled and awaited on the way out: the keeper
        # renews the lease, the reconciler claims and releases, the watchdog ends the
        # incarnation once the lease cannot be trusted beyond the fence margin.
        keeper = asyncio.create_task(lease.run(), name="lease-keepalive")
        self._reconciler = asyncio.create_task(self._reconcile_forever(lease), name="shards")
        watchdog = asyncio.create_task(self._until_untrusted(lease), name="lease-watchdog")
        children = {keeper, self._reconciler, watchdog}
        try:
            waiting = set(children)
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled():
                        task.result()  # a crash is a bug: let the supervisor log it
                if keeper in done or watchdog in done:
                    break  # the lease is lost, or can no longer be trusted
                # The reconciler ended because the node is leaving: the lease is kept alive
                # while leave() hands the shards off, until the stop cancels this task.
        finally:
            for task in children:
                task.cancel()
            await asyncio.wait(children)
        if not self._leaving:
            self._fence(lease.lost_reason or "the lease's validity reached the fence margin")
            self._fenced_lease = lease.id

    async def _revoke_fenced(self) -> None:
        """Revokes the lease of the incarnation that fenced itself, before the next one joins:
        its shard keys go at once instead of when etcd expires the lease. That one serves
        nothing any more, so nothing is lost; and etcd, when it restarted meanwhile, gave
        every lease a whole TTL again, so the new incarnation (and its peers) would otherwise
        wait that long to claim the shards. Raises the client's errors: joining waits for it."""
        if self._fenced_lease is not None:
            await self._client.revoke(self._fenced_lease)
            log.info("the fenced incarnation's lease revoked: its shards are free")
            self._fenced_lease = None

    async def _until_untrusted(self, lease: Lease) -> None:
        """Returns once the lease is no longer valid beyond the fence margin."""
        margin = self._margin.total_seconds()
        # A timer, not a poll: it sleeps until the margin is reached, a moment that moves on
        # with every acknowledged keep-alive.
        while lease.valid(self._margin):  # noqa: ASYNC110
            await asyncio.sleep(max(lease.remaining() - margin, 0.01))

    async def _reconcile_forever(self, lease: Lease) -> None:
        """Reconciles in full on a change of the view, at most every
        :data:`RECONCILE_SPACING` (and every :data:`RECONCILE_INTERVAL` without one), and
        claims what the view saw freed on every change in between (:meth:`_claim_freed`)."""
        loop = asyncio.get_running_loop()
        version = -1
        failing = False
        due = loop.time()  # when the next full reconciliation may start
        dirty = True  # whether the view changed since the last full one
        while not self._leaving:
            wait = max(due - loop.time(), 0.0) if dirty else RECONCILE_INTERVAL
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    version = await self._view.changed(version)
                    dirty = True
            try:
                await self._claim_freed(lease)
                if loop.time() >= due:
                    due = loop.time() + RECONCILE_SPACING
                    dirty = False
                    await self._reconcile(lease)
            except EtcdClosed:
                raise
            except EtcdError as error:
                if not failing:
                    log.warning("reconciliation postponed: etcd did not answer", error=str(error))
                failing = True
            else:
                if failing:
                    log.info("reconciliation resumed")
                failing = False

    def _joined(self, lease: Lease) -> bool:
        """Whether the view shows this incarnation registered and the lease is trusted: what
        claiming or releasing anything needs."""
        view = self._view
        if not view.loaded or not lease.valid(self._margin):
            return False
        me = view.nodes().get(self._node)
        return me is not None and me.incarnation == lease.incarnation

    async def _reconcile(self, lease: Lease) -> None:
        if not self._joined(lease):
            return
        signature = frozenset(
            (node.node_id, node.incarnation, node.leaving) for node in self._view.nodes().values()
        )
        if signature != self._nodes_signature:
            self._nodes_signature = signature
            self._stable_since = time.monotonic()
        self._adopt(lease)
        await self._claim(lease, range(SHARD_COUNT))
        await self._retry_deletes(lease)
        if time.monotonic() - self._stable_since >= self._rebalance_delay:
            await self._release_moved(lease)

    async def _claim_freed(self, lease: Lease) -> None:
        """Claims the shards whose keys the view saw deleted since the last look and whose
        target this node is: a leaving node's handoffs, a crashed node's expired keys. A full
        reconciliation scans all 8192 shards, so it is spaced; waiting for it added up to
        :data:`RECONCILE_SPACING` plus a scan under load to every moving shard's handoff, and
        the calls held for it waited as long."""
        freed = self._view.take_freed()
        if freed and self._joined(lease):
            # Taken whether or not etcd takes the claims: what it refuses (or a claim that
            # fails) the next full reconciliation claims, as it did before this shortcut.
            await self._claim(lease, sorted(freed))

    def _adopt(self, lease: Lease) -> None:
        """Brings the table in line with the keys: ours that it does not know yet (a claim
        whose reply was lost), and owned shards whose key is gone (never expected while the
        lease is valid; logged).

        The view follows etcd a watch hop behind this node's own writes, further when etcd is
        slow, so it is believed only where it has seen them: an owned shard whose key the view
        does not show is taken for lost only once the view's revision has reached the key's
        create revision (the claim's epoch); a key the view shows as ours is not taken back
        when it is the very key this node deleted when it handed the shard off (same epoch).
        Believing a view that is behind disowned fresh claims (calls refused, every shard
        claimed again on each reconciliation) and took back shards already handed off to
        another node (admitting calls for them until handed off again).
        """
        revision = self._view.revision
        lost = 0
        for shard in range(SHARD_COUNT):
            claim = self._view.claim(shard)
            mine = (
                claim is not None
                and claim.node_id == self._node
                and claim.incarnation == lease.incarnation
            )
            released = self._released.get(shard)
            if released is not None and not (
                mine and claim is not None and claim.epoch == released
            ):
                del self._released[shard]  # the view has seen the delete
                released = None
            state = self._table.state(shard)
            if mine and state is ShardState.UNOWNED and shard not in self._undeleted:
                assert claim is not None
                if released is None:
                    self._table.own(shard, claim.epoch)
            elif not mine and state is ShardState.OWNED and revision >= self._table.epoch(shard):
                self._table.disown(shard)
                lost += 1
        if lost:
            log.warning("shard keys gone while the lease was valid", shards=lost)

    async def _claim(self, lease: Lease, shards: Iterable[int]) -> None:
        """Claims those of `shards` whose target this node is and whose key is absent."""
        view = self._view
        wanted = [
            shard
            for shard in shards
            if view.target(shard) == self._node
            and view.claim(shard) is None
            and self._table.state(shard) is ShardState.UNOWNED
        ]
        if not wanted:
            return
        value = encode_shard(self._node, lease.incarnation)
        keys = {self._keys.shard(shard): shard for shard in wanted}
        created = await self._client.create_many(dict.fromkeys(keys, value), lease.id)
        if not lease.valid(self._margin):
            return  # too late to serve them: the fence takes them away
        for key, kv in created.items():
            self._table.own(keys[key], kv.create_revision)
        self.stats.claims += len(created)
        log.info("shards claimed", shards=len(created), asked=len(wanted))

    async def _release_moved(self, lease: Lease) -> None:
        moved = [
            shard
            for shard in self._table.shards(ShardState.OWNED)
            if self._view.target(shard) not in (None, self._node) and shard not in self._releasing
        ]
        if moved:
            await self._hand_off_all(moved, lease, self._handoff_timeout)

    async def _hand_off_all(
        self, shards: list[int], lease: Lease, timeout: float, deadline: float | None = None
    ) -> int:
        """Hands `shards` off, ``--max-handoffs`` at a time, one chunk after the other unless
        the chunks left would not fit before `deadline` (the loop's clock) at the pace so far:
        then up to :data:`DELETES_IN_FLIGHT` chunks' deletes overlap; returns how many left.

        The shards of a chunk are drained and their objects deactivated together (each within
        `timeout`), then the keys of those that made it are deleted together, 127 to an etcd
        transaction (:meth:`EtcdClient.delete_many`). One delete per shard made a handoff of
        4096 shards 4096 etcd writes, and the new owners saw the shards go one revision at a
        time and claimed them one or two at a time: thousands of transactions that slowed etcd
        until keep-alives were late.
        """
        self.stats.handoffs_started += len(shards)
        loop = asyncio.get_running_loop()
        began = loop.time()
        starts = range(0, len(shards), self._max_handoffs)
        handed = 0
        deletes: set[asyncio.Task[None]] = set()
        try:
            for drained, start in enumerate(starts, 1):
                if not lease.valid(self._margin):
                    break  # another node may claim them any moment: the fence takes them
                ready = await self._drain_chunk(shards[start : start + self._max_handoffs], timeout)
                handed += len(ready)
                deletes.add(asyncio.create_task(self._delete_released(ready, lease)))
                last = drained == len(starts)
                pace = (loop.time() - began) / drained  # seconds a chunk took so far
                behind = (
                    deadline is not None and pace * (len(starts) - drained) > deadline - loop.time()
                )
                if last or len(deletes) >= (DELETES_IN_FLIGHT if behind else 1):
                    done, deletes = await asyncio.wait(
                        deletes,
                        return_when=asyncio.ALL_COMPLETED if last else asyncio.FIRST_COMPLETED,
                    )
                    for task in done:
                        task.result()  # raises EtcdClosed; etcd errors are handled inside
        finally:
            for task in deletes:
                task.cancel()
            if deletes:
                await asyncio.wait(deletes)
        log.info(
            "shards handed off",
            shards=handed,
            kept=len(shards) - handed,
            pending_delete=len(self._undeleted),
        )
        return handed

    async def _drain_chunk(self, chunk: list[int], timeout: float) -> list[int]:
        """Drains a chunk of shards together; returns those ready to be deleted (they stay in
        ``_releasing`` until their delete is done)."""
        chunk = [shard for shard in chunk if shard not in self._releasing]
        self._releasing.update(chunk)
        ready: list[int] = []
        try:
            drained = await asyncio.gather(*(self._drain(shard, timeout) for shard in chunk))
            ready = [shard for shard, ok in zip(chunk, drained, strict=True) if ok]
        finally:
            self._releasing.difference_update(set(chunk) - set(ready))
        self._undeleted.update(ready)
        self.stats.handoffs_finished += len(ready)
        return ready

    async def _drain(self, shard: int, timeout: float) -> bool:
        """Drains one shard and deactivates its objects; False when it had to be kept, or is
        not this node's. (A shard draining already, one whose handoff was interrupted or whose
        key could not be deleted yet, is drained again: at once, as nothing is left in it.)"""
        if self._table.state(shard) is ShardState.UNOWNED:
            return False
        budget = ShutdownBudget(timedelta(seconds=timeout))
        self._table.start_draining(shard)
        drained = await self._table.drained(shard, budget.remaining())
        stuck = await self._host.deactivate_shard(shard, budget.remaining()) if drained else []
        if not drained or stuck:
            self._table.keep(shard)
            self.stats.handoffs_timed_out += 1
            log.warning(
                "shard kept: its handoff did not finish in time",
                shard=shard,
                calls_in_flight=self._table.in_flight(shard),
                objects=stuck,
            )
            return False
        return True

    async def _delete_released(self, shards: list[int], lease: Lease) -> None:
        try:
            await self._delete(shards, lease)
        finally:
            self._releasing.difference_update(shards)

    async def _delete(self, shards: list[int], lease: Lease) -> None:
        """Deletes handed-off shards' keys where they still hold our value; on an etcd error
        the shards stay draining (calls answered "moving") and the next reconciliation tries
        again."""
        if not shards:
            return
        value = encode_shard(self._node, lease.incarnation)
        try:
            await self._client.delete_many({self._keys.shard(shard): value for shard in shards})
        except EtcdClosed:
            raise
        except EtcdError as error:
            log.info("shard keys not deleted yet", shards=len(shards), error=str(error))
            return
        for shard in shards:
            self._undeleted.discard(shard)
            self._released[shard] = self._table.epoch(shard)
            self._table.disown(shard)

    async def _retry_deletes(self, lease: Lease) -> None:
        await self._delete(sorted(self._undeleted), lease)

    def _fence(self, reason: str) -> None:
        """Stops serving at once: every shard unowned, calls cancelled, activations dropped
        without running their code (another node may already own them)."""
        self._on_ready(False)
        cancelled = self._table.fence()
        dropped = self._host.drop_all()
        self._undeleted.clear()
        self._released.clear()
        self.fenced = True
        self.stats.fences += 1
        log.error(
            "fenced: the lease could not be renewed in time; rejoining as a new incarnation",
            reason=reason,
            calls_cancelled=cancelled,
            objects_dropped=dropped,
        )

    # -- leaving ------------------------------------------------------------------------------

    async def leave(self, budget: ShutdownBudget) -> bool:
        """The graceful stop, within `budget`; returns whether the node key is gone.

        1. Stops claiming and releasing on its own (the reconciler ends).
        2. Marks the node key *leaving* (same lease): every process's view takes this node
           out of the targets at once, while routing still sends each shard this node holds
           here.
        3. Hands off every shard it holds, ``--max-handoffs`` at a time (drain, deactivate,
           delete the keys: :meth:`_hand_off_all`), within the budget but a reserve
           (:data:`LEAVE_RESERVE`). A shard is served until its own chunk drains, and its
           new owner claims it as soon as its key is deleted: a call waits for one chunk's
           handoff, not for the whole leave.
        4. Stops serving (every shard unowned) and revokes the lease, which deletes the node
           key: the gates close their streams to this node once they see that.

        A leave still handing off after half its budget (:data:`DEREGISTER_SHARE`) deletes
        the node key then, and goes on: routing holds the calls of the shards left until
        their new owners claim them, as it would for a node that left at once, rather than
        sending them to a node that is about to stop (where they would fail, or wait for a
        connection until their deadline) when the gates see the key go too late. When shards
        were left behind (their handoff timed out, a delete failed, the budget ran out) the
        lease is not revoked but left to expire: whatever this node still holds is then
        surely gone before another node can claim it. When the lease could no longer be
        trusted, the objects left are dropped without running their code (another node may
        own them already), as a fence does.
        """
        self._leaving = True
        reconciler = self._reconciler
        if reconciler is not None:
            reconciler.cancel()
            await asyncio.wait({reconciler}, timeout=budget.remaining())
        lease = self._lease
        if lease is None or not lease.valid(self._margin):
            self._on_ready(False)
            self._table.fence(LEAVING)
            return False
        owned = self._table.shards(ShardState.OWNED) + self._table.shards(ShardState.DRAINING)
        log.info("leaving the cluster", shards=len(owned), budget_s=round(budget.remaining(), 3))
        handoffs = budget.remaining() - min(LEAVE_RESERVE, budget.remaining() * LEAVE_RESERVE_SHARE)
        # The first chunk drains while etcd takes the mark: waiting for the mark first cost a
        # whole etcd round trip (300 ms on a loaded machine) before any shard moved. The order
        # does not matter: a shard released before the others see the mark waits for it.
        marking = asyncio.create_task(self._mark_leaving(lease), name="mark-leaving")
        deregister_now = asyncio.Event()
        deregistering = asyncio.create_task(
            self._deregister(deregister_now, budget.remaining() * DEREGISTER_SHARE, budget),
            name="deregister",
        )
        try:
            try:
                if owned:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(handoffs) as scope:
                            await self._hand_off_all(
                                owned,
                                lease,
                                min(self._handoff_timeout, handoffs),
                                deadline=scope.when(),
                            )
            finally:
                # A mark still on its way is not waited for (on a machine so loaded that
                # etcd answered in seconds, that took the whole reserve): it only replaces
                # the node key's plain value, so, applied after the key went, it does nothing.
                marking.cancel()
                await asyncio.wait({marking})
            # Counted before the fence forgets them: kept, interrupted, or not deleted yet.
            left = self._table.count(ShardState.OWNED) + self._table.count(ShardState.DRAINING)
            self._on_ready(False)
            self._table.fence(LEAVING)
            if not left and lease.valid(self._margin):
                # The revoke deletes the node key with the rest, if it is still there.
                deleted = deregistering.done() and deregistering.result()
                deregistering.cancel()
                await asyncio.wait({deregistering})
                return await lease.revoke() or deleted
            if lease.valid(self._margin):
                log.warning(
                    "leaving with shards not handed off: the lease is left to expire",
                    shards=left,
                    expires_in_s=round(max(lease.remaining(), 0.0), 3),
                )
            else:
                log.error(
                    "the lease could not be trusted any more while leaving: objects dropped",
                    shards=left,
                    objects_dropped=self._host.drop_all(),
                )
            deregister_now.set()
            return await deregistering
        finally:
            if not deregistering.done():
                deregistering.cancel()
                await asyncio.wait({deregistering})

    async def _deregister(self, now: asyncio.Event, after: float, budget: ShutdownBudget) -> bool:
        """Deletes the node key once `now` is set or `after` seconds have passed, whichever
        comes first; returns whether it is gone."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(after):
                await now.wait()
        if not now.is_set():
            log.info(
                "leave still handing off: the node key is deleted, routing holds the calls "
                "of the shards left until they have a new owner",
                shards=self._table.count(ShardState.OWNED) + self._table.count(ShardState.DRAINING),
            )
        return await self._delete_node_key(budget)

    async def _delete_node_key(self, budget: ShutdownBudget) -> bool:
        """Deletes this node's key (not its lease) within what is left of `budget`; returns
        whether it is gone."""
        try:
            async with asyncio.timeout(budget.remaining()):
                await self._client.delete(self._keys.node(self._node))
        except (EtcdError, TimeoutError) as error:  # EtcdClosed too: a stop goes on
            log.warning("the node key could not be deleted", error=str(error) or "timed out")
            return False
        return True

    async def _mark_leaving(self, lease: Lease) -> None:
        """Replaces the node key's value with the same one marked leaving, on `lease`; never
        creates the key (:meth:`EtcdClient.replace_if`). When etcd does not take it, the
        others go on counting this node as a target: they claim its shards only once its key
        is gone (the revoke or the delete at the end, or the lease's expiry), which is
        slower, not unsafe."""
        plain = encode_node(self._address, lease.incarnation)
        value = encode_node(self._address, lease.incarnation, leaving=True)
        try:
            await self._client.replace_if(self._keys.node(self._node), plain, value, lease.id)
        except EtcdError as error:  # EtcdClosed too: a stop goes on whatever etcd says
            log.warning(
                "the node key could not be marked leaving: its shards wait for its lease",
                error=str(error),
            )


__all__ = ["OwnershipStats", "ShardOwnership"]
