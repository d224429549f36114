"""A stored state that no longer parses fails its object's activation only, and stays as it
is: one node process with a store, called straight through NodeService."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.ledgers import PostgresStore, SqliteStore, postgres_store
from tests.helpers.node_client import NodeCaller
from tests.helpers.postgres import PostgresServer
from tests.helpers.processes import ProcessGroup
from tests.helpers.waiting import eventually

GARBAGE = b"\xff\xff\xff\xff not a CounterState"
"""Bytes that do not parse as a CounterState (protobuf: "Wire format was corrupt")."""
IDS = ("bad", "good-1", "good-2")


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> PostgresStore | SqliteStore:
    """The node's store: a SQLite file, or a database of its own on the run's PostgreSQL."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "state.db")
    server: PostgresServer = request.getfixturevalue("postgres_session")
    return await postgres_store(server, tmp_path)


@pytest.mark.slow
async def test_a_stored_state_that_does_not_parse_answers_data_loss_and_is_left_as_it_is(
    processes: ProcessGroup, store: PostgresStore | SqliteStore
) -> None:
    """Three Ledgers are incremented, then deactivate (idle for a second); the stored state
    of one is overwritten with bytes that do not parse. Calling it answers DATA_LOSS naming
    the object and the state's type, again at each call (nothing half-activated stays); the
    node logs it as an error; the other two activate from their rows; the bad row still
    holds exactly the bytes written."""
    node = processes.node(extra=(*store.flags, "--idle-timeout=1s"))
    async with NodeCaller(node.address) as caller:
        added = await caller.call_each("Ledger", IDS, "Add", IncrementRequest(by=5), CounterValue)
        assert {key: reply.value for key, reply in added.items()} == dict.fromkeys(IDS, 5)
        await eventually(lambda: none_active(caller), 15, "the Ledgers to deactivate", 0.1)
        await store.set_data("Ledger", "bad", GARBAGE)
        errors = []
        for method in ("Get", "Get", "Add"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await caller.call("Ledger", "bad", method, request_of(method), CounterValue)
            errors.append(raised.value)
        others = await caller.call_each("Ledger", IDS[1:], "Get", Empty(), CounterValue)
        status = await caller.status()
    row = await store.row("Ledger", "bad")
    logged = [line for line in node.log_lines() if line["event"] == "stored state does not parse"]
    print(f"\n{store.flags[0].split(':')[0]}: {errors[0].code().name}: {errors[0].details()}")
    for error in errors:
        assert error.code() == grpc.StatusCode.DATA_LOSS
        assert error.details() == (
            "the stored state of Ledger/bad is not a valid goverse.examples.v1.CounterState; "
            "it was left as it is"
        )
    assert {key: reply.value for key, reply in others.items()} == {"good-1": 5, "good-2": 5}
    assert status.active_objects == 2
    assert row is not None
    assert row.data == GARBAGE
    assert len(logged) == 3
    assert {line["level"] for line in logged} == {"error"}
    assert {line["object_id"] for line in logged} == {"bad"}


def request_of(method: str) -> IncrementRequest | Empty:
    return IncrementRequest(by=1) if method == "Add" else Empty()


async def none_active(caller: NodeCaller) -> bool:
    return (await caller.status()).active_objects == 0
