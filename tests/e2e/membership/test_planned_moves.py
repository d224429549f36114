"""Planned membership changes under calls: scaling out and in, a rolling restart, a gate restart.

Each scenario runs real nodes and gates on a real etcd (``--lease-ttl=6s``, see
:mod:`tests.helpers.etcd_cluster`) while 8 SDK clients call 100 Witness objects in a loop, and
asserts that no call failed and that no two node incarnations ever held one object at
overlapping times. Each prints what it measured (run with ``-s``); docs/membership.md
("Measured") collects the figures.
"""

from __future__ import annotations

import asyncio
import functools
import time

from tests.helpers.call_load import CallLoad, codes, object_ids, percentile
from tests.helpers.etcd_cluster import EtcdCluster
from tests.helpers.waiting import eventually

OBJECTS = 100
STEADY_WINDOW = 3.0
"""Seconds over which etcd's revision is read twice at steady state."""


def extra_latencies(
    load: CallLoad, start: float, end: float, after: float, baseline: float
) -> list[float]:
    """The extra latency (over `baseline`) of the calls started in [start, end) to objects
    that changed node between `start` and `after`."""
    before, later = load.served_by(start), load.served_by(after)
    moved = {obj for obj, pid in before.items() if later.get(obj, pid) != pid}
    return [o.latency - baseline for o in load.between(start, end, moved)]


def describe(extra: list[float]) -> str:
    return (
        f"{len(extra)} calls to moving objects: extra latency p50 "
        f"{percentile(extra, 0.5) * 1000:.0f} ms, p99 {percentile(extra, 0.99) * 1000:.0f} ms, "
        f"max {max(extra, default=0.0) * 1000:.0f} ms"
    )


async def test_scaling_from_two_to_four_nodes_and_back_fails_no_call(
    cluster: EtcdCluster,
) -> None:
    """Two nodes and two gates serve the clients; two more nodes start, and once the shards
    have settled on four nodes, the first two get SIGTERM. Every call succeeds (calls to a
    moving shard wait, then are served by its new owner), objects did move, and no object was
    ever held by two nodes at once. etcd sees no write at steady state."""
    await cluster.add_nodes(2)
    await cluster.add_gates(2)
    await cluster.settled()
    async with CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load:
        await load.calls(4 * OBJECTS)  # every object active
        warm = len(load.outcomes)
        keys, revision = await cluster.etcd_keys()
        await asyncio.sleep(STEADY_WINDOW)  # a measurement window: etcd's writes meanwhile
        _, steady_revision = await cluster.etcd_keys()
        baseline = percentile([o.latency for o in load.outcomes[warm:]], 0.5)

        out_started = time.time()
        await cluster.add_nodes(2)
        out_settled = await cluster.settled()
        _, out_revision = await cluster.etcd_keys()
        await load.calls(2 * OBJECTS)
        in_started = time.time()
        _, in_revision = await cluster.etcd_keys()
        leaving = cluster.nodes[:2]
        exits = await asyncio.gather(*(cluster.terminate(proc) for proc in leaving))
        in_settled = await cluster.settled()
        _, settled_revision = await cluster.etcd_keys()
        await load.calls(2 * OBJECTS)
    verdict = cluster.verdict()

    out_extra = extra_latencies(load, out_started, out_settled, in_started, baseline)
    in_extra = extra_latencies(load, in_started, in_settled, time.time(), baseline)
    gaps = verdict.handoff_gaps()
    print(
        f"\n{len(load.outcomes)} calls, {codes(load.outcomes)}; baseline p50 "
        f"{baseline * 1000:.1f} ms; {verdict.summary()}"
        f"\nscale 2 -> 4: settled in {out_settled - out_started:.2f}s; {describe(out_extra)}; "
        f"etcd {(out_revision - steady_revision) / (out_settled - out_started):.0f} writes/s"
        f"\nscale 4 -> 2 (SIGTERM): settled in {in_settled - in_started:.2f}s; "
        f"{describe(in_extra)}; etcd "
        f"{(settled_revision - in_revision) / (in_settled - in_started):.0f} writes/s"
        f"\nno holder between two: p50 {percentile(gaps, 0.5) * 1000:.0f} ms, p99 "
        f"{percentile(gaps, 0.99) * 1000:.0f} ms over {len(gaps)} moves"
        f"\netcd at steady state: {keys} keys, "
        f"{(steady_revision - revision) / STEADY_WINDOW:.1f} writes/s"
    )
    assert cluster.node_events("fenced") == []
    assert load.failures() == []
    verdict.assert_holds()
    assert verdict.moved > OBJECTS // 2
    assert exits == [0, 0]
    assert steady_revision == revision


async def test_a_rolling_restart_of_every_node_fails_no_call(cluster: EtcdCluster) -> None:
    """Three nodes serve the clients through two gates; each node in turn gets SIGTERM (it
    hands its shards off) and starts again on its address, the next one as soon as the
    restarted one is ready, as a Kubernetes rolling update does. Every call succeeds and no
    object is ever held by two node incarnations."""
    await cluster.add_nodes(3)
    await cluster.add_gates(2)
    await cluster.settled()
    async with CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load:
        await load.calls(4 * OBJECTS)
        started = time.time()
        baseline = percentile([o.latency for o in load.outcomes], 0.5)
        for proc in list(cluster.nodes):
            assert await cluster.terminate(proc) == 0
            await cluster.start_again(proc)
            await eventually(functools.partial(cluster.node_ready, proc), 30, f"{proc.name} ready")
        restarted = time.time()
        settled = await cluster.settled()
        await load.calls(2 * OBJECTS)
    verdict = cluster.verdict()
    extra = [o.latency - baseline for o in load.between(started, settled)]
    print(
        f"\nrolling restart of 3 nodes: {restarted - started:.2f}s, settled "
        f"{settled - restarted:.2f}s later; {len(load.failures())} calls failed of "
        f"{len(load.outcomes)}, {codes(load.outcomes)}; calls meanwhile: extra latency p50 "
        f"{percentile(extra, 0.5) * 1000:.0f} ms, p99 {percentile(extra, 0.99) * 1000:.0f} ms; "
        f"{verdict.summary()}"
    )
    assert load.failures() == []
    verdict.assert_holds()


async def test_a_gate_restart_moves_its_clients_and_activates_nothing_twice(
    cluster: EtcdCluster,
) -> None:
    """Two nodes and two gates; each gate in turn gets SIGTERM (its clients are told to move)
    and starts again on its port. The clients register with the other gate and go on
    calling: no call fails, and no object is activated twice (the gates route by the same
    shard owners, whichever a client uses)."""
    await cluster.add_nodes(2)
    await cluster.add_gates(2)
    await cluster.settled()
    async with CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load:
        await load.calls(4 * OBJECTS)
        for gate in list(cluster.gates):
            assert await cluster.terminate(gate) == 0
            await cluster.start_again(gate)
            await load.calls(OBJECTS)
        registrations = [client.registrations for client in load.clients]
    verdict = cluster.verdict()
    print(
        f"\ngate restarts: registrations per client {registrations}; {len(load.outcomes)} "
        f"calls, {codes(load.outcomes)}; {verdict.summary()}"
    )
    assert all(count >= 2 for count in registrations)
    assert load.failures() == []
    verdict.assert_holds()
    assert verdict.moved == 0
