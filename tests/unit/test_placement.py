"""Placement: 8192 shards, rendezvous hashing, the same answer everywhere."""

from __future__ import annotations

import collections

import pytest

from goverse.placement import SHARD_COUNT, Placement, shard_of


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
