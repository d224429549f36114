"""The PostgreSQL store against a real server: semantics, races between nodes, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from goverse.node import _postgres_store
from goverse.node._postgres_store import PostgresBackend
from goverse.node._store import Op, OpKind, Store, StoreUnavailable, open_store
from tests.helpers.postgres import STOP_TIMEOUT, PostgresServer
from tests.helpers.store_cases import KEY, StoreSemantics, bounded

POOL_SIZE = 2


class PostgresDatabase:
    """A :class:`~tests.helpers.store_cases.StoreDatabase`: a database of its own on a
    server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def store(self) -> Store:
        return open_store(self.url, None, POOL_SIZE)

    async def execute(self, sql: str) -> None:
        connection = await asyncpg.connect(self.url, timeout=STOP_TIMEOUT)
        try:
            await connection.execute(sql, timeout=STOP_TIMEOUT)
        finally:
            await connection.close(timeout=STOP_TIMEOUT)

    async def fetchval(self, sql: str) -> object:
        connection = await asyncpg.connect(self.url, timeout=STOP_TIMEOUT)
        try:
            return await connection.fetchval(sql, timeout=STOP_TIMEOUT)
        finally:
            await connection.close(timeout=STOP_TIMEOUT)


@pytest.fixture
async def database(postgres_session: PostgresServer) -> PostgresDatabase:
    """An empty database of its own on the run's shared server."""
    return PostgresDatabase(await postgres_session.create_database())


class TestPostgresSemantics(StoreSemantics):
    """The store's semantics (tests.helpers.store_cases) on PostgreSQL."""


@pytest.fixture
async def store(database: PostgresDatabase) -> AsyncIterator[Store]:
    async with database.store() as store:
        yield store


def round_trips(store: Store) -> int:
    backend = store.backend
    assert isinstance(backend, PostgresBackend)
    return backend.statements


async def test_a_batch_of_saves_is_one_statement(store: Store) -> None:
    """200 saves queued together cost a couple of transactions of one round trip each, not
    200 round trips."""
    keys = [("Counter", str(i)) for i in range(200)]
    await bounded(asyncio.gather(*(store.load(key, 1) for key in keys)))
    transactions, statements = store.transactions, round_trips(store)
    started = time.perf_counter()
    await bounded(asyncio.gather(*(store.save(key, 1, b"x" * 100) for key in keys)))
    elapsed = time.perf_counter() - started
    print(
        f"200 saves: {store.transactions - transactions} transactions, "
        f"{round_trips(store) - statements} statements, {200 / elapsed:.0f} saves/s"
    )
    assert store.transactions - transactions <= 3
    assert round_trips(store) - statements <= 3


async def test_a_mixed_batch_is_one_transaction_of_one_statement_per_kind(store: Store) -> None:
    """Loads, saves and deletes of 150 objects: BEGIN, three statements, COMMIT. Refused
    operations (here deletes of rows that are gone) cost one more, to read the stored
    epochs."""
    saved = [("Counter", f"s{i}") for i in range(50)]
    await bounded(asyncio.gather(*(store.load(key, 1) for key in saved)))
    statements = round_trips(store)
    outcomes = await bounded(
        store.backend.apply(
            [
                *(Op(OpKind.LOAD, ("Counter", f"l{i}"), 1) for i in range(50)),
                *(Op(OpKind.SAVE, key, 1, b"saved") for key in saved),
                *(Op(OpKind.DELETE, key, 1) for key in saved[:25]),
            ]
        )
    )
    assert outcomes == [None] * 125
    assert round_trips(store) - statements == 1 + 3 + 1
    await store.delete(("Counter", "never"), 1)
    assert round_trips(store) - statements == 5 + 2


async def test_a_new_schema_version_is_one_more_step(
    database: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of version 1 opened by nodes that know version 2 (two at once) runs step
    2 only, once."""
    async with database.store() as store:
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"v1")
    steps = (
        *_postgres_store.MIGRATIONS,
        ("ALTER TABLE goverse_objects ADD COLUMN saved_at TIMESTAMPTZ",),
    )
    monkeypatch.setattr(_postgres_store, "MIGRATIONS", steps)
    monkeypatch.setattr(_postgres_store, "SCHEMA_VERSION", 2)
    stores = [database.store() for _ in range(2)]
    try:
        await bounded(asyncio.gather(*(store.open() for store in stores)))
        assert await stores[1].load(KEY, 1) == b"v1"
    finally:
        for store in stores:
            await store.close()
    versions = "SELECT string_agg(version::text, ',' ORDER BY version) FROM goverse_schema"
    assert await database.fetchval(versions) == "1,2"
    assert await database.fetchval("SELECT count(saved_at) FROM goverse_objects") == 0


async def test_a_stopped_server_is_unavailable_until_it_is_back(
    postgres_restored: PostgresServer,
) -> None:
    """While the server is down every operation fails at once with StoreUnavailable (no
    password in it) and `available` is False; once it is back, the same store works again."""
    async with open_store(await postgres_restored.create_database(), None, POOL_SIZE) as store:
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"before")
        await postgres_restored.stop()
        with pytest.raises(StoreUnavailable) as refused:
            await bounded(store.save(KEY, 1, b"during"))
        message = str(refused.value)
        assert postgres_restored.password not in message
        assert message.startswith(f"postgresql://goverse:***@127.0.0.1:{postgres_restored.port}/")
        assert not store.available
        with pytest.raises(StoreUnavailable):
            await bounded(store.next_epoch())
        await postgres_restored.start()
        assert await bounded(store.load(KEY, 1)) == b"before"
        assert store.available
        await store.save(KEY, 1, b"after")
        assert await store.next_epoch() == 1


async def test_the_store_recovers_from_a_crashed_server(postgres: PostgresServer) -> None:
    """SIGKILL to the server and its backends (connections reset, crash recovery on the
    restart): what was committed is there, and the same store works again."""
    async with open_store(await postgres.create_database(), None, POOL_SIZE) as store:
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"committed")
        postgres.kill()
        with pytest.raises(StoreUnavailable):
            await bounded(store.load(KEY, 1))
        await postgres.start()
        assert await bounded(store.load(KEY, 2)) == b"committed"


async def test_a_frozen_server_fails_the_transaction_after_the_timeout(
    postgres_restored: PostgresServer,
) -> None:
    """A server that stops answering (SIGSTOP) must not hold the writer forever."""
    backend = PostgresBackend(
        await postgres_restored.create_database(), None, POOL_SIZE, timeout=timedelta(seconds=0.3)
    )
    async with Store(backend) as store:
        await store.load(KEY, 1)
        postgres_restored.pause()
        try:
            with pytest.raises(StoreUnavailable, match=r"no answer within 0.3s"):
                await bounded(store.save(KEY, 1, b"frozen"))
        finally:
            postgres_restored.resume()
        await bounded(store.save(KEY, 1, b"thawed"))
        assert await store.load(KEY, 1) == b"thawed"


async def test_no_server_is_unavailable_at_open(unreachable: str) -> None:
    store = open_store(f"postgresql://goverse:hunter2@{unreachable}/db", None, POOL_SIZE)
    with pytest.raises(StoreUnavailable, match="cannot connect") as refused:
        await bounded(store.open())
    assert "hunter2" not in str(refused.value)
    assert unreachable in str(refused.value)


async def test_a_wrong_password_is_unavailable_without_showing_it(
    postgres_session: PostgresServer,
) -> None:
    url = postgres_session.url(password="wrong-secret")
    store = open_store(url, None, POOL_SIZE)
    with pytest.raises(StoreUnavailable, match="password authentication failed") as refused:
        await bounded(store.open())
    assert "wrong-secret" not in str(refused.value)
    assert "wrong-secret" not in store.description


async def test_a_missing_database_is_named(postgres_session: PostgresServer) -> None:
    store = open_store(postgres_session.url("nowhere"), None, POOL_SIZE)
    with pytest.raises(StoreUnavailable, match='database "nowhere" does not exist'):
        await bounded(store.open())


async def test_the_password_can_come_from_a_file(
    postgres_session: PostgresServer, tmp_path: Path
) -> None:
    """--store-password-file: the URL names no password; the file's trailing newline is not
    part of it."""
    url = await postgres_session.create_database()
    password_file = tmp_path / "password"
    password_file.write_text(postgres_session.password + "\n")
    without = url.replace(f":{postgres_session.password}@", "@")
    async with open_store(without, password_file, POOL_SIZE) as store:
        assert store.description == without
        assert await store.next_epoch() == 1
