"""Ledger counters under load: what was acknowledged, what is in doubt, what the store kept."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from google.protobuf.empty_pb2 import Empty

from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterState, CounterValue, IncrementRequest
from tests.helpers.call_load import Method, Outcome
from tests.helpers.postgres import STOP_TIMEOUT, PostgresServer

ADD = Method("Ledger", "Add", IncrementRequest(by=1), CounterValue)
"""``Ledger.Add`` by one: an each-call counter, saved before the reply."""

READ_TIMEOUT = 15.0
"""The deadline of each Get that reads a counter back (it may activate the object: a load)."""
READERS = 16
"""Get calls in flight at once when the counters are read back."""


@dataclass
class Tally:
    """What the callers of one counter know about it: `acked` increments answered OK,
    `in_doubt` calls that failed after they may have reached the node (their increment may
    or may not have been saved), and the highest value an OK reply carried."""

    acked: int = 0
    in_doubt: int = 0
    highest_reply: int = 0


def tally(outcomes: Iterable[Outcome], in_doubt: Iterable[str]) -> dict[str, Tally]:
    """Each object's :class:`Tally` from the calls of an :data:`ADD` load: an ``OK`` call is
    acknowledged, a call that failed with one of the codes `in_doubt` is in doubt. A failure
    with any other code is left out: the test asserts there is none."""
    doubtful = set(in_doubt)
    tallies: dict[str, Tally] = {}
    for outcome in outcomes:
        found = tallies.setdefault(outcome.object_id, Tally())
        if outcome.ok:
            found.acked += 1
            assert isinstance(outcome.reply, CounterValue)
            found.highest_reply = max(found.highest_reply, outcome.reply.value)
        elif outcome.code in doubtful:
            found.in_doubt += 1
    return tallies


def mismatches(tallies: dict[str, Tally], values: dict[str, int], exact: bool) -> list[str]:
    """The counters whose read-back value breaks durability: below what was acknowledged or
    what an OK reply showed (an acknowledged increment lost), or above acknowledged + in
    doubt (an increment applied twice, or one never made); with `exact`, any value other than
    the acknowledged count."""
    problems = []
    for object_id, found in sorted(tallies.items()):
        value = values[object_id]
        low = max(found.acked, found.highest_reply)
        high = found.acked if exact else found.acked + found.in_doubt
        if not low <= value <= high:
            problems.append(
                f"{object_id}: {value}, acknowledged {found.acked} (highest reply "
                f"{found.highest_reply}), in doubt {found.in_doubt}"
            )
    return problems


async def read_counters(client: Client, object_ids: Sequence[str]) -> dict[str, int]:
    """The value of each Ledger in `object_ids`, read with ``Get`` through `client`,
    :data:`READERS` at a time."""
    limit = asyncio.Semaphore(READERS)

    async def read(object_id: str) -> tuple[str, int]:
        async with limit:
            reply = await client.call(
                "Ledger", object_id, "Get", Empty(), CounterValue, timeout=READ_TIMEOUT
            )
        return object_id, reply.value

    return dict(await asyncio.gather(*(read(object_id) for object_id in object_ids)))


@dataclass(frozen=True)
class StoredRow:
    """A row of ``goverse_objects``: the epoch of its last claim, and its state."""

    epoch: int
    data: bytes | None

    @property
    def value(self) -> int:
        """The counter the row holds (0 when it holds no state yet)."""
        state = CounterState()
        if self.data:
            state.ParseFromString(self.data)
        return state.value


_LOGGED_SAVE = re.compile(
    r"UPDATE goverse_objects.*?DETAIL:\s+parameters: \$1 = '\{[^}]*\}', "
    r"\$2 = '\{([^}]*)\}', \$3 = '\{([^}]*)\}'",
    re.DOTALL | re.IGNORECASE,
)
"""The ids and epochs of a save statement (``UPDATE goverse_objects``) in the server's log."""


@dataclass(frozen=True)
class PostgresStore:
    """A database of its own on a test PostgreSQL, as nodes are given it: `flags` name it
    with no password in the URL and the password in a file; `url` carries the password, for
    the test to read the rows itself."""

    url: str
    flags: tuple[str, ...]
    server: PostgresServer

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]

    async def log_writes(self) -> None:
        """Has the server log every statement that writes to this database, with its
        parameters, in the sessions opened from now on (:meth:`saves_logged`)."""
        await self.execute(f"ALTER DATABASE {self.name} SET log_statement = 'mod'")

    def saves_logged(self, since: int = 0) -> list[tuple[str, int]]:
        """The ``(id, epoch)`` of every save statement the server logged from offset `since`
        of its log on (:meth:`log_writes`), whether the row's epoch let it write or not."""
        saves: list[tuple[str, int]] = []
        for found in _LOGGED_SAVE.finditer(self.server.output()[since:]):
            ids, epochs = found.group(1).split(","), found.group(2).split(",")
            saves.extend((i.strip('"'), int(e)) for i, e in zip(ids, epochs, strict=True))
        return saves

    async def row(self, object_type: str, object_id: str) -> StoredRow | None:
        """The stored row of one object, read straight from the database; None when there is
        none."""
        connection = await asyncpg.connect(self.url, timeout=STOP_TIMEOUT)
        try:
            found = await connection.fetchrow(
                "SELECT epoch, data FROM goverse_objects WHERE type = $1 AND id = $2",
                object_type,
                object_id,
                timeout=STOP_TIMEOUT,
            )
        finally:
            await connection.close(timeout=STOP_TIMEOUT)
        return None if found is None else StoredRow(int(found["epoch"]), found["data"])

    async def set_data(self, object_type: str, object_id: str, data: bytes) -> None:
        """Overwrites the stored state of one object behind the nodes' backs."""
        await self.execute(
            "UPDATE goverse_objects SET data = $3 WHERE type = $1 AND id = $2",
            object_type,
            object_id,
            data,
        )

    async def execute(self, sql: str, *args: object) -> None:
        connection = await asyncpg.connect(self.url, timeout=STOP_TIMEOUT)
        try:
            await connection.execute(sql, *args, timeout=STOP_TIMEOUT)
        finally:
            await connection.close(timeout=STOP_TIMEOUT)


@dataclass(frozen=True)
class SqliteStore:
    """A SQLite file as a node is given it (`flags`), which the test reads and writes
    itself (alongside the node: the file is in WAL mode)."""

    path: Path

    @property
    def flags(self) -> tuple[str, ...]:
        return (f"--store=sqlite:{self.path}",)

    async def row(self, object_type: str, object_id: str) -> StoredRow | None:
        """The stored row of one object; None when there is none."""

        def read() -> StoredRow | None:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                found = db.execute(
                    "SELECT epoch, data FROM goverse_objects WHERE type = ? AND id = ?",
                    (object_type, object_id),
                ).fetchone()
            return None if found is None else StoredRow(int(found[0]), found[1])

        return await asyncio.to_thread(read)

    async def set_data(self, object_type: str, object_id: str, data: bytes) -> None:
        """Overwrites the stored state of one object behind the node's back."""

        def write() -> None:
            with contextlib.closing(sqlite3.connect(self.path)) as db, db:
                db.execute(
                    "UPDATE goverse_objects SET data = ? WHERE type = ? AND id = ?",
                    (data, object_type, object_id),
                )

        await asyncio.to_thread(write)


async def postgres_store(server: PostgresServer, directory: Path) -> PostgresStore:
    """A new database on `server`, with its password in a file in `directory`."""
    url = await server.create_database()
    database = url.rsplit("/", 1)[1]
    password_file = directory / "store-password"
    password_file.write_text(f"{server.password}\n")
    flags = (
        f"--store={server.url(database, password='')}",
        f"--store-password-file={password_file}",
    )
    return PostgresStore(url, flags, server)


__all__ = [
    "ADD",
    "PostgresStore",
    "SqliteStore",
    "StoredRow",
    "Tally",
    "mismatches",
    "postgres_store",
    "read_counters",
    "tally",
]
