"""Planned moves lose no increment: a rolling restart, and scaling out and in, under calls.

Real nodes and gates on a real etcd (``--lease-ttl=6s``) keep Ledger state in a real
PostgreSQL while 16 SDK clients each increment their own counters in a loop. Nodes hand
their shards off (the objects deactivate, the new owner loads them and claims their rows),
so no call fails, and every counter read back afterwards is exactly the increments
acknowledged: there is nothing in doubt. No two nodes ever held one object at once. Each
prints what it counted (run with ``-s``).
"""

from __future__ import annotations

import functools
import time

import pytest

from tests.helpers.call_load import CallLoad, codes, object_ids
from tests.helpers.etcd_cluster import EtcdCluster
from tests.helpers.ledgers import ADD, mismatches, read_counters, tally
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.slow

CLIENTS = 16
COUNTERS = 64


async def count_back(cluster: EtcdCluster, load: CallLoad, ids: list[str], label: str) -> None:
    """Reads every counter back and checks that none failed and each is exactly what its
    caller was acknowledged; checks the one-activation invariant."""
    async with cluster.client() as client:
        values = await read_counters(client, ids)
    tallies = tally(load.outcomes, ())
    verdict = cluster.verdict()
    print(
        f"\n{label}: {len(load.outcomes)} increments by {CLIENTS} clients on {COUNTERS} "
        f"counters, {codes(load.outcomes)}; {sum(values.values())} counted back; "
        f"{verdict.summary()}"
    )
    assert load.failures() == []
    assert mismatches(tallies, values, exact=True) == []
    verdict.assert_holds()
    assert verdict.moved > 0


async def test_a_rolling_restart_loses_no_increment_and_fails_no_call(
    cluster: EtcdCluster,
) -> None:
    """Three nodes and two gates; each node in turn gets SIGTERM (its objects deactivate as
    it hands its shards off) and starts again on its address, the next one once it is
    ready."""
    await cluster.add_nodes(3)
    await cluster.add_gates(2)
    await cluster.settled()
    ids = object_ids("ledger", COUNTERS)
    async with CallLoad(
        cluster.gate_addresses, ids, clients=CLIENTS, method=ADD, own_ids=True
    ) as load:
        await load.calls(2 * COUNTERS)
        started = time.time()
        for proc in list(cluster.nodes):
            assert await cluster.terminate(proc) == 0
            await cluster.start_again(proc)
            await eventually(functools.partial(cluster.node_ready, proc), 30, f"{proc.name} ready")
        restarted = time.time()
        await cluster.settled()
        await load.calls(COUNTERS)
    await count_back(
        cluster, load, ids, f"rolling restart of 3 nodes in {restarted - started:.1f}s"
    )


async def test_scaling_from_two_to_three_nodes_and_back_loses_no_increment(
    cluster: EtcdCluster,
) -> None:
    """Two nodes and a gate; a third node joins and takes its share of the shards, then the
    first node gets SIGTERM and hands its own share off."""
    await cluster.add_nodes(2)
    await cluster.add_gates(1)
    await cluster.settled()
    ids = object_ids("ledger", COUNTERS)
    async with CallLoad(
        cluster.gate_addresses, ids, clients=CLIENTS, method=ADD, own_ids=True
    ) as load:
        await load.calls(2 * COUNTERS)
        started = time.time()
        await cluster.add_nodes(1)
        out = await cluster.settled()
        await load.calls(COUNTERS)
        leaving = time.time()
        assert await cluster.terminate(cluster.nodes[0]) == 0
        back = await cluster.settled()
        await load.calls(COUNTERS)
    await count_back(
        cluster,
        load,
        ids,
        f"scale 2 -> 3 settled in {out - started:.1f}s, 3 -> 2 in {back - leaving:.1f}s",
    )
