"""Placement: 8192 shards, rendezvous hashing, the same answer everywhere."""

from __future__ import annotations

import collections
import hashlib

import pytest

from goverse.placement import SHARD_COUNT, WEIGHT_CACHE_NODES, Placement, _weights, shard_of


def test_shard_is_stable_and_in_range() -> None:
    assert shard_of("Counter", "a") == shard_of("Counter", "a")
    assert all(0 <= shard_of("T", str(i)) < SHARD_COUNT for i in range(1000))


def test_type_is_part_of_the_identity() -> None:
    owners = {shard_of("A", str(i)) != shard_of("B", str(i)) for i in range(100)}
    assert True in owners


def test_node_order_does_not_matter() -> None:
    a = Placement(["n1:1", "n2:1", "n3:1"])
    b = Placement(["n3:1", "n1:1", "n2:1"])
    assert all(a.node_for("T", str(i)) == b.node_for("T", str(i)) for i in range(2000))


def test_shards_spread_over_nodes() -> None:
    placement = Placement(["n1:1", "n2:1", "n3:1", "n4:1"])
    counts = collections.Counter(placement.node_for_shard(s) for s in range(SHARD_COUNT))
    assert set(counts) == set(placement.nodes)
    assert min(counts.values()) > SHARD_COUNT / 4 * 0.8


def test_adding_a_node_moves_only_shards_it_wins() -> None:
    """Rendezvous hashing: shards move only to the new node, never between old ones."""
    old = Placement(["n1:1", "n2:1", "n3:1"])
    new = Placement(["n1:1", "n2:1", "n3:1", "n4:1"])
    moved = 0
    for shard in range(SHARD_COUNT):
        before, after = old.node_for_shard(shard), new.node_for_shard(shard)
        if before != after:
            assert after == "n4:1"
            moved += 1
    assert SHARD_COUNT * 0.15 < moved < SHARD_COUNT * 0.35


def test_rejects_empty_and_repeated_node_lists() -> None:
    with pytest.raises(ValueError, match="empty"):
        Placement([])
    with pytest.raises(ValueError, match="more than once"):
        Placement(["a:1", "a:1"])


def _weight(node: str, shard: int) -> int:
    """Rendezvous weight as every version computes it: BLAKE2b-64 of ``<node>#<shard>``."""
    digest = hashlib.blake2b(f"{node}#{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def test_each_shard_goes_to_the_node_of_highest_weight() -> None:
    """The table is the rendezvous function itself, whatever cache builds it: processes of
    different versions in one cluster must agree on every shard's target."""
    nodes = ["n3:7001", "n1:7001", "n2:7001"]
    placement = Placement(nodes)
    for shard in range(SHARD_COUNT):
        weights = {node: _weight(node, shard) for node in sorted(nodes)}
        assert placement.node_for_shard(shard) == max(weights, key=weights.__getitem__)


def test_the_table_is_pinned() -> None:
    """A few shards' targets as computed before the weights were cached (a change here moves
    shards between versions during a rolling upgrade)."""
    placement = Placement(["n1:7001", "n2:7001", "n3:7001"])
    pinned = {0: "n1:7001", 1: "n2:7001", 2: "n2:7001", 3: "n1:7001", 4095: "n3:7001"}
    assert {shard: placement.node_for_shard(shard) for shard in pinned} == pinned
    counts = collections.Counter(placement.node_for_shard(s) for s in range(SHARD_COUNT))
    assert counts["n1:7001"] == 2730


def test_a_node_set_that_changes_by_one_node_reuses_the_others_weights() -> None:
    """Leaving and joining nodes rebuild the table from cached per-node weights, so only a
    new node's 8192 hashes are computed (the cache is bounded)."""
    Placement(["a:1", "b:1", "c:1"])
    before = _weights.cache_info()
    Placement(["a:1", "b:1"])
    Placement(["a:1", "b:1", "c:1", "d:1"])
    after = _weights.cache_info()
    assert after.misses - before.misses == 1
    assert after.maxsize == WEIGHT_CACHE_NODES
