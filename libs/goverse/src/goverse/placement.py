"""Placement: which node owns an object, as a pure function of its identity and the node list."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SHARD_COUNT = 8192


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def shard_of(object_type: str, object_id: str) -> int:
    """The shard of an object; stable across processes, versions and machines."""
    return _hash64(f"{object_type}/{object_id}".encode()) % SHARD_COUNT


class Placement:
    """Maps the 8192 shards onto a node list by rendezvous (highest-random-weight) hashing.

    Every process given the same node list, in any order, computes the same owner for every
    object; adding or removing one node moves only the shards that node wins or held. The
    table is computed once, at construction.
    """

    def __init__(self, nodes: Sequence[str]) -> None:
        if not nodes:
            raise ValueError("the node list is empty")
        duplicates = sorted({n for n in nodes if list(nodes).count(n) > 1})
        if duplicates:
            raise ValueError(f"the node list names {', '.join(duplicates)} more than once")
        self._nodes = tuple(sorted(nodes))
        encoded = [(node, node.encode()) for node in self._nodes]
        self._table = tuple(
            max(encoded, key=lambda item: _hash64(item[1] + b"#" + str(shard).encode()))[0]
            for shard in range(SHARD_COUNT)
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node list, sorted."""
        return self._nodes

    def node_for_shard(self, shard: int) -> str:
        return self._table[shard]

    def node_for(self, object_type: str, object_id: str) -> str:
        """The address of the node that owns the object."""
        return self._table[shard_of(object_type, object_id)]
