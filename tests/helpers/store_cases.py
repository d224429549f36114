"""The store's semantics as tests, run against each backend by a subclass of StoreSemantics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import pytest

from goverse.node._store import (
    Op,
    OpKind,
    SchemaTooNew,
    StaleEpoch,
    Store,
    StoreError,
    StoreUnavailable,
)

T = TypeVar("T")

KEY = ("Counter", "a")
OTHER = ("Counter", "b")

BOUND = 10.0
"""The bound of every wait in these tests (each takes milliseconds)."""


class StoreDatabase(Protocol):
    """One empty database of a backend, for one test."""

    def store(self) -> Store:
        """A new store on the database, not opened (a "node")."""

    async def execute(self, sql: str) -> None:
        """Runs `sql` on the database out of band (to stage what another node left)."""

    async def fetchval(self, sql: str) -> object:
        """The first value of `sql`'s first row, read out of band."""


async def bounded(awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, or a failed test after :data:`BOUND` seconds."""
    async with asyncio.timeout(BOUND):
        return await awaitable


class StoreSemantics:
    """What every backend does, through :class:`Store`. A test module subclasses it as
    ``Test...`` and provides a ``database`` fixture (:class:`StoreDatabase`)."""

    @pytest.fixture
    async def store(self, database: StoreDatabase) -> AsyncIterator[Store]:
        """An opened store on the test's database; closed after."""
        async with database.store() as store:
            yield store

    @pytest.fixture
    async def stores(
        self, database: StoreDatabase
    ) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
        """Opens more stores on the same database (other nodes, or this node restarted); all
        are closed after the test."""
        opened: list[Store] = []

        async def open_one() -> Store:
            store = database.store()
            await bounded(store.open())
            opened.append(store)
            return store

        try:
            yield open_one
        finally:
            for store in opened:
                await store.close()

    async def test_loading_an_object_without_a_row_returns_nothing_and_claims_it(
        self, store: Store
    ) -> None:
        """A first load finds no state and creates the row, so a save of that epoch works."""
        assert await store.load(KEY, 1) is None
        await store.save(KEY, 1, b"state")
        assert await store.load(KEY, 1) == b"state"

    async def test_a_save_without_a_row_is_refused(self, store: Store) -> None:
        """A save needs a row claimed by a load: without one it is refused as gone."""
        with pytest.raises(StaleEpoch) as refused:
            await store.save(KEY, 1, b"state")
        assert (refused.value.key, refused.value.epoch, refused.value.stored) == (KEY, 1, None)
        assert await store.load(KEY, 1) is None

    async def test_a_load_with_a_newer_epoch_claims_the_row_from_the_older_one(
        self, store: Store
    ) -> None:
        """After a load with epoch 2, the owner of epoch 1 can neither save nor delete."""
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"one")
        assert await store.load(KEY, 2) == b"one"
        with pytest.raises(StaleEpoch) as refused:
            await store.save(KEY, 1, b"late")
        assert refused.value.stored == 2
        assert "was claimed with epoch 2" in str(refused.value)
        with pytest.raises(StaleEpoch):
            await store.delete(KEY, 1)
        assert await store.load(KEY, 2) == b"one"

    async def test_a_load_with_an_older_epoch_is_refused_and_changes_nothing(
        self, store: Store
    ) -> None:
        """A paused old owner that loads again cannot take the row back."""
        await store.load(KEY, 5)
        await store.save(KEY, 5, b"five")
        with pytest.raises(StaleEpoch) as refused:
            await store.load(KEY, 4)
        assert (refused.value.epoch, refused.value.stored) == (4, 5)
        await store.save(KEY, 5, b"still mine")
        assert await store.load(KEY, 5) == b"still mine"

    async def test_a_save_with_a_newer_epoch_than_stored_takes_the_row(self, store: Store) -> None:
        """A save's epoch only has to be no older than the stored one."""
        await store.load(KEY, 1)
        await store.save(KEY, 3, b"three")
        with pytest.raises(StaleEpoch):
            await store.save(KEY, 2, b"two")
        assert await store.load(KEY, 3) == b"three"

    async def test_a_delete_removes_the_row_and_a_later_save_is_refused(self, store: Store) -> None:
        """Deleted state is gone: a load starts over, a save of the old row is refused."""
        await store.load(KEY, 1)
        await store.save(KEY, 1, b"state")
        await store.delete(KEY, 1)
        with pytest.raises(StaleEpoch) as refused:
            await store.save(KEY, 1, b"again")
        assert refused.value.stored is None
        assert "no longer exists" in str(refused.value)
        assert await store.load(KEY, 1) is None

    async def test_deleting_a_missing_row_succeeds(self, store: Store) -> None:
        """Delete is idempotent."""
        await store.delete(KEY, 1)
        await store.load(KEY, 1)
        await store.delete(KEY, 1)
        await store.delete(KEY, 1)

    async def test_a_load_with_the_same_epoch_returns_the_state_again(self, store: Store) -> None:
        await store.load(KEY, 7)
        await store.save(KEY, 7, b"\x00\xffbinary")
        assert await store.load(KEY, 7) == b"\x00\xffbinary"

    async def test_operations_on_one_object_in_one_batch_apply_in_order(self, store: Store) -> None:
        """A batch that loads, saves, loads, deletes and loads one object sees each step."""
        outcomes = await store.backend.apply(
            [
                Op(OpKind.LOAD, KEY, 1),
                Op(OpKind.SAVE, KEY, 1, b"a"),
                Op(OpKind.LOAD, OTHER, 1),
                Op(OpKind.SAVE, KEY, 1, b"b"),
                Op(OpKind.LOAD, KEY, 1),
                Op(OpKind.DELETE, KEY, 1),
                Op(OpKind.SAVE, KEY, 1, b"c"),
                Op(OpKind.LOAD, KEY, 2),
            ]
        )
        assert outcomes[:6] == [None, None, None, None, b"b", None]
        assert isinstance(outcomes[6], StaleEpoch)
        assert outcomes[6].stored is None
        assert outcomes[7] is None

    async def test_each_operation_of_a_batch_has_its_own_outcome(self, store: Store) -> None:
        """One refused operation does not fail the others of its transaction."""
        await store.load(OTHER, 9)
        outcomes = await store.backend.apply(
            [
                Op(OpKind.LOAD, KEY, 1),
                Op(OpKind.SAVE, OTHER, 1, b"stale"),
                Op(OpKind.DELETE, ("Counter", "never"), 1),
                Op(OpKind.LOAD, ("Counter", "c"), 1),
                Op(OpKind.DELETE, OTHER, 1),
                Op(OpKind.LOAD, OTHER, 3),
            ]
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], StaleEpoch)
        assert outcomes[1].stored == 9
        assert outcomes[2:4] == [None, None]
        assert isinstance(outcomes[4], StaleEpoch)
        assert isinstance(outcomes[5], StaleEpoch)
        assert await store.backend.apply([]) == []

    async def test_concurrent_operations_share_transactions(self, store: Store) -> None:
        """100 saves queued together take far fewer than 100 transactions (group commit),
        and each reports its own result."""
        keys = [("Counter", str(i)) for i in range(100)]
        await asyncio.gather(*(store.load(key, 1) for key in keys))
        before = store.transactions
        await bounded(asyncio.gather(*(store.save(key, 1, key[1].encode()) for key in keys)))
        assert store.transactions - before <= 3
        loaded = await asyncio.gather(*(store.load(key, 1) for key in keys))
        assert loaded == [key[1].encode() for key in keys]

    async def test_a_lone_operation_runs_at_once_in_its_own_transaction(self, store: Store) -> None:
        before = store.transactions
        await bounded(store.load(KEY, 1))
        assert store.transactions == before + 1

    async def test_next_epoch_increases_across_restarts(
        self, stores: Callable[[], Awaitable[Store]]
    ) -> None:
        """The static epoch starts at 1 and never repeats, also after the node restarted."""
        first = await stores()
        assert [await first.next_epoch() for _ in range(3)] == [1, 2, 3]
        await first.close()
        again = await stores()
        assert await again.next_epoch() == 4

    async def test_state_survives_a_restart(self, stores: Callable[[], Awaitable[Store]]) -> None:
        first = await stores()
        await first.load(KEY, 1)
        await first.save(KEY, 1, b"kept")
        await first.close()
        again = await stores()
        assert await again.load(KEY, 2) == b"kept"

    async def test_nodes_opening_together_migrate_once(
        self, database: StoreDatabase, stores: Callable[[], Awaitable[Store]]
    ) -> None:
        """Four stores opening at once on an empty database: all open, one migration."""
        opened = await bounded(asyncio.gather(*(stores() for _ in range(4))))
        assert all(store.available for store in opened)
        assert await database.fetchval("SELECT count(*) FROM goverse_schema") == 1
        assert await database.fetchval("SELECT max(version) FROM goverse_schema") == 1
        await opened[0].load(KEY, 1)
        await opened[3].save(KEY, 1, b"shared")
        assert await opened[1].load(KEY, 1) == b"shared"

    async def test_a_schema_newer_than_the_node_is_refused(
        self, database: StoreDatabase, stores: Callable[[], Awaitable[Store]]
    ) -> None:
        """A node must not read or write a database a newer node migrated."""
        await (await stores()).close()
        await database.execute(
            "INSERT INTO goverse_schema (version, applied_at) VALUES (3, '2030-01-01')"
        )
        store = database.store()
        with pytest.raises(SchemaTooNew) as refused:
            await bounded(store.open())
        assert str(refused.value) == (
            "schema version 3 is newer than this node (1): upgrade the node"
        )
        assert isinstance(refused.value, StoreError)
        with pytest.raises(StoreUnavailable, match="store is not open"):
            await store.load(KEY, 1)
        await store.close()

    async def test_an_older_owner_never_overwrites_a_newer_one(
        self, stores: Callable[[], Awaitable[Store]]
    ) -> None:
        """Two nodes race on 40 objects: the old owner (epoch 1) saves again and again while
        the new one (epoch 2) claims and saves once. The new owner's state always wins: the
        old owner's saves land before the claim (and are overwritten) or are refused."""
        old, new = await stores(), await stores()
        keys = [("Counter", str(i)) for i in range(40)]
        await asyncio.gather(*(old.load(key, 1) for key in keys))

        async def old_owner(key: tuple[str, str]) -> None:
            for attempt in range(5):
                try:
                    await old.save(key, 1, f"old {attempt}".encode())
                except StaleEpoch:
                    return
                await asyncio.sleep(0)

        async def new_owner(key: tuple[str, str]) -> None:
            await asyncio.sleep(0)
            await new.load(key, 2)
            await new.save(key, 2, b"new")

        await bounded(
            asyncio.gather(*(old_owner(key) for key in keys), *(new_owner(key) for key in keys))
        )
        assert await asyncio.gather(*(new.load(key, 2) for key in keys)) == [b"new"] * 40
        for key in keys:
            with pytest.raises(StaleEpoch):
                await old.save(key, 1, b"too late")

    async def test_operations_after_close_are_refused(self, database: StoreDatabase) -> None:
        store = database.store()
        with pytest.raises(StoreUnavailable, match="store is not open"):
            await store.next_epoch()
        await store.open()
        await store.close()
        await store.close()
        with pytest.raises(StoreUnavailable, match="store is closed"):
            await store.save(KEY, 1, b"x")
        with pytest.raises(StoreUnavailable, match="store is closed"):
            await store.open()
        assert not store.available
