"""The etcd view: the cluster's live nodes and shard owners, read from etcd and kept current."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

import structlog

from goverse.placement import SHARD_COUNT, Placement
from goverse.server._cluster_keys import (
    SCHEMA,
    ClusterKeys,
    Entry,
    ForeignData,
    GateInfo,
    KeyKind,
)
from goverse.server._etcd import (
    EtcdClient,
    EtcdClosed,
    EtcdCompacted,
    EtcdError,
    EventType,
    KeyValue,
    WatchBatch,
)
from goverse.server._membership import NodeInfo, ShardOwner, Versioned
from goverse.transport import Backoff

log = structlog.get_logger(__name__)

STABLE_WATCH = 5.0
"""Seconds a watch must have stayed open for its reconnect backoff to start over."""


@dataclass
class ViewStats:
    """Counters of an :class:`EtcdView`, for metrics."""

    watch_reconnects: int = 0
    """Times the watch broke (or was compacted away) and the view read etcd again."""
    compactions: int = 0
    """Of those, times the revision to resume from had been compacted."""
    reloads: int = 0
    """Full reads of the prefix, the first one included."""
    events: int = 0
    """Watch events applied."""
    foreign_keys: int = 0
    """Keys seen while running that are not ours (ignored; at start they are refused)."""


class _State:
    """Nodes, gates and shard keys as etcd holds them, at one revision."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.gates: dict[str, GateInfo] = {}
        self.claims: list[ShardOwner | None] = [None] * SHARD_COUNT
        """The owner each shard key names, whether or not that node is live."""

    def put(self, entry: Entry) -> bool:
        """Applies a decoded put; returns whether routing may have changed."""
        match entry.kind:
            case KeyKind.NODE:
                assert entry.node is not None
                changed = self.nodes.get(entry.name) != entry.node
                self.nodes[entry.name] = entry.node
                return changed
            case KeyKind.GATE:
                assert entry.gate is not None
                self.gates[entry.name] = entry.gate
                return False
            case KeyKind.SHARD:
                changed = self.claims[entry.shard] != entry.owner
                self.claims[entry.shard] = entry.owner
                return changed
            case KeyKind.SCHEMA:
                return False

    def delete(self, entry: Entry) -> bool:
        """Applies a deletion; returns whether routing may have changed."""
        match entry.kind:
            case KeyKind.NODE:
                return self.nodes.pop(entry.name, None) is not None
            case KeyKind.GATE:
                self.gates.pop(entry.name, None)
                return False
            case KeyKind.SHARD:
                changed = self.claims[entry.shard] is not None
                self.claims[entry.shard] = None
                return changed
            case KeyKind.SCHEMA:
                return False


class EtcdView(Versioned):
    """:class:`~goverse.server._membership.ClusterView` from etcd: the keys of
    docs/membership.md (:mod:`goverse.server._cluster_keys`), read once, then watched.

    Lifecycle: :meth:`start` reads the prefix once (and checks it holds only our data);
    :meth:`run`, a loop the owner runs under its supervisor, watches from the revision read
    plus one, applies each batch of events and bumps :attr:`version`. When the watch breaks,
    falls silent or its revision was compacted, it reads the whole prefix again (after a
    jittered backoff) and watches from there; it never returns and ends only when cancelled
    (or with :class:`~goverse.server._etcd.EtcdClosed` when the client is closed under it).

    Routing reads: :meth:`nodes` (live node keys, leaving ones included), :meth:`owner` (the
    shard key's owner when that node's key is live with the same incarnation — a shard key
    whose owner is gone, or is an older run of a node that restarted, is no owner; a leaving
    node still owns what it holds), :meth:`owner_address` and :meth:`target` (rendezvous over
    the ids of the live nodes that are not leaving, with
    :class:`~goverse.placement.Placement`, recomputed only when that set changes: a node
    that starts leaving is nobody's target from then on, so the others claim each of its
    shards as soon as it lets go of it). :attr:`ready` is false until loaded
    and once the watch has been down for longer than the lease TTL, counted from the last
    word etcd sent on it; the version is bumped when readiness changes too, so a waiter on
    :meth:`changed` sees it.

    It logs one INFO line per change of the node set (joined, left, rejoined, leaving, count)
    and nothing per shard; :attr:`stats` counts reconnects, reloads and events for metrics.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        *,
        lease_ttl: timedelta,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self.keys = ClusterKeys(prefix)
        self._ttl = lease_ttl.total_seconds()
        self._backoff = backoff or Backoff(timedelta(milliseconds=100), timedelta(seconds=2))
        self._state = _State()
        self._placement: Placement | None = None
        self._revision = 0
        self._loaded = False
        self._down_since: float | None = None
        self._not_ready_timer: asyncio.TimerHandle | None = None
        self._freed: set[int] | None = None
        """Shards whose keys went since the last take_freed; None until it is first called
        (gates never call it, and keep nothing)."""
        self.stats = ViewStats()

    # -- ClusterView ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        if not self._loaded:
            return False
        return self._down_since is None or time.monotonic() - self._down_since <= self._ttl

    @property
    def loaded(self) -> bool:
        """Whether the prefix was read once (:meth:`start`, or :meth:`run` after a failed one)."""
        return self._loaded

    @property
    def revision(self) -> int:
        """The etcd revision the view reflects."""
        return self._revision

    def nodes(self) -> Mapping[str, NodeInfo]:
        return MappingProxyType(self._state.nodes)

    def gates(self) -> Mapping[str, GateInfo]:
        """The registered gates, by gate id."""
        return MappingProxyType(self._state.gates)

    def owner(self, shard: int) -> ShardOwner | None:
        claim = self._state.claims[shard]
        if claim is None:
            return None
        node = self._state.nodes.get(claim.node_id)
        if node is None or node.incarnation != claim.incarnation:
            return None
        return claim

    def claim(self, shard: int) -> ShardOwner | None:
        """Who holds the shard's key, live or not (for the node's ownership code, which
        believes its own writes only once the view has seen them). Routing uses
        :meth:`owner`."""
        return self._state.claims[shard]

    def owner_address(self, shard: int) -> str | None:
        owner = self.owner(shard)
        return None if owner is None else self._state.nodes[owner.node_id].address

    def target(self, shard: int) -> str | None:
        return None if self._placement is None else self._placement.node_for_shard(shard)

    def take_freed(self) -> set[int]:
        """The shards whose key the watch saw deleted since the last call (each at most once:
        bounded however rarely it is called), counted from the first call, which returns
        nothing. A node claims what it is the target of without scanning all 8192 shards; a
        reload frees nothing here, its reader scans."""
        freed, self._freed = self._freed or set(), set()
        return freed

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Reads the prefix once and checks it: every key must be one of ours, and ``schema``
        must say ``goverse/1`` (it is created when absent, after the check). Raises
        :class:`~goverse.server._cluster_keys.ForeignData` naming the first key that is not
        ours, or the client's errors (:class:`~goverse.server._etcd.EtcdUnavailable`): then
        :meth:`run` keeps trying to load."""
        revision, kvs = await self._client.get_prefix(self.keys.root)
        entries = [self.keys.decode(kv) for kv in kvs]  # raises ForeignData
        if not any(entry.kind is KeyKind.SCHEMA for entry in entries):
            await self._create_schema()
        self._load(revision, entries)

    async def _create_schema(self) -> None:
        if await self._client.create(self.keys.schema, SCHEMA) is not None:
            log.info("etcd prefix initialised", prefix=self.keys.prefix, schema=SCHEMA.decode())
            return
        current = await self._client.get(self.keys.schema)  # someone else was first
        if current is not None:
            self.keys.decode(current)

    async def run(self) -> None:
        """Loads the view if :meth:`start` did not, then keeps it current; see the class
        docstring. Raises ForeignData when loading finds foreign data."""
        try:
            if not self._loaded:
                await self._retry(self.start, "load")
            while True:
                opened = time.monotonic()
                compacted = False
                watch = self._client.watch_prefix(self.keys.root, self._revision + 1)
                try:
                    async with watch:
                        self._watch_up()
                        async for batch in watch:
                            self._apply(batch)
                except EtcdClosed:
                    raise
                except EtcdCompacted as error:
                    compacted = True
                    self.stats.compactions += 1
                    log.info("etcd watch revision compacted; reading again", error=str(error))
                except EtcdError as error:
                    # Current up to what etcd last said, which for a silent stream (a frozen
                    # etcd) is up to two timeouts before the break was noticed.
                    self._watch_down(str(error), since=watch.last_heard)
                self.stats.watch_reconnects += 1
                if time.monotonic() - opened > STABLE_WATCH:
                    self._backoff.reset()
                await self._retry(self._reload, "reload", wait_first=not compacted)
        finally:
            self._cancel_not_ready_timer()

    async def _retry(
        self, attempt: Callable[[], Awaitable[None]], what: str, *, wait_first: bool = False
    ) -> None:
        """Runs `attempt` until it succeeds, with jittered backoff between tries; raises what
        is not an etcd failure (ForeignData, EtcdClosed, cancellation)."""
        if wait_first:
            await asyncio.sleep(self._backoff.next_delay())
        while True:
            try:
                await attempt()
                return
            except EtcdClosed:
                raise
            except EtcdError as error:
                self._watch_down(str(error))
                log.debug("etcd view could not " + what, error=str(error))
            await asyncio.sleep(self._backoff.next_delay())

    # -- applying etcd's data ------------------------------------------------------------------

    def _load(self, revision: int, entries: Iterable[Entry]) -> None:
        """Replaces the whole state with what a read of the prefix found."""
        state = _State()
        for entry in entries:
            state.put(entry)
        before, self._state = self._state, state
        self._revision = revision
        self.stats.reloads += 1
        first = not self._loaded
        self._loaded = True
        routing_changed = first or (before.nodes != state.nodes or before.claims != state.claims)
        self._nodes_changed(before.nodes, announce_all=first)
        if routing_changed:
            self.bump()

    async def _reload(self) -> None:
        """Reads the prefix again after a break; foreign keys are ignored (and counted), as
        refusing them would stop a running cluster."""
        revision, kvs = await self._client.get_prefix(self.keys.root)
        entries = []
        for kv in kvs:
            entry = self._decode(kv)
            if entry is not None:
                entries.append(entry)
        self._load(revision, entries)

    def _decode(self, kv: KeyValue) -> Entry | None:
        try:
            return self.keys.decode(kv)
        except ForeignData as error:
            self.stats.foreign_keys += 1
            log.warning("ignoring a key that is not goverse's", key=error.key, reason=error.reason)
            return None

    def _apply(self, batch: WatchBatch) -> None:
        state = self._state
        before = dict(state.nodes)
        changed = False
        for event in batch.events:
            self.stats.events += 1
            if event.type is EventType.DELETE:
                try:
                    entry = self.keys.parse(event.kv.key)
                except ForeignData:
                    continue  # its put was reported already
                if entry.kind is KeyKind.SCHEMA:
                    log.warning("the schema key was deleted", key=event.kv.key)
                elif entry.kind is KeyKind.SHARD and self._freed is not None:
                    self._freed.add(entry.shard)
                changed |= state.delete(entry)
            else:
                decoded = self._decode(event.kv)
                if decoded is not None:
                    changed |= state.put(decoded)
        self._revision = batch.revision
        self._nodes_changed(before)
        if changed:
            self.bump()

    def _nodes_changed(self, before: Mapping[str, NodeInfo], announce_all: bool = False) -> None:
        """Logs one line when the node set changed (a node joined, left, rejoined, or started
        leaving), and recomputes placement when the ids of the nodes that stay did."""
        after = self._state.nodes
        joined = sorted(after.keys() - before.keys())
        left = sorted(before.keys() - after.keys())
        rejoined = sorted(
            node
            for node in after.keys() & before.keys()
            if after[node].incarnation != before[node].incarnation
        )
        leaving = sorted(
            node
            for node, info in after.items()
            if info.leaving and (node not in before or not before[node].leaving)
        )
        staying = sorted(node for node, info in after.items() if not info.leaving)
        placed = () if self._placement is None else self._placement.nodes
        if tuple(staying) != placed:  # Placement sorts its nodes too
            self._placement = Placement(staying) if staying else None
        if joined or left or leaving or rejoined or announce_all:
            log.info(
                "cluster membership changed" if not announce_all else "cluster membership read",
                joined=joined,
                left=left,
                rejoined=rejoined,
                leaving=leaving,
                nodes=len(after),
                revision=self._revision,
            )

    # -- readiness -----------------------------------------------------------------------------

    def _watch_down(self, reason: str, since: float | None = None) -> None:
        """Records that the view stopped following etcd at `since` (default: now)."""
        if self._down_since is not None:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._down_since = now if since is None else min(since, now)
        if self._loaded:
            log.warning("etcd watch lost; routing with the last map", error=reason)
        else:
            log.warning("etcd unreachable; the cluster view is not loaded", error=reason)
        # Readiness flips by the clock, not by an event: wake the waiters when it does.
        self._not_ready_timer = loop.call_later(
            max(self._down_since + self._ttl - now, 0.0), self._not_ready_any_more
        )

    def _not_ready_any_more(self) -> None:
        self._not_ready_timer = None
        if self._loaded:
            log.warning(
                "cluster view not ready: etcd unreachable for longer than the lease TTL",
                ttl_s=self._ttl,
            )
        self.bump()

    def _watch_up(self) -> None:
        if self._down_since is None:
            return
        was_ready = self.ready
        down_s = time.monotonic() - self._down_since
        self._down_since = None
        self._cancel_not_ready_timer()
        log.info("etcd watch restored", down_s=round(down_s, 3))
        if not was_ready:
            self.bump()

    def _cancel_not_ready_timer(self) -> None:
        if self._not_ready_timer is not None:
            self._not_ready_timer.cancel()
            self._not_ready_timer = None
