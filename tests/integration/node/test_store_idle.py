"""Idle deactivation keeps a node's memory to its working set: objects no call reached for
``--idle-timeout`` are saved and forgotten, and come back from the store when called again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty

from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.call_load import object_ids
from tests.helpers.faults import rss_bytes
from tests.helpers.ledgers import SqliteStore
from tests.helpers.node_client import NodeCaller
from tests.helpers.processes import ProcessGroup
from tests.helpers.waiting import eventually

ROUND = 5000
"""Distinct Ledgers called once in each round."""
SAMPLE = 100
"""Ledgers of each round read back afterwards."""
SETTLE_TIMEOUT = 30.0
"""How long a round's objects may take to be deactivated after the idle timeout (1 s)."""
GROWTH_BOUND = 1.5
"""Resident memory after the second round over after the first: a node that kept what it
deactivated would hold twice the objects (and their store rows' bytes) after the second."""


async def settled_round(caller: NodeCaller, ids: list[str], pid: int) -> int:
    """Adds one to each of `ids`, waits until the node holds no object any more, and returns
    its resident memory then."""
    added = await caller.call_each("Ledger", ids, "Add", IncrementRequest(by=1), CounterValue)
    assert {reply.value for reply in added.values()} == {1}
    await eventually(lambda: none_active(caller), SETTLE_TIMEOUT, "every object to idle out", 0.2)
    return rss_bytes(pid)


async def none_active(caller: NodeCaller) -> bool:
    return (await caller.status()).active_objects == 0


@pytest.mark.slow
async def test_idle_objects_are_forgotten_and_come_back_from_the_store(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """A node with ``--idle-timeout=1s`` and a SQLite store: two rounds of 5,000 new Ledgers,
    each called once. After each round the node holds no object once the second has passed;
    its resident memory after the second round is within 1.5x of that after the first; and
    sampled Ledgers of both rounds answer 1, loaded from the store."""
    store = SqliteStore(tmp_path / "state.db")
    node = await asyncio.to_thread(processes.node, extra=(*store.flags, "--idle-timeout=1s"))
    first, second = object_ids("first", ROUND), object_ids("second", ROUND)
    async with NodeCaller(node.address) as caller:
        started = rss_bytes(node.pid)
        after_first = await settled_round(caller, first, node.pid)
        after_second = await settled_round(caller, second, node.pid)
        sampled = first[:: ROUND // SAMPLE] + second[:: ROUND // SAMPLE]
        values = await caller.call_each("Ledger", sampled, "Get", Empty(), CounterValue)
    retired = sum(
        int(line["objects"])
        for line in node.log_lines()
        if line["event"] == "idle objects deactivated"
    )
    print(
        f"\nRSS: {started / 2**20:.1f} MiB at start, {after_first / 2**20:.1f} MiB after "
        f"{ROUND} objects idled out, {after_second / 2**20:.1f} MiB after {ROUND} more "
        f"({after_second / after_first:.2f}x); {retired} deactivations logged"
    )
    assert {reply.value for reply in values.values()} == {1}
    # Every object of both rounds was retired; the sampled ones, activated again by their Get,
    # may idle out too while the later Gets are still going (a loaded machine: over 1 s).
    assert 2 * ROUND <= retired <= 2 * ROUND + len(sampled)
    assert after_second <= GROWTH_BOUND * after_first
