"""When the shards have settled: the check the e2e scenarios wait on, over Status answers."""

from __future__ import annotations

from goverse.placement import SHARD_COUNT, Placement
from goverse.v1 import node_pb2
from tests.helpers.cluster import unsettled

NODES = ["unix:/tmp/a.sock", "unix:/tmp/b.sock"]


def settled_statuses() -> list[node_pb2.StatusResponse]:
    """Both nodes see both, own exactly their targets' shards and have gate-0's stream."""
    placement = Placement(NODES)
    return [
        node_pb2.StatusResponse(
            node=node,
            nodes=NODES,
            owned_shards=[s for s in range(SHARD_COUNT) if placement.node_for_shard(s) == node],
            gates=["gate-0"],
        )
        for node in NODES
    ]


def test_nodes_that_own_their_targets_shards_are_settled() -> None:
    """Nothing is missing, with or without the expected names and gates."""
    assert unsettled(settled_statuses()) == []
    assert unsettled(settled_statuses(), NODES, ["gate-0"]) == []


def test_a_missing_shard_a_drain_a_fence_or_another_view_is_not_settled() -> None:
    """Each way a node is not where placement wants it is named."""
    statuses = settled_statuses()
    statuses[0].owned_shards.pop()
    statuses[1].draining_shards.append(1)
    statuses[1].fenced = True
    statuses[1].nodes.pop()
    problems = unsettled(statuses)
    assert len(problems) == 4
    assert problems[0].startswith(f"{NODES[0]} owns")
    assert problems[1].startswith(f"{NODES[1]} sees nodes")
    assert problems[2] == f"{NODES[1]} is fenced"
    assert problems[3] == f"{NODES[1]} drains 1 shards"


def test_a_node_under_another_name_or_without_a_gates_stream_is_not_settled() -> None:
    """With names and gates given, each node must answer as its name and have every
    gate's stream."""
    problems = unsettled(settled_statuses(), [NODES[1], NODES[0]], ["gate-0", "gate-1"])
    assert f"{NODES[1]} answers as {NODES[0]}" in problems
    assert f"{NODES[0]} has streams of gates ['gate-0']" in problems
