"""Tests of stateful objects on the object host, with a real SQLite store: loading before
activation, each-call and periodic saves, fencing, corrupt state, idle deactivation, limits."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from google.protobuf.descriptor_pb2 import UninterpretedOption

from goverse._object_types import ObjectType, object_type_of
from goverse.errors import DataLoss, Internal, ResourceExhausted, ShardNotServed, Unavailable
from goverse.examples.chat import ChatRoom
from goverse.examples.counter import Counter
from goverse.examples.v1.counter_pb2 import CounterState, CounterValue, IncrementRequest
from goverse.node._object_host import ObjectHost
from goverse.node._object_state import ObjectState
from goverse.node._shards import ShardTable
from goverse.node._sqlite_store import SqliteBackend
from goverse.node._store import Op, Outcome, Store, StoreUnavailable, open_store
from goverse.objects import Caller, Durability, ObjectRuntime, Stateful
from goverse.placement import SHARD_COUNT
from goverse.wire import ShardRefusal, pack, unpack


class Tally(Stateful[CounterState]):
    """A counter saved periodically."""

    durability = Durability.PERIODIC

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.state.value += request.by
        return CounterValue(value=self.state.value)


class SlowToLeave(Stateful[CounterState]):
    """A periodic counter whose on_deactivate takes a while (it could call another object)."""

    durability = Durability.PERIODIC

    async def on_deactivate(self) -> None:
        await asyncio.sleep(0.1)

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.state.value += request.by
        return CounterValue(value=self.state.value)


class Unsaveable(Stateful[UninterpretedOption.NamePart]):
    """A proto2 state whose required field Increment leaves unset: it does not serialize."""

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.state.name_part = "changed"
        return CounterValue(value=request.by)


class PeriodicUnsaveable(Unsaveable):
    durability = Durability.PERIODIC


TYPES: dict[str, ObjectType] = {
    found.name: found
    for found in (
        object_type_of(cls)
        for cls in (Counter, ChatRoom, Tally, SlowToLeave, Unsaveable, PeriodicUnsaveable)
    )
}


def unusable(error: BaseException) -> None:
    raise AssertionError(f"the store cannot be used: {error}")


@asynccontextmanager
async def hosting(path: Path, max_objects: int = 1000) -> AsyncIterator[ObjectHost]:
    """An object host owning every shard, its state in the SQLite file `path`."""
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    state = ObjectState(open_store(f"sqlite:{path}", None, 1), table, "n1")
    await state.open(fail=unusable)
    host = ObjectHost(TYPES, table, "n1", state, max_objects)
    host.attach_runtime(cast(ObjectRuntime, object()))
    try:
        yield host
    finally:
        await host.deactivate_all(5.0)
        await state.close()


async def increment(host: ObjectHost, object_id: str, by: int = 1, kind: str = "Counter") -> int:
    reply = await host.invoke(kind, object_id, "Increment", pack(IncrementRequest(by=by)), Caller())
    return unpack(reply, CounterValue).value


def stored(path: Path, object_type: str, object_id: str) -> tuple[int, bytes | None] | None:
    """The (epoch, data) row of an object, read straight from the file."""
    with sqlite3.connect(path) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
        table = next(name for name in names if "object" in name)
        row = db.execute(
            f"SELECT epoch, data FROM {table} WHERE type = ? AND id = ?",
            (object_type, object_id),
        ).fetchone()
    return None if row is None else (row[0], row[1])


def stored_value(path: Path, object_id: str, object_type: str = "Counter") -> int | None:
    row = stored(path, object_type, object_id)
    if row is None or row[1] is None:
        return None
    return CounterState.FromString(row[1]).value


async def test_an_each_call_reply_comes_after_its_state_is_stored(tmp_path: Path) -> None:
    """Every acknowledged increment is in the file when the reply arrives, and a new host
    on the same file starts from it."""
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        for expected in range(1, 6):
            assert await increment(host, "c1") == expected
            assert stored_value(path, "c1") == expected
    async with hosting(path) as host:
        assert await increment(host, "c1", by=10) == 15


async def test_a_periodic_object_saves_at_the_interval_and_at_deactivation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        await increment(host, "p1", kind="Tally")
        assert stored_value(path, "p1", "Tally") is None
        assert await host.save_changed() == 1
        assert stored_value(path, "p1", "Tally") == 1
        assert await host.save_changed() == 0
        await increment(host, "p1", by=2, kind="Tally")
    assert stored_value(path, "p1", "Tally") == 3


async def test_an_older_epoch_never_overwrites_a_newer_owners_state(tmp_path: Path) -> None:
    """Two runs on one file (the second has the higher epoch): once the newer run loaded the
    object, the older run's save is refused as not the owner, the older run forgets the
    object, and the stored value is the newer run's."""
    path = tmp_path / "state.db"
    async with hosting(path) as old:
        assert await increment(old, "c1") == 1
        async with hosting(path) as new:
            assert await increment(new, "c1", by=100) == 101
            with pytest.raises(ShardNotServed) as refused:
                await increment(old, "c1")
            assert refused.value.reason is ShardRefusal.NOT_OWNER
            assert not old.is_active("Counter", "c1")
            assert stored_value(path, "c1") == 101
            # The old run loads the object again: its epoch is older, so it is refused again.
            with pytest.raises(ShardNotServed):
                await increment(old, "c1")
            assert await increment(new, "c1") == 102
    assert stored_value(path, "c1") == 102


async def test_state_that_does_not_parse_fails_its_activation_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        await increment(host, "bad")
        await increment(host, "good")
    with sqlite3.connect(path) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
        table = next(name for name in names if "object" in name)
        db.execute(
            f"UPDATE {table} SET data = ? WHERE id = 'bad'",
            (b"\xff\xff\xff",),
        )
    async with hosting(path) as host:
        with pytest.raises(DataLoss, match="Counter/bad"):
            await increment(host, "bad")
        assert not host.is_active("Counter", "bad")
        assert await increment(host, "good") == 2
    row = stored(path, "Counter", "bad")
    assert row is not None
    assert row[1] == b"\xff\xff\xff"


@pytest.mark.parametrize("damage", ["'not a state'", "2.5"], ids=["text", "real"])
async def test_a_stored_value_that_is_not_a_blob_fails_its_activation_only(
    tmp_path: Path, damage: str
) -> None:
    """Regression: SQLite keeps whatever type a value has, and a row whose state was set to
    text (the sqlite3 shell, another program) failed the whole transaction: its object and
    every other one loaded or saved with it answered UNAVAILABLE, and the store was reported
    unavailable. Now it is a state that does not parse, like any other."""
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        await increment(host, "bad")
        await increment(host, "good")
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE goverse_objects SET data = {damage} WHERE id = 'bad'")
    async with hosting(path) as host:
        bad, good = await asyncio.gather(
            increment(host, "bad"), increment(host, "good"), return_exceptions=True
        )
        assert isinstance(bad, DataLoss), bad
        assert good == 2
        assert host._state.available
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT data, typeof(data) FROM goverse_objects WHERE id = 'bad'")
        assert row.fetchone() == db.execute(f"SELECT {damage}, typeof({damage})").fetchone()


async def test_a_state_that_does_not_serialize_fails_its_object_only(tmp_path: Path) -> None:
    """Regression: the serializer's EncodeError escaped the node's handling of a failed save.
    An each-call object stayed active holding the change it could not save; a periodic one
    made save_changed (and deactivate_idle) raise, which ended the node's upkeep task: no more
    periodic saves or idle deactivations for any object. Now it is a failed save like any
    other: the call answers INTERNAL and the object is dropped, the others are saved."""
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        with pytest.raises(Internal, match="Unsaveable/u1"):
            await increment(host, "u1", kind="Unsaveable")
        assert not host.is_active("Unsaveable", "u1")
        await increment(host, "p1", kind="PeriodicUnsaveable")
        await increment(host, "t1", kind="Tally")
        assert await host.save_changed() == 1
        assert not host.is_active("PeriodicUnsaveable", "p1")
        assert stored_value(path, "t1", "Tally") == 1
        await increment(host, "p2", kind="PeriodicUnsaveable")
        await increment(host, "t2", kind="Tally")
        assert await host.deactivate_idle(0.0) == 3
        assert host.held_count == 0
        assert stored_value(path, "t2", "Tally") == 1


async def test_idle_objects_are_saved_deactivated_and_come_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        for index in range(20):
            await increment(host, f"i{index}", kind="Tally")
        assert host.active_count == 20
        assert await host.deactivate_idle(0.0) == 20
        assert host.active_count == 0
        assert stored_value(path, "i7", "Tally") == 1
        assert await increment(host, "i7", kind="Tally") == 2


async def test_a_call_during_a_deactivation_waits_for_its_save(tmp_path: Path) -> None:
    """Regression: an object being retired was forgotten before its on_deactivate ran and
    its state was saved, so a call arriving meanwhile activated a second instance from the
    state stored before those changes, and the retired instance's save then overwrote the
    second one's: an acknowledged increment was lost by a planned deactivation. A call now
    waits for the deactivation to end and activates from what it saved."""
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        assert await increment(host, "s1", kind="SlowToLeave") == 1
        retiring = asyncio.create_task(host.deactivate_idle(0.0))
        await asyncio.sleep(0.02)  # on_deactivate is running
        assert await increment(host, "s1", kind="SlowToLeave") == 2
        assert await retiring == 1
        assert await host.save_changed() == 1
        assert stored_value(path, "s1", "SlowToLeave") == 2
    assert stored_value(path, "s1", "SlowToLeave") == 2


async def test_max_objects_refuses_one_more_activation(tmp_path: Path) -> None:
    async with hosting(tmp_path / "state.db", max_objects=3) as host:
        for index in range(3):
            await increment(host, f"m{index}")
        with pytest.raises(ResourceExhausted, match="max-objects"):
            await increment(host, "m3")
        assert await increment(host, "m0") == 2
        assert await host.delete("Counter", "m0")
        assert await increment(host, "m3") == 1


async def test_delete_removes_the_stored_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with hosting(path) as host:
        await increment(host, "d1", by=5)
        assert await host.delete("Counter", "d1")
        assert stored(path, "Counter", "d1") is None
        assert await increment(host, "d1") == 1
        await host.deactivate_idle(0.0)
        # Not active, still stored: deleting removes the state anyway.
        assert not await host.delete("Counter", "d1")
        assert stored(path, "Counter", "d1") is None


class SlowOpening:
    """A SQLite backend whose opening waits for :attr:`release` (a store that takes its time
    to connect), or fails with :attr:`fail_with`."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteBackend(path)
        self.description = self.inner.description
        self.release = asyncio.Event()
        self.opening = asyncio.Event()
        self.fail_with: StoreUnavailable | None = None

    async def open(self) -> None:
        self.opening.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def next_epoch(self) -> int:
        return await self.inner.next_epoch()

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        return await self.inner.apply(ops)


def slow_host(backend: SlowOpening) -> tuple[ObjectHost, ObjectState]:
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    state = ObjectState(Store(backend), table, "n1")
    host = ObjectHost(TYPES, table, "n1", state)
    host.attach_runtime(cast(ObjectRuntime, object()))
    return host, state


async def test_a_call_during_the_first_opening_of_the_store_waits_for_it(tmp_path: Path) -> None:
    """Regression: a node serves before its store is open, and the calls a gate sent a
    node it had just restarted failed with UNAVAILABLE ("the store is not open yet") for the
    moment it took to connect to a healthy store. A call now waits for the first attempt."""
    backend = SlowOpening(tmp_path / "x.db")
    host, state = slow_host(backend)
    opening = asyncio.create_task(state.open(fail=unusable))
    async with asyncio.timeout(5):
        await backend.opening.wait()
        call = asyncio.create_task(increment(host, "c1"))
        backend.release.set()
        assert await call == 1
        await opening
    await host.deactivate_all(5.0)
    await state.close()


async def test_once_the_first_opening_failed_calls_answer_unavailable_at_once(
    tmp_path: Path,
) -> None:
    """The wait is for the first attempt only: while the node retries an unreachable store,
    calls are not held."""
    backend = SlowOpening(tmp_path / "x.db")
    backend.fail_with = StoreUnavailable("connection refused")
    backend.release.set()
    host, state = slow_host(backend)
    opening = asyncio.create_task(state.open(fail=unusable))
    try:
        async with asyncio.timeout(5):
            await backend.opening.wait()
            backend.opening.clear()
            await backend.opening.wait()  # a second attempt: the first one failed
            with pytest.raises(Unavailable, match="not open yet"):
                await increment(host, "c1")
    finally:
        opening.cancel()
        await asyncio.wait([opening])
        await state.close()


async def test_a_store_not_open_answers_unavailable(tmp_path: Path) -> None:
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    state = ObjectState(open_store(f"sqlite:{tmp_path / 'x.db'}", None, 1), table, "n1")
    host = ObjectHost(TYPES, table, "n1", state)
    host.attach_runtime(cast(ObjectRuntime, object()))
    with pytest.raises(Unavailable, match="not open yet"):
        await increment(host, "c1")
    assert not host.is_active("Counter", "c1")
    await state.close()


class Outage(SqliteBackend):
    """A SQLite backend whose transactions fail while :attr:`down` (a store lost mid-run)."""

    down = False

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        if self.down:
            raise StoreUnavailable(f"{self.description}: connection refused")
        return await super().apply(ops)


async def test_a_periodic_object_keeps_its_changes_while_the_store_is_lost(
    tmp_path: Path,
) -> None:
    """Regression: a periodic save that failed because the store could not be reached dropped
    the object and the changes it had acknowledged since its last save, where docs/state.md
    says periodic objects keep their changes and retry at the next interval. They are kept;
    the next interval after the store is back saves them."""
    backend = Outage(tmp_path / "state.db")
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    state = ObjectState(Store(backend), table, "n1")
    await state.open(fail=unusable)
    host = ObjectHost(TYPES, table, "n1", state)
    host.attach_runtime(cast(ObjectRuntime, object()))
    try:
        assert await increment(host, "p1", by=3, kind="Tally") == 3
        backend.down = True
        assert await host.save_changed() == 0
        assert host.is_active("Tally", "p1")
        backend.down = False
        assert await host.save_changed() == 1
        assert stored_value(tmp_path / "state.db", "p1", "Tally") == 3
    finally:
        await host.deactivate_all(5.0)
        await state.close()
