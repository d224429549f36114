"""The SQLite store on real files, and the Store's group commit and lifecycle."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from goverse.node import _sqlite_store
from goverse.node._sqlite_store import SqliteBackend
from goverse.node._store import (
    Op,
    Outcome,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from tests.helpers.store_cases import BOUND, KEY, StoreSemantics, bounded


class SqliteDatabase:
    """A :class:`~tests.helpers.store_cases.StoreDatabase`: one file under the test's
    tmp_path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self) -> Store:
        return Store(SqliteBackend(self.path))

    async def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute(sql)
        connection.close()

    async def fetchval(self, sql: str) -> object:
        connection = sqlite3.connect(self.path)
        try:
            return connection.execute(sql).fetchone()[0]
        finally:
            connection.close()


@pytest.fixture
def database(tmp_path: Path) -> SqliteDatabase:
    return SqliteDatabase(tmp_path / "state.db")


class TestSqliteSemantics(StoreSemantics):
    """The store's semantics (tests.helpers.store_cases) on SQLite."""


async def test_the_file_is_durable_on_commit(database: SqliteDatabase) -> None:
    """WAL journal and synchronous=FULL: a commit is on disk when the save returns."""
    store = database.store()
    async with store:
        assert isinstance(store.backend, SqliteBackend)
        assert store.description == f"sqlite:{database.path}"
        connection = store.backend._connection
        assert connection is not None
        pragmas = await store.backend._run(
            lambda: [
                connection.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout")
            ],
        )
    assert pragmas == ["wal", 2, 5000]


async def test_a_saved_state_survives_a_killed_process(tmp_path: Path) -> None:
    """A process that saved and said so is SIGKILLed at once: the state is in the file."""
    path = tmp_path / "state.db"
    program = textwrap.dedent(
        f"""
        import asyncio, time
        from goverse.node._store import open_store

        async def main():
            store = open_store("sqlite:{path}")
            await store.open()
            await store.load(("Counter", "a"), 1)
            await store.save(("Counter", "a"), 1, b"durable")
            print("saved", flush=True)
            time.sleep(60)

        asyncio.run(main())
        """
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):  # an interpreter start on a loaded machine
            assert await child.stdout.readline() == b"saved\n"
    finally:
        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(BOUND):
            await child.wait()
    async with open_store(f"sqlite:{path}") as store:
        assert await store.load(KEY, 2) == b"durable"


async def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    """The directory is not created: a typo in --store must not scatter files."""
    store = open_store(f"sqlite:{tmp_path}/nowhere/state.db")
    with pytest.raises(StoreUnavailable, match=r"directory .*/nowhere does not exist"):
        await store.open()
    (tmp_path / "nowhere").mkdir()
    await store.open()
    await store.close()


async def test_a_directory_that_cannot_be_looked_at_is_unavailable(tmp_path: Path) -> None:
    """Regression: looking for the directory raised what the system said (a name too long,
    no permission to search a parent) as an OSError, no StoreError: the node's store task
    crashed with a traceback and the node never opened its store nor retried. Now it is
    unavailable, with the reason, like a missing directory."""
    store = open_store(f"sqlite:{tmp_path}/{'d' * 300}/state.db")
    with pytest.raises(StoreUnavailable, match="cannot open: File name too long"):
        await store.open()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite file, but it is long enough to look like one" * 20)
    store = open_store(f"sqlite:{path}")
    with pytest.raises(StoreError, match="not a usable SQLite database") as refused:
        await store.open()
    assert not isinstance(refused.value, StoreUnavailable)
    assert str(path) in str(refused.value)


async def test_a_directory_in_place_of_the_file_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path}")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        await store.open()


class GatedBackend:
    """A backend around SQLite whose transactions wait for :attr:`gate`, or fail on demand."""

    def __init__(self, inner: SqliteBackend) -> None:
        self.inner = inner
        self.description = inner.description
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail_with: Exception | None = None
        self.batches: list[int] = []

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def next_epoch(self) -> int:
        return await self.inner.next_epoch()

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        self.batches.append(len(ops))
        self.entered.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return await self.inner.apply(ops)


@pytest.fixture
async def gated(database: SqliteDatabase) -> GatedBackend:
    return GatedBackend(SqliteBackend(database.path))


async def test_close_fails_queued_operations_and_lets_the_one_in_flight_finish(
    gated: GatedBackend,
) -> None:
    """Queued: "store is closed" at once. In flight: its real outcome, once it is done."""
    store = Store(gated)
    await store.open()
    gated.gate.clear()
    in_flight = asyncio.create_task(store.load(KEY, 1))
    await bounded(gated.entered.wait())
    queued = [asyncio.create_task(store.load(("Counter", str(i)), 1)) for i in range(3)]
    await asyncio.sleep(0)
    closing = asyncio.create_task(store.close(timeout=BOUND))
    for task in queued:
        with pytest.raises(StoreUnavailable, match="store is closed"):
            await bounded(task)
    assert not in_flight.done()
    gated.gate.set()
    assert await bounded(in_flight) is None
    await bounded(closing)
    assert gated.batches == [1]


async def test_close_abandons_a_transaction_that_does_not_finish(gated: GatedBackend) -> None:
    """Past its timeout, close cancels the writer; the callers still get an answer."""
    store = Store(gated)
    await store.open()
    gated.gate.clear()
    in_flight = asyncio.create_task(store.save(KEY, 1, b"x"))
    await bounded(gated.entered.wait())
    await bounded(store.close(timeout=0.05))
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await bounded(in_flight)


async def test_a_failed_transaction_fails_its_operations_and_the_next_may_succeed(
    gated: GatedBackend,
) -> None:
    """`available` is False from a failed transaction until one succeeds."""
    async with Store(gated) as store:
        assert store.available
        gated.fail_with = StoreUnavailable("sqlite:x: disk I/O error")
        results = await bounded(
            asyncio.gather(*(store.load(KEY, 1) for _ in range(2)), return_exceptions=True)
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert str(results[0]) == "sqlite:x: disk I/O error"
        assert results[0] is not results[1]
        assert not store.available
        gated.fail_with = None
        assert await bounded(store.load(KEY, 1)) is None
        assert store.available


async def test_a_defect_in_the_backend_still_answers_every_caller(gated: GatedBackend) -> None:
    async with Store(gated) as store:
        gated.fail_with = RuntimeError("bug")
        with pytest.raises(StoreUnavailable, match="transaction failed: RuntimeError"):
            await bounded(store.load(KEY, 1))
        gated.fail_with = None
        assert await bounded(store.load(KEY, 1)) is None


async def test_a_caller_that_gave_up_is_not_sent(gated: GatedBackend) -> None:
    """An operation cancelled while queued never reaches the database."""
    async with Store(gated) as store:
        gated.gate.clear()
        first = asyncio.create_task(store.load(KEY, 1))
        await bounded(gated.entered.wait())
        given_up = asyncio.create_task(store.load(("Counter", "gone"), 1))
        kept = asyncio.create_task(store.load(("Counter", "kept"), 1))
        await asyncio.sleep(0)
        given_up.cancel()
        gated.gate.set()
        await bounded(asyncio.gather(first, kept))
        assert gated.batches == [1, 1]


async def test_a_close_during_open_wins(gated: GatedBackend) -> None:
    """A store closed while it was opening ends closed, its backend too."""
    store = Store(gated)
    opening = asyncio.create_task(store.open())
    await asyncio.sleep(0)
    await bounded(store.close())
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await bounded(opening)
    assert gated.inner._executor is None


async def test_batches_are_bounded(gated: GatedBackend) -> None:
    """What is queued during a transaction goes in batches of at most max_batch."""
    async with Store(gated, max_batch=50) as store:
        gated.gate.clear()
        first = asyncio.create_task(store.load(KEY, 1))
        await bounded(gated.entered.wait())
        rest = [asyncio.create_task(store.load(("Counter", str(i)), 1)) for i in range(120)]
        await asyncio.sleep(0)
        gated.gate.set()
        await bounded(asyncio.gather(first, *rest))
        assert gated.batches == [1, 50, 50, 20]
        assert (store.transactions, store.ops) == (4, 121)


async def test_batches_are_bounded_in_bytes_too(gated: GatedBackend) -> None:
    """States of 40 bytes under a bound of 100: two per transaction; a lone bigger one goes
    alone."""
    async with Store(gated, max_batch_bytes=100) as store:
        keys = [("Counter", str(i)) for i in range(5)]
        await asyncio.gather(*(store.load(key, 1) for key in keys))
        gated.gate.clear()
        gated.batches.clear()
        gated.entered.clear()
        first = asyncio.create_task(store.save(keys[0], 1, b"x" * 40))
        await bounded(gated.entered.wait())
        rest = [
            asyncio.create_task(store.save(key, 1, b"x" * (400 if key == keys[3] else 40)))
            for key in keys[1:]
        ]
        await asyncio.sleep(0)
        gated.gate.set()
        await bounded(asyncio.gather(first, *rest))
        assert gated.batches == [1, 2, 1, 1]


async def test_a_new_schema_version_is_one_more_step(
    database: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of version 1 opened by code that knows version 2 runs step 2 only, once."""
    async with database.store() as store:
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"v1")
    steps = (*_sqlite_store.MIGRATIONS, ("ALTER TABLE goverse_objects ADD COLUMN saved_at TEXT",))
    monkeypatch.setattr(_sqlite_store, "MIGRATIONS", steps)
    monkeypatch.setattr(_sqlite_store, "SCHEMA_VERSION", 2)
    for _ in range(2):
        async with database.store() as store:
            assert await store.load(KEY, 1) == b"v1"
    assert await database.fetchval("SELECT group_concat(version) FROM goverse_schema") == "1,2"
    assert await database.fetchval("SELECT count(saved_at) FROM goverse_objects") == 0


async def test_open_store_refuses_other_schemes_without_showing_a_password() -> None:
    with pytest.raises(StoreError, match="is not a store") as refused:
        open_store("mysql://user:secret@host/db")
    assert "secret" not in str(refused.value)
    with pytest.raises(StoreError, match="password file is for PostgreSQL"):
        open_store("sqlite:/tmp/x.db", Path("/tmp/password"))


def test_the_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    store = open_store("postgresql://goverse@127.0.0.1:1/db", path, 2)
    assert store.description == "postgresql://goverse@127.0.0.1:1/db"
    assert store.backend._password == "s3cret"  # type: ignore[attr-defined]


def test_an_unreadable_password_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot read the store password file .*: No such file"):
        open_store("postgresql://goverse@127.0.0.1:1/db", tmp_path / "missing", 2)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(StoreError, match="is empty"):
        open_store("postgresql://goverse@127.0.0.1:1/db", tmp_path / "empty", 2)
