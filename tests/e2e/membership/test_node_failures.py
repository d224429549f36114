"""A node crashes (SIGKILL) or freezes past its lease (SIGSTOP) while clients call.

Real nodes and a gate on a real etcd (``--lease-ttl=6s``, :mod:`tests.helpers.etcd_cluster`),
8 SDK clients calling 100 Witness objects in a loop. A crashed node's shards are reclaimed
once its lease expires, and calls fail only inside that window; a frozen node fences itself
when it runs again, before it serves anything, and rejoins as a new incarnation. No object is
ever held by two node incarnations at once. Each prints what it measured (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import time

from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.client import CallError, Client
from goverse.placement import shard_of
from tests.helpers.call_load import CallLoad, codes, object_ids, percentile
from tests.helpers.etcd_cluster import TTL, EtcdCluster
from tests.helpers.faults import logged_at, sigkill, sigstop
from tests.helpers.waiting import eventually
from tests.helpers.witness import read_records

OBJECTS = 100
RECLAIM_BOUND = TTL + 2.0
"""The target: a crashed node's objects are served again within the TTL + 2 s (counted here
from the kill, which is after its last keep-alive). It is a figure this scenario prints, not
what it asserts: on a 2-core machine loaded by other suites (load average 10), reclaims of
8.4 s and 9.8 s were seen, the lease expiring on time and the rest scheduling delay. The test
asserts that the lease is what bounds it: reclaimed within the TTL plus :data:`SLACK`."""
CRASH_CODES = {"UNAVAILABLE", "CANCELLED"}
"""What a call in flight to a node that dies, or that freezes for longer than the gate's
keepalive gives it ("ping timeout"), answers (docs/errors.md): it reached the node, so it is
not sent again."""
SLACK = 5.0
"""What a loaded 2-core machine may add to a bound that is not a target."""
FENCE_BOUND = 1.0
"""A node that runs again past its lease fences itself at once: its first timer is late."""


def served_again(load: CallLoad, objects: set[str], since: float) -> dict[str, float]:
    """For each of `objects` served by a call that started after `since`, when that first
    call ended."""
    first: dict[str, float] = {}
    for outcome in load.outcomes:
        if outcome.ok and outcome.object_id in objects and outcome.started > since:
            first[outcome.object_id] = min(
                first.get(outcome.object_id, outcome.ended), outcome.ended
            )
    return first


def describe(result: Int64Value | BaseException, frozen: int) -> str:
    """How a call to an object of the frozen node ended."""
    if isinstance(result, CallError):
        return f"failed: {result.status_code.name}"
    if isinstance(result, BaseException):
        return f"failed: {result!r}"
    return "served by the frozen node" if result.value == frozen else "served by another node"


async def test_a_killed_nodes_objects_are_served_again_once_its_lease_expired(
    cluster: EtcdCluster,
) -> None:
    """Three nodes serve the clients; one gets SIGKILL. Calls in flight to it fail
    (UNAVAILABLE: they had reached it); calls to its objects made afterwards wait until its
    lease expires and another node claims its shards, then succeed. Its shards are claimed,
    and its objects served again, within TTL + 2 s of the kill; calls to other objects never
    fail."""
    await cluster.add_nodes(3)
    await cluster.add_gates(1)
    await cluster.settled()
    victim = cluster.nodes[0]
    async with CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load:
        await load.calls(4 * OBJECTS)
        killed = sigkill(victim)
        cluster.forget(victim)
        orphans = {obj for obj, pid in load.served_by(killed).items() if pid == victim.pid}
        reclaimed = await cluster.settled()
        await load.until(
            lambda _: len(served_again(load, orphans, killed)) == len(orphans),
            RECLAIM_BOUND + SLACK,
            "every object of the killed node to be served again",
        )
        back = served_again(load, orphans, killed)
        await load.calls(2 * OBJECTS)
    verdict = cluster.verdict()
    first, last = min(back.values()) - killed, max(back.values()) - killed
    failed = load.failures()
    print(
        f"\nSIGKILL of 1 of 3 nodes (TTL {TTL:g}s): its shards all claimed by the others "
        f"{reclaimed - killed:.2f}s after the kill; its {len(orphans)} objects served again "
        f"{first:.2f}s (the first) to {last:.2f}s (the last: the clients go round 100 objects) "
        f"after it; {len(load.outcomes)} calls, {codes(load.outcomes)}; {verdict.summary()}"
    )
    assert orphans
    assert first <= TTL + SLACK
    assert reclaimed - killed <= TTL + SLACK
    assert {o.code for o in failed} <= CRASH_CODES
    assert {o.object_id for o in failed} <= orphans
    assert all(killed - 10 < o.started <= killed and o.ended <= killed + last for o in failed)
    verdict.assert_holds()


async def test_a_node_frozen_past_its_lease_fences_itself_before_serving_and_rejoins(
    cluster: EtcdCluster,
) -> None:
    """Three nodes serve the clients; one is frozen (SIGSTOP) with a call running on one of
    its objects and a second call waiting for that object's turn. The others reclaim its
    shards once its lease expired; another node serves that object meanwhile. Then the node
    runs again (SIGCONT): it fences itself before it serves anything, the waiting call is not
    served there (it is refused and served by the shard's new owner), and the node rejoins
    as a new incarnation and gets shards back. Only calls that were in flight to it when it
    froze can fail (UNAVAILABLE, once the gate's keepalive gives up on it), and no object is
    ever held by two incarnations."""
    await cluster.add_nodes(3)
    await cluster.add_gates(1)
    await cluster.settled()
    victim = cluster.nodes[0]
    pid = victim.pid
    before = await cluster.status(victim.address)
    owned = set(before.owned_shards)
    [probe] = object_ids("probe", 1, lambda i: shard_of("Witness", i) in owned)
    async with (
        CallLoad(cluster.gate_addresses, object_ids("w", OBJECTS)) as load,
        Client(cluster.gate_addresses) as first,
        Client(cluster.gate_addresses) as second,
        Client(cluster.gate_addresses) as third,
    ):
        await load.calls(4 * OBJECTS)
        frozen_objects = {
            obj for obj, served in load.served_by(time.time()).items() if served == pid
        }
        running = asyncio.create_task(
            first.call("Witness", probe, "Hold", Int64Value(value=2000), Int64Value, timeout=30)
        )
        await eventually(
            lambda: any(
                r.object_id == probe and r.event == "call"
                for r in read_records(cluster.witness_dir)
            ),
            10,
            "the probe's first call to run",
            interval=0.05,
        )
        waiting = asyncio.create_task(
            second.call("Witness", probe, "Touch", Empty(), Int64Value, timeout=30)
        )
        # The second call waits for the object's turn inside the node, where nothing can be
        # observed from outside: give it well under the first call's 2 s to get there.
        await asyncio.sleep(0.3)
        # No load call in the middle of the node's step when it stops: nothing can stand
        # between a step and its next instruction, so a call stopped there finishes its step
        # after SIGCONT (its record late, its result refused: ObjectHost.still_serving).
        await load.pause()
        with sigstop(victim) as stopped:
            load.resume()  # calls made while it is frozen
            cluster.forget(victim)
            reclaimed = await cluster.settled()
            elsewhere = await third.call("Witness", probe, "Touch", Empty(), Int64Value, timeout=10)
            # The scenario: frozen for longer than the TTL (the others may have reclaimed its
            # shards sooner, its last keep-alive having been sent up to TTL/3 before the stop).
            await asyncio.sleep(max(stopped + TTL + 0.5 - time.time(), 0.0))
        resumed = time.time()
        await eventually(lambda: cluster.node_events("fenced", victim, pid), 10, "the fence")
        await eventually(
            lambda: len(cluster.node_events("joined the cluster", victim, pid)) == 2,
            TTL + SLACK,
            "the rejoin",
        )
        cluster.remember(victim)
        after = await cluster.status(victim.address)
        await cluster.settled()
        await load.calls(2 * OBJECTS)
        [held, waited] = await asyncio.gather(running, waiting, return_exceptions=True)
    verdict = cluster.verdict()
    fenced = logged_at(cluster.node_events("fenced", victim, pid)[0])
    rejoined = logged_at(cluster.node_events("joined the cluster", victim, pid)[1])
    late = [
        r
        for r in read_records(cluster.witness_dir)
        if r.pid == pid and r.event != "deactivate" and resumed <= r.wall < rejoined
    ]
    latencies = [o.latency for o in load.between(stopped, resumed)]
    print(
        f"\nSIGSTOP of 1 of 3 nodes for {resumed - stopped:.2f}s (TTL {TTL:g}s): shards settled "
        f"on the others {reclaimed - stopped:.2f}s after the stop; fenced "
        f"{fenced - resumed:.3f}s after SIGCONT, rejoined {rejoined - resumed:.2f}s after it; "
        f"calls made while it was frozen: p50 {percentile(latencies, 0.5):.2f}s, max "
        f"{max(latencies, default=0.0):.2f}s; the call running at the freeze: "
        f"{describe(held, pid)}; "
        f"{len(load.outcomes)} calls, {codes(load.outcomes)}; {verdict.summary()}"
    )
    assert resumed - stopped > TTL
    assert resumed <= fenced <= resumed + FENCE_BOUND
    assert after.incarnation != before.incarnation
    assert late == [], late[:5]
    assert elsewhere.value != pid
    # The waiting call is refused by the node when it runs again and sent to the new owner,
    # unless the gate's keepalive gave up on the frozen node first (UNAVAILABLE, ping timeout).
    assert describe(waited, pid) in ("served by another node", "failed: UNAVAILABLE")
    failed = load.failures()
    assert {o.code for o in failed} <= CRASH_CODES
    assert {o.object_id for o in failed} <= frozen_objects
    assert all(o.started <= resumed and o.ended <= resumed + FENCE_BOUND for o in failed)
    verdict.assert_holds()
