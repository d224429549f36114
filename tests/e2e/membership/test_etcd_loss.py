"""etcd killed (SIGKILL) while clients call, then started again on its port: nobody restarts.

Two nodes and a gate on a real etcd (``--lease-ttl=6s``, :mod:`tests.helpers.etcd_cluster`),
8 SDK clients calling 100 Witness objects in a loop. Prints what it measured (run with
``-s``).
"""

from __future__ import annotations

import time

from tests.helpers.call_load import CallLoad, codes, object_ids
from tests.helpers.etcd_cluster import ETCD_TIMEOUT, FENCE_MARGIN, TTL, EtcdCluster
from tests.helpers.faults import logged_at
from tests.helpers.waiting import eventually
from tests.helpers.witness import read_records

OBJECTS = 100
SLACK = 5.0
"""What a loaded 2-core machine may add to a bound."""
OUTAGE_CODES = {"FAILED_PRECONDITION", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
"""What a call answers when no node may serve its shard until its deadline (docs/errors.md):
the last refusal (fenced nodes are not the owner), no owner, or the deadline."""


async def test_nodes_fence_and_gates_turn_not_ready_without_etcd_and_all_recover_after_it(
    cluster: EtcdCluster,
) -> None:
    """etcd gets SIGKILL. The nodes keep serving until their lease validity ends (the TTL
    from their last acknowledged keep-alive, less the fence margin), then fence themselves;
    the gate turns not ready once its watch has been down for the TTL. etcd starts again on
    its port and data: the nodes rejoin as new incarnations, the shards settle, the gate is
    ready and every object is served again, with no process restarted. Calls fail only
    between the kill and the recovery, with the codes docs/errors.md lists, and no object is
    ever held by two node incarnations."""
    await cluster.add_nodes(2)
    [gate] = await cluster.add_gates(1)
    await cluster.settled()
    nodes = list(cluster.nodes)
    pids = [proc.pid for proc in nodes]
    async with CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load:
        await load.calls(4 * OBJECTS)
        killed = time.time()
        cluster.etcd.kill()
        await eventually(
            lambda: all(cluster.node_events("fenced", proc) for proc in nodes),
            TTL + SLACK,
            "both nodes to fence themselves",
        )
        fences = [logged_at(cluster.node_events("fenced", proc)[0]) - killed for proc in nodes]
        not_ready_since = 0.0

        async def not_ready() -> bool:
            nonlocal not_ready_since
            if await cluster.gate_ready(gate):
                return False
            not_ready_since = time.time()
            return True

        await eventually(not_ready, TTL + SLACK, "the gate to turn not ready", interval=0.05)
        back = time.time()
        await cluster.etcd.start()
        settled = await cluster.settled()
        await eventually(lambda: cluster.gate_ready(gate), SLACK, "the gate to be ready again")
        await load.until(
            lambda outcomes: (
                {o.object_id for o in outcomes if o.ok and o.started > settled}
                == set(object_ids("w", OBJECTS))
            ),
            30,
            "every object to be served again",
        )
        recovered = min(o.ended for o in load.outcomes if o.ok and o.started > back)
    verdict = cluster.verdict()
    records = read_records(cluster.witness_dir)
    served_after_kill = [
        max((r.wall for r in records if r.pid == pid and r.event == "call"), default=0.0)
        for pid in pids
    ]
    failed = load.failures()
    print(
        f"\netcd SIGKILL: nodes fenced {', '.join(f'{f:.2f}s' for f in fences)} after it "
        f"(TTL {TTL:g}s, margin {FENCE_MARGIN:g}s); the gate not ready "
        f"{not_ready_since - killed:.2f}s after it; etcd back {back - killed:.2f}s after the "
        f"kill; first call served {recovered - back:.2f}s after etcd was back, shards settled "
        f"{settled - back:.2f}s after; {len(failed)} calls failed; "
        f"{len(load.outcomes)} calls, {codes(load.outcomes)}; {verdict.summary()}"
    )
    assert [proc.pid for proc in cluster.nodes] == pids  # no restart
    assert all(0 < fence <= TTL for fence in fences)
    assert all(killed < served for served in served_after_kill)  # served while the lease held
    assert TTL - 2 * ETCD_TIMEOUT <= not_ready_since - killed <= TTL + SLACK
    assert {o.code for o in failed} <= OUTAGE_CODES
    assert all(killed - 10 < o.started and o.ended < settled for o in failed)
    verdict.assert_holds()
