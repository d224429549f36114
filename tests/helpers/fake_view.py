"""FakeView: a ClusterView a test rewrites — nodes, shard owners, readiness — to drive routing."""

from __future__ import annotations

from collections.abc import Mapping

from goverse.server import NodeInfo, ShardOwner, Versioned


class FakeView(Versioned):
    """A :class:`~goverse.server.ClusterView` whose every change is a test's call.

    Node ids are the nodes' addresses. Every shard is owned by `default_owner` (None: by
    nobody) unless :meth:`set_owner` says otherwise; each setter bumps the version, waking
    whoever waits for a change.
    """

    def __init__(self, *nodes: str, default_owner: str | None = None, ready: bool = True) -> None:
        super().__init__()
        self._nodes = {node: NodeInfo(node, node, "1") for node in nodes}
        self._default = default_owner
        self._owners: dict[int, str | None] = {}
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready

    def nodes(self) -> Mapping[str, NodeInfo]:
        return dict(self._nodes)

    def owner(self, shard: int) -> ShardOwner | None:
        node = self._owners.get(shard, self._default)
        return None if node is None else ShardOwner(node, "1", 1)

    def owner_address(self, shard: int) -> str | None:
        return self._owners.get(shard, self._default)

    def target(self, shard: int) -> str | None:
        return self.owner_address(shard)

    def set_owner(self, shard: int, node: str | None) -> None:
        """`node` owns `shard` from now on (None: nobody does)."""
        self._owners[shard] = node
        self.bump()

    def set_nodes(self, *nodes: str, incarnation: str = "1") -> None:
        """The live nodes are `nodes` from now on."""
        self._nodes = {node: NodeInfo(node, node, incarnation) for node in nodes}
        self.bump()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.bump()


__all__ = ["FakeView"]
