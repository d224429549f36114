"""The settled-shards check the e2e scenarios wait on, and what a cluster's clients get."""

from __future__ import annotations

from pathlib import Path

import jwt

from goverse.placement import SHARD_COUNT, Placement
from goverse.v1 import node_pb2
from tests.helpers.cluster import Cluster, ClusterTLS, unsettled
from tests.helpers.processes import ProcessGroup
from tests.helpers.tokens import AUDIENCE, ISSUER, TokenIssuer

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


def test_a_plaintext_clusters_clients_get_no_credentials(tmp_path: Path) -> None:
    """Without TLS or JWT, a client of the cluster is given no SDK options."""
    cluster = Cluster(ProcessGroup(tmp_path), [])
    assert cluster.client_options() == {}
    assert cluster.credentials is None


def test_a_secured_clusters_clients_trust_its_ca_and_sign_a_token_per_registration(
    tmp_path: Path,
) -> None:
    """With TLS and JWT, a client trusts the cluster's CA and gets a fresh token, accepted
    by the gates' flags (audience and issuer), each time it asks."""
    tls = ClusterTLS.make(tmp_path / "pki")
    tokens = TokenIssuer()
    cluster = Cluster(ProcessGroup(tmp_path), [], tls=tls, tokens=tokens)
    options = cluster.client_options()
    assert set(options) == {"tls", "token"}
    assert options["tls"].ca == tls.ca.pem
    first, second = options["token"](), options["token"]()
    assert first != second
    claims = jwt.decode(first, tokens.secret, algorithms=["HS256"], audience=AUDIENCE)
    assert (claims["sub"], claims["iss"]) == ("tester", ISSUER)
    assert cluster.credentials is not None
