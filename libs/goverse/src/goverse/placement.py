"""Placement: which node owns an object, as a pure function of its identity and the node list."""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Sequence

SHARD_COUNT = 8192
WEIGHT_CACHE_NODES = 64
"""Nodes whose 8192 shard weights a process keeps (64 KiB each): a node set that changes by
one node costs that node's hashes at most, not every node's again."""


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=WEIGHT_CACHE_NODES)
def _weights(node: str) -> array[int]:
    """The node's rendezvous weight for each shard."""
    prefix = node.encode() + b"#"
    return array("Q", [_hash64(prefix + str(shard).encode()) for shard in range(SHARD_COUNT)])


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
        # Each shard goes to the node of highest weight, the first in sorted order on a tie.
        # Built from cached weights: hashing every node for every shard took 50-80 ms of a
        # core per change of the node set, in every gate and node at once, just when a
        # scale needs them to follow etcd.
        columns = [_weights(node) for node in self._nodes]
        best = list(columns[0])
        owner = [0] * SHARD_COUNT
        for index in range(1, len(columns)):
            for shard, weight in enumerate(columns[index]):
                if weight > best[shard]:
                    best[shard] = weight
                    owner[shard] = index
        self._table = tuple(self._nodes[index] for index in owner)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node list, sorted."""
        return self._nodes

    def node_for_shard(self, shard: int) -> str:
        return self._table[shard]

    def node_for(self, object_type: str, object_id: str) -> str:
        """The address of the node that owns the object."""
        return self._table[shard_of(object_type, object_id)]
