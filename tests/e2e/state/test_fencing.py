"""A node that lost its shard while a call was changing an object never overwrites the state
the new owner saved: the store refuses a write under an older epoch.

Two nodes and a gate on a real etcd (``--lease-ttl=6s``) keep Ledger state in a real
PostgreSQL. A call on an object of node A changes the state and holds (``SlowAdd``, before
its save); A is frozen (SIGSTOP) past its lease, B claims the shard and serves the object,
loading it (which claims its row with B's epoch); A runs again and its held call goes on to
its save, which the row's newer epoch refuses. Prints what the held call's caller got (run
with ``-s``).

The server logs every write to the test's database (``log_statement``), so the test sees the
stale save sent, not only its absence from the row.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.placement import shard_of
from tests.helpers.call_load import object_ids
from tests.helpers.etcd_cluster import TTL, EtcdCluster
from tests.helpers.faults import sigstop
from tests.helpers.ledgers import PostgresStore
from tests.helpers.waiting import eventually
from tests.helpers.witness import read_records

pytestmark = pytest.mark.slow

HOLD_MS = 3000
"""How long the SlowAdd on node A holds its change before its save. Shorter than A's lease
stays valid after the freeze (at least TTL - TTL/3 - fence margin = 3.5 s), so that when A
runs again the call's timer comes before the lease watchdog's and the call reaches its save
before A fences itself (which cancels the calls in flight); longer than it takes to freeze A
once the call runs."""
GATE_KEEPALIVE = ("--keepalive-time=60s", "--keepalive-timeout=20s")
"""The gate's pings must not give up on frozen A (by default within 10 s + 5 s, so often
during the freeze): its connection closed, A's gRPC server would cancel the held call as
soon as A runs, before the call reaches its save."""
ADD = IncrementRequest(by=1)


def describe(answer: CounterValue | CallError) -> str:
    if isinstance(answer, CallError):
        return f"{answer.status_code.name} ({answer.message})"
    return f"OK {answer.value}"


async def test_a_frozen_owners_held_change_never_overwrites_the_new_owners_state(
    cluster: EtcdCluster, database: PostgresStore
) -> None:
    """Node A serves three Adds on a Ledger (value 3), then a SlowAdd that makes it 4 in
    memory and holds. A is frozen past its lease; B claims the shard and serves three Adds
    (4, 5, 6: it loaded 3, and claimed the row with its epoch). A runs again: its held call
    sends its save, with A's epoch, and the store refuses it. The row holds exactly B's last
    reply under B's epoch, before and after A ran again and rejoined."""
    await database.log_writes()
    cluster.gate_extra = (*cluster.gate_extra, *GATE_KEEPALIVE)
    await cluster.add_nodes(2)
    await cluster.add_gates(1)
    await cluster.settled()
    node_a = cluster.nodes[0]
    owned = set((await cluster.status(node_a.address)).owned_shards)
    [target] = object_ids("stale", 1, lambda i: shard_of("Ledger", i) in owned)
    async with Client(cluster.gate_addresses) as first, Client(cluster.gate_addresses) as second:
        for _ in range(3):
            await first.call("Ledger", target, "Add", ADD, CounterValue, timeout=10)
        before = await database.row("Ledger", target)
        held = asyncio.create_task(
            first.call(
                "Ledger", target, "SlowAdd", Int64Value(value=HOLD_MS), CounterValue, timeout=60
            )
        )
        await eventually(
            lambda: (
                sum(
                    1
                    for r in read_records(cluster.witness_dir)
                    if r.object_id == target and r.event == "call" and r.pid == node_a.pid
                )
                == 4
            ),
            10,
            "the SlowAdd to run on node A",
            interval=0.02,
        )
        with sigstop(node_a) as stopped:
            cluster.forget(node_a)
            await cluster.settled()
            replies = [
                (await second.call("Ledger", target, "Add", ADD, CounterValue, timeout=10)).value
                for _ in range(3)
            ]
            claimed = await database.row("Ledger", target)
            log_offset = len(database.server.output())
            # The scenario: frozen for longer than the TTL, and for longer than the SlowAdd.
            await asyncio.sleep(max(stopped + TTL + 0.5 - time.time(), 0.0))
        resumed = time.time()
        try:
            answer: CounterValue | CallError = await held
        except CallError as error:
            answer = error
        refused = await database.row("Ledger", target)
        cluster.remember(node_a)
        await eventually(
            lambda: cluster.node_events("joined the cluster", node_a, node_a.pid)[1:],
            TTL + 10,
            "node A to rejoin",
        )
        await cluster.settled()
        after = await database.row("Ledger", target)
        saves = database.saves_logged(log_offset)
    assert before is not None
    assert claimed is not None
    stale_saves = [epoch for i, epoch in saves if i == target and epoch < claimed.epoch]
    print(
        f"\nSlowAdd held on node A ({HOLD_MS} ms), A frozen {resumed - stopped:.2f}s (TTL "
        f"{TTL:g}s): row before {before}, after B's calls {claimed} (replies {replies}); "
        f"saves of the object with an older epoch than B's, sent after B's claim: "
        f"{stale_saves}; the held call answered {describe(answer)}; row once A ran again "
        f"{refused}, once A rejoined {after}"
    )
    assert before.value == 3
    assert replies == [4, 5, 6]
    assert claimed.value == 6
    assert claimed.epoch > before.epoch
    # A's held call did send its save, with A's epoch, after B had claimed the row...
    assert stale_saves == [before.epoch]
    if isinstance(answer, CallError):
        # ... and A fenced itself as that save was under way, which stopped the call: the
        # row is B's last write, under B's epoch, to the end.
        assert answer.status_code is grpc.StatusCode.UNAVAILABLE
        assert f"fenced itself while Ledger/{target} ran the call" in answer.message
        assert refused == claimed
        assert after == claimed
    else:
        # ... or the refusal reached the call before the fence did: refused as not the
        # owner, the gate sent it again to B, which ran it on its own state (6 + 1).
        assert answer.value == 7
        assert refused is not None
        assert (refused.value, refused.epoch) == (7, claimed.epoch)
        assert after == refused
    cluster.verdict().assert_holds()
