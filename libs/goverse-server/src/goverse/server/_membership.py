"""Membership: what a process knows of the cluster — live nodes, shard owners — and when it changes.

Two sources fill the same :class:`ClusterView`: :class:`StaticView` (the ``--nodes`` list; never
changes) and the etcd view (``goverse.server._etcd_view``; nodes and owners watched in etcd).
Routing (gates, and nodes calling objects on other nodes) and the node's shard ownership read
only this interface. The design: ``docs/membership.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from goverse.placement import SHARD_COUNT, Placement


@dataclass(frozen=True)
class NodeInfo:
    """A live node: its id (its ``--advertise`` address), where to dial it, which run of it
    this is (a restart, or a rejoin after fencing, has a new incarnation), and whether it is
    leaving (stopping: it still serves the shards it holds, hands each off, and is the target
    of none)."""

    node_id: str
    address: str
    incarnation: str
    leaving: bool = False


@dataclass(frozen=True)
class ShardOwner:
    """Who owns a shard, and since when: `epoch` (the etcd create revision of the shard key)
    only grows, so a write that carries an older one comes from a former owner."""

    node_id: str
    incarnation: str
    epoch: int


class ClusterView(Protocol):
    """What this process knows of the cluster, and a way to wait until that changes."""

    @property
    def version(self) -> int:
        """Grows by one or more on every change of nodes or owners."""
        ...

    async def changed(self, since: int) -> int:
        """Waits until :attr:`version` is above `since`; returns it. The caller bounds the
        wait (``asyncio.timeout``)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the view can route: static, always; etcd, once loaded and while its watch
        has not been down for longer than the lease TTL."""
        ...

    def nodes(self) -> Mapping[str, NodeInfo]:
        """The live nodes, by node id, leaving ones included (they serve what they still
        own)."""
        ...

    def owner(self, shard: int) -> ShardOwner | None:
        """The shard's owner, or None while it has none (moving, or its owner died)."""
        ...

    def owner_address(self, shard: int) -> str | None:
        """Where to send a call for the shard: its owner's address, or None."""
        ...

    def target(self, shard: int) -> str | None:
        """The node id that should own the shard (rendezvous over the live nodes that are not
        leaving), or None when there is none."""
        ...


class Versioned:
    """A version number and the waiters for its next change, for views to build on."""

    def __init__(self) -> None:
        self._version = 0
        self._bumped = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def bump(self) -> None:
        """Records a change and wakes everyone waiting for one."""
        self._version += 1
        self._bumped.set()
        self._bumped = asyncio.Event()

    async def changed(self, since: int) -> int:
        while self._version <= since:
            await self._bumped.wait()
        return self._version


class StaticView(Versioned):
    """The static membership: the ``--nodes`` list, each node owning the shards placement
    gives it, with epoch 0. It never changes and is always ready."""

    def __init__(self, nodes: tuple[str, ...]) -> None:
        super().__init__()
        self._placement = Placement(nodes)
        self._nodes = {node: NodeInfo(node, node, "static") for node in self._placement.nodes}
        self._owners = tuple(
            ShardOwner(self._placement.node_for_shard(shard), "static", 0)
            for shard in range(SHARD_COUNT)
        )

    @property
    def ready(self) -> bool:
        return True

    @property
    def placement(self) -> Placement:
        return self._placement

    def nodes(self) -> Mapping[str, NodeInfo]:
        return self._nodes

    def owner(self, shard: int) -> ShardOwner:
        return self._owners[shard]

    def owner_address(self, shard: int) -> str:
        return self._owners[shard].node_id

    def target(self, shard: int) -> str:
        return self._placement.node_for_shard(shard)


__all__ = ["ClusterView", "NodeInfo", "ShardOwner", "StaticView", "Versioned"]
