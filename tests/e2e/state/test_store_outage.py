"""The store goes away and comes back under a running node: only what needs it fails, and
nothing needs a restart.

One node (static membership) keeps Ledger state in a real PostgreSQL, behind a gate; the test
stops the server (a fast shutdown: every session ended) and starts it again on its port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.cluster import start_cluster
from tests.helpers.ledgers import postgres_store
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import ProcessGroup

pytestmark = pytest.mark.slow

ADD = IncrementRequest(by=1)
TIMEOUT = 10.0


async def add(client: Client, object_id: str) -> int:
    reply = await client.call("Ledger", object_id, "Add", ADD, CounterValue, timeout=TIMEOUT)
    return reply.value


async def refused(client: Client, object_id: str) -> CallError:
    """The error of an Add that must fail."""
    with pytest.raises(CallError) as raised:
        await add(client, object_id)
    return raised.value


async def test_a_store_outage_fails_only_the_calls_that_need_it_until_it_is_back(
    processes: ProcessGroup, postgres_restored: PostgresServer, tmp_path: Path
) -> None:
    """With PostgreSQL stopped: an Add on a Ledger not active yet answers UNAVAILABLE naming
    the store's problem (and not its password); an Add on an active Ledger answers the same
    and its change is not kept; stateless objects are served; Status says the store is not
    available. Once PostgreSQL runs again, the same node serves both Ledgers from what was
    stored, and Status says it is available."""
    database = await postgres_store(postgres_restored, tmp_path)
    cluster = await asyncio.to_thread(start_cluster, processes, 1, (), database.flags, nodes=1)
    node = cluster.nodes[0]
    async with cluster.client() as client:
        assert await add(client, "active") == 1
        healthy = await cluster.status(node.address)

        await postgres_restored.stop()
        cold = await refused(client, "cold")
        warm = await refused(client, "active")
        who = await client.call("Pusher", "p", "WhoAmI", Empty(), StringValue, timeout=TIMEOUT)
        me = client.client_id
        slept = await client.call("Sleeper", "s", "Sleep", Int64Value(value=1), Int64Value)
        down = await cluster.status(node.address)

        await postgres_restored.start()
        after = [await add(client, "cold"), await add(client, "active")]
        back = await cluster.status(node.address)
    print(
        f"\nPostgreSQL stopped: a Ledger not active answered {cold.status_code.name} "
        f"({cold.message}); an active one {warm.status_code.name} ({warm.message})"
    )
    assert healthy.store == database.flags[0].removeprefix("--store=")
    assert healthy.store_available
    for error, object_id in ((cold, "cold"), (warm, "active")):
        assert error.status_code is grpc.StatusCode.UNAVAILABLE
        assert f"the state of Ledger/{object_id} cannot be reached" in error.message
        # The store's problem, where it is (without the password) and what failed.
        assert f"{healthy.store}: transaction failed: " in error.message
        assert database.server.password not in error.message
    assert who.value == me
    assert slept.value == 1
    assert not down.store_available
    # "active" lost the unsaved change of the failed call: 1 + 1, not 1 + 2.
    assert after == [1, 2]
    assert back.store_available
    assert node.alive()
    assert len([line for line in node.log_lines() if line.get("event") == "listening"]) == 1
